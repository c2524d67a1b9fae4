"""End-to-end runs of the real pipeline on the demo model and real TFRecord/CSV files."""
import csv
import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipeline.run import read_summary, run
from tests.helpers import (assert_close, by_key, errors, expected_outputs, predictions,
                           read_jsonl, run_job)

OUTPUTS = ["bucket", "embedding", "label", "logits", "score"]


class StepClock:
    """A fake clock: every reading advances by `step` ns, so every model call lasts `step`."""

    def __init__(self, step_ns: int):
        self.step = step_ns
        self.now = 0

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def _check_against_model(rows_out, demo_model, demo_rows):
    expected = expected_outputs(demo_model, demo_rows)
    got = by_key(rows_out)
    assert len(got) == len(demo_rows) == len(rows_out)
    ids = [r["id"] for r in demo_rows]
    assert_close([got[i]["score"] for i in ids], expected["score"])
    assert_close([got[i]["logits"] for i in ids], expected["logits"])
    assert_close([got[i]["embedding"] for i in ids], expected["embedding"])
    assert [got[i]["label"] for i in ids] == [v.decode() for v in expected["label"]]
    assert [got[i]["bucket"] for i in ids] == expected["bucket"].tolist()


@pytest.fixture(scope="module")
def tfrecord_run(tmp_path_factory, demo_model_base, demo_data):
    out = str(tmp_path_factory.mktemp("tfr") / "out")
    result, plan = run(["--model", demo_model_base, "--input",
                        os.path.join(demo_data["dir"], "*.tfrecord*"), "--output", out,
                        "--key_field", "id", "--batch_size", "200"], clock=StepClock(1500))
    return out, result


def test_tfrecord_predictions_match_direct_model_calls(tfrecord_run, demo_model, demo_data):
    out, _ = tfrecord_run
    rows = predictions(out)
    assert list(rows[0]) == ["id"] + OUTPUTS  # key first, then every output
    _check_against_model(rows, demo_model, demo_data["rows"])
    assert errors(out) == []


def test_summary_accounts_for_every_record(tfrecord_run, demo_model_base):
    out, _ = tfrecord_run
    s = read_summary(out)
    assert (s["records_in"], s["predicted"], s["errors"]) == (1500, 1500, 0)
    assert s["accounted"] and s["counts_exact"] and s["within_error_budget"]
    assert s["model_version"] == "1700000000"  # temp-1800000000 is ignored
    assert s["model_path"] == os.path.join(demo_model_base, "1700000000")
    assert s["signature"] == "serving_default"
    assert s["signature_convention"] == "serialized"
    assert s["feature_spec_source"].startswith("model")
    assert s["wall_seconds"] == round(s["end_time"] - s["start_time"], 3) > 0
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    assert not glob.glob(os.path.join(out, ".tmp-*"))  # staging removed on finalize


def test_latency_per_shard_with_injected_clock(tfrecord_run, demo_data):
    out, _ = tfrecord_run
    shards = read_jsonl(os.path.join(out, "metrics", "shard_latency-*.jsonl"))
    assert sorted(r["shard"] for r in shards) == sorted(demo_data["tfrecord"])
    for row in shards:
        assert row["records"] == row["predicted"] == 500
        # every call took exactly 1.5 µs by the injected clock
        assert row["latency_ms"] == {"p50": 0.0015, "p95": 0.0015, "p99": 0.0015,
                                     "max": 0.0015}
        assert row["batches"] >= math.ceil(500 / 200)
        assert row["mean_us_per_example"] <= 1.5 / 1  # a share of a 1.5 µs call per record
    s = read_summary(out)
    assert s["latency_ms"]["p99"] == 0.0015
    # chunks are at most --batch_size, so at least ceil(1500/200) calls
    assert s["model_calls"] >= math.ceil(1500 / 200)


def test_beam_metrics_in_one_namespace(tfrecord_run):
    _, result = tfrecord_run
    metrics = result.metrics().query(MetricsFilter().with_namespace("batch_predict"))
    counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
    assert counters["records_in"] == 1500
    assert counters["predicted"] == 1500
    assert counters["model_loads"] == 1
    dists = {d.key.metric.name: d.committed for d in metrics["distributions"]}
    latency = dists["model_call_latency_micro_secs"]
    assert latency.min == latency.max == 1  # 1.5 µs, recorded in whole microseconds
    assert dists["chunk_size_records"].max <= 200
    assert dists["chunk_size_records"].sum == 1500


