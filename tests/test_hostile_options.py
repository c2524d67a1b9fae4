"""Hostile command lines: every bad option, label or feature spec is refused before any worker
starts, with exit code 2 and one `error:` line (no stack trace), and nothing is written; a
mistyped option is refused with the closest valid one; every option Beam defines still passes.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline import demo
from pipeline.options import (DEFAULT_MAX_RECORD_BYTES, BatchPredictOptions,
                              all_options_parser, check_argv)
from pipeline.provenance import parse_label_values
from transforms.errors import OptionsError
from pipeline.run import EXIT_USAGE, main
from transforms.feature_spec import MAX_SPEC_BYTES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    files = demo.write_demo_data(str(tmp_path_factory.mktemp("hostile_in")), rows=20, shards=1)
    return files["tfrecord"][0]


@pytest.fixture
def job(tmp_path, demo_model_base, small_input, capsys):
    """Runs main() on the demo model and input plus `extra`; returns (exit code, the one
    error line), after checking stderr holds exactly one `error:` line, no traceback, and that
    no output dir was created."""
    out = tmp_path / "out"

    def call(*extra, base=True):
        argv = ["--model", demo_model_base, "--input", small_input, "--output", str(out)]
        code = main((argv if base else []) + list(extra))
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, err
        assert not out.exists()
        return code, lines[0]
    return call


def _refused(job, *extra, words=(), base=True):
    code, line = job(*extra, base=base)
    assert code == EXIT_USAGE == 2, line
    for word in words:
        assert word in line, line
    return line


# --- values of this job's options ---------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--batch_size", "0"], ["--batch_size", "positive integer or 'auto'", "'0'"]),
    (["--batch_size=-1"], ["--batch_size", "positive integer or 'auto'", "'-1'"]),
    (["--batch_size", "lots"], ["--batch_size", "positive integer or 'auto'"]),
    (["--max_error_rate", "nan"], ["--max_error_rate", "from 0 to 1", "'nan'"]),
    (["--max_error_rate", "2"], ["--max_error_rate", "from 0 to 1", "'2'"]),
    (["--max_error_rate=-0.1"], ["--max_error_rate", "from 0 to 1"]),
    (["--concurrent_model_calls", "0"], ["--concurrent_model_calls", "positive integer"]),
    (["--max_record_bytes", "0"], ["--max_record_bytes", "positive integer"]),
    (["--max_record_bytes", "1.5"], ["--max_record_bytes", "positive integer"]),
    (["--split_bytes", "-1"], ["--split_bytes", ">= 4096", "'-1'"]),
    (["--split_bytes", "100"], ["--split_bytes", "0 (read files whole)", "'100'"]),
    (["--split_bytes", "64MB"], ["--split_bytes", ">= 4096", "'64MB'"]),
    (["--reshuffle_batches", "yes"], ["--reshuffle_batches", "auto", "on", "off"]),
    (["--csv_list_separator", ""], ["--csv_list_separator", "is empty"]),
    (["--csv_list_separator", "\n"], ["--csv_list_separator", "may not contain '\\n'"]),
    (["--csv_list_separator", ";\r"], ["--csv_list_separator", "'\\r'"]),
    (["--csv_list_separator", '"'], ["--csv_list_separator", "'\"'"]),
    (["--signature", ""], ["--signature", "is empty"]),
    (["--key_field", ""], ["--key_field", "is empty"]),
    (["--feature_spec", ""], ["--feature_spec", "is empty"]),
    (["--model_cache_dir", ""], ["--model_cache_dir", "is empty"]),
    (["--input_format", "avro"], ["--input_format", "'avro'", "tfrecord", "csv", "parquet"]),
    (["--output_format", "xml"], ["--output_format", "jsonl", "csv"]),
    (["--key_dtype", "int32"], ["--key_dtype", "int64"]),
    (["--overwrite=yes"], ["--overwrite is an on/off flag"]),
    (["--signature"], ["--signature needs a value"]),
])
def test_bad_values_of_this_jobs_options(job, extra, words):
    _refused(job, *extra, words=words)


@pytest.mark.parametrize("option, value, words", [
    ("--model", "", "is empty"), ("--input", "", "names no file pattern"),
    ("--input", " , ", "names no file pattern"), ("--output", "", "is empty"),
    ("--output", "/", "'/' is the filesystem root")])
def test_empty_paths(job, tmp_path, demo_model_base, small_input, option, value, words):
    argv = {"--model": demo_model_base, "--input": small_input,
            "--output": str(tmp_path / "out")}
    argv[option] = value
    _refused(job, *[a for kv in argv.items() for a in kv], words=[f"{option}: {words}"],
             base=False)


def test_missing_required_options_in_one_line(job, demo_model_base):
    _refused(job, "--model", demo_model_base, words=["missing required options --input (or "
                                                      "--input_query), --output"], base=False)


@pytest.mark.parametrize("option, value", [("--tf_intra_op_threads", "-5"),
                                           ("--tf_inter_op_threads", "-1")])
def test_negative_thread_counts_never_reach_tensorflow(tmp_path, demo_model_base, small_input,
                                                       option, value):
    """TensorFlow aborts the process on a negative count (a C++ check failure, exit 134), so
    this runs main() in a child process."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from pipeline.run import main; "
                               "sys.exit(main(sys.argv[1:]))",
         "--model", demo_model_base, "--input", small_input, "--output", str(out),
         option, value],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert option in line and ">= 0" in line and repr(value) in line
    assert not out.exists()


