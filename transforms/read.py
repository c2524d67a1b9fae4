"""Reading input shards into batches, whatever their format, local or gs://.

Files are opened through Beam's `FileSystems` (so gs:// works wherever Beam's GCS filesystem
does). What a shard's bytes mean is its input format's business (`transforms.formats`: TFRecord,
CSV, or any registered one): `ReadRecordBatches` looks the format up by name and runs its
`read_shard` on every shard, one shard per element, and counts what it yields (records, error
rows, unreadable tails) into the shard's stats, the same way for every format.

Inputs are matched once per file, whatever the spelling (`a`, `./a`, `/abs/a`, a symlink to
it); a pattern that names only a directory is an InputError.
"""
from __future__ import annotations

import logging
import os
import stat
import time
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import formats
from transforms.errors import InputError
from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES, InputFormat
from transforms.metrics import JobCounters
from transforms.records import Batch

__all__ = ["match_inputs", "tally", "ReadShardDoFn", "ReadRecordBatches"]

_LOG = logging.getLogger(__name__)


def _same_file_key(path: str):
    """What identifies a file whatever its spelling: a local file's device and inode (so `a`,
    `./a`, `/abs/a`, a symlink and a hard link to it are one), the object name otherwise."""
    if "://" in path and not path.startswith("file://"):
        return path
    local = path[len("file://"):] if path.startswith("file://") else path
    try:
        info = os.stat(local)
    except OSError:
        return os.path.realpath(local)
    return (info.st_dev, info.st_ino)


def _is_local_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def _is_local_special(path: str) -> bool:
    """A local path that exists and is neither a regular file nor a directory."""
    if "://" in path:
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def match_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size) of every file the patterns match, each file once (under the first
    spelling that matched it); fails on a pattern matching nothing, or only directories."""
    files: dict[str, tuple[str, int]] = {}
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # BeamIOError with a per-pattern cause
            raise InputError(f"cannot list input {pattern}: {e}") from None
        matched = [m for m in matched if not m.path.endswith("/")]
        dirs = [m for m in matched if _is_local_dir(m.path)]
        matched = [m for m in matched if not _is_local_dir(m.path)]
        if dirs and not matched:
            d = dirs[0].path.rstrip("/")
            raise InputError(f"input {pattern} is a directory; pass a glob such as {d}/*")
        if not matched:
            raise InputError(f"input pattern {pattern} matches no files")
        special = [m.path for m in matched if _is_local_special(m.path)]
        if special:  # a FIFO would block the job forever, a device would never end
            raise InputError(f"input {special[0]} is not a regular file (a FIFO, socket or "
                             "device); copy the data into a file and pass that")
        for m in matched:
            first = files.setdefault(_same_file_key(m.path), (m.path, m.size_in_bytes))
            if first[0] != m.path:
                _LOG.info("input %s is the same file as %s: read once", m.path, first[0])
    return sorted(files.values())


def tally(items: Iterator, stats: dict) -> Iterator:
    """A format's `read_shard` items as the reading step's outputs, counted into `stats`:
    batches as they are, error rows tagged "errors"; every error row is one record."""
    for item in items:
        if isinstance(item, dict):
            stats["records"] += 1
            stats["read_errors"] += 1
            stats["unreadable_tail"] |= item["error_type"] == "unreadable_tail"
            yield beam.pvalue.TaggedOutput("errors", item)
        else:
            stats["records"] += len(item)
            yield item


# --- the DoFn and transform ---------------------------------------------------------------------
class ReadShardDoFn(beam.DoFn):
    """Reads one shard (file path) into batches with its input format (an InputFormat, or a
    registered format's name); emits error rows and one shard-stats row."""

    def __init__(self, input_format: InputFormat | str, batch_size: int,
                 columns: list[str] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        self._format = (formats.input_format(input_format) if isinstance(input_format, str)
                        else input_format)
        self._batch_size = batch_size
        self._columns = columns
        self._max_record_bytes = max_record_bytes

    def setup(self):
        self._metrics = JobCounters()

    def process(self, path: str):
        start = time.monotonic()
        _LOG.info("read %s: start", path)
        stats = {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": False,
                 "bytes": 0}
        yield from tally(self._format.read_shard(path, self._batch_size, self._columns,
                                                 self._max_record_bytes, stats), stats)
        self._metrics.input_bytes.inc(stats["bytes"])
        self._metrics.records_in.inc(stats["records"])
        self._metrics.read_errors.inc(stats["read_errors"])
        stats["read_seconds"] = round(time.monotonic() - start, 3)
        _LOG.info("read %s: %d records (%d unreadable) in %.1fs", path, stats["records"],
                  stats["read_errors"], stats["read_seconds"])
        yield beam.pvalue.TaggedOutput("shard_stats", (path, stats))


class ReadRecordBatches(beam.PTransform):
    """Files -> batches of records from one shard each (+ 'errors', 'shard_stats' outputs).

    `input_format` is a registered format's name, looked up here, at construction: the step
    carries the format itself to the workers."""

    def __init__(self, files: list[str], input_format: str, batch_size: int,
                 columns: list[str] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        super().__init__()
        self._format = formats.input_format(input_format)
        self._files = list(files)
        self._batch_size = batch_size
        self._columns = columns
        self._max_record_bytes = max_record_bytes

    def expand(self, pbegin):
        return (pbegin
                | "ListShards" >> beam.Create(self._files, reshuffle=False)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.ParDo(ReadShardDoFn(self._format, self._batch_size,
                                                             self._columns,
                                                             self._max_record_bytes))
                .with_output_types(Batch)
                .with_outputs("errors", "shard_stats", main="batches"))
