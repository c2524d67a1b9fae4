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
import socket
import stat
import time
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from transforms import formats
from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, InputFormat, SplitIndex,
                                     is_gzip)
from transforms.metrics import JobCounters
from transforms.progress import PROGRESS
from transforms.records import Batch

__all__ = ["DEFAULT_SPLIT_BYTES", "match_inputs", "tally", "split_grid", "read_units",
           "index_locally",
           "ReadFilesDoFn", "ReadBlocksDoFn", "ReadRecordBatches"]

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


def _counted(items: Iterator, part: dict, span: int) -> Iterator:
    """`items` (the tallied outputs of a block of `span` bytes), adding to the live progress
    counters as they come: the block's records (and error rows) so far, and how far into its
    bytes reading has come (its format's "position", read before each item is passed on; all
    of `span` once the block is done, so a run's bytes add up to its input's size)."""
    seen = [0, 0, 0]  # bytes, records, error rows
    for item in items:
        position = part.get("position")
        if position is not None:
            try:
                now = min(max(position(), seen[0]), span)
            except (ValueError, OSError):  # closed by a read-ahead thread that finished
                now = seen[0]
            seen = _add_read(seen, now, part)
        yield item
    _add_read(seen, span, part)
    PROGRESS.publish()


def _add_read(seen: list, position: int, part: dict) -> list:
    now = [position, part["records"], part["read_errors"]]
    PROGRESS.add_read(*(a - b for a, b in zip(now, seen)), gzip=part["gzip"])
    return now


# --- splitting ----------------------------------------------------------------------------------
DEFAULT_SPLIT_BYTES = 64 << 20  # a read range: textio's default bundle size
MIN_SPLIT_BYTES = 4096  # --split_bytes below this (but 0) is refused
MAX_RANGES = 100_000  # per file: a larger file gets larger ranges
SLICE_BLOCKS = 64  # blocks per element of the reading step (see SplitIndex.slices)
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # this worker process, in the read stats


