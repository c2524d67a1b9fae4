"""PredictDoFn on its own, behind a fake model handler and a fake clock: seconds, not minutes.

The fake model is pure numpy, y = 2x. A record is `b"<x>"` or `b"<x>|<key>"`; the model rejects
`b"bad:..."` records (a per-record model error) and `b"garbage"` (a parse error), breaks on
`b"fatal"`, and can run out of memory above a number of records. Its cost is known exactly:
every call spends CALL_NS + RECORD_NS per record on the calling thread's fake clock (reading
keys spends KEY_NS, which is not the model's time). Expected values are computed here, from
the records, never from the DoFn's own outputs.
"""
import collections
import logging
import pickle
import threading
import time
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils import shared

from transforms.feature_spec import FeatureSpec
from transforms.handler import (FATAL, OUT_OF_MEMORY, RECORD, Failure, KeyReader,
                                ModelDescription, ModelHandler)
from transforms.metrics import ALL, NAMESPACE
from transforms.predict import PredictDoFn, PredictionBatch
from transforms.records import RecordBatch
from transforms.worker import ModelHolder

CALL_NS, RECORD_NS, KEY_NS = 50_000, 1_000, 7_000
LOADS: collections.Counter = collections.Counter()  # handler tag -> loads in this process


class ThreadClock:
    """A fake clock per thread: it moves only when the fake model spends time on that thread,
    so concurrent calls and bisection on another thread never blur a call's duration."""

    def __init__(self):
        self._now: dict[int, int] = {}

    def __call__(self) -> int:
        return self._now.get(threading.get_ident(), 0)

    def spend(self, ns: int) -> None:
        me = threading.get_ident()
        self._now[me] = self._now.get(me, 0) + ns


class Rejected(Exception):
    """The fake model's per-record failure."""


class NotParsed(Exception):
    """The fake model's failure to read a record."""


class OutOfMemory(Exception):
    """The fake model's batch that does not fit."""


class FakeModel:
    """What the fake handler loads: it notes every call's size."""

    def __init__(self):
        self.calls: list[int] = []
        self.lock = threading.Lock()


class DoublingHandler(ModelHandler):
    """y = 2x on numpy, with the failures described in the module docstring."""

    def __init__(self, clock: ThreadClock, oom_above: int | None = None,
                 keys: bool = False, gate=None):
        self.clock = clock
        self.oom_above = oom_above
        self.keys = keys
        self.gate = gate  # called with the call's number before it runs (direct tests only)
        self.tag = uuid.uuid4().hex

    def shared_tag(self) -> str:
        return self.tag

    def load(self) -> FakeModel:
        LOADS[self.tag] += 1
        return FakeModel()

    def warm_up(self, model: FakeModel) -> None:
        """Nothing to check: numpy has every kernel."""

    def describe(self, model: FakeModel) -> ModelDescription:
        return ModelDescription(
            path="fake/doubling", version="7", signature="serving_default",
            convention="serialized", output_names=("y", "x"), spec=FeatureSpec([]),
            spec_source="test", load_seconds=0.25, stage_seconds=0.0,
            runtime={"fake_threads": 3}, runtime_note="fake runtime")

    def run_batch(self, model: FakeModel, serialized: np.ndarray) -> dict[str, np.ndarray]:
        n = len(serialized)
        with model.lock:
            model.calls.append(n)
            number = len(model.calls)
        if self.gate is not None:
            self.gate(number)
        if self.oom_above is not None and n > self.oom_above:
            raise OutOfMemory(f"{n} records do not fit")
        for record in serialized:
            if record == b"fatal":
                raise RuntimeError("the model is broken")
            if record.startswith(b"bad:"):
                raise Rejected(f"rejected {record[4:].decode()}")
            if record == b"garbage":
                raise NotParsed("not a record")
        x = np.array([float(r.split(b"|")[0]) for r in serialized], np.float32)
        self.clock.spend(CALL_NS + RECORD_NS * n)
        return {"y": 2 * x, "x": x}

    def classify(self, error: Exception) -> Failure:
        if isinstance(error, OutOfMemory):
            return Failure(OUT_OF_MEMORY, "model_error", str(error))
        if isinstance(error, Rejected):
            return Failure(RECORD, "model_error", str(error))
        if isinstance(error, NotParsed):
            return Failure(RECORD, "parse_error", str(error))
        return Failure(FATAL)

    def key_reader(self) -> KeyReader | None:
        if not self.keys:
            return None

        def read(serialized):
            self.clock.spend(KEY_NS)
            parts = [r.split(b"|") for r in serialized]
            has_key = np.array([len(p) == 2 for p in parts])
            return np.array([p[1] if len(p) == 2 else b"" for p in parts], object), has_key
        return KeyReader("id", read)


