"""What the README promises, each checked against values the test computes itself: describe
--spec_only, --csv_list_separator, input formats by extension or flag, --key_dtype auto,
thread options, the console script, exit code 1, the summary's rate and byte fields and the
Beam counters."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter

from pipeline.demo import demo_rows, demo_spec, write_csv, write_tfrecords
from pipeline.run import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main, read_summary, run
from tests.helpers import errors, predictions, read_jsonl
from transforms.feature_spec import Feature, FeatureSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(features: dict) -> bytes:
    """A tf.Example written with TensorFlow's own protos."""
    feats = {}
    for name, values in features.items():
        values = values if isinstance(values, list) else [values]
        if isinstance(values[0], bytes):
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        elif isinstance(values[0], int):
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in examples:
            w.write(e)
    return str(path)


@pytest.fixture(scope="module")
def vector_model(tmp_path_factory):
    """y = sum of a 3-value float feature `v`, times 2 (a model with a multi-valued input)."""
    from transforms.export import export_parsing_model
    spec = FeatureSpec([Feature("v", "fixed", "float32", (3,))])

    class Sum(tf.Module):
        @tf.function
        def __call__(self, f):
            return {"y": tf.reduce_sum(f["v"], axis=1) * 2.0}
    module = Sum()
    path = str(tmp_path_factory.mktemp("vector") / "model")
    export_parsing_model(module, spec, path, module=module)
    return path


def test_describe_spec_only_prints_a_spec_that_runs_as_feature_spec(tmp_path, demo_model_base,
                                                                    capsys):
    from pipeline.describe import main as describe_main
    assert describe_main(["--model", demo_model_base, "--spec_only"]) == 0
    text = capsys.readouterr().out
    printed = FeatureSpec.from_json(json.loads(text))
    assert printed == demo_spec()  # what the demo model was exported with
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(text)
    rows = demo_rows(12, seed=41)
    data = write_tfrecords(rows, str(tmp_path / "d.tfrecord"))
    out = tmp_path / "out"
    assert main(["--model", demo_model_base, "--input", data, "--output", str(out),
                 "--feature_spec", str(spec_file), "--key_field", "id"]) == EXIT_OK
    s = read_summary(str(out))
    assert s["feature_spec_source"] == "given (matches the model's parse op)"
    assert s["predicted"] == 12


def test_csv_list_separator_splits_multi_valued_cells(tmp_path, vector_model):
    (tmp_path / "a.csv").write_text("id,v\nx,1;2;3.5\ny,0.25;-1;4\nz,1|2|3\n")
    out = tmp_path / "out"
    assert main(["--model", vector_model, "--input", str(tmp_path / "a.csv"), "--output",
                 str(out), "--key_field", "id", "--csv_list_separator", ";",
                 "--max_error_rate", "1"]) == EXIT_OK
    got = {r["id"]: r["y"] for r in predictions(str(out))}
    assert got == {"x": 13.0, "y": 6.5}
    [err] = errors(str(out))
    assert (err["line"], err["error_type"], err["payload"]) == (4, "parse_error", "z,1|2|3")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    rows = demo_rows(9, seed=42)
    return {"rows": rows, "dir": d,
            "tfrecord": write_tfrecords(rows, str(d / "a.tfrecord")),
            "csv": write_csv(rows, str(d / "a.csv"))}


def test_input_format_from_the_extension_or_the_flag(tmp_path, demo_model_base, tiny, capsys):
    ids = sorted(r["id"] for r in tiny["rows"])

    def score(path, *extra):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        code = main(["--model", demo_model_base, "--input", path, "--output", str(out),
                     "--key_field", "id", *extra])
        return code, (sorted(r["id"] for r in predictions(str(out))) if code == 0 else None)

    records = tmp_path / "x.tfrecords"
    records.write_bytes(open(tiny["tfrecord"], "rb").read())
    assert score(str(records)) == (EXIT_OK, ids)
    text = tmp_path / "x.txt"
    text.write_bytes(open(tiny["csv"], "rb").read())
    assert score(str(text))[0] == EXIT_USAGE
    assert "cannot infer the input format of" in capsys.readouterr().err
    assert score(str(text), "--input_format", "csv") == (EXIT_OK, ids)
    assert score(f"{tiny['csv']},{records}")[0] == EXIT_USAGE
    assert "mix CSV and TFRecord" in capsys.readouterr().err
    # a TFRecord file named .csv, read as what the flag says
    fake = tmp_path / "really_records.csv"
    fake.write_bytes(open(tiny["tfrecord"], "rb").read())
    assert score(str(fake), "--input_format", "tfrecord") == (EXIT_OK, ids)


