"""The prediction DoFn: any model behind a `transforms.handler.ModelHandler`, loaded once per
worker process and called on chunks of at most `batch_size` records.

`setup()` loads the model through `beam.utils.shared.Shared`, so every DoFn instance (thread)
of a worker process uses the same copy. `process()` buffers the incoming record batches and
starts a model call as soon as a full chunk is available, in a model thread, then finishes the
previous chunk (error isolation, metrics, outputs) while that call runs: at most one chunk is
in the model and less than one chunk waits in the buffer. With `concurrent_calls` N (opt-in,
for compute-bound models; they share the process's runtime and its thread pools) up to N calls
run at once, and chunks are still finished in order.
`finish_bundle()` scores the rest.
Every model call is timed with an injectable clock.

When a call fails, the handler says what the failure means (`ModelHandler.classify`). A record's
problem: the chunk is split in halves until the failing records are isolated, the others are
still scored, and each failing record becomes an error row of the type the handler gives
(missing feature, type or shape mismatch, not a tf.Example, model error). Out of memory: the
chunk is split the same way, and the DoFn keeps the smaller chunk size from then on (back-off
instead of a failed job). Anything else fails the job.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from transforms.batch_size import BatchSizeTuner
from transforms.handler import FATAL, OUT_OF_MEMORY, ModelHandler
from transforms.metrics import ALL, JobCounters
from transforms.progress import PROGRESS
from transforms.records import Batch, RecordBatch, error_row, in_global_window
from transforms.worker import ModelHolder, exit_now, loading_phase

__all__ = ["PredictionBatch", "PredictDoFn"]

_LOG = logging.getLogger(__name__)
_PROGRESS_SECONDS = 30.0


@dataclasses.dataclass
class PredictionBatch(Batch):
    """Scored records: where they came from (or their key) and one array per model output."""
    shards: np.ndarray               # object array, shard of each row
    indices: np.ndarray              # record index within the shard
    keys: np.ndarray | None          # the --key_field values, when asked for
    outputs: dict[str, np.ndarray]   # output name -> [n, ...] array
    shard_counts: list[tuple[str, int]] | None = None  # rows per shard, when known
    # --passthrough_fields: field -> one value per row, in the order the user named them
    passthrough: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def estimated_bytes(self) -> int:
        keys = self.keys
        key_bytes = keys.nbytes if keys is not None and keys.dtype != object else \
            8 * len(self.indices)
        return sum(v.nbytes for v in self.outputs.values()) + self.indices.nbytes + key_bytes


class _Chunk:
    """Records gathered from one or more RecordBatches, scored by one model call."""

    def __init__(self, parts: list[RecordBatch]):
        self.serialized = np.concatenate([p.serialized for p in parts])
        self.indices = np.concatenate([p.indices for p in parts])
        # shards as small integers: counting rows per shard is a bincount, not a sort of strings
        self.shard_names: list[str] = []
        number: dict[str, int] = {}
        for p in parts:
            if p.shard not in number:
                number[p.shard] = len(self.shard_names)
                self.shard_names.append(p.shard)
        self.shard_ids = np.repeat([number[p.shard] for p in parts], [len(p) for p in parts])
        self.shards = np.array(self.shard_names, dtype=object)[self.shard_ids]
        self.keys = (np.concatenate([p.keys for p in parts])
                     if all(p.keys is not None for p in parts) else None)
        self.lines = (np.concatenate([p.lines for p in parts])
                      if all(p.lines is not None for p in parts) else None)
        self.passthrough = ({name: np.concatenate([p.passthrough[name] for p in parts])
                             for name in parts[0].passthrough}
                            if all(p.passthrough is not None for p in parts) else None)

    def shard_counts(self, positions: np.ndarray) -> list[tuple[str, int]]:
        counts = np.bincount(self.shard_ids[positions], minlength=len(self.shard_names))
        return [(name, int(c)) for name, c in zip(self.shard_names, counts) if c]


def _split(batch: RecordBatch, n: int) -> tuple[RecordBatch, RecordBatch]:
    def part(sl):
        return RecordBatch(batch.shard, batch.serialized[sl], batch.indices[sl],
                           None if batch.keys is None else batch.keys[sl],
                           None if batch.lines is None else batch.lines[sl],
                           None if batch.passthrough is None else
                           {k: v[sl] for k, v in batch.passthrough.items()})
    return part(slice(None, n)), part(slice(n, None))


def _in_record_order(results: list) -> tuple:
    """(positions, outputs, keys read) of the successful calls on a chunk, in record order."""
    if len(results) == 1:  # the usual case: one call scored the whole chunk
        positions, outputs, keys, _ = results[0]
        return positions, outputs, keys
    positions = np.concatenate([r[0] for r in results])
    order = np.argsort(positions, kind="stable")
    outputs = {name: np.concatenate([r[1][name] for r in results])[order]
               for name in results[0][1]}
    keys = None if results[0][2] is None else (np.concatenate([r[2][0] for r in results])[order],
                                               np.concatenate([r[2][1] for r in results])[order])
    return positions[order], outputs, keys


def key_output_plan(key_field: str | None, output_names: list[str],
                    forwarded: bool) -> tuple | None:
    """What the rows do with a model output named like --key_field: nothing to do (None),
    ("same", key) when the model forwards the key unchanged (one column: the key), or
    ("rename", key, column) to keep the model's own output beside the key, under `column`:
    KEY_output (with more underscores until no output has that name)."""
    if key_field is None or key_field not in output_names:
        return None
    if forwarded:
        return ("same", key_field)
    underscores = 1
    while f"{key_field}{'_' * underscores}output" in output_names:
        underscores += 1
    return ("rename", key_field, f"{key_field}{'_' * underscores}output")


def output_columns(output_names: list[str], plan: tuple | None) -> list[str]:
    """The model output columns the rows hold, after `key_output_plan`."""
    if plan is None:
        return list(output_names)
    if plan[0] == "same":
        return [n for n in output_names if n != plan[1]]
    return [plan[2] if n == plan[1] else n for n in output_names]


def _same_as_keys(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per record: whether the model's value equals the key (text keys read as the model's
    dtype; str and UTF-8 bytes alike)."""
    if values.dtype == object or values.dtype.kind in "SU":
        norm = [k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k for k in keys]
        got = [v.encode("utf-8", "surrogateescape") if isinstance(v, str) else v
               for v in values]
        return np.array([a == b for a, b in zip(got, norm)], dtype=bool)
    out = np.zeros(len(values), dtype=bool)
    for i, (v, k) in enumerate(zip(values, keys)):
        try:
            out[i] = v == values.dtype.type(k.decode() if isinstance(k, bytes) else k)
        except (TypeError, ValueError, OverflowError):
            out[i] = False
    return out


