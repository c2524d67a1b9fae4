"""Live progress of a run on stderr: records scored, % of input bytes read, records/s and an
ETA; rewritten in place (`\\r`) on a terminal, one log line every 10 s otherwise. A local run
reads the counters its DoFns keep (transforms/progress.py: in this process, or published by
local worker processes); a Dataflow job, the job's Beam metrics (`BeamMetricsProgress`),
queried every REMOTE_SECONDS at most.

Input bytes are counted as stored (compressed bytes for a gzip file), as the input formats
read them: each batch handed on adds the bytes its file was read up to (a format that cannot
tell adds a file's bytes once it is read). The ETA is the records left over an exponentially
weighted rate of records scored (time constant RATE_SECONDS, from the first record scored, so
start-up does not drag it down); records left are those read and not done yet (scored or
an error row) plus the bytes not read yet at the records per byte read so far, for gzip and
plain files apart (a gzip byte holds several times the records of a plain one: until a file
of each kind was read, the kinds are related by the compression ratio of a sample of the
first gzip file, `gzip_share`). Counting records, not bytes, keeps
the reading running ahead of the model (read-ahead, bundles in flight) out of the ETA.

BATCH_PREDICT_PROGRESS_SECONDS sets the update interval (tests use a small one).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Callable, TextIO

from transforms.progress import PROGRESS, ProgressCounters, ProgressCounts, PublishedProgress

__all__ = ["ProgressReporter", "BeamMetricsProgress", "gzip_share", "RATE_SECONDS", "LOG_SECONDS",
           "TTY_SECONDS", "SAMPLE_SECONDS", "REMOTE_SECONDS", "INTERVAL_ENV",
           "progress_interval", "duration_text"]

_LOG = logging.getLogger("batch_predict")
RATE_SECONDS = 30.0  # the time constant of the weighted rates
LOG_SECONDS = 10.0  # between log lines when stderr is not a terminal
TTY_SECONDS = 1.0  # between in-place updates on a terminal
SAMPLE_SECONDS = 1.0  # between samples of the counters
REMOTE_SECONDS = 10.0  # at least, between queries of a remote job's metrics
INTERVAL_ENV = "BATCH_PREDICT_PROGRESS_SECONDS"


def progress_interval(is_tty: bool) -> float:
    value = os.environ.get(INTERVAL_ENV)
    return float(value) if value else (TTY_SECONDS if is_tty else LOG_SECONDS)


def duration_text(seconds: float) -> str:
    """A duration for a person, to the second: '45s', '3m07s', '2h05m'."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def gzip_share(files: list[tuple[str, int]], probe: int = 1 << 20) -> tuple[int, float | None]:
    """The stored bytes of the gzip files among (path, size) `files`, told by name (.gz,
    .gzip: no file is opened for this), and how many bytes the first of them holds per stored
    byte, from gunzipping its first `probe` bytes (None without gzip files, or when it cannot
    be read)."""
    gzipped = [(path, size) for path, size in files
               if path.lower().endswith((".gz", ".gzip"))]
    if not gzipped:
        return 0, None
    import gzip

    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    try:
        with FileSystems.open(gzipped[0][0], compression_type=CompressionTypes.UNCOMPRESSED) \
                as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            data = unzipped.read(probe)
            ratio = len(data) / raw.tell() if raw.tell() else None
    except (OSError, EOFError, ValueError) as e:
        _LOG.debug("progress: cannot sample %s: %s", gzipped[0][0], e)
        ratio = None
    return sum(size for _, size in gzipped), ratio


