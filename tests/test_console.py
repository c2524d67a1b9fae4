"""What a person sees on the console: no TensorFlow start-up chatter unless --verbose (or a
TF_CPP_MIN_LOG_LEVEL of their own), figures to 3 significant digits while summary.json keeps
full precision, and --plan_only's plan without a run or an output dir."""
import json
import os
import re
import subprocess
import sys

import pytest

from pipeline.run import TENSORFLOW_START_UP_CHATTER as CHATTER
from pipeline.run import format_summary, human_figure, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_fresh(*argv, env_extra=None):
    # the test process sets TF_CPP_MIN_LOG_LEVEL (tests/conftest.py); a user's shell does not
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory, demo_model_base, demo_data):
    out = tmp_path_factory.mktemp("quiet") / "out"
    done = _run_fresh("--model", demo_model_base, "--input",
                      ",".join(demo_data["tfrecord"]), "--output", str(out), "--key_field", "id")
    return done, out


def _assert_quiet(done):
    """A healthy run: exit 0, and no line of TensorFlow's start-up chatter or an ERROR."""
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stderr.splitlines():
        assert not any(word in line for word in ("ERROR", "E0000", "cuInit")), line
        assert not any(c in line for c in CHATTER), line


def test_no_tensorflow_start_up_lines_by_default(quiet_run):
    done, _ = quiet_run
    _assert_quiet(done)
    assert "INFO pipeline.build: plan:" in done.stderr  # the job's own lines stay


def test_local_worker_processes_start_quietly_too(tmp_path, demo_model_base, demo_data):
    """Each multi_processing worker imports TensorFlow itself: none of them prints its
    start-up lines (or an ERROR) on a healthy run, and their job lines still come through."""
    done = _run_fresh("--model", demo_model_base, "--input", ",".join(demo_data["tfrecord"]),
                      "--output", str(tmp_path / "out"), "--direct_running_mode",
                      "multi_processing", "--direct_num_workers", "2")
    _assert_quiet(done)
    assert "worker: loaded model" in done.stderr  # the workers' own lines are shown


def test_verbose_shows_them(tmp_path, demo_model_base, demo_data):
    done = _run_fresh("--model", demo_model_base, "--input", demo_data["tfrecord"][0],
                      "--output", str(tmp_path / "out"), "--key_field", "id", "--verbose")
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(c in done.stderr for c in CHATTER), done.stderr[-3000:]