@pytest.mark.parametrize("value,dtype", [(1 << 53 | 1, "int64"), (0.1, "float32"),
                                         (b"k\xc3\xa9", "string")])
def test_key_dtype_auto_reads_the_first_record(tmp_path, vector_model, value, dtype):
    """A key that is not a model feature takes its dtype from the first record."""
    values = [value, value] if dtype != "string" else [value, b"other"]
    data = _write(tmp_path / "k.tfrecord", [
        _example({"v": [1.0, 2.0, 3.0], "uid": values[0]}),
        _example({"v": [0.5, 0.5, 0.5], "uid": values[1]})])
    out = tmp_path / "out"
    assert main(["--model", vector_model, "--input", data, "--output", str(out),
                 "--key_field", "uid"]) == EXIT_OK
    rows = predictions(str(out))
    expected = {"int64": [1 << 53 | 1] * 2,  # exact: not rounded through a double
                "float32": [0.1] * 2,  # float32's shortest form, not 0.10000000149011612
                "string": ["k\u00e9", "other"]}[dtype]
    assert [r["uid"] for r in rows] == expected
    assert [r["y"] for r in rows] == [12.0, 3.0]


def test_a_job_that_fails_while_running_exits_1_with_one_last_line(tmp_path, demo_model_base,
                                                                   tiny, capsys, monkeypatch):
    import pipeline.run
    from transforms.predict import PredictDoFn

    class Broken(PredictDoFn):
        def process(self, batch):
            raise RuntimeError("disk on fire")
    out = tmp_path / "out"
    monkeypatch.setattr(pipeline.run, "run", lambda argv: run(argv, predict_dofn=Broken))
    code = main(["--model", demo_model_base, "--input", tiny["tfrecord"], "--output",
                 str(out)])
    assert code == EXIT_FAILED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the job failed while running (RuntimeError: disk on fire")
    assert "nothing final was written" in last
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()


def test_console_script_and_thread_options_in_a_fresh_process(tmp_path, demo_model_base,
                                                              tiny):
    script = os.path.join(os.path.dirname(sys.executable), "batch-predict")
    assert os.path.exists(script), "the package's console script is not installed"
    out = tmp_path / "out"
    done = subprocess.run([script, "--model", demo_model_base, "--input", tiny["tfrecord"],
                           "--output", str(out), "--key_field", "id",
                           "--tf_intra_op_threads", "1", "--tf_inter_op_threads", "3"],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    [load] = read_jsonl(str(out / "metrics" / "model_loads-*.jsonl"))
    assert (load["tf_intra_op_threads"], load["tf_inter_op_threads"]) == (1, 3)
    assert len(predictions(str(out))) == 9


def test_summary_rate_and_byte_fields_and_beam_counters(tmp_path, demo_model_base):
    rows = demo_rows(40, seed=43)
    for i in (3, 17):
        rows[i].pop("device")  # required: 2 missing_feature rows
    files = [write_tfrecords(rows[:25], str(tmp_path / "a.tfrecord")),
             write_tfrecords(rows[25:], str(tmp_path / "b.tfrecord"), gzip=True)]
    with open(files[0], "ab") as fh:
        fh.write(b"\x01\x02\x03")  # a truncated last record: 1 corrupt_record row
    out = tmp_path / "out"
    result, _ = run(["--model", demo_model_base, "--input", str(tmp_path / "*.tfrecord"),
                     "--output", str(out), "--key_field", "id", "--max_error_rate", "0.1",
                     "--batch_size", "7"])
    s = read_summary(str(out))
    assert (s["records_in"], s["predicted"], s["errors"]) == (41, 38, 3)
    assert s["error_rate"] == round(3 / 41, 6)
    assert s["input_files"] == 2
    assert s["input_bytes"] == sum(os.path.getsize(f) for f in files)
    assert s["errors_by_type"] == {"corrupt_record": 1, "missing_feature": 2}
    assert s["wall_seconds"] == round(s["end_time"] - s["start_time"], 3)
    # (the summary divides by the unrounded wall time)
    assert s["examples_per_second"] == pytest.approx(38 / s["wall_seconds"], rel=2e-3)
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace("batch_predict"))["counters"]}
    assert counters["records_in"] == 41 and counters["read_errors"] == 1
    assert counters["predicted"] == 38 and counters["model_errors"] == 2
    assert counters["input_bytes"] == sum(os.path.getsize(f) for f in files)
    assert counters["model_calls"] == s["model_calls"] >= 6  # 38 records, at most 7 a call