def records(shard: str, values: list, size: int) -> list[RecordBatch]:
    """Input batches of at most `size` records: floats become b"<x>", bytes stay as given."""
    encoded = np.array([v if isinstance(v, bytes) else repr(float(v)).encode() for v in values],
                       dtype=object)
    return [RecordBatch(shard, encoded[i:i + size], np.arange(i, min(i + size, len(values))))
            for i in range(0, len(values), size)]


def x_of(record: bytes) -> float:
    return float(record.split(b"|")[0])


def with_model(handler: ModelHandler) -> tuple[shared.Shared, ModelHolder]:
    """A model registered in a Shared handle, as the launcher does (pipeline.build.plan_job):
    the DoFn, however often the runner copies it, uses this very model, so the test sees its
    calls. Shared keeps only a weak reference: the caller keeps the holder."""
    handle, model = shared.Shared(), FakeModel()
    return handle, handle.acquire(lambda: ModelHolder(model), tag=handler.shared_tag())


def run_pipeline(dofn: PredictDoFn, inputs: list[RecordBatch], check):
    """Inputs -> Predict on Beam's in-process runner; `check(outputs)` adds assert_thats on the
    prediction rows (shard, index, key, y) and the other tagged outputs. Returns counters and
    distributions by name."""
    # pipeline.options.BatchPredictOptions, once another test module has imported it, makes
    # every pipeline of the process require these three
    p = TestPipeline(runner=FnApiRunner(), options=PipelineOptions(
        ["--model", "unused", "--input", "unused", "--output", "unused"]))
    out = (p | beam.Create(inputs, reshuffle=False)
           | "Predict" >> beam.ParDo(dofn).with_outputs("errors", "latency", "model_loads",
                                                        main="predictions"))
    rows = out.predictions | beam.FlatMap(lambda b: [
        (str(s), int(i), None if b.keys is None else b.keys[j], float(b.outputs["y"][j]))
        for j, (s, i) in enumerate(zip(b.shards, b.indices))])
    errors = out.errors | beam.Map(lambda e: (e["shard"], e["index"], e["error_type"],
                                              e["message"]))
    check({"rows": rows, "errors": errors, "latency": out.latency, "loads": out.model_loads})
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    found = {m.key.metric.name: m.committed for m in metrics["counters"]}
    found.update({m.key.metric.name: m.committed for m in metrics["distributions"]})
    return found


def run_directly(dofn: PredictDoFn, inputs: list[RecordBatch]):
    """The DoFn called as a runner calls it, in this thread: (prediction batches in the order
    they came out, tagged outputs by tag)."""
    dofn.setup()
    dofn.start_bundle()
    outputs = [o for b in inputs for o in dofn.process(b)] + list(dofn.finish_bundle())
    dofn.teardown()
    batches, tagged = [], collections.defaultdict(list)
    for o in outputs:
        if isinstance(o, beam.pvalue.TaggedOutput):
            tagged[o.tag].append(getattr(o.value, "value", o.value))
        else:
            batches.append(getattr(o, "value", o))  # finish_bundle's are windowed
    assert all(isinstance(b, PredictionBatch) for b in batches)
    return batches, tagged


def test_bisection_scores_every_good_record_and_rejects_exactly_the_bad_ones():
    a = [b"bad:first" if i == 0 else b"bad:pair-1" if i == 13 else b"bad:pair-2" if i == 14
         else b"bad:last" if i == 39 else i + 0.25 for i in range(40)]
    b = [b"garbage" if i == 5 else 100.0 + i for i in range(10)]
    expected_rows = [(s, i, None, 2 * x_of(v) if isinstance(v, bytes) else 2 * v)
                     for s, values in (("a", a), ("b", b)) for i, v in enumerate(values)
                     if not isinstance(v, bytes)]
    expected_errors = [("a", 0, "model_error", "rejected first"),
                       ("a", 13, "model_error", "rejected pair-1"),
                       ("a", 14, "model_error", "rejected pair-2"),
                       ("a", 39, "model_error", "rejected last"),
                       ("b", 5, "parse_error", "not a record")]
    dofn = PredictDoFn(DoublingHandler(ThreadClock()), batch_size=16)

    def check(out):
        assert_that(out["rows"], equal_to(expected_rows), label="rows")
        assert_that(out["errors"], equal_to(expected_errors), label="errors")
    metrics = run_pipeline(dofn, records("a", a, 10) + records("b", b, 10), check)
    assert (metrics["predicted"], metrics["model_errors"]) == (45, 5)