def test_a_users_own_log_level_is_left_alone(tmp_path, demo_model_base, demo_data):
    done = _run_fresh("--model", demo_model_base, "--input", demo_data["tfrecord"][0],
                      "--output", str(tmp_path / "out"), "--key_field", "id",
                      env_extra={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(c in done.stderr for c in CHATTER), done.stderr[-3000:]


def test_console_figures_are_human_sized_and_the_json_is_not(quiet_run):
    done, out = quiet_run
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    lat = summary["latency_ms"]
    assert "records in:   1,500  predicted: 1,500  errors: 0" in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("model call:"))
    figures = re.findall(r"(p50|p95|p99|max) ([\d,.]+) ms", line)
    assert [f for f, _ in figures] == ["p50", "p95", "p99", "max"]
    for name, shown in figures:
        value = lat[name]
        digits = shown.replace(",", "").replace(".", "").lstrip("0")
        assert len(digits) <= 3 or shown.replace(",", "").endswith("0" * (len(digits) - 3))
        assert float(shown.replace(",", "")) == pytest.approx(value, rel=5e-3)
    throughput = re.search(r"throughput:   ([\d,.]+) examples/s", done.stdout).group(1)
    assert float(throughput.replace(",", "")) == pytest.approx(
        summary["examples_per_second"], rel=5e-3)
    # summary.json: every figure as measured, not as shown
    assert summary["records_in"] == 1500


@pytest.mark.parametrize("value, shown", [
    (20.73725, "20.7"), (0.0123456, "0.0123"), (72, "72.0"), (99.96, "100"),
    (123456.7, "123,000"), (1234.5, "1,230"), (999.6, "1,000"), (5, "5.00"), (0, "0"),
    (None, "-"), (float("nan"), "nan"),
])
def test_human_figure(value, shown):
    assert human_figure(value) == shown


def test_format_summary_rounds_only_what_it_shows():
    s = {"model_path": "m/1", "model_version": "1", "signature": "serving_default",
         "signature_convention": "serialized", "feature_spec_source": "model",
         "records_in": 1234567, "predicted": 1234560, "errors": 7, "accounted": True,
         "counts_exact": True, "examples_per_second": 98765.4321, "wall_seconds": 12.4999,
         "model_calls": 1508, "errors_by_type": {"missing_feature": 7},
         "latency_ms": {"p50": 20.73725, "p95": 31.0049, "p99": 1234.5678, "max": 0.00123456}}
    before = json.dumps(s)
    text = format_summary(s, "out")
    assert json.dumps(s) == before
    assert "records in:   1,234,567  predicted: 1,234,560  errors: 7" in text
    assert "throughput:   98,800 examples/s over 12.5 s wall; 1,508 model calls" in text
    assert "model call:   p50 20.7 ms  p95 31.0 ms  p99 1,230 ms  max 0.00123 ms" in text


# --- --plan_only --------------------------------------------------------------------------------
def test_plan_only_prints_the_plan_and_leaves_the_output_dir_absent(tmp_path, demo_model_base,
                                                                    demo_data, capsys):
    out = tmp_path / "out"
    files = demo_data["tfrecord"]
    code = main(["--model", demo_model_base, "--input", ",".join(files), "--output", str(out),
                 "--key_field", "id", "--output_format", "csv", "--plan_only"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert not out.exists()
    total = sum(os.path.getsize(f) for f in files)
    assert f"inputs:       3 files, {total:,} bytes, format tfrecord" in text
    for f in files:
        assert re.search(rf"^\s+{os.path.getsize(f):,}  {re.escape(f)}$", text, re.M), f
    assert f"model:        {demo_model_base}/1700000000 (version 1700000000, saved_model)" in text
    assert "signature:    serving_default (serialized), outputs " in text
    assert "feature spec: model (serving_default parse op), 13 features" in text
    assert f"outputs:      {out} (predictions as csv)" in text
    assert "runner:       DirectRunner" in text
    assert "plan only: nothing was written and the output dir was not touched" in text
    assert "sample:" not in text  # only with --plan_sample


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_plan_sample_scores_a_sample_and_estimates_the_run(tmp_path, demo_model_base,
                                                           demo_data, capsys, fmt):
    """The demo's 3 shards hold 500 records each: a sample from the first (read whole: it is
    smaller than a read block) gives its records per byte, so the estimate is about 1,500."""
    out = tmp_path / "out"
    files = sorted(demo_data[fmt])
    code = main(["--model", demo_model_base, "--input", ",".join(files), "--output", str(out),
                 "--batch_size", "64", "--plan_only", "--plan_sample", "100"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert not out.exists()
    sample = re.search(r"^sample: +(\d+) records of (\S+) \(([\d,]+) records in its first "
                       r"([\d,]+) bytes\): read and parsed in [\d.,]+ ms; (\d+) model calls "
                       r"of up to 64 records, median [\d.,]+ ms per call$", text, re.M)
    assert sample, text
    read, path, spanned, spanned_bytes, calls = sample.groups()
    assert (int(read), path, int(calls)) == (128, files[0], 2)  # two batches of 64
    assert (int(spanned.replace(",", "")), int(spanned_bytes.replace(",", ""))) == \
        (500, os.path.getsize(files[0]))
    records = int(re.search(r"^estimate: +~([\d,]+) records in all", text, re.M)[1]
                  .replace(",", ""))
    gzip = fmt == "tfrecord"  # shard 1 is gzip: far fewer bytes per record than the others
    expected = 500 * sum(os.path.getsize(f) for f in files) / os.path.getsize(files[0])
    assert records == round(expected) and (gzip or abs(records - 1500) < 1500 * 0.02)
    assert text.index("estimate:") < text.index("plan only:")


def test_a_plan_sample_larger_than_the_first_file_reads_that_file_only(
        tmp_path, demo_model_base, demo_data, capsys):
    files = sorted(demo_data["csv"])
    code = main(["--model", demo_model_base, "--input", ",".join(files), "--output",
                 str(tmp_path / "out"), "--plan_only", "--plan_sample", "1000000000"])
    text = capsys.readouterr().out
    assert code == 0, text
    size = os.path.getsize(files[0])
    assert f"sample:       500 records of {files[0]} (500 records in its first {size:,} " \
           "bytes)" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--plan_sample", "100"], ("--plan_sample 100 goes with --plan_only",)),
    (["--plan_only", "--plan_sample", "-5"], ("--plan_sample -5", "1 or more")),
    (["--plan_only", "--plan_sample", "many"], ("--plan_sample", "many")),
])
def test_plan_sample_refusals(tmp_path, demo_model_base, demo_data, capsys, argv, words):
    from tests.helpers import one_error_line
    code = main(["--model", demo_model_base, "--input", demo_data["csv"][0], "--output",
                 str(tmp_path / "out"), *argv])
    assert code == 2
    one_error_line(capsys.readouterr().err, *words)
    assert not (tmp_path / "out").exists()


def test_plan_only_still_refuses_what_a_run_would(tmp_path, demo_model_base, demo_data, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous run's outputs, and no --overwrite
    code = main(["--model", demo_model_base, "--input", demo_data["tfrecord"][0], "--output",
                 str(out), "--plan_only"])
    assert code == 2
    assert "holds a previous run's outputs" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["manifest.json"]


def test_beams_dry_run_on_the_local_runner_is_refused(tmp_path, demo_model_base, demo_data,
                                                      capsys):
    """Beam's --dry_run only means something to DataflowRunner; locally the job would run."""
    out = tmp_path / "out"
    code = main(["--model", demo_model_base, "--input", demo_data["tfrecord"][0], "--output",
                 str(out), "--dry_run", "True"])
    assert code == 2
    assert "use --plan_only" in capsys.readouterr().err
    assert not out.exists()
