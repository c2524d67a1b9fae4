"""The prediction DoFn: one model per worker process, chunks of at most `batch_size` per call.

`setup()` loads the model through `beam.utils.shared.Shared`, so every DoFn instance (thread)
of a worker process uses the same copy. `process()` buffers the incoming record batches and
starts a model call as soon as a full chunk is available, in a model thread, then finishes the
previous chunk (error isolation, metrics, outputs) while that call runs: at most one chunk is
in the model and less than one chunk waits in the buffer. With `concurrent_calls` N (opt-in,
for compute-bound models; they share the process's TensorFlow pools) up to N calls run at
once, and chunks are still finished in order.
`finish_bundle()` scores the rest.
Every model call is timed with an injectable clock.

When a call fails, the chunk is split in halves until the failing records are isolated: the
others are still scored, and each failing record becomes an error row whose type is read from
TensorFlow's message (missing feature, type or shape mismatch, not a tf.Example, model error).
A call that runs out of memory (ResourceExhaustedError) is split the same way, and the DoFn
keeps the smaller chunk size from then on (back-off instead of a failed job).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import logging
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from transforms.feature_spec import FeatureSpec
from transforms.records import Batch, RecordBatch, error_row, in_global_window
from transforms.metrics import ALL, JobCounters

_LOG = logging.getLogger(__name__)
_PROGRESS_SECONDS = 30.0


_heap_frozen = False


@contextlib.contextmanager
def loading_phase():
    """A block that creates long-lived objects: TensorFlow's import, the model load, the graph.

    Importing TensorFlow and loading a model make ~400k objects that live as long as the
    process. The cyclic garbage collector's full passes over them found almost nothing and
    cost ~0.8 s of a job's start-up (6 passes of 0.03-0.24 s, growing with the heap), and
    interpreter exit spent ~1.2 s in a last pass. So the collector is paused inside the block,
    and on leaving it every object alive is frozen (`gc.freeze`): later passes only walk what
    the run creates. Frozen objects are still freed by reference counting; only reference
    cycles among them are never collected: in a process that runs several jobs (`python -m jobs
    run --backfill`, the tests) the first job's model stays in memory until the process ends
    (a full collection freed it before this; later jobs' models are collected as before).
    Once per process: a later block (a later job, a second DoFn instance) changes
    nothing, so later garbage is never frozen.
    """
    global _heap_frozen
    if _heap_frozen:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        _heap_frozen = True
        if enabled:
            gc.enable()


def _intra_op_threads() -> int:
    """TensorFlow's intra-op pool size in this process (0: TensorFlow's default, one per core)."""
    import tensorflow as tf
    return tf.config.threading.get_intra_op_parallelism_threads()


def _inter_op_threads() -> int:
    """TensorFlow's inter-op pool size in this process (0: TensorFlow's default)."""
    import tensorflow as tf
    return tf.config.threading.get_inter_op_parallelism_threads()


@dataclasses.dataclass
class PredictionBatch(Batch):
    """Scored records: where they came from (or their key) and one array per model output."""
    shards: np.ndarray               # object array, shard of each row
    indices: np.ndarray              # record index within the shard
    keys: np.ndarray | None          # the --key_field values, when asked for
    outputs: dict[str, np.ndarray]   # output name -> [n, ...] array
    shard_counts: list[tuple[str, int]] | None = None  # rows per shard, when known

    def __len__(self) -> int:
        return len(self.indices)

    def estimated_bytes(self) -> int:
        keys = self.keys
        key_bytes = keys.nbytes if keys is not None and keys.dtype != object else \
            8 * len(self.indices)
        return sum(v.nbytes for v in self.outputs.values()) + self.indices.nbytes + key_bytes


class BatchSizeTuner:
    """`--batch_size auto`: start at `start` records per call and double the size while the
    model's records/s (median of `calls` full-size calls, the first call at each size not
    counted) improves by at least `gain`; then keep the best size. Out-of-memory caps it."""

    def __init__(self, start: int = 1024, maximum: int = 32768, calls: int = 3,
                 gain: float = 0.10):
        self.size = start
        self.maximum = maximum
        self.settled = False
        self.best: tuple[int, float] | None = None  # (size, records/s)
        self._calls = calls
        self._gain = gain
        self._rates: list[float] = []
        self._skipped = False

    def observe(self, records: int, seconds: float) -> None:
        """One successful model call; partial chunks (bundle ends) do not count."""
        if self.settled or records < self.size or seconds <= 0:
            return
        if not self._skipped:  # a new size's first call pays for new buffer shapes
            self._skipped = True
            return
        self._rates.append(records / seconds)
        if len(self._rates) < self._calls:
            return
        rate = sorted(self._rates)[len(self._rates) // 2]
        self._rates, self._skipped = [], False
        if self.best is None or rate >= self.best[1] * (1 + self._gain):
            self.best = (self.size, rate)
            if self.size * 2 > self.maximum:
                self.settled = True
            else:
                self.size *= 2
        else:
            self.size = self.best[0]
            self.settled = True

    def cap(self, limit: int) -> None:
        """Out of memory at more than `limit` records: never go above it."""
        self.maximum = min(self.maximum, limit)
        if self.size > limit:
            self.size = limit
        if self.best is not None and self.best[0] > limit:
            self.best = None
        self.settled = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a worker needs to open the same model the launcher validated (picklable)."""
    path: str
    signature: str
    spec: FeatureSpec
    key_field: str | None = None
    key_dtype: str = "string"
    keys_from_examples: bool = False  # TFRecord input: the key is read from each tf.Example
    cache_dir: str | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    concurrent_calls: int = 1  # model calls in flight at once per worker process
    # local multi-process DirectRunner: worker processes (pid != launcher_pid) skip the
    # interpreter's finalization once Beam has torn them down (see exit_now)
    fast_worker_exit: bool = False
    launcher_pid: int = 0


