"""Guarantees checked against what the test itself knows, never against the product's own
totals: one model load per worker process however many bundles, and a lost record is reported
as lost (no _SUCCESS, exit 1), not silently accounted."""
import glob
import os

import pytest

from pipeline.demo import demo_rows, write_tfrecords
from pipeline.run import EXIT_FAILED, main, read_summary, run
from tests.helpers import predictions, read_jsonl
from transforms.predict import PredictDoFn


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """32 shards of 10 records. Shards reach workers by a random key, so with 32 of them
    every one of 2 or 4 workers gets some, but for a chance of about 1 in 2**30."""
    d = tmp_path_factory.mktemp("many")
    rows = demo_rows(320, seed=31)
    for s in range(32):
        write_tfrecords(rows[s * 10:(s + 1) * 10], str(d / f"part-{s:02d}.tfrecord"))
    return {"glob": str(d / "part-*.tfrecord"), "ids": {r["id"] for r in rows}}


def _counter(result, name):
    from apache_beam.metrics.metric import MetricsFilter
    found = result.metrics().query(MetricsFilter().with_namespace("batch_predict")
                                   .with_name(name))["counters"]
    return sum(c.committed for c in found)


@pytest.mark.slow
@pytest.mark.parametrize("mode,workers,processes", [
    ("in_memory", 1, 1),
    ("multi_threading", 4, 1),   # 4 bundles of every stage, in one process
    ("multi_processing", 2, 2),  # 2 worker processes
])
def test_the_model_is_loaded_once_per_worker_process(tmp_path, demo_model_base, many_shards,
                                                     mode, workers, processes):
    out = str(tmp_path / "out")
    result, _ = run(["--model", demo_model_base, "--input", many_shards["glob"], "--output",
                     out, "--key_field", "id", "--batch_size", "4",
                     f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"])
    loads = read_jsonl(os.path.join(out, "metrics", "model_loads-*.jsonl"))
    pids = {row["pid"] for row in loads}
    # one row per load: a process that loaded twice (per bundle, per DoFn instance, per thread)
    # would show its pid twice
    assert len(loads) == len(pids) == processes, loads
    assert _counter(result, "model_loads") == processes
    if mode == "multi_processing":
        assert os.getpid() not in pids  # the workers loaded it, not the launcher
    assert sorted(r["id"] for r in predictions(out)) == sorted(many_shards["ids"])
    assert _counter(result, "model_calls") >= 320 // 4


class DropsOneRecord(PredictDoFn):
    """A broken step: loses the 6th record of the first batch of more than 5 it sees."""
    dropped = []

    def process(self, batch):
        if not DropsOneRecord.dropped and len(batch) > 5:
            from transforms.records import RecordBatch
            keep = [i for i in range(len(batch)) if i != 5]
            DropsOneRecord.dropped.append((batch.shard, int(batch.indices[5])))
            batch = RecordBatch(batch.shard, batch.serialized[keep], batch.indices[keep],
                                None if batch.keys is None else batch.keys[keep],
                                None if batch.lines is None else batch.lines[keep])
        yield from super().process(batch)


def test_a_record_lost_inside_the_job_is_reported_and_never_marked_done(
        tmp_path, demo_model_base, many_shards, capsys, monkeypatch):
    import pipeline.run
    out = str(tmp_path / "out")
    DropsOneRecord.dropped = []
    monkeypatch.setattr(pipeline.run, "run",
                        lambda argv: run(argv, predict_dofn=DropsOneRecord))
    code = main(["--model", demo_model_base, "--input", many_shards["glob"], "--output", out,
                 "--key_field", "id"])
    assert code == EXIT_FAILED and len(DropsOneRecord.dropped) == 1
    err = capsys.readouterr().err
    assert "320 records read but 319 predicted + 0 error rows (+1 unaccounted)" in err
    s = read_summary(out)
    assert (s["records_in"], s["predicted"], s["errors"], s["accounted"]) == (320, 319, 0, False)
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    assert len(predictions(out)) == 319
    assert glob.glob(os.path.join(out, ".tmp-*")) == []


def test_a_signature_that_parses_examples_two_ways_is_refused(tmp_path, capsys):
    """Two parse ops with different specs behind one signature: no spec is "the model's", so
    the run is refused rather than scored with whichever parse op was found first."""
    import tensorflow as tf

    class TwoWays(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            a = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32)})
            b = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([2], tf.float32,
                                                                          [0.0, 0.0])})
            return {"y": a["x"] + tf.reduce_sum(b["x"], axis=1)}
    module = TwoWays()
    model = str(tmp_path / "model")
    tf.saved_model.save(module, model, signatures={"serving_default": module.serve})
    data = str(tmp_path / "x.tfrecord")
    with tf.io.TFRecordWriter(data) as w:
        w.write(tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0]))}))
            .SerializeToString())
    out = tmp_path / "out"
    assert main(["--model", model, "--input", data, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the signature parses examples in 2 different ways" in err
    assert "Traceback" not in err and not out.exists()