def _key_output(plan: tuple, outputs: dict, keys: np.ndarray):
    """(outputs as the rows hold them, per record whether a forwarded key differs or None)."""
    name = plan[1]
    if plan[0] == "rename":
        outputs = dict(outputs)
        outputs[plan[2]] = outputs.pop(name)
        return outputs, None
    forwarded = outputs[name].reshape(len(keys), -1)[:, 0]
    return ({k: v for k, v in outputs.items() if k != name},
            ~_same_as_keys(forwarded, keys))


class PredictDoFn(beam.DoFn):
    """RecordBatch -> PredictionBatch (+ 'errors', 'latency', 'model_loads' outputs)."""

    def __init__(self, handler: ModelHandler, batch_size: int,
                 clock: Callable[[], int] = time.perf_counter_ns,
                 shared_handle: shared.Shared | None = None, auto_batch: bool = False,
                 concurrent_calls: int = 1, launcher_pid: int | None = None,
                 key_output: tuple | None = None,
                 wall_clock: Callable[[], float] = time.time):
        """`shared_handle`: a Shared the launcher already loaded this model through (see
        pipeline.build.plan_job), so an in-process runner reuses that copy. `auto_batch`:
        --batch_size auto (`BatchSizeTuner`, starting at `batch_size`). `concurrent_calls`:
        model calls in flight at once. `launcher_pid`: set for local worker processes, which
        leave without finalizing their interpreter (`transforms.worker.exit_now`) unless they
        are the launcher itself (an in-process runner). `key_output`: what becomes of a model
        output named like the key (`key_output_plan`): ("same", name) drops it from the rows,
        where it must equal the key (a record where it does not is a key_mismatch error row);
        ("rename", name, column) writes it under another column name. `wall_clock`: seconds
        since the epoch, stamped on each call's job-wide latency row for the run's timeline
        (`clock` measures durations and need not be wall time)."""
        self._handler = handler
        self._key_output = key_output
        self._batch_size = batch_size
        self._auto_batch = auto_batch
        self._clock = clock
        self._wall_clock = wall_clock
        self._shared = shared_handle or shared.Shared()
        self._concurrent = max(1, concurrent_calls)
        self._launcher_pid = launcher_pid

    # -- lifecycle ---------------------------------------------------------------------------
    def _load(self) -> ModelHolder:
        start = time.monotonic()
        model = self._handler.load()
        self._handler.warm_up(model)
        about = self._handler.describe(model)
        _LOG.info("loaded model %s (signature %s) in process %d in %.1fs; %s", about.path,
                  about.signature, os.getpid(), time.monotonic() - start, about.runtime_note)
        return ModelHolder(model)

    def setup(self):
        with loading_phase():
            self._holder = self._shared.acquire(self._load, tag=self._handler.shared_tag())
            self._model = self._holder.model
            self._keys = self._handler.key_reader()
        self._metrics = JobCounters()
        # the model runs in its own thread(s) (TensorFlow, like most runtimes, releases the
        # GIL), so chunk k is scored while this thread formats and writes chunk k-1 and reads
        # the next records
        self._model_thread = ThreadPoolExecutor(max_workers=self._concurrent,
                                                thread_name_prefix="model-call")
        self._chunk_limit = self._batch_size  # lowered for good when a call runs out of memory
        self._tuner = BatchSizeTuner(start=self._batch_size) if self._auto_batch else None
        if self._tuner is not None:
            self._chunk_limit = self._tuner.size
        self._scored_since_log = 0
        self._last_log = time.monotonic()

    def teardown(self):
        if getattr(self, "_model_thread", None) is not None:
            self._model_thread.shutdown(wait=True)
        if self._launcher_pid is not None and os.getpid() != self._launcher_pid:
            atexit.register(exit_now)  # registered last, so it runs first

    def start_bundle(self):
        self._buffer: list[RecordBatch] = []
        self._buffered = 0
        self._inflight: collections.deque = collections.deque()  # (chunk, future), in order

    # -- processing --------------------------------------------------------------------------
    def process(self, batch: RecordBatch):
        yield from self._report_load()
        self._buffer.append(batch)
        self._buffered += len(batch)
        while self._buffered >= self._chunk_limit:
            yield from self._submit(self._take(self._chunk_limit))

    def finish_bundle(self):
        outputs = []
        if self._buffered:
            outputs += list(self._submit(self._take(self._buffered)))
        outputs += list(self._drain())
        PROGRESS.publish()  # a worker process's last counts reach the launcher (no-op else)
        yield from in_global_window(outputs)

    def _report_load(self):
        holder = self._holder
        if holder.reported:
            return
        with holder.lock:
            if holder.reported:
                return
            holder.reported = True
        self._metrics.model_loads.inc()
        about = self._handler.describe(self._model)
        yield beam.pvalue.TaggedOutput("model_loads", {
            "pid": holder.pid, "host": socket.gethostname(), "model": about.path,
            "version": about.version, "signature": about.signature,
            "load_seconds": round(about.load_seconds, 3),
            "stage_seconds": round(about.stage_seconds, 3), **about.runtime})

    def _take(self, n: int) -> _Chunk:
        parts, taken = [], 0
        while taken < n:
            head = self._buffer[0]
            if taken + len(head) <= n:
                parts.append(self._buffer.pop(0))
                taken += len(head)
            else:
                first, rest = _split(head, n - taken)
                parts.append(first)
                self._buffer[0] = rest
                taken = n
        self._buffered -= n
        return _Chunk(parts)

    def _submit(self, chunk: _Chunk):
        """Start the model call on `chunk`; then, with more calls started than may run at once,
        finish the oldest (in order) while the others run."""
        self._inflight.append((chunk, self._model_thread.submit(self._call, chunk.serialized)))
        while len(self._inflight) > self._concurrent:
            yield from self._finish(*self._inflight.popleft())

    def _drain(self):
        while self._inflight:
            yield from self._finish(*self._inflight.popleft())

    def _finish(self, chunk: _Chunk, future):
        try:
            attempt = future.result()
        except Exception as e:  # judged like any failed call (a fatal one is raised again)
            attempt = e
        yield from self._score_chunk(chunk, attempt)

    def _call(self, serialized: np.ndarray):
        """One timed model call (plus reading the records' keys); raises on failure."""
        start = self._clock()
        outputs = self._handler.run_batch(self._model, serialized)
        elapsed_ns = self._clock() - start
        keys = None if self._keys is None else self._keys.read(serialized)
        return outputs, keys, elapsed_ns

    def _score_chunk(self, chunk: _Chunk, attempt=None):
        """Outputs of a chunk; `attempt` is the result (or error) of its first call, if made."""
        results = []  # (positions, outputs, keys, elapsed_ns) per successful call
        errors = []   # (position, error type, message) per record that failed alone
        self._score_range(chunk, np.arange(len(chunk.indices)), results, errors, attempt)
        for pos, etype, message in errors:
            line = None if chunk.lines is None else chunk.lines[pos]
            errors_row = error_row(chunk.shards[pos], chunk.indices[pos], etype, message,
                                   chunk.serialized[pos], line=line)
            yield beam.pvalue.TaggedOutput("errors", errors_row)
        if errors:
            self._metrics.model_errors.inc(len(errors))
        for positions, _, _, elapsed_ns in results:
            yield from self._latency_rows(chunk, positions, elapsed_ns)
        if not results:
            PROGRESS.add_scored(0, failed=len(chunk.indices))
            return
        # only a call on the whole chunk measures the chunk size
        if len(results) == 1 and self._tuner is not None and not self._tuner.settled:
            self._tune(len(results[0][0]), results[0][3])
        positions, outputs, read_keys = _in_record_order(results)
        keys = chunk.keys[positions] if chunk.keys is not None else None
        if self._keys is not None:
            values, has_key = read_keys
            if not has_key.all():
                for pos in positions[~has_key]:
                    yield beam.pvalue.TaggedOutput("errors", error_row(
                        chunk.shards[pos], chunk.indices[pos], "missing_key",
                        f"key feature {self._keys.name!r} is absent",
                        chunk.serialized[pos], line=None))
                self._metrics.model_errors.inc(int((~has_key).sum()))
                outputs = {k: v[has_key] for k, v in outputs.items()}
                positions, values = positions[has_key], values[has_key]
            keys = values
        if self._key_output is not None:
            outputs, differs = _key_output(self._key_output, outputs, keys)
            if differs is not None and differs.any():
                name = self._key_output[1]
                for pos in positions[differs]:
                    yield beam.pvalue.TaggedOutput("errors", error_row(
                        chunk.shards[pos], chunk.indices[pos], "key_mismatch",
                        f"the model's output {name!r} differs from the record's key",
                        chunk.serialized[pos], line=None))
                self._metrics.model_errors.inc(int(differs.sum()))
                keep = ~differs
                outputs = {k: v[keep] for k, v in outputs.items()}
                positions, keys = positions[keep], keys[keep]
        n = len(positions)
        self._metrics.predicted.inc(n)
        self._scored_since_log += n
        PROGRESS.add_scored(n, failed=len(chunk.indices) - n)
        self._log_progress()
        passthrough = (None if chunk.passthrough is None else
                       {k: v[positions] for k, v in chunk.passthrough.items()})
        yield PredictionBatch(chunk.shards[positions], chunk.indices[positions], keys, outputs,
                              chunk.shard_counts(positions), passthrough)

    def _score_range(self, chunk: _Chunk, positions: np.ndarray, results: list, errors: list,
                     attempt=None):
        try:
            if attempt is None:
                attempt = self._call(chunk.serialized[positions])
            if isinstance(attempt, BaseException):
                raise attempt
            outputs, keys, elapsed_ns = attempt
        except Exception as e:
            failure = self._handler.classify(e)
            if failure.kind == FATAL:
                raise
            # a bad record (or too many at once) failed the call: isolate it
            if len(positions) == 1:
                errors.append((positions[0], failure.error_type, failure.message))
                return
            half = len(positions) // 2
            if failure.kind == OUT_OF_MEMORY:
                self._back_off(len(positions), half)
            self._score_range(chunk, positions[:half], results, errors)
            self._score_range(chunk, positions[half:], results, errors)
            return
        results.append((positions, outputs, keys, elapsed_ns))

    def _tune(self, records: int, elapsed_ns: int):
        tuner = self._tuner
        tuner.observe(records, elapsed_ns / 1e9)
        self._chunk_limit = tuner.size
        if tuner.settled:
            _LOG.info("--batch_size auto: process %d settled at %d records per call (%.0f "
                      "records/s in the model)", os.getpid(), tuner.size,
                      tuner.best[1] if tuner.best else 0.0)

    def _back_off(self, failed: int, limit: int):
        """Out of memory on `failed` records: score at most `limit` per call from now on."""
        if self._tuner is not None:
            self._tuner.cap(limit)
        if limit < self._chunk_limit:
            self._chunk_limit = max(1, limit)
            self._metrics.oom_backoffs.inc()
            _LOG.warning("model call on %d records ran out of memory; process %d now scores "
                         "at most %d records per call (--batch_size %d)", failed, os.getpid(),
                         self._chunk_limit, self._batch_size)

    def _latency_rows(self, chunk: _Chunk, positions: np.ndarray, elapsed_ns: int):
        """One row per (model call, shard in it): the call's latency and the shard's share;
        the job-wide row also carries when the call ended (wall time), for the timeline."""
        micros = elapsed_ns / 1000.0
        self._metrics.model_calls.inc()
        self._metrics.model_call_latency_micro_secs.update(int(micros))
        self._metrics.chunk_size_records.update(len(positions))
        n = len(positions)
        yield beam.pvalue.TaggedOutput("latency", (ALL, (micros, n, n, self._wall_clock())))
        for shard, count in chunk.shard_counts(positions):
            yield beam.pvalue.TaggedOutput("latency", (shard, (micros, count, n)))

    def _log_progress(self):
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_SECONDS:
            rate = self._scored_since_log / (now - self._last_log)
            _LOG.info("process %d: scored %d records in the last %.0fs (%.0f/s)", os.getpid(),
                      self._scored_since_log, now - self._last_log, rate)
            self._scored_since_log = 0
            self._last_log = now