class BeamMetricsProgress:
    """A job's own Beam counters (transforms.metrics.JobCounters) as progress counts, read
    from its PipelineResult: how a Dataflow job is followed, whose workers' memory this
    process cannot see. Values are the attempted ones (committed lag behind); a counter is
    summed over the steps that report it; a failed query keeps the last counts."""
    per_job = True  # the counts are this job's alone

    def __init__(self, result):
        self._result = result
        self._last = ProgressCounts()

    def snapshot(self) -> ProgressCounts:
        from apache_beam.metrics.metric import MetricsFilter

        from transforms.metrics import NAMESPACE
        try:
            counters = self._result.metrics().query(
                MetricsFilter().with_namespace(NAMESPACE))["counters"]
        except Exception as e:  # the service's API: a hiccup must not stop the job's wait
            _LOG.debug("progress: metrics query failed: %s", e)
            return self._last
        values: dict[str, int] = {}
        for c in counters:
            value = c.attempted if c.attempted is not None else c.committed
            values[c.key.metric.name] = values.get(c.key.metric.name, 0) + int(value or 0)
        self._last = ProgressCounts(
            bytes_read=values.get("input_bytes", 0), records_read=values.get("records_in", 0),
            records_scored=values.get("predicted", 0),
            records_failed=sum(values.get(k, 0) for k in ("read_errors", "parse_errors",
                                                           "model_errors")))
        return self._last


