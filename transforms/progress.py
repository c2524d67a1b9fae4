"""Live progress counters of a local run: bytes and records read, records scored, and records
that became error rows (read, parsed or scored: done, but not scored).

Process-global on purpose: the reading and scoring DoFns run in this process's bundle threads
(in-process FnApiRunner) and the launcher's ProgressReporter (pipeline/progress.py) reads the
same counters. Local worker subprocesses (--direct_running_mode=multi_processing) inherit
PROGRESS_DIR_ENV from the launcher: each then also writes its totals to `DIR/PID.json` (at
most every PUBLISH_SECONDS while counting, and at the end of every block read and bundle
scored), and the launcher adds the files up (`PublishedProgress`). Dataflow workers keep
copies nobody reads; the cost there is one locked add per batch.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import threading
import time

__all__ = ["ProgressCounts", "ProgressCounters", "PublishedProgress", "PROGRESS",
           "PROGRESS_DIR_ENV", "PUBLISH_SECONDS"]

PROGRESS_DIR_ENV = "BATCH_PREDICT_PROGRESS_DIR"
PUBLISH_SECONDS = 0.5


@dataclasses.dataclass(frozen=True)
class ProgressCounts:
    bytes_read: int = 0
    records_read: int = 0
    records_scored: int = 0
    records_failed: int = 0
    gzip_bytes_read: int = 0  # of bytes_read and records_read, those of gzip files
    gzip_records_read: int = 0

    @property
    def done(self) -> int:
        """Records scored or become error rows: none of them has anything left to do."""
        return self.records_scored + self.records_failed

    def __add__(self, other: "ProgressCounts") -> "ProgressCounts":
        return ProgressCounts(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                      dataclasses.astuple(other))))

    def __sub__(self, other: "ProgressCounts") -> "ProgressCounts":
        return ProgressCounts(*(a - b for a, b in zip(dataclasses.astuple(self),
                                                      dataclasses.astuple(other))))


class ProgressCounters:
    """Thread-safe running totals; callers add once per batch or block, never per record.
    With `publish_dir`, the totals are also written to a file of this process there."""
    per_job = False  # process-wide: a reader counts from a snapshot taken at its start

    def __init__(self, publish_dir: str | None = None):
        self._lock = threading.Lock()
        self._counts = ProgressCounts()
        self._dir = publish_dir
        self._published = 0.0  # monotonic time of the last write

    def add_read(self, bytes_read: int = 0, records: int = 0, failed: int = 0,
                 gzip: bool = False) -> None:
        """Bytes and records read; `failed` of those records are error rows already; `gzip`:
        they are of a gzip file."""
        self._add(ProgressCounts(bytes_read, records, 0, failed,
                                 bytes_read if gzip else 0, records if gzip else 0))

    def add_scored(self, records: int, failed: int = 0) -> None:
        """Records scored, and records that became error rows in a later step."""
        self._add(ProgressCounts(0, 0, records, failed))

    def _add(self, counts: ProgressCounts) -> None:
        with self._lock:
            self._counts += counts
        self._maybe_publish()

    def snapshot(self) -> ProgressCounts:
        with self._lock:
            return self._counts

    def _maybe_publish(self) -> None:
        if self._dir is not None and time.monotonic() - self._published >= PUBLISH_SECONDS:
            self.publish()

    def publish(self) -> None:
        """Write the totals to `DIR/PID.json` now (no-op without a publish dir). Replaced
        whole, so a reader never sees half a file; a dir gone (the run ended) is ignored."""
        if self._dir is None:
            return
        self._published = time.monotonic()
        path = os.path.join(self._dir, f"{os.getpid()}.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(dataclasses.asdict(self.snapshot()), f)
            os.replace(path + ".tmp", path)
        except OSError:
            pass


class PublishedProgress:
    """The sum of what worker processes published to `directory` (`snapshot()`, as
    ProgressCounters has): what a launcher reads for workers it cannot see into."""
    per_job = True  # a run's own dir

    def __init__(self, directory: str):
        self._dir = directory

    def snapshot(self) -> ProgressCounts:
        total = ProgressCounts()
        for path in glob.glob(os.path.join(glob.escape(self._dir), "*.json")):
            try:
                with open(path) as f:
                    total += ProgressCounts(**json.load(f))
            except (OSError, ValueError, TypeError):
                continue  # replaced or removed while read: the next sample has it
        return total


# the one instance of this process (see the module docstring for why it is global)
PROGRESS = ProgressCounters(os.environ.get(PROGRESS_DIR_ENV) or None)