def test_csv_input_gives_identical_predictions(tmp_path, demo_model_base, demo_model,
                                               demo_data, tfrecord_run):
    out = str(tmp_path / "out")
    s = run_job(demo_model_base, os.path.join(demo_data["dir"], "*.csv"), out,
                "--key_field", "id", "--batch_size", "300")
    assert (s["records_in"], s["predicted"], s["errors"]) == (1500, 1500, 0)
    csv_rows = by_key(predictions(out))
    tfr_rows = by_key(predictions(tfrecord_run[0]))
    assert csv_rows.keys() == tfr_rows.keys()
    for key, row in csv_rows.items():  # floats differ only by batch-size numerics
        ref = tfr_rows[key]
        assert (row["label"], row["bucket"]) == (ref["label"], ref["bucket"])
        assert_close(row["embedding"] + row["logits"] + [row["score"]],
                     ref["embedding"] + ref["logits"] + [ref["score"]])
    _check_against_model(list(csv_rows.values()), demo_model, demo_data["rows"])


def test_without_key_rows_carry_shard_and_index(tmp_path, demo_model_base, demo_model,
                                                demo_data):
    out = str(tmp_path / "out")
    run_job(demo_model_base, ",".join(demo_data["tfrecord"]), out)
    rows = predictions(out)
    assert list(rows[0])[:2] == ["shard", "index"]
    by_shard = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r["index"])
    assert {k: sorted(v) for k, v in by_shard.items()} == {
        path: list(range(500)) for path in demo_data["tfrecord"]}
    # record i of shard s is demo row s*500+i
    expected = expected_outputs(demo_model, demo_data["rows"])["score"]
    for r in rows:
        s = demo_data["tfrecord"].index(r["shard"])
        assert_close(r["score"], expected[s * 500 + r["index"]])


def test_csv_output_format(tmp_path, demo_model_base, demo_data, tfrecord_run):
    out = str(tmp_path / "out")
    run_job(demo_model_base, demo_data["tfrecord"][0], out, "--key_field", "id",
            "--output_format", "csv")
    files = glob.glob(os.path.join(out, "predictions-*.csv"))
    assert files
    rows = []
    for path in files:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            assert reader.fieldnames == ["id"] + OUTPUTS
            rows += list(reader)
    reference = by_key(predictions(tfrecord_run[0]))
    assert len(rows) == 500
    for r in rows:
        ref = reference[r["id"]]
        assert_close(float(r["score"]), ref["score"])
        assert_close(json.loads(r["embedding"]), ref["embedding"])
        assert r["label"] == ref["label"] and int(r["bucket"]) == ref["bucket"]


def test_raw_tensor_signature_is_fed_by_name(tmp_path, demo_model_base, demo_data,
                                             tfrecord_run):
    out = str(tmp_path / "out")
    s = run_job(demo_model_base, demo_data["tfrecord"][1], out, "--key_field", "id",
                "--signature", "predict_raw")
    assert s["signature_convention"] == "tensors"
    reference = by_key(predictions(tfrecord_run[0]))
    rows = predictions(out)
    assert len(rows) == 500
    for r in rows:
        assert_close(r["score"], reference[r["id"]]["score"], rtol=1e-5)


def test_local_default_runner_never_touches_the_network(tmp_path, demo_model_base, demo_data,
                                                        network_attempts):
    out = str(tmp_path / "out")
    s = run_job(demo_model_base, demo_data["csv"][0], out)  # no --runner given
    assert s["predicted"] == 500
    assert network_attempts() == []


@pytest.mark.slow
def test_multiprocess_run_loads_the_model_once_per_process(tmp_path, demo_model_base,
                                                           demo_model, demo_data):
    out = str(tmp_path / "out")
    s = run_job(demo_model_base, os.path.join(demo_data["dir"], "*.tfrecord*"), out,
                "--key_field", "id", "--batch_size", "100", "--direct_num_workers=2",
                "--direct_running_mode=multi_processing")
    assert s["predicted"] == 1500
    _check_against_model(predictions(out), demo_model, demo_data["rows"])
    loads = read_jsonl(os.path.join(out, "metrics", "model_loads-*.jsonl"))
    pids = [row["pid"] for row in loads]
    assert pids and len(pids) == len(set(pids))  # exactly one load per worker process
    assert os.getpid() not in pids  # workers are separate processes


def _worker_record(message: str, location: str, severity: str = "INFO"):
    """A worker's log line as the launcher receives it (Beam's local_job_service Logging)."""
    import logging
    from apache_beam.portability.api import beam_fn_api_pb2
    from pipeline.run import WORKER_LOGGER
    entry = beam_fn_api_pb2.LogEntry(
        severity=getattr(beam_fn_api_pb2.LogEntry.Severity.Enum, severity), message=message,
        log_location=location, thread="Thread-13", instruction_id="bundle_3")
    level = {"INFO": logging.INFO, "WARN": logging.WARNING}[severity]
    return logging.LogRecord(WORKER_LOGGER, level, __file__, 1, "Worker: %s",
                             (str(entry).replace("\n", " "),), None)


