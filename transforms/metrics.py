"""Per-shard latency and accounting, merged into the job summary.

Everything the reader, the parser and the predictor report is keyed by shard *and* by the
job-wide key `ALL`, and folded by one CombineFn per key (`ShardMetricsFn`), so a shard's row and
the job's totals are computed the same way; `JobMetricsFn` runs them all in one global combine
(events are per batch and per shard, a few per thousand records). Model-call latencies are
kept whole (one float per call, a few hundred per million records), so percentiles are exact,
not sketched.

The job-wide key also gets a run profile (`run_profile`, written to metrics/run_profile.json):
records scored and model calls per interval of wall time (intervals of 1/8 s, doubled until
at most `TIMELINE_MAX_POINTS` remain, so a short run still shows a curve and a long one stays
small), the batch sizes the model was called with, and a
histogram of model-call latency. Only the job-wide call rows carry the wall time of the call,
so shard rows have no profile.
"""
from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np

__all__ = ["NAMESPACE", "ALL", "TIMELINE_MAX_POINTS", "JobCounters", "percentiles_ms", "ShardMetricsFn",
           "JobMetricsFn", "stats_events", "call_event", "predicted_events", "error_events",
           "shard_row", "run_profile", "empty_profile"]

NAMESPACE = "batch_predict"
ALL = "*"
TIMELINE_MAX_POINTS = 512      # a long run's timeline is coarsened, so its size is bounded
_TICKS_PER_SECOND = 8          # the finest interval; powers of two of it are exact floats
_BATCH_SIZES_MAX = 64          # distinct batch sizes listed one by one; beyond: powers of two
_LATENCY_BINS = 30


class JobCounters:
    """The job's Beam metrics: one namespace, the unit in every name. Each DoFn makes one in
    setup() and updates the ones its step owns (like Beam's RunInference _MetricsCollector)."""

    def __init__(self):
        counter = beam.metrics.Metrics.counter
        distribution = beam.metrics.Metrics.distribution
        # read
        self.records_in = counter(NAMESPACE, "records_in")
        self.read_errors = counter(NAMESPACE, "read_errors")
        self.input_bytes = counter(NAMESPACE, "input_bytes")
        # parse
        self.parse_errors = counter(NAMESPACE, "parse_errors")
        # predict
        self.predicted = counter(NAMESPACE, "predicted")
        self.model_errors = counter(NAMESPACE, "model_errors")
        self.model_calls = counter(NAMESPACE, "model_calls")
        self.model_loads = counter(NAMESPACE, "model_loads")
        self.oom_backoffs = counter(NAMESPACE, "oom_backoffs")
        self.model_call_latency_micro_secs = distribution(NAMESPACE,
                                                          "model_call_latency_micro_secs")
        self.chunk_size_records = distribution(NAMESPACE, "chunk_size_records")


def percentiles_ms(latencies_us: list[float]) -> dict:
    if not latencies_us:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(latencies_us, dtype=np.float64) / 1000.0
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    # rounded to the nanosecond: enough for any clock, exact for an injected one
    return {"p50": round(float(p50), 6), "p95": round(float(p95), 6),
            "p99": round(float(p99), 6), "max": round(float(a.max()), 6)}


class ShardMetricsFn(beam.CombineFn):
    """Folds ("stats"|"call"|"predicted"|"error", value) events into one shard row."""

    def create_accumulator(self):
        return {"records": 0, "read_errors": 0, "unreadable_tail": False,
                "workers": collections.Counter(), "predicted": 0, "errors": collections.Counter(), "calls": [],
                "model_us": 0.0, "read_seconds": 0.0,
                # run profile (job-wide rows only): {interval start: [records, calls]} in
                # ticks (1/_TICKS_PER_SECOND s) of wall time; `interval` is in ticks too
                "timeline": {}, "interval": 1, "sizes": collections.Counter()}

    def add_input(self, acc, event):
        kind, value = event
        if kind == "stats":
            acc["records"] += value["records"]
            acc["read_errors"] += value["read_errors"]
            acc["unreadable_tail"] |= value["unreadable_tail"]
            acc["read_seconds"] += value.get("read_seconds", 0.0)
            acc["workers"][value.get("worker", "?")] += value["records"]
        elif kind == "call":
            micros, count, chunk = value[:3]
            acc["calls"].append(micros)
            if len(value) > 3:  # the job-wide row of a call, stamped with its wall time
                _timeline_add(acc, value[3], count)
                acc["sizes"][chunk] += 1
            acc["model_us"] += micros * count / chunk  # this shard's share of the call
        elif kind == "predicted":
            acc["predicted"] += value
        elif kind == "error":
            acc["errors"][value] += 1
        return acc

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for a in accs:
            for k in ("records", "read_errors", "predicted"):
                out[k] += a[k]
            out["workers"].update(a["workers"])
            out["unreadable_tail"] |= a["unreadable_tail"]
            out["errors"].update(a["errors"])
            out["calls"].extend(a["calls"])
            out["model_us"] += a["model_us"]
            out["read_seconds"] += a["read_seconds"]
            out["sizes"].update(a["sizes"])
            _timeline_merge(out, a)
        return out

    def extract_output(self, acc):
        errors = sum(acc["errors"].values())
        predicted = acc["predicted"]
        return {
            "records": acc["records"], "predicted": predicted, "errors": errors,
            "errors_by_type": dict(sorted(acc["errors"].items())),
            "unreadable_tail": acc["unreadable_tail"],
            "batches": len(acc["calls"]),
            "latency_ms": percentiles_ms(acc["calls"]),
            "mean_us_per_example": round(acc["model_us"] / predicted, 3) if predicted else None,
            "model_records_per_s": round(predicted / (acc["model_us"] / 1e6), 1)
            if acc["model_us"] else None,
            "read_seconds": round(acc["read_seconds"], 3),
            # records read per worker process (host:pid): how the reading was spread
            "records_by_worker": dict(sorted(acc["workers"].items())),
        }


