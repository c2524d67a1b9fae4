"""Live progress of a local in-process run on stderr: records scored, % of input bytes read,
records/s and an ETA; rewritten in place (`\\r`) on a terminal, one log line every 10 s
otherwise.

Input bytes are counted as stored (compressed bytes for a gzip file), block by block as each
is read to its end, so the percentage moves in steps of a file or a read range
(--split_bytes). The ETA is the bytes left over an exponentially weighted byte rate (time
constant RATE_SECONDS), so it follows a job whose speed changes.

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

from transforms.progress import PROGRESS, ProgressCounters, ProgressCounts

__all__ = ["ProgressReporter", "RATE_SECONDS", "LOG_SECONDS", "TTY_SECONDS",
           "INTERVAL_ENV", "progress_interval"]

_LOG = logging.getLogger("batch_predict")
RATE_SECONDS = 30.0  # the time constant of the weighted rates
LOG_SECONDS = 10.0  # between log lines when stderr is not a terminal
TTY_SECONDS = 1.0  # between in-place updates on a terminal
INTERVAL_ENV = "BATCH_PREDICT_PROGRESS_SECONDS"


def progress_interval(is_tty: bool) -> float:
    value = os.environ.get(INTERVAL_ENV)
    return float(value) if value else (TTY_SECONDS if is_tty else LOG_SECONDS)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressReporter:
    """Samples `counters` every `interval` seconds in a daemon thread and reports the job's
    progress since it started. Use as a context manager around the run; on exit it reports
    a final line. `total_bytes` None: the input's size is unknown (no % and no ETA)."""

    def __init__(self, total_bytes: int | None, stream: TextIO | None = None,
                 is_tty: bool | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 counters: ProgressCounters = PROGRESS):
        self._stream = sys.stderr if stream is None else stream
        self.is_tty = (bool(getattr(self._stream, "isatty", lambda: False)())
                       if is_tty is None else is_tty)
        self.interval = progress_interval(self.is_tty) if interval is None else interval
        self.total_bytes = total_bytes
        self._clock, self._counters = clock, counters
        self._start = counters.snapshot()
        self._last = ProgressCounts()
        self._last_time = self._started = clock()
        self.byte_rate: float | None = None  # weighted, bytes/s
        self.record_rate: float | None = None  # weighted, records scored/s
        self._averages = [0.0, 0.0]  # bytes/s, records scored/s
        self._width = 0  # of the line on the terminal; 0: none shown
        self._stop = threading.Event()
        self._screen = threading.Lock()  # the progress thread and loggers share the terminal
        self._thread: threading.Thread | None = None

    def sample(self) -> str:
        """Update the weighted rates with the counters now; the line to show."""
        now = self._clock()
        counts = self._counters.snapshot() - self._start
        dt = now - self._last_time
        if dt > 0:
            # an average started at 0, divided by the weight it has gathered so far: over the
            # first seconds the rate is the plain mean since the start, not dragged to 0
            weight = 1.0 - math.exp(-dt / RATE_SECONDS)
            gathered = 1.0 - math.exp(-(now - self._started) / RATE_SECONDS)
            step = counts - self._last
            for i, delta in enumerate((step.bytes_read, step.records_scored)):
                self._averages[i] += weight * (delta / dt - self._averages[i])
            self.byte_rate, self.record_rate = (a / gathered for a in self._averages)
            self._last, self._last_time = counts, now
        return self.format(counts, now - self._started)

    def format(self, counts: ProgressCounts, elapsed: float) -> str:
        from pipeline.run import human_figure  # pipeline.run imports this module
        parts = [f"{counts.records_scored:,} records scored"]
        if self.total_bytes:
            pct = min(100.0, 100.0 * counts.bytes_read / self.total_bytes)
            parts.append(f"{human_figure(pct)}% of input bytes read")
        parts.append(f"{human_figure(self.record_rate or 0.0)} records/s")
        left = (self.total_bytes or 0) - counts.bytes_read
        if self.total_bytes and left <= 0:
            parts.append(f"elapsed {_duration(elapsed)}")
        elif self.total_bytes and self.byte_rate:
            parts.append(f"ETA {_duration(left / self.byte_rate)}")
        elif self.total_bytes:
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
        while not self._stop.wait(self.interval):
            self.show(self.sample())

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
            self.show(self.sample(), final=True)
        elif self.is_tty and self._width:
            self._stream.write("\n")  # the error that follows starts on its own line
