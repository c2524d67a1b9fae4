"""Faults and re-runs: error budget, refusal to overwrite, crashes leave nothing final."""
import glob
import os
import subprocess
import sys

import pytest

from pipeline.demo import demo_rows, write_tfrecords
from pipeline.run import EXIT_ERROR_BUDGET, EXIT_OK, EXIT_USAGE, main, read_summary
from tests.helpers import assert_close, errors, predictions, run_job
from transforms.predict import PredictDoFn

FINAL_PATTERNS = ("predictions-*", "errors-*", "metrics", "_SUCCESS")


def _final_files(out):
    return sorted(p for pat in FINAL_PATTERNS for p in glob.glob(os.path.join(out, pat)))


@pytest.fixture(scope="module")
def dirty_input(tmp_path_factory):
    """20 records, one of them lacking the required `device` feature (5% errors)."""
    d = tmp_path_factory.mktemp("dirty")
    rows = demo_rows(20, seed=5)
    rows[7].pop("device")
    return write_tfrecords(rows, str(d / "dirty.tfrecord"))


def test_error_budget_exceeded_fails_without_success_marker(tmp_path, demo_model_base,
                                                            dirty_input, capsys):
    out = str(tmp_path / "out")
    code = main(["--model", demo_model_base, "--input", dirty_input, "--output", out])
    assert code == EXIT_ERROR_BUDGET
    err = capsys.readouterr().err
    assert "exceeds --max_error_rate 0.01" in err and "1 of 20" in err
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    s = read_summary(out)  # all outputs are still written, for inspection
    assert (s["predicted"], s["errors"], s["within_error_budget"]) == (19, 1, False)
    assert [e["index"] for e in errors(out)] == [7]


def test_within_error_budget_succeeds(tmp_path, demo_model_base, dirty_input):
    out = str(tmp_path / "out")
    code = main(["--model", demo_model_base, "--input", dirty_input, "--output", out,
                 "--max_error_rate", "0.05"])
    assert code == EXIT_OK
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


def test_non_empty_output_dir_is_refused_without_overwrite(tmp_path, demo_model_base,
                                                           demo_data, capsys):
    out = str(tmp_path / "out")
    assert main(["--model", demo_model_base, "--input", demo_data["tfrecord"][0],
                 "--output", out]) == EXIT_OK
    before = {p: os.path.getmtime(p) for p in _final_files(out)}
    code = main(["--model", demo_model_base, "--input", demo_data["tfrecord"][0],
                 "--output", out])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds a previous run's outputs" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert {p: os.path.getmtime(p) for p in _final_files(out)} == before


class CrashingPredictDoFn(PredictDoFn):
    """Raises on its 3rd batch, after scoring two: a worker dying in the middle of the run."""
    batches = 0

    def process(self, batch):
        type(self).batches += 1
        if type(self).batches == 3:
            raise RuntimeError("injected crash on batch 3")
        yield from super().process(batch)


def test_crash_leaves_nothing_final_and_rerun_is_exact(tmp_path, demo_model_base, demo_data):
    out = str(tmp_path / "out")
    args = (demo_model_base, os.path.join(demo_data["dir"], "*.tfrecord*"), out,
            "--key_field", "id", "--batch_size", "100")
    CrashingPredictDoFn.batches = 0
    with pytest.raises(Exception, match="injected crash"):
        run_job(*args, predict_dofn=CrashingPredictDoFn)
    assert CrashingPredictDoFn.batches == 3
    assert _final_files(out) == []  # only the .tmp-* staging dir may remain
    s = run_job(*args)  # the same command again
    rows = predictions(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == s["predicted"] == 1500
    assert set(ids) == {r["id"] for r in demo_data["rows"]}


def test_failed_overwrite_keeps_old_outputs_and_success_replaces_them(
        tmp_path, demo_model_base, demo_data):
    out = str(tmp_path / "out")
    run_job(demo_model_base, os.path.join(demo_data["dir"], "*.tfrecord*"), out,
            "--key_field", "id", "--batch_size", "100")
    old = {p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "predictions-*"))}
    CrashingPredictDoFn.batches = 0
    with pytest.raises(Exception, match="injected crash"):
        run_job(demo_model_base, demo_data["tfrecord"][0], out, "--overwrite",
                "--batch_size", "100", predict_dofn=CrashingPredictDoFn)
    assert {p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "predictions-*"))} \
        == old
    s = run_job(demo_model_base, demo_data["tfrecord"][0], out, "--overwrite",
                "--key_field", "id")
    rows = predictions(out)
    assert s["records_in"] == len(rows) == 500  # only the new run's rows remain
    assert {r["id"] for r in rows} == {r["id"] for r in demo_data["rows"][:500]}
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