class ProgressReporter:
    """Samples `counters` every `interval` seconds in a daemon thread and reports the job's
    progress since it started. Use as a context manager around the run; on exit it reports
    a final line. `total_bytes` None: the input's size is unknown (no % and no ETA, unless
    `total_records` says how many records there are: a BigQuery table's)."""

    def __init__(self, total_bytes: int | None, stream: TextIO | None = None,
                 is_tty: bool | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 counters: ProgressCounters | PublishedProgress | BeamMetricsProgress = PROGRESS,
                 sample_seconds: float = SAMPLE_SECONDS, gzip_bytes: int = 0,
                 gzip_ratio: float | None = None, total_records: int | None = None):
        self._stream = sys.stderr if stream is None else stream
        self.is_tty = (bool(getattr(self._stream, "isatty", lambda: False)())
                       if is_tty is None else is_tty)
        self.interval = progress_interval(self.is_tty) if interval is None else interval
        self.sample_seconds = sample_seconds
        self.total_bytes = total_bytes
        # of total_bytes, those of gzip files; their uncompressed bytes per stored byte
        self.gzip_bytes, self.gzip_ratio = gzip_bytes, gzip_ratio
        self.total_records = total_records  # known up front (a BigQuery table), no bytes
        self._clock, self._counters = clock, counters
        # a process's counters hold earlier runs' counts too; a job's own start at 0
        self._start = ProgressCounts() if counters.per_job else counters.snapshot()
        self._last = ProgressCounts()
        self._last_time = self._started = clock()
        # weighted, records done/s (scored, or error rows: for a healthy job, scored)
        self.record_rate: float | None = None
        self._average = 0.0  # records done/s, weighted, not yet scaled by its weight
        self._idle = True  # no record done yet
        self._rates_from = self._started
        self._width = 0  # of the line on the terminal; 0: none shown
        self._stop = threading.Event()
        self._screen = threading.Lock()  # the progress thread and loggers share the terminal
        self._thread: threading.Thread | None = None

    def sample(self, final: bool = False) -> str:
        """Update the weighted rates with the counters now; the line to show."""
        now = self._clock()
        counts = self._counters.snapshot() - self._start
        if self._idle and not counts.done and not final:
            # start-up (workers loading the model): the rates start with the first records
            # scored, or they would stay low for a time constant after it
            self._last, self._last_time = counts, now
            return self.format(counts, now - self._started)
        if self._idle:
            self._idle, self._rates_from = False, self._last_time
        dt = now - self._last_time
        if dt > 0:
            # an average started at 0, divided by the weight it has gathered so far: over the
            # first seconds the rate is the plain mean since the start, not dragged to 0
            weight = 1.0 - math.exp(-dt / RATE_SECONDS)
            gathered = 1.0 - math.exp(-(now - self._rates_from) / RATE_SECONDS)
            step = counts - self._last
            self._average += weight * (step.done / dt - self._average)
            self.record_rate = self._average / gathered
            self._last, self._last_time = counts, now
        return self.format(counts, now - self._started, final)

    def records_left(self, counts: ProgressCounts) -> float | None:
        """Records not done yet (scored or an error row): those read and not done, plus the
        records of the bytes not read yet at the records per byte of those read, gzip and
        plain files apart (a gzip byte holds `gzip_ratio` times the records of a plain one,
        until both kinds were read); None while unknown."""
        if self.total_records is not None:
            return max(self.total_records - counts.done, 0.0)
        if not self.total_bytes or not counts.bytes_read:
            return None
        gz_total = min(self.gzip_bytes, self.total_bytes)
        plain = (counts.records_read - counts.gzip_records_read,
                 counts.bytes_read - counts.gzip_bytes_read, self.total_bytes - gz_total)
        gz = (counts.gzip_records_read, counts.gzip_bytes_read, gz_total)
        if not gz_total or counts.gzip_bytes_read > gz_total:
            # one kind, or gzip files the names did not tell: one rate for all bytes
            plain, gz = (counts.records_read, counts.bytes_read, self.total_bytes), (0, 0, 0)
        rates = [records / read if read > 0 else None for records, read, _ in (plain, gz)]
        ratio = self.gzip_ratio or 1.0
        if rates[0] is None:
            rates[0] = rates[1] / ratio
        if rates[1] is None:
            rates[1] = rates[0] * ratio
        unread = sum(rate * max(total - read, 0)
                     for rate, (_, read, total) in zip(rates, (plain, gz)))
        return max(counts.records_read + unread - counts.done, 0.0)

    def format(self, counts: ProgressCounts, elapsed: float, final: bool = False) -> str:
        from pipeline.run import human_figure  # pipeline.run imports this module
        parts = [f"{counts.records_scored:,} records scored"]
        if self.total_records:
            pct = min(100.0, 100.0 * counts.done / self.total_records)
            parts.append(f"{human_figure(pct)}% of {self.total_records:,} records done")
        elif self.total_bytes:
            pct = min(100.0, 100.0 * counts.bytes_read / self.total_bytes)
            parts.append(f"{human_figure(pct)}% of input bytes read")
        parts.append(f"{human_figure(self.record_rate or 0.0)} records/s")
        left = self.records_left(counts)
        if final:
            parts.append(f"elapsed {duration_text(elapsed)}")
        elif left is not None and self.record_rate:
            parts.append(f"ETA {duration_text(left / self.record_rate)}")
        elif self.total_bytes or self.total_records:
            parts.append("ETA -")
        return "progress: " + ", ".join(parts)

    def show(self, line: str, final: bool = False) -> None:
        if self.is_tty:
            with self._screen:
                pad = " " * max(0, self._width - len(line))
                self._stream.write("\r" + line + pad + ("\n" if final else ""))
                self._width = 0 if final else len(line)
                self._stream.flush()
        else:
            _LOG.info("%s", line)

    def filter(self, record: logging.LogRecord) -> bool:
        """On a terminal, a log line about to be written first clears the progress line (the
        next update draws it again below)."""
        with self._screen:
            if self._width:
                self._stream.write("\r" + " " * self._width + "\r")
                self._width = 0
        return True

    def _handlers(self) -> list[logging.Handler]:
        return [h for h in logging.getLogger().handlers
                if getattr(h, "stream", None) is self._stream]

    def _loop(self) -> None:
        # sampled at least every SAMPLE_SECONDS (the rates see when scoring starts), shown
        # every interval
        step = min(self.interval, self.sample_seconds)
        shown = self._clock()
        while not self._stop.wait(step):
            line = self.sample()
            if self._clock() - shown >= self.interval - step / 2:
                self.show(line)
                shown = self._clock()

    def __enter__(self) -> "ProgressReporter":
        if self.is_tty:
            for handler in self._handlers():
                handler.addFilter(self)
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for handler in self._handlers():
            handler.removeFilter(self)
        if exc[0] is None:
            self.show(self.sample(final=True), final=True)
        elif self.is_tty and self._width:
            self._stream.write("\n")  # the error that follows starts on its own line
