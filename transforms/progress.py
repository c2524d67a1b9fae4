"""Live progress counters of a local in-process run: bytes and records read, records scored.

Process-global on purpose: the reading and scoring DoFns run in this process's bundle threads
(in-process FnApiRunner) and the launcher's ProgressReporter (pipeline/progress.py) reads the
same counters. Local worker subprocesses (--direct_running_mode=multi_processing) and Dataflow
workers have their own copies nobody reads; the cost there is one locked add per batch.
"""
from __future__ import annotations

import dataclasses
import threading

__all__ = ["ProgressCounts", "ProgressCounters", "PROGRESS"]


@dataclasses.dataclass(frozen=True)
class ProgressCounts:
    bytes_read: int = 0
    records_read: int = 0
    records_scored: int = 0

    def __sub__(self, other: "ProgressCounts") -> "ProgressCounts":
        return ProgressCounts(self.bytes_read - other.bytes_read,
                              self.records_read - other.records_read,
                              self.records_scored - other.records_scored)


class ProgressCounters:
    """Thread-safe running totals; callers add once per batch or block, never per record."""

    def __init__(self):
        self._lock = threading.Lock()
        self._bytes_read = self._records_read = self._records_scored = 0

    def add_read(self, bytes_read: int = 0, records: int = 0) -> None:
        with self._lock:
            self._bytes_read += bytes_read
            self._records_read += records

    def add_scored(self, records: int) -> None:
        with self._lock:
            self._records_scored += records

    def snapshot(self) -> ProgressCounts:
        with self._lock:
            return ProgressCounts(self._bytes_read, self._records_read, self._records_scored)


# the one instance of this process (see the module docstring for why it is global)
PROGRESS = ProgressCounters()