def test_out_of_memory_backs_off_to_smaller_chunks_for_good():
    handler = DoublingHandler(ThreadClock(), oom_above=8)
    handle, holder = with_model(handler)
    model = holder.model
    values = [float(i) for i in range(128)]
    dofn = PredictDoFn(handler, batch_size=32, shared_handle=handle)

    def check(out):
        assert_that(out["rows"], equal_to([("s", i, None, 2.0 * i) for i in range(128)]))
        assert_that(out["errors"], equal_to([]), label="no errors")
    metrics = run_pipeline(dofn, records("s", values, 16), check)
    # the first chunk of 32 fails, halves to 16 (fails: the limit drops to 8) and to 8s; the
    # second chunk of 32 was taken before the first one failed and goes the same way; every
    # later chunk is taken at 8
    assert sorted(model.calls) == [8] * (4 + 4 + 8) + [16] * 4 + [32] * 2
    assert metrics["oom_backoffs"] == 2  # 32 -> 16 -> 8, each smaller size counted once
    assert metrics["predicted"] == 128 and metrics["model_calls"] == 16


def test_auto_batch_size_doubles_while_it_pays_then_settles_on_the_best(caplog):
    class Saturating(DoublingHandler):
        """Every call costs as much as 16 records: records/s grows up to 16 per call, then
        stays flat."""

        def run_batch(self, model, serialized):
            out = super().run_batch(model, serialized)
            self.clock.spend(1_000_000 * max(len(serialized), 16) - CALL_NS
                             - RECORD_NS * len(serialized))
            return out
    handler = Saturating(ThreadClock())
    handle, holder = with_model(handler)
    model = holder.model
    dofn = PredictDoFn(handler, batch_size=4, auto_batch=True, clock=handler.clock,
                       shared_handle=handle)
    caplog.set_level(logging.INFO, logger="transforms.predict")
    n = 5 * (4 + 8 + 16 + 32) + 4 * 16 + 5
    batches, _ = run_directly(dofn, records("s", list(range(n)), 1))
    # each size: a warm-up call and three measured ones, plus the chunk already taken when
    # the tuner moved on; 32 is no faster per record than 16, so it settles back on 16
    assert model.calls == [4] * 5 + [8] * 5 + [16] * 5 + [32] * 5 + [16] * 4 + [5]
    assert "settled at 16 records per call" in caplog.text
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(n))


def test_concurrent_calls_overlap_and_come_out_in_record_order():
    """The first three calls wait for each other (only possible if three run at once), then
    finish in reverse order; the output is still in the order of the records."""
    barrier = threading.Barrier(3, timeout=30)
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def gate(number):
        if number <= 3:
            with lock:
                active["now"] += 1
                active["peak"] = max(active["peak"], active["now"])
            barrier.wait()
            time.sleep(0.05 * (3 - number))
            with lock:
                active["now"] -= 1
    handler = DoublingHandler(ThreadClock(), gate=gate)
    dofn = PredictDoFn(handler, batch_size=5, concurrent_calls=3)
    a, b = [float(i) for i in range(12)], [100.0 + i for i in range(9)]
    batches, _ = run_directly(dofn, records("a", a, 4) + records("b", b, 4))
    assert active["peak"] == 3
    got = [(str(s), int(i), float(y)) for batch in batches
           for s, i, y in zip(batch.shards, batch.indices, batch.outputs["y"])]
    assert got == [("a", i, 2 * x) for i, x in enumerate(a)] + \
        [("b", i, 2 * x) for i, x in enumerate(b)]
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 1]