class JobMetricsFn(beam.CombineFn):
    """(shard, event) pairs -> the list of shard rows (ALL included), in one global combine."""

    def __init__(self):
        self._shard = ShardMetricsFn()

    def create_accumulator(self):
        return {}

    def add_input(self, acc, item):
        shard, event = item
        if shard not in acc:
            acc[shard] = self._shard.create_accumulator()
        self._shard.add_input(acc[shard], event)
        return acc

    def merge_accumulators(self, accs):
        out: dict = {}
        for a in accs:
            for shard, sub in a.items():
                out[shard] = self._shard.merge_accumulators([out[shard], sub]) \
                    if shard in out else sub
        return out

    def extract_output(self, acc):
        rows = []
        for shard, sub in sorted(acc.items()):
            row = shard_row((shard, self._shard.extract_output(sub)))
            if shard == ALL:
                row["profile"] = run_profile(sub)
            rows.append(row)
        return rows


def _rebucket(timeline: dict, interval: int) -> dict:
    out: dict = {}
    for start, (records, calls) in timeline.items():
        bucket = out.setdefault(start - start % interval, [0, 0])
        bucket[0] += records
        bucket[1] += calls
    return out


def _timeline_add(acc: dict, at: float, records: int) -> None:
    tick = int(at * _TICKS_PER_SECOND)
    bucket = acc["timeline"].setdefault(tick - tick % acc["interval"], [0, 0])
    bucket[0] += records
    bucket[1] += 1
    while len(acc["timeline"]) > TIMELINE_MAX_POINTS:
        acc["interval"] *= 2
        acc["timeline"] = _rebucket(acc["timeline"], acc["interval"])


def _timeline_merge(out: dict, other: dict) -> None:
    """Adds `other`'s timeline to `out`'s, at the coarser of their intervals (both are powers
    of two ticks, so one divides the other)."""
    interval = max(out["interval"], other["interval"])
    merged = _rebucket(out["timeline"], interval)
    for start, (records, calls) in _rebucket(other["timeline"], interval).items():
        bucket = merged.setdefault(start, [0, 0])
        bucket[0] += records
        bucket[1] += calls
    out["interval"], out["timeline"] = interval, merged
    while len(out["timeline"]) > TIMELINE_MAX_POINTS:
        out["interval"] *= 2
        out["timeline"] = _rebucket(out["timeline"], out["interval"])


def _batch_sizes(sizes: collections.Counter) -> list[dict]:
    """[{"min", "max", "calls"}]: one entry per size, or per power-of-two range of sizes when
    there are too many distinct sizes to list."""
    if len(sizes) <= _BATCH_SIZES_MAX:
        return [{"min": int(n), "max": int(n), "calls": c} for n, c in sorted(sizes.items())]
    ranges: collections.Counter = collections.Counter()
    for n, c in sizes.items():
        ranges[1 << (int(n).bit_length() - 1)] += c
    return [{"min": lo, "max": 2 * lo - 1, "calls": c} for lo, c in sorted(ranges.items())]


def _latency_histogram(latencies_us: list[float]) -> dict:
    """Model-call latency in ms, counted in bins between the fastest and slowest call, evenly
    or (over more than a factor of ten) log-spaced; `edges` has one more entry than `counts`."""
    if not latencies_us:
        return {"edges_ms": [], "counts": []}
    a = np.asarray(latencies_us, dtype=np.float64) / 1000.0
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo or lo <= 0:
        edges = np.array([lo, hi if hi > lo else lo + 1e-3])
    elif hi > 10 * lo:  # a wide range (a slow first call, a straggler): log-spaced bins
        edges = np.geomspace(lo, hi, _LATENCY_BINS + 1)
    else:
        edges = np.linspace(lo, hi, _LATENCY_BINS + 1)
    counts, edges = np.histogram(a, bins=edges)
    return {"edges_ms": [round(float(e), 6) for e in edges],
            "counts": [int(c) for c in counts]}


def empty_profile() -> dict:
    """The run profile of a run that made no model call."""
    return {"interval_seconds": 1 / _TICKS_PER_SECOND, "timeline": [], "batch_sizes": [],
            "latency_histogram": {"edges_ms": [], "counts": []}}


def run_profile(acc: dict) -> dict:
    """The run profile of the job-wide accumulator: timeline, batch sizes, latency histogram."""
    return {"interval_seconds": acc["interval"] / _TICKS_PER_SECOND,
            "timeline": [{"start": start / _TICKS_PER_SECOND, "records": records,
                          "calls": calls}
                         for start, (records, calls) in sorted(acc["timeline"].items())],
            "batch_sizes": _batch_sizes(acc["sizes"]),
            "latency_histogram": _latency_histogram(acc["calls"])}


def _both(shard, event):
    return [(shard, event), (ALL, event)]


def stats_events(item):
    shard, stats = item
    return _both(shard, ("stats", stats))


def call_event(item):
    shard, call = item  # PredictDoFn reports each call once per shard in it, and once as ALL
    return shard, ("call", call)


def predicted_events(batch):
    counts = batch.shard_counts
    if counts is None:
        shards, n = np.unique(batch.shards.astype(str), return_counts=True)
        counts = [(str(s), int(c)) for s, c in zip(shards, n)]
    out = [(shard, ("predicted", count)) for shard, count in counts]
    out.append((ALL, ("predicted", int(len(batch)))))
    return out


def error_events(row):
    return _both(row["shard"], ("error", row["error_type"]))


def shard_row(item) -> dict:
    shard, metrics = item
    row = {"shard": shard}
    row.update(metrics)
    return row