def split_grid(size: int, split_bytes: int) -> list[tuple[int, int]]:
    """The fixed grid of [start, stop) ranges a file of `size` bytes is cut into: ranges of
    `split_bytes`, or larger ones where that would make more than MAX_RANGES."""
    step = max(split_bytes, -(-size // MAX_RANGES))
    return [(a, min(a + step, size)) for a in range(0, size, step)]


def read_units(files: list[tuple[str, int]], input_format: InputFormat,
               split_bytes: int) -> int:
    """How many independent reads the files give (what the plan weighs against the workers):
    one per file, or one per range of a large file the format can split. A `.gz` name
    counts as one (gzip is read as a whole; the workers check the bytes, this counts names)."""
    if not input_format.splittable or split_bytes <= 0:
        return len(files)
    return sum(1 if size <= split_bytes or path.lower().endswith(".gz")
               else len(split_grid(size, split_bytes)) for path, size in files)


def index_locally(input_format: InputFormat, path: str, size: int, split_bytes: int,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SplitIndex:
    """A file's SplitIndex, its ranges summarized one after the other in this process: what
    the PlanSplits, SummarizeRanges and IndexFiles steps compute on workers (tools, tests)."""
    if not (input_format.splittable and 0 < split_bytes < size) or is_gzip(path):
        return SplitIndex(path, size)  # what PlanSplitsDoFn reads whole
    parts = [(k, size, a, b, input_format.summarize_range(path, a, b, size, max_record_bytes))
             for k, (a, b) in enumerate(split_grid(size, split_bytes))]
    index = input_format.index_file(path, size, split_grid(size, split_bytes),
                                    [p[4] for p in parts], max_record_bytes)
    return index if index is not None else SplitIndex(path, size)


class PlanSplitsDoFn(beam.DoFn):
    """(path, size) -> the file's SplitIndex for reading it whole, or (tag "ranges") the
    ranges of its grid, for a plain file larger than `split_bytes` that the format can split."""

    def __init__(self, input_format: InputFormat, split_bytes: int):
        self._format = input_format
        self._split_bytes = split_bytes

    def process(self, file: tuple[str, int]):
        path, size = file
        if (not self._format.splittable or self._split_bytes <= 0
                or size <= self._split_bytes or is_gzip(path)):
            yield SplitIndex(path, size)
            return
        grid = split_grid(size, self._split_bytes)
        _LOG.info("read %s: %d ranges of %d bytes to index", path, len(grid), self._split_bytes)
        for k, (a, b) in enumerate(grid):
            yield beam.pvalue.TaggedOutput("ranges", (path, size, k, a, b))


class SummarizeRangeDoFn(beam.DoFn):
    """(path, size, k, start, stop) -> (path, (k, summary)): the format's look at one range."""

    def __init__(self, input_format: InputFormat, max_record_bytes: int):
        self._format = input_format
        self._max_record_bytes = max_record_bytes

    def process(self, item):
        path, size, k, a, b = item
        summary = self._format.summarize_range(path, a, b, size, self._max_record_bytes)
        yield path, (k, size, a, b, summary)


class IndexFileDoFn(beam.DoFn):
    """(path, [(k, size, start, stop, summary)]) -> the file's SplitIndex (whole when the
    format cannot settle its blocks), in slices of SLICE_BLOCKS blocks: the reading step's
    elements stay small however large the file."""

    def __init__(self, input_format: InputFormat, max_record_bytes: int):
        self._format = input_format
        self._max_record_bytes = max_record_bytes

    def process(self, item):
        path, parts = item
        parts = sorted(parts, key=lambda part: part[0])
        size = parts[0][1]
        ranges = [(a, b) for _, _, a, b, _ in parts]
        index = self._format.index_file(path, size, ranges, [p[4] for p in parts],
                                        self._max_record_bytes)
        if index is None:
            yield SplitIndex(path, size)
            return
        _LOG.info("read %s: %d blocks", path, index.blocks)
        yield from index.slices(SLICE_BLOCKS)


class _BlocksProvider(beam.transforms.core.RestrictionProvider):
    """A file's read restriction: the range of its blocks [first, last). Split up front into
    single blocks, and on Dataflow split further while running (dynamic work rebalancing) at
    block boundaries; sized in bytes, so the runner weighs work by what is left to read."""

    def initial_restriction(self, index: SplitIndex) -> OffsetRange:
        return OffsetRange(0, index.blocks)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, index: SplitIndex, restriction: OffsetRange):
        for block in range(restriction.start, restriction.stop):
            yield OffsetRange(block, block + 1)

    def restriction_size(self, index: SplitIndex, restriction: OffsetRange) -> int:
        if restriction.stop <= restriction.start:
            return 0
        return index.end(restriction.stop - 1) - index.starts[restriction.start]


class _ReadDoFn(beam.DoFn):
    """What the two reading DoFns share: a file's blocks, claimed one by one, into batches
    with its input format; error rows and one shard-stats row per element."""

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

    def _block_items(self, index: SplitIndex, block: int, stats: dict) -> Iterator:
        if not index.split:
            return self._format.read_shard(index.path, self._batch_size, self._columns,
                                           self._max_record_bytes, stats)
        return self._format.read_block(index, block, self._batch_size, self._columns,
                                       self._max_record_bytes, stats)

    def _read(self, index: SplitIndex, first: int, claim) -> Iterator:
        """Blocks first, first + 1, ... of `index` for as long as `claim(block)` grants them."""
        path = index.path
        where = (path if not index.split
                 else f"{path} [bytes {index.starts[first]}-...]")
        start = time.monotonic()
        _LOG.info("read %s: start", where)
        stats = {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": False,
                 "bytes": 0, "files": 0, "blocks": 0, "worker": WORKER}
        block = first
        while claim(block):
            part = {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": False,
                    "bytes": 0}
            yield from _counted(tally(self._block_items(index, block, part), part), part,
                                index.block_bytes(block))
            for k in ("records", "read_errors", "bytes"):
                stats[k] += part[k]
            stats["unreadable_tail"] |= part["unreadable_tail"]
            stats["gzip"] |= part["gzip"]
            stats["files"] += index.is_file_start(block)  # counts the file once
            stats["blocks"] += 1
            block += 1
        self._metrics.input_bytes.inc(stats["bytes"])
        self._metrics.records_in.inc(stats["records"])
        self._metrics.read_errors.inc(stats["read_errors"])
        stats["read_seconds"] = round(time.monotonic() - start, 3)
        if index.split:
            where = f"{path} [bytes {index.starts[first]}-{index.end(block - 1)}]" \
                if block > first else f"{path} [no block]"
        _LOG.info("read %s: %d records (%d unreadable) in %.1fs", where, stats["records"],
                  stats["read_errors"], stats["read_seconds"])
        yield beam.pvalue.TaggedOutput("shard_stats", (path, stats))


class ReadFilesDoFn(_ReadDoFn):
    """Reads one whole file per element, (path, size): the reading step when no file is
    split (a plain DoFn: a splittable one costs a runner more steps per job)."""

    def process(self, file: tuple[str, int]):
        yield from self._read(SplitIndex(*file), 0, lambda block: block == 0)

    def process_file(self, path: str) -> Iterator:
        """One whole file's outputs, in this process, without a runner (tools and tests)."""
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        yield from self.process((path, size))


class ReadBlocksDoFn(_ReadDoFn):
    """Reads the blocks of a file its restriction holds (a whole file is one block).

    Each block is claimed before any of its records is emitted: a block belongs to exactly one
    restriction however the runner splits them, so every record is read once."""

    def process(self, index: SplitIndex,
                tracker=beam.DoFn.RestrictionParam(_BlocksProvider())):
        yield from self._read(index, tracker.current_restriction().start, tracker.try_claim)


class ReadRecordBatches(beam.PTransform):
    """Files -> batches of records from one shard each (+ 'errors', 'shard_stats' outputs).

        ListShards | SpreadShards | PlanSplits --------------------------------+
                                              \ ranges | SpreadRanges          |
                                                | SummarizeRanges | GroupRanges | IndexFiles
                                                                                |
                                                      Flatten | ReadBlocks (splittable)

    When no file is larger than `split_bytes` (0: never split) or the format cannot split,
    the graph is `ListShards | SpreadShards | ReadShards`, one plain read per file. Otherwise
    a file is read whole unless its format can split it, it is plain (not gzip) and larger
    than `split_bytes`: then every range of its grid is summarized in
    parallel, the summaries become the file's blocks, and the reading step (a splittable
    DoFn over block ranges) reads blocks wherever the runner sends them. `input_format` is a
    registered format's name, looked up here, at construction: the steps carry the format
    itself to the workers."""

    def __init__(self, files: list[str], input_format: str, batch_size: int,
                 columns: list[str] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 split_bytes: int = DEFAULT_SPLIT_BYTES, sizes: list[int] | None = None):
        super().__init__()
        self._format = formats.input_format(input_format)
        self._files = list(files)
        self._sizes = list(sizes) if sizes is not None else None
        self._batch_size = batch_size
        self._columns = columns
        self._max_record_bytes = max_record_bytes
        self._split_bytes = split_bytes

    def _may_split(self, sizes: list[int]) -> bool:
        return (self._format.splittable and self._split_bytes > 0
                and any(size > self._split_bytes for size in sizes))

    def _reader(self, dofn: type[_ReadDoFn]):
        return (beam.ParDo(dofn(self._format, self._batch_size, self._columns,
                                self._max_record_bytes))
                .with_output_types(Batch)
                .with_outputs("errors", "shard_stats", main="batches"))

    def expand(self, pbegin):
        sizes = self._sizes
        if sizes is None:
            sizes = [m.size_in_bytes for f in self._files
                     for m in FileSystems.match([f])[0].metadata_list[:1]]
        files = (pbegin
                 | "ListShards" >> beam.Create(list(zip(self._files, sizes)), reshuffle=False)
                 | "SpreadShards" >> beam.Reshuffle())
        if not self._may_split(sizes):  # every file is one read
            return files | "ReadShards" >> self._reader(ReadFilesDoFn)
        planned = files | "PlanSplits" >> beam.ParDo(
            PlanSplitsDoFn(self._format, self._split_bytes)).with_outputs("ranges", main="whole")
        indexed = (planned.ranges
                   | "SpreadRanges" >> beam.Reshuffle()
                   | "SummarizeRanges" >> beam.ParDo(SummarizeRangeDoFn(
                       self._format, self._max_record_bytes))
                   | "GroupRanges" >> beam.GroupByKey()
                   | "IndexFiles" >> beam.ParDo(IndexFileDoFn(self._format,
                                                              self._max_record_bytes)))
        return ((planned.whole, indexed)
                | "AllFiles" >> beam.Flatten()
                | "ReadBlocks" >> self._reader(ReadBlocksDoFn))