def test_latency_rows_are_exact_with_a_fake_clock():
    """Chunks of 10 over two shards; the first chunk holds a bad record and is bisected.
    Every successful call lasts CALL_NS + RECORD_NS per record, reading keys not included;
    each shard in a call gets a row with its own count of the call's records."""
    handler = DoublingHandler(ThreadClock(), keys=True)
    a = [f"{i}|a{i}".encode() if i != 3 else b"bad:a3" for i in range(15)]
    b = [f"{100 + i}|b{i}".encode() for i in range(7)]

    def us(n):
        return (CALL_NS + RECORD_NS * n) / 1000.0
    at = 1_700_000_000.0  # the wall clock, stamped on each call's job-wide row
    expected = [
        # a0-9 fails on a3: a0-1 | a2 | (a3 alone fails) | a4 | a5-9
        (ALL, (us(2), 2, 2, at)), ("a", (us(2), 2, 2)),
        (ALL, (us(1), 1, 1, at)), ("a", (us(1), 1, 1)),
        (ALL, (us(1), 1, 1, at)), ("a", (us(1), 1, 1)),
        (ALL, (us(5), 5, 5, at)), ("a", (us(5), 5, 5)),
        # a10-14 + b0-4: one call, half of it each shard's
        (ALL, (us(10), 10, 10, at)), ("a", (us(10), 5, 10)), ("b", (us(10), 5, 10)),
        # b5-6, at the bundle's end
        (ALL, (us(2), 2, 2, at)), ("b", (us(2), 2, 2))]
    dofn = PredictDoFn(handler, batch_size=10, clock=handler.clock, wall_clock=lambda: at)

    def check(out):
        assert_that(out["latency"], equal_to(expected))
        assert_that(out["errors"], equal_to([("a", 3, "model_error", "rejected a3")]),
                    label="errors")
    metrics = run_pipeline(dofn, records("a", a, 15) + records("b", b, 7), check)
    latency = metrics["model_call_latency_micro_secs"]
    assert (latency.count, latency.sum, latency.min, latency.max) == (
        6, 52 + 51 + 51 + 55 + 60 + 52, 51, 60)
    assert metrics["model_calls"] == 6 and metrics["chunk_size_records"].sum == 21


def test_records_without_a_key_are_rejected_and_the_rest_keep_their_own_keys():
    """Keys read from the records travel with their rows through a bisected chunk."""
    values = [f"{i}|k{i}".encode() for i in range(12)]
    values[3] = b"3"        # no key
    values[6] = b"bad:six"  # splits the chunk
    values[10] = b"10"      # no key
    dofn = PredictDoFn(DoublingHandler(ThreadClock(), keys=True), batch_size=12)

    def check(out):
        assert_that(out["rows"], equal_to([("s", i, f"k{i}".encode(), 2.0 * i)
                                           for i in range(12) if i not in (3, 6, 10)]))
        assert_that(out["errors"], equal_to([
            ("s", 3, "missing_key", "key feature 'id' is absent"),
            ("s", 6, "model_error", "rejected six"),
            ("s", 10, "missing_key", "key feature 'id' is absent")]), label="errors")
    metrics = run_pipeline(dofn, records("s", values, 12), check)
    assert (metrics["predicted"], metrics["model_errors"]) == (9, 3)


def test_a_fatal_model_failure_fails_the_job_instead_of_rejecting_records():
    dofn = PredictDoFn(DoublingHandler(ThreadClock()), batch_size=4)
    with pytest.raises(Exception, match="the model is broken"):
        run_pipeline(dofn, records("s", [1.0, 2.0, b"fatal", 4.0, 5.0], 5), lambda out: None)


def test_the_model_is_loaded_once_per_process_and_its_load_reported_once(caplog):
    """Two copies of the DoFn, as a runner makes for two threads of one worker process."""
    handler = DoublingHandler(ThreadClock())
    caplog.set_level(logging.INFO, logger="transforms.predict")
    first = PredictDoFn(handler, batch_size=2)
    copies = [first] + [pickle.loads(pickle.dumps(first)) for _ in range(2)]
    loads = []
    for dofn in copies:
        _, tagged = run_directly(dofn, records("s", [1.0, 2.0, 3.0], 3))
        loads += tagged["model_loads"]
    assert LOADS[handler.shared_tag()] == 1
    assert len(loads) == 1
    row = loads[0]
    assert {k: v for k, v in row.items() if k not in ("pid", "host")} == {
        "model": "fake/doubling", "version": "7", "signature": "serving_default",
        "load_seconds": 0.25, "stage_seconds": 0.0, "fake_threads": 3}
    assert caplog.text.count("loaded model fake/doubling (signature serving_default) in "
                             "process") == 1 and "; fake runtime" in caplog.text
