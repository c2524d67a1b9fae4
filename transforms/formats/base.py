"""What an input or an output format is, and what the formats share: opening a shard (gzip
detected from its first bytes, not its name), the record cap, and reading ahead in a thread.

An **input format** turns one shard into batches and error rows, in record order:
- `RecordBatch`es of serialized tf.Examples (TFRecord), which the parse step passes on as they
  are, or `ColumnBatch`es of named columns (CSV's text columns; a typed source's numbers and
  lists), which the parse step converts with the feature spec;
- error rows (`transforms.records.error_row` dicts) for what it cannot read: a damaged record,
  a line longer than the cap, the unreadable rest of a file.
The generic reading step (`transforms.read`) counts records, error rows and unreadable tails
from what the format yields, so a format only adds the facts it alone knows to the shard's
stats: the bytes it read as stored (`bytes`) and whether the shard was gzip (`gzip`).

A format may also be **splittable** (`InputFormat.splittable`): a plain (not gzip) file larger
than the split size is then cut into blocks that different workers read. Cutting happens in
two passes, both in the pipeline: every range of the file's fixed grid is *summarized*
(`summarize_range`: where records start in it, how many there are), then the summaries, in
order, become the file's `SplitIndex` (`index_file`): for each block, the byte offset of its
first record, that record's index and line number. A block is then a byte slice of whole
records whose identity is known, and `read_block` reads it alone with the same result as the
serial reader gives for those records (indices, line numbers, error rows, messages).

An **output format** writes prediction batches into one file (`OutputFormat.open_writer`):
a text format only turns a batch into the lines of its rows (`encode`) and names the first line
of its files (`header`); a binary one (Parquet, TFRecord) writes its own framing, with the
columns' dtypes and shapes known before the first row (`ColumnType`). Each names its files'
suffix.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import io
import gzip
import queue
import threading
from typing import TYPE_CHECKING, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records import MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from transforms.feature_spec import FeatureSpec
    from transforms.records import Batch

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "READ_CHUNK", "PAYLOAD_KEEP", "InputFormat",
           "OutputFormat", "ColumnType", "PredictionWriter", "LinesWriter", "SplitIndex",
           "open_shard", "open_range", "shard_stream", "ReadAhead", "is_gzip"]

# The largest record (TFRecord frame or CSV line) read into memory; a larger one is an error
# row, so that a corrupt length field or a file with no line ends cannot exhaust memory.
DEFAULT_MAX_RECORD_BYTES = 128 << 20
READ_CHUNK = 4 << 20  # bytes asked of a shard's stream at once
_GZIP_MAGIC = b"\x1f\x8b"
# one byte beyond what an error row keeps, so that the row says its payload was cut
PAYLOAD_KEEP = MAX_PAYLOAD_BYTES + 1


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """How one input file is read: as a whole (`split` False: one block, the format's
    `read_shard`), or as blocks of whole records that can be read independently.

    Block k holds the records whose first byte is in [starts[k], end(k)), where end(k) is
    starts[k+1] (the file's size for the last block); starts[0] == 0 and starts never
    decrease (a block that holds no record start is empty: starts[k] == starts[k+1]).
    `first_index[k]` is the record index of block k's first record (record indices count
    every record, error rows included, exactly as the serial reader numbers them) and
    `first_line[k]` the line number of its first line (CSV; 0 for other formats). `header`
    is what a CSV file's first block begins with (its column names), for the blocks after it.

    A large file's index is handed to the reading step in slices of consecutive blocks
    (`slices`), so that no element carries the whole index: a slice numbers its blocks from 0,
    `first_block` is its first block's number in the file (block 0 of the file is the one that
    starts with a CSV header: `is_file_start`), and `stop` is where its last block ends.
    """
    path: str
    size: int
    split: bool = False
    starts: tuple = (0,)
    first_index: tuple = (0,)
    first_line: tuple = (0,)
    header: tuple | None = None
    first_block: int = 0
    stop: int | None = None

    @property
    def blocks(self) -> int:
        return len(self.starts)

    def end(self, block: int) -> int:
        if block + 1 < len(self.starts):
            return self.starts[block + 1]
        return self.size if self.stop is None else self.stop

    def is_file_start(self, block: int) -> bool:
        return self.first_block + block == 0

    def slices(self, max_blocks: int) -> list[SplitIndex]:
        """This index as consecutive slices of at most `max_blocks` blocks."""
        if self.blocks <= max_blocks:
            return [self]
        out = []
        for a in range(0, self.blocks, max_blocks):
            b = min(a + max_blocks, self.blocks)
            out.append(dataclasses.replace(
                self, starts=self.starts[a:b], first_index=self.first_index[a:b],
                first_line=self.first_line[a:b], first_block=self.first_block + a,
                stop=self.end(b - 1)))
        return out

    def block_bytes(self, block: int) -> int:
        return self.end(block) - self.starts[block]


class InputFormat(abc.ABC):
    """One kind of input file: what `--input_format NAME` reads.

    `name` is the option's value; `title` is how messages name the files ("CSV");
    `extensions` are the lower-case file name endings that mean this format when
    `--input_format` is not given (the longest matching ending of any format wins, so `.csv.gz`
    beats `.gz`). An instance is carried to the workers inside the reading step: it must be
    picklable and small.
    """
    name: str
    title: str
    extensions: tuple[str, ...]
    # True when batches are serialized tf.Examples that hold the key (the model step reads it
    # from them); False when the parse step takes the key from a column
    keys_in_examples: bool = False

    @abc.abstractmethod
    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator[Batch | dict]:
        """Yield the shard's records in order, as batches of at most `batch_size` records
        (each from this shard only) and error rows (dicts), one per record that cannot be
        read, or one for an unreadable rest of the file. `columns` names the columns the job
        reads (the spec's features and the key): a column-oriented source may leave out the
        others. No record longer than `max_record_bytes` may be held in memory: it is an
        error row. Record what only the format knows in `stats`: "bytes", the bytes read as
        stored, and "gzip" (`shard_stream` sets both); and, for live progress, "position": a
        callable giving how far into the shard's bytes as stored reading has come
        (`shard_stream` and `open_range(..., stats)` set it; without it live progress moves
        once the whole shard is read)."""

    @abc.abstractmethod
    def key_dtype(self, path: str, key: str, max_record_bytes: int) -> str:
        """The dtype ("string", "int64" or "float32") of the key column `key` when it is not a
        feature of the spec and --key_dtype is auto; `path` is the job's first input."""

    def check_first_shard(self, path: str, spec: FeatureSpec, key_field: str | None,
                          max_record_bytes: int) -> None:
        """A start-up check of the job's first input, before any worker starts: raises
        transforms.errors.InputError for a file the job could not use. Nothing by default."""

    def field_type(self, path: str, name: str, max_record_bytes: int) -> ColumnType | None:
        """The type of field `name`, which the spec does not have, as the job's first input
        `path` holds it (for --passthrough_fields; `transforms.passthrough`), or None when it
        is not there. Raises ValueError for a field of a type passthrough does not copy."""
        return None

    # --- splitting (only for formats with `splittable` True) ----------------------------------
    # True when the three methods below are implemented; gzip files are never split
    splittable: bool = False

    def summarize_range(self, path: str, start: int, stop: int, size: int,
                        max_record_bytes: int):
        """What `index_file` needs to know of the bytes [start, stop) of the plain file
        `path` (`size` bytes long), found without knowing anything of the bytes before
        `start`: a small picklable value (no payloads). Runs on a worker, one call per range
        of the file's grid, in parallel."""
        raise NotImplementedError

    def index_file(self, path: str, size: int, ranges: list[tuple[int, int]],
                   summaries: list, max_record_bytes: int) -> SplitIndex | None:
        """The file's blocks (one per grid range, in order) from the summaries of its ranges
        (`ranges[k]` is (start, stop) of `summaries[k]`), or None when the file must be read
        as a whole (what it holds makes a block's start or identity uncertain: the reason
        is logged). May read the file again where a summary alone cannot settle a block."""
        raise NotImplementedError

    def read_block(self, index: SplitIndex, block: int, batch_size: int,
                   columns: list[str] | None, max_record_bytes: int,
                   stats: dict) -> Iterator[Batch | dict]:
        """`read_shard` for block `block` of a split file: its records, as the serial reader
        would yield them (same indices, lines, error rows and messages), in batches that
        never mix blocks. Sets stats["bytes"] to the bytes read (and "position" as
        `read_shard` does)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ColumnType:
    """What is known before the first row of one output column: its dtype (TensorFlow's name:
    "float32", "int64", "string", "bool", ...) and the shape of one row's value: () a scalar,
    (4,) a vector, (2, 3) a matrix, None in a dimension whose length the model does not
    declare, `shape` None when not even the rank is known. A binary format builds its schema
    from these; what is unknown is taken from the first batch it writes."""
    dtype: str
    shape: tuple | None = ()


class PredictionWriter(abc.ABC):
    """Writes prediction batches into one open binary stream, in one output format."""

    @abc.abstractmethod
    def write(self, batch) -> None:
        """Append the rows of a `PredictionBatch` (at least one row)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Write what ends the file (a footer, the end of a compressed stream). Closing the
        stream is the caller's: it may hold a complete file without a row."""


class LinesWriter(PredictionWriter):
    """A text format's file: the header line (if any), then each batch's rows as lines."""

    def __init__(self, fh, header: bytes | None, encode, key_field: str | None):
        self._fh, self._encode, self._key_field = fh, encode, key_field
        if header is not None:
            fh.write(header + b"\n")

    def write(self, batch) -> None:
        block = self._encode(batch, self._key_field)
        if block:
            self._fh.write(block)
            self._fh.write(b"\n")

    def close(self) -> None:
        pass


class OutputFormat(abc.ABC):
    """One kind of predictions file: what `--output_format NAME` writes.

    Files are `predictions-SSSSS-of-NNNNN` + `suffix` (".jsonl"), one per bundle of the
    writing step, each written through `open_writer`. Rows hold the key column first (or
    `shard`, `index` without a key), then every model output in name order
    (`transforms.formats.json_columns.row_columns`).

    A text format implements `encode` (one batch's rows as lines joined by "\\n", no newline at
    the end) and may name a `header` line; the default writer writes those. A binary format
    overrides `open_writer` instead. A run that scores no record still gets one file of the
    family: `empty_file`, what the format's writer gives for no rows.
    """
    name: str
    suffix: str

    def header(self, key_field: str | None, columns: list[str]) -> bytes | None:
        return None

    def encode(self, batch, key_field: str | None) -> bytes:
        """The rows of a `PredictionBatch` as text (text formats)."""
        raise NotImplementedError(f"output format {self.name!r} writes through open_writer")

    def open_writer(self, fh, key_field: str | None, columns: list[str],
                    column_types: dict[str, ColumnType]) -> PredictionWriter:
        """A writer of prediction batches into the binary stream `fh` (a new, empty file).
        `columns` are the row's columns after the key, in row order (passthrough fields,
        then model outputs: `json_columns.value_columns`); `column_types` maps the row's
        columns (key or shard and index, and the others) to what is known of them (a column
        missing from it is known from the first batch only)."""
        return LinesWriter(fh, self.header(key_field, columns), self.encode, key_field)

    def empty_file(self, key_field: str | None, columns: list[str],
                   column_types: dict[str, ColumnType]) -> bytes:
        """The content of a file of this format without a row (a header line, a Parquet
        schema with no row group, nothing at all)."""
        buf = io.BytesIO()
        self.open_writer(buf, key_field, columns, column_types).close()
        return buf.getvalue()


def open_shard(path: str):
    """(binary stream of the shard's content, whether it was gzip): gunzipped when it starts
    with gzip magic, whatever its name."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    head = raw.read(2)
    if head == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), True
    raw.seek(0)
    return raw, False


def is_gzip(path: str) -> bool:
    """Whether the file starts with gzip's magic bytes (its name is not asked)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        return raw.read(2) == _GZIP_MAGIC


class _Range(io.RawIOBase):
    """The bytes [start, stop) of a seekable binary stream, as a stream of their own."""

    def __init__(self, raw, start: int, stop: int):
        super().__init__()
        raw.seek(start)
        self._raw, self._left, self.read_bytes = raw, stop - start, 0

    def readable(self):
        return True

    def readinto(self, b) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(b)[:min(len(b), self._left)]
        n = self._raw.readinto(view) or 0  # straight into the caller's buffer: no copy
        self._left -= n
        self.read_bytes += n
        if n == 0:
            self._left = 0
        return n

    def close(self):
        if not self.closed:
            self._raw.close()
        super().close()


def open_range(path: str, start: int, stop: int, stats: dict | None = None):
    """A buffered binary stream of the bytes [start, stop) of a plain file, local or remote;
    its `raw.read_bytes` is how many were read (also stats["position"] when `stats` given)."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    stream = io.BufferedReader(_Range(raw, start, stop), buffer_size=READ_CHUNK)
    if stats is not None:
        stats["position"] = lambda: stream.raw.read_bytes
    return stream


@contextlib.contextmanager
def shard_stream(path: str, stats: dict):
    """`open_shard` for a format's `read_shard`: sets stats["gzip"], and stats["bytes"] (as
    stored: compressed bytes for a gzip file) once the shard was read to its end."""
    stream, gz = open_shard(path)
    stats["gzip"] = gz
    raw = stream.fileobj if gz else stream  # the file itself, under the gunzipping
    stats["position"] = raw.tell
    try:
        yield stream
        stats["bytes"] = raw.tell()
    finally:
        stream.close()


class ReadAhead:
    """Runs a reading iterator in a helper thread, up to `depth` items ahead of its consumer.

    For readers whose work mostly releases the GIL (decompression, pyarrow's CSV parser): the
    next block is read while the bundle thread converts, predicts and writes the previous one.
    (Not for TFRecord: its framing loop is Python per record and would only contend for the
    GIL.) Items and the iterator's exception (re-raised in the consumer) keep their order.
    `close()` stops the thread and waits for it: call it before closing the stream the
    iterator reads. With `stats` holding a "position" (see `InputFormat.read_shard`), the
    position is taken as each item is made and shown once the consumer has it: live progress
    does not count what is read ahead and not yet handed on."""

    def __init__(self, items: Iterator, depth: int = 2, stats: dict | None = None):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._made = self._handed = None
        if stats is not None and stats.get("position") is not None:
            self._made, self._handed = stats["position"], 0
            stats["position"] = lambda: self._handed
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True,
                                        name="read-ahead")
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator):
        try:
            for item in items:
                if not self._put((True, item, self._position())):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer as it is
            self._put((False, e, None))
            return
        self._put((False, None, self._position()))

    def _position(self) -> int | None:
        """The stream's position now (None: not asked for, or it cannot tell)."""
        try:
            return None if self._made is None else self._made()
        except (ValueError, OSError):  # a stream closed under it
            return None

    def __iter__(self):
        while True:
            ok, value, position = self._queue.get()
            if position is not None:  # of an item, or of the end (all of it handed on)
                self._handed = position
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value

    def close(self):
        self._stop.set()
        self._thread.join()