def test_worker_log_lines_of_this_package_are_shown_as_its_own():
    import apache_beam
    import transforms
    from pipeline.run import WorkerLogFilter
    keep = WorkerLogFilter().filter
    ours = os.path.join(os.path.dirname(transforms.__file__), "read.py")
    text = 'read /d/caf\u00e9 "2026-11-22"/part-0.csv: 25 records\tin 0.0s\n'
    record = _worker_record(text, ours + ":437")
    assert keep(record)
    assert record.name == "transforms.read" and record.levelname == "INFO"
    assert record.getMessage() == "worker: " + text  # quotes, tab, newline, non-ASCII intact
    beams = os.path.join(os.path.dirname(apache_beam.__file__), "runners", "worker",
                         "sdk_worker.py")
    assert not keep(_worker_record("Control channel established.", beams + ":192"))
    warning = _worker_record("Bundle processing is slow", beams + ":140", "WARN")
    assert keep(warning) and warning.getMessage().startswith("Worker: ")  # as Beam logs it
    main_session = os.path.join(os.path.dirname(beams), "sdk_worker_main.py") + ":421"
    assert not keep(_worker_record("No semi_persistent_directory found:  User registered "
                                   "objects (e.g. schema, logical type) through registeries "
                                   "may not be effective", main_session, "WARN"))


@pytest.mark.slow
def test_cli_shows_what_local_worker_processes_log(tmp_path, demo_model_base, demo_data):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--model", demo_model_base, "--input",
         os.path.join(demo_data["dir"], "*.tfrecord*"), "--output", str(tmp_path / "out"),
         "--direct_num_workers=2", "--direct_running_mode=multi_processing"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pids = {row["pid"] for row in read_jsonl(str(tmp_path / "out" / "metrics" /
                                                 "model_loads-*.jsonl"))}
    # every worker's model load, as the single process logs its own
    assert proc.stderr.count("INFO transforms.predict: worker: loaded model") == len(pids) > 0
    assert all(f"in process {pid} in " in proc.stderr for pid in pids)
    for shard in demo_data["tfrecord"]:
        assert f"INFO transforms.read: worker: read {shard}: start" in proc.stderr
    assert "worker: finalize: " in proc.stderr
    assert "Control channel established" not in proc.stderr  # Beam's own worker chatter
    assert "semi_persistent_directory" not in proc.stderr


def test_demo_job_runs_from_the_command_line(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--workdir",
                           str(tmp_path / "demo"), "--rows", "600", "--shards", "2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("records in:   600  predicted: 600  errors: 0") == 2
    for fmt in ("tfrecord", "csv"):
        out = tmp_path / "demo" / f"predictions_{fmt}"
        assert (out / "_SUCCESS").exists()
        assert len(predictions(str(out))) == 600


def test_predict_dofn_scores_in_chunks_of_at_most_batch_size(demo_model_base, demo_data):
    """The DoFn alone: buffer < batch_size after every process(), flush in finish_bundle."""
    from pipeline.demo import demo_dtypes
    from transforms.examples import encode_rows
    from transforms.model import open_model
    from transforms.predict import PredictDoFn, PredictionBatch
    from transforms.records import RecordBatch
    from transforms.savedmodel import ModelConfig, SavedModelHandler

    model = open_model(demo_model_base)
    config = ModelConfig(path=model.version.path, signature="serving_default",
                         spec=model.spec)
    dofn = PredictDoFn(SavedModelHandler(config), batch_size=64, clock=StepClock(10))
    dofn.setup()
    dofn.start_bundle()
    serialized = encode_rows(demo_data["rows"][:230], demo_dtypes())
    outputs = []
    for start in range(0, 230, 50):
        part = RecordBatch("s", serialized[start:start + 50],
                           np.arange(start, min(start + 50, 230)))
        outputs += list(dofn.process(part))
        assert dofn._buffered < 64
    outputs += [wv.value for wv in dofn.finish_bundle()]
    batches = [o for o in outputs if isinstance(o, PredictionBatch)]
    assert [len(b) for b in batches] == [64, 64, 64, 38]
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(230))
    direct = model.predict(serialized)["score"]
    np.testing.assert_array_equal(np.concatenate([b.outputs["score"] for b in batches]), direct)
