"""Per-shard latency and accounting, merged into the job summary.

Everything the reader, the parser and the predictor report is keyed by shard *and* by the
job-wide key `ALL`, and folded by one CombineFn per key (`ShardMetricsFn`), so a shard's row and
the job's totals are computed the same way; `JobMetricsFn` runs them all in one global combine
(events are per batch and per shard, a few per thousand records). Model-call latencies are
kept whole (one float per call, a few hundred per million records), so percentiles are exact,
not sketched.
"""
from __future__ import annotations

import collections

import apache_beam as beam
import numpy as np

__all__ = ["NAMESPACE", "ALL", "JobCounters", "percentiles_ms", "ShardMetricsFn",
           "JobMetricsFn", "stats_events", "call_event", "predicted_events", "error_events",
           "shard_row"]

NAMESPACE = "batch_predict"
ALL = "*"


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
                "model_us": 0.0, "read_seconds": 0.0}

    def add_input(self, acc, event):
        kind, value = event
        if kind == "stats":
            acc["records"] += value["records"]
            acc["read_errors"] += value["read_errors"]
            acc["unreadable_tail"] |= value["unreadable_tail"]
            acc["read_seconds"] += value.get("read_seconds", 0.0)
            acc["workers"][value.get("worker", "?")] += value["records"]
        elif kind == "call":
            micros, count, chunk = value
            acc["calls"].append(micros)
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
        return [shard_row((shard, self._shard.extract_output(sub)))
                for shard, sub in sorted(acc.items())]


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