# --- mistyped and stray arguments ---------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--key-field", "id"], ["unknown option --key-field", "did you mean --key_field?"]),
    (["--key-field=id"], ["unknown option --key-field;", "did you mean --key_field?"]),
    (["--max_eror_rate", "0.5"], ["unknown option --max_eror_rate",
                                  "did you mean --max_error_rate?"]),
    (["--max_eror_rate=0.5"], ["did you mean --max_error_rate?"]),
    (["--runer", "DirectRunner"], ["did you mean --runner?"]),
    (["--zzzzzz"], ["unknown option --zzzzzz", "nor of Beam"]),
    (["--mod", "x"], ["unknown option --mod"]),  # no abbreviations, as Beam's parser
    (["stray"], ["unexpected argument 'stray'"]),
    (["--overwrite", "true"], ["unexpected argument 'true'"]),
    (["--", "--overwrite"], ["unexpected argument '--'"]),
])
def test_unknown_options_and_stray_arguments(job, extra, words):
    _refused(job, *extra, words=words)


def _beams_own_option_strings() -> set[str]:
    """The flags PipelineOptions.get_all_options() parses: every direct subclass, by name."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    subset = {}
    for cls in PipelineOptions.__subclasses__():
        subset.setdefault(str(cls), cls)
    for cls in subset.values():
        cls._add_argparse_args(parser)
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def test_every_option_beam_parses_is_known():
    parser, required = all_options_parser()
    known = {o for a in parser._actions for o in a.option_strings}
    beams = _beams_own_option_strings()
    assert len(beams) > 150 and beams <= known, sorted(beams - known)[:20]
    # --input is required unless --input_query names the input (check_argv)
    assert {"--model", "--output"} == {a.option_strings[0] for a in required}


def test_beam_options_pass_through_in_both_forms():
    base = ["--model", "m", "--input", "i", "--output", "o"]
    check_argv(base + [
        "--runner", "DirectRunner", "--direct_num_workers", "2",
        "--direct_running_mode=multi_processing", "--project", "p", "--region=r",
        "--temp_location", "gs://b/tmp", "--experiments", "a", "--experiments=b",
        "--labels", "team=ml", "--labels", '{"job": "n", "count": 3}',
        "--setup_file", "./setup.py", "--dataflow_endpoint", "http://localhost:1",
        "--template_location", "/tmp/t.json", "--dry_run", "True",
        "--prism_location", "/opt/prism", "--no_pipeline_type_check",
        "--machine_type=n2-standard-4", "--max_num_workers", "7", "--save_main_session",
        "--sdk_container_image", "img:1", "--job_name=j", "--no_use_public_ips",
        "--render_output", "/tmp/r.svg",  # a RenderRunner option: defined outside Beam's core
        "--overwrite", "--key_field=id", "--batch_size", "auto", "--max_record_bytes=1024",
        "--tf_intra_op_threads", "0", "--csv_list_separator", ";"])


def test_the_example_job_specs_command_line_passes():
    """`python -m jobs run` builds the pipeline's argv from a spec: its runner options are
    Beam's, its labels a JSON object."""
    import datetime as dt

    from jobs.spec import load_spec, pipeline_argv
    argv = pipeline_argv(load_spec(os.path.join(ROOT, "jobs", "nightly_scores.yaml")),
                         dt.date(2026, 3, 1))
    assert "--labels" in argv and "--runner" in argv
    check_argv(argv)