def exit_now() -> None:
    """atexit hook of a local multi-process worker: flush, then leave without finalizing.

    By then the SDK harness has finished its bundles, torn down the DoFns and closed its log
    channel. Finalizing an interpreter with TensorFlow loaded takes another 1.3-2 s (C++
    destructors, no Python left to run), and the DirectRunner waits for its workers to exit
    one after another at the end of every run. An exit after an uncaught error keeps code 1.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1 if getattr(sys, "last_value", None) is not None else 0)


def shared_tag(config: ModelConfig) -> str:
    return f"{config.path}|{config.signature}"


class ModelHolder:
    """What Shared keeps per process (must be weak-referenceable, hence a class)."""

    def __init__(self, model):
        self.model = model
        self.pid = os.getpid()
        self.reported = False
        self.lock = threading.Lock()


def classify_tf_error(message: str) -> str:
    """Map TensorFlow's parse/model error message for one record to an error type."""
    m = message.lower()
    if "is required but could not be found" in m:
        return "missing_feature"
    if "data types don't match" in m:
        return "type_mismatch"
    if "values != expected" in m or "values size" in m:
        return "shape_mismatch"
    if "could not parse example" in m or "can't parse serialized example" in m:
        return "parse_error"
    return "model_error"


def _message(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return " ".join(text.split())[:500]


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

    def shard_counts(self, positions: np.ndarray) -> list[tuple[str, int]]:
        counts = np.bincount(self.shard_ids[positions], minlength=len(self.shard_names))
        return [(name, int(c)) for name, c in zip(self.shard_names, counts) if c]


def _split(batch: RecordBatch, n: int) -> tuple[RecordBatch, RecordBatch]:
    def part(sl):
        return RecordBatch(batch.shard, batch.serialized[sl], batch.indices[sl],
                           None if batch.keys is None else batch.keys[sl],
                           None if batch.lines is None else batch.lines[sl])
    return part(slice(None, n)), part(slice(n, None))


class PredictDoFn(beam.DoFn):
    """RecordBatch -> PredictionBatch (+ 'errors', 'latency', 'model_loads' outputs)."""

    def __init__(self, config: ModelConfig, batch_size: int,
                 clock: Callable[[], int] = time.perf_counter_ns,
                 shared_handle: shared.Shared | None = None, auto_batch: bool = False):
        """`shared_handle`: a Shared the launcher already loaded this model through (see
        pipeline.build.plan_job), so an in-process runner reuses that copy. `auto_batch`:
        --batch_size auto (`BatchSizeTuner`, starting at `batch_size`)."""
        self._config = config
        self._batch_size = batch_size
        self._auto_batch = auto_batch
        self._clock = clock
        self._shared = shared_handle or shared.Shared()

    # -- lifecycle ---------------------------------------------------------------------------
    def _load(self):
        from transforms.model import configure_threads, open_model
        cfg = self._config
        configure_threads(cfg.intra_op_threads, cfg.inter_op_threads)
        start = time.monotonic()
        model = open_model(cfg.path, cfg.signature, cfg.spec, cfg.cache_dir, warm_up=True)
        _LOG.info("loaded model %s (signature %s) in process %d in %.1fs; TF intra-op threads: "
                  "%s", model.version.path, cfg.signature, os.getpid(),
                  time.monotonic() - start, _intra_op_threads() or "default")
        return ModelHolder(model)

    def setup(self):
        with loading_phase():
            self._holder = self._shared.acquire(self._load, tag=shared_tag(self._config))
            self._model = self._holder.model
            self._key_parser = self._build_key_parser()
        self._metrics = JobCounters()
        # the model runs in its own thread(s) (TensorFlow releases the GIL), so chunk k is
        # scored while this thread formats and writes chunk k-1 and reads the next records
        self._concurrent = max(1, self._config.concurrent_calls)
        self._model_thread = ThreadPoolExecutor(max_workers=self._concurrent,
                                                thread_name_prefix="model-call")
        self._chunk_limit = self._batch_size  # lowered for good when a call runs out of memory
        self._tuner = BatchSizeTuner(start=self._batch_size) if self._auto_batch else None
        if self._tuner is not None:
            self._chunk_limit = self._tuner.size
        self._scored_since_log = 0
        self._last_log = time.monotonic()

    def _build_key_parser(self):
        cfg = self._config
        if cfg.key_field is None or not cfg.keys_from_examples:
            return None
        import tensorflow as tf
        dtype = tf.dtypes.as_dtype(cfg.key_dtype)
        feature = {cfg.key_field: tf.io.VarLenFeature(dtype)}

        def parse_keys(serialized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(first key value of each record, whether it has one). Eager on purpose: a
            tf.function did the same work but cost ~0.1 s of tracing on every worker's first
            call, with the model waiting."""
            sparse = tf.io.parse_example(serialized, feature)[cfg.key_field]
            # rows that hold the key, and where each row's first value is
            rows, first = np.unique(sparse.indices.numpy()[:, 0], return_index=True)
            has_key = np.zeros(len(serialized), bool)
            has_key[rows] = True
            keys = np.full(len(serialized), b"", object) if dtype == tf.string else \
                np.zeros(len(serialized), dtype.as_numpy_dtype)
            keys[rows] = sparse.values.numpy()[first]
            return keys, has_key
        return parse_keys

    def teardown(self):
        if getattr(self, "_model_thread", None) is not None:
            self._model_thread.shutdown(wait=True)
        cfg = self._config
        if cfg.fast_worker_exit and os.getpid() != cfg.launcher_pid:
            import atexit
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
        m = self._model
        yield beam.pvalue.TaggedOutput("model_loads", {
            "pid": holder.pid, "host": socket.gethostname(), "model": m.version.path,
            "version": m.version.version, "signature": m.signature,
            "load_seconds": round(m.load_seconds, 3), "stage_seconds": round(m.stage_seconds, 3),
            "tf_intra_op_threads": _intra_op_threads(),
            "tf_inter_op_threads": _inter_op_threads()})

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
        import tensorflow as tf
        try:
            attempt = future.result()
        except (tf.errors.OpError, UnicodeDecodeError) as e:  # handled like a failed call
            attempt = e
        yield from self._score_chunk(chunk, attempt)

    def _call(self, serialized: np.ndarray):
        """One timed model call (plus key parsing); raises on failure."""
        start = self._clock()
        outputs = self._model.predict(serialized)
        elapsed_ns = self._clock() - start
        keys = None
        if self._key_parser is not None:
            keys = self._key_parser(serialized)
        return outputs, keys, elapsed_ns

    def _score_chunk(self, chunk: _Chunk, attempt=None):
        """Outputs of a chunk; `attempt` is the result (or error) of its first call, if made."""
        results = []  # (positions, outputs, keys, elapsed_ns) per successful call
        errors = []
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
            return
        if len(results) == 1:  # the usual case: one call scored the whole chunk
            positions, outputs, parsed_keys, elapsed_ns = results[0]
            if self._tuner is not None and not self._tuner.settled:
                self._tune(len(positions), elapsed_ns)
        else:  # the pieces of a split chunk, back in record order
            positions = np.concatenate([r[0] for r in results])
            order = np.argsort(positions, kind="stable")
            positions = positions[order]
            outputs = {name: np.concatenate([r[1][name] for r in results])[order]
                       for name in results[0][1]}
            parsed_keys = None if self._key_parser is None else (
                np.concatenate([r[2][0] for r in results])[order],
                np.concatenate([r[2][1] for r in results])[order])
        keys = chunk.keys[positions] if chunk.keys is not None else None
        if self._key_parser is not None:
            values, has_key = parsed_keys
            if not has_key.all():
                for pos in positions[~has_key]:
                    yield beam.pvalue.TaggedOutput("errors", error_row(
                        chunk.shards[pos], chunk.indices[pos], "missing_key",
                        f"key feature {self._config.key_field!r} is absent",
                        chunk.serialized[pos], line=None))
                self._metrics.model_errors.inc(int((~has_key).sum()))
                outputs = {k: v[has_key] for k, v in outputs.items()}
                positions, values = positions[has_key], values[has_key]
            keys = values
        n = len(positions)
        self._metrics.predicted.inc(n)
        self._scored_since_log += n
        self._log_progress()
        yield PredictionBatch(chunk.shards[positions], chunk.indices[positions], keys, outputs,
                              chunk.shard_counts(positions))

    def _score_range(self, chunk: _Chunk, positions: np.ndarray, results: list, errors: list,
                     attempt=None):
        import tensorflow as tf
        try:
            if attempt is None:
                attempt = self._call(chunk.serialized[positions])
            if isinstance(attempt, BaseException):
                raise attempt
            outputs, keys, elapsed_ns = attempt
        # a bad record (or the model) failed the call: isolate it. TensorFlow quotes the bad
        # bytes in its message; when they are not UTF-8 the error surfaces as a decode error
        except (tf.errors.OpError, UnicodeDecodeError) as e:
            if len(positions) == 1:
                if isinstance(e, UnicodeDecodeError):
                    errors.append((positions[0], "parse_error", "could not parse the record as "
                                   "a tf.Example (TensorFlow's message held non-UTF-8 bytes)"))
                else:
                    message = _message(e)
                    errors.append((positions[0], classify_tf_error(message), message))
                return
            half = len(positions) // 2
            if isinstance(e, tf.errors.ResourceExhaustedError):
                self._back_off(len(positions), half)
            self._score_range(chunk, positions[:half], results, errors)
            self._score_range(chunk, positions[half:], results, errors)
            return
        n = len(positions)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(f"model output {name!r} has shape {value.shape} for a batch "
                                 f"of {n}; outputs need a leading batch dimension")
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
        """One row per (model call, shard in it): the call's latency and the shard's share."""
        micros = elapsed_ns / 1000.0
        self._metrics.model_calls.inc()
        self._metrics.model_call_latency_micro_secs.update(int(micros))
        self._metrics.chunk_size_records.update(len(positions))
        n = len(positions)
        yield beam.pvalue.TaggedOutput("latency", (ALL, (micros, n, n)))
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