@pytest.mark.slow
def test_killed_process_leaves_nothing_final(tmp_path, demo_model_base):
    from tests.test_output_dir import start_paused_job
    data = tmp_path / "data"
    data.mkdir()
    for s in range(2):
        write_tfrecords(demo_rows(300, seed=s, start_id=s * 300), str(data / f"part-{s}.tfrecord"))
    out = tmp_path / "out"
    argv = ["--model", demo_model_base, "--input", str(data / "*.tfrecord"), "--output",
            str(out), "--batch_size", "50"]
    proc = start_paused_job(tmp_path, *argv)  # two batches' predictions staged, then SIGKILL
    assert glob.glob(str(out / ".tmp-*/predictions-*"))
    proc.kill()
    proc.wait()
    assert _final_files(str(out)) == []
    rerun = subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True,
                           text=True)
    assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
    rows = predictions(str(out))
    keys = [(os.path.basename(r["shard"]), r["index"]) for r in rows]
    assert sorted(keys) == sorted((f"part-{s}.tfrecord", i) for s in range(2)
                                  for i in range(300))
    assert glob.glob(str(out / ".tmp-*")) == []  # the killed run's staging is cleaned


def test_model_error_on_some_records_spares_the_rest(tmp_path):
    """A model whose own check fails for some inputs: those records alone are rejected."""
    import tensorflow as tf

    from transforms.export import export_parsing_model
    from transforms.feature_spec import Feature, FeatureSpec
    from tests.helpers import expected_outputs
    spec = FeatureSpec([Feature("x", "fixed", "float32", ())])

    class Checked(tf.Module):
        def __call__(self, f):
            x = f["x"]
            with tf.control_dependencies([tf.debugging.assert_less(
                    x, 100.0, message="x must be below 100")]):
                return {"y": x * 2.0 + 1.0}
    module = Checked()
    export_parsing_model(module, spec, str(tmp_path / "model"), module=module)
    values = [1.0, 250.0, 3.0, 4.0, 101.0, 6.0, 7.0, 8.0]
    rows = [{"x": v} for v in values]
    from transforms.examples import encode_rows
    with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
        for r in encode_rows(rows, {"x": "float32"}):
            w.write(r)
    out = str(tmp_path / "out")
    s = run_job(str(tmp_path / "model"), str(tmp_path / "x.tfrecord"), out,
                "--max_error_rate", "1.0")
    errs = errors(out)
    assert sorted(e["index"] for e in errs) == [1, 4]
    assert {e["error_type"] for e in errs} == {"model_error"}
    assert "x must be below 100" in errs[0]["message"]
    got = sorted((r["index"], r["y"]) for r in predictions(out))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    good = [0, 2, 3, 5, 6, 7]
    expected = expected_outputs(loaded, [rows[i] for i in good])["y"]
    assert [i for i, _ in got] == good
    assert_close([y for _, y in got], expected)
    assert (s["predicted"], s["errors"]) == (6, 2)


class OutOfMemoryAbove64(PredictDoFn):
    """The real model, behind an allocator that fails calls on more than 64 records (the
    ResourceExhaustedError TensorFlow raises when a batch does not fit in memory)."""
    calls: list = []

    def _call(self, serialized):
        import tensorflow as tf
        type(self).calls.append(len(serialized))
        if len(serialized) > 64:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return super()._call(serialized)


def test_out_of_memory_backs_off_to_smaller_chunks(tmp_path, demo_model_base, demo_data):
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.run import run
    out = str(tmp_path / "out")
    OutOfMemoryAbove64.calls = []
    result, _ = run(["--model", demo_model_base, "--input", demo_data["tfrecord"][0],
                     "--output", out, "--key_field", "id", "--batch_size", "200"],
                    predict_dofn=OutOfMemoryAbove64)
    s = read_summary(out)
    assert (s["predicted"], s["errors"]) == (500, 0)  # nothing lost to the failed calls
    assert {r["id"] for r in predictions(out)} == {r["id"] for r in demo_data["rows"][:500]}
    calls = OutOfMemoryAbove64.calls
    # the first chunk is split until it fits; besides the chunk already in the model thread
    # when the first call failed, no later call is full size
    assert calls[0] == 200 and calls.count(200) <= 2 and 50 in calls
    assert all(c <= 100 for c in calls if c != 200)
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace("batch_predict"))["counters"]}
    assert counters["oom_backoffs"] == 2  # 200 -> 100 -> 50