def test_a_run_with_beam_flags_and_labels_succeeds(tmp_path, demo_model_base, small_input,
                                                   capsys):
    out = tmp_path / "out"
    code = main(["--model", demo_model_base, "--input", small_input, "--output", str(out),
                 "--runner=DirectRunner", "--direct_num_workers", "1", "--project", "p",
                 "--experiments", "x", "--no_pipeline_type_check", "--labels", "team=ml",
                 "--labels", '{"run_date": "2026-03-01"}', "--key_field=id"])
    assert code == 0, capsys.readouterr().err[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == {"team": "ml", "run_date": "2026-03-01"}


def test_help_lists_this_jobs_options(capsys):
    with pytest.raises(SystemExit) as info:
        check_argv(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--max_record_bytes" in text and "--key_field" in text and "Beam's" in text


# --- --labels -----------------------------------------------------------------------------------
@pytest.mark.parametrize("label, words", [
    ("{bad", ["--labels '{bad' is not a JSON object"]),
    ('["a", "b"]', ["must be a JSON object", "got a list"]),
    ("team", ["--labels 'team'", "key=value", "JSON object"]),
    ("=ml", ["has no key"]),
    ("", ["key=value"]),
    ('{"team": true}', ["label 'team' must be a string or a number"]),
    ('{"team": {"a": 1}}', ["must be a string or a number"]),
    ("note=a{b}", ["is not a JSON object"]),
])
def test_unusable_labels(job, label, words):
    _refused(job, "--labels", label, words=words)


def test_label_rules():
    assert parse_label_values(None) == {}
    assert parse_label_values(["a=1", " b = x=y ", '{"c": "3", "d": 4, "e": 0.5}', "a=2",
                               "f="]) == {"a": "2", "b": " x=y", "c": "3", "d": "4",
                                          "e": "0.5", "f": ""}
    with pytest.raises(OptionsError):
        parse_label_values(['{"a": NaN}'])


# --- feature spec files -------------------------------------------------------------------------
def _features(**a):
    return {"features": {"a": {"kind": "fixed", "dtype": "float32", **a}}}


@pytest.mark.parametrize("content, words", [
    (_features(shape=5), ["shape must be a list of non-negative integers", "got 5",
                          "write [5]"]),
    (_features(shape=None), ["shape must be a list", "got null"]),
    (_features(shape="3"), ["shape must be a list", 'got "3"']),
    (_features(shape=[[1]]), ["shape must be a list", "got [[1]]"]),
    (_features(shape=[-1]), ["shape must be a list", "got [-1]"]),
    (_features(shape=[True]), ["shape must be a list", "got [true]"]),
    (_features(shape=[], default=True), ["default true is not a float32"]),
    (_features(shape=[], default=[None]), ["default null is not a float32"]),
    ([{"a": {"dtype": "float32"}}], ["a feature spec is a JSON object"]),
    ({"features": [{"a": {"dtype": "float32"}}]}, ['"features" must be an object',
                                                   "got a list"]),
    ({"features": {"a": 5}}, ["feature 'a': expected an object"]),
    (b"\xff\xfe{\x00}\x00", ["is not UTF-8 text", "byte 0xff at offset 0"]),
    (b"[" * 100_000, ["nested too deeply"]),
    (b'{"features": {"a": {"dtype": "int64"}, "a": {"dtype": "float32"}}}',
     ["key 'a' appears twice"]),
])
def test_unusable_feature_spec_files(job, tmp_path, content, words):
    path = tmp_path / "spec.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    line = _refused(job, "--feature_spec", str(path), words=words)
    assert str(path) in line


def test_a_feature_spec_that_is_not_a_small_file(job, tmp_path):
    """Read with a bound: a data file (or a device) given as the spec is never read whole."""
    path = tmp_path / "big.json"
    with open(path, "wb") as fh:
        fh.truncate(MAX_SPEC_BYTES + 1)
    _refused(job, "--feature_spec", str(path), words=["larger than 16 MiB"])


# --- --max_record_bytes -------------------------------------------------------------------------
def test_max_record_bytes_is_defined_with_its_default_and_help():
    opts = BatchPredictOptions(["--model", "m", "--input", "i", "--output", "o"])
    assert opts.max_record_bytes == DEFAULT_MAX_RECORD_BYTES == 128 << 20
    assert BatchPredictOptions(["--model", "m", "--input", "i", "--output", "o",
                                "--max_record_bytes=4096"]).max_record_bytes == 4096
    parser = argparse.ArgumentParser()
    BatchPredictOptions._add_argparse_args(parser)
    [action] = [a for a in parser._actions if a.dest == "max_record_bytes"]
    assert action.help.startswith("largest TFRecord record or CSV line accepted")
