"""Reading input shards into batches: TFRecord (plain or gzip) and CSV, local or gs://.

Files are opened through Beam's `FileSystems` (so gs:// works wherever Beam's GCS filesystem
does). TFRecord frames are checked with their CRCs record by record, so one corrupt record
becomes one error row instead of failing the file; gzip is detected from the magic bytes, not
the file name. CSV is read in blocks of a few MB: pyarrow's C++ parser turns a clean block into
string columns at once (`iter_csv_blocks`); a block it cannot read exactly as the stdlib `csv`
module would (quotes, blank lines, a wrong column count, invalid UTF-8) goes through `iter_csv`,
which keeps the line number of every row and lets one malformed row fail alone. Conversion to
tensors happens later, in `transforms.parse`, column by column.
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import queue
import struct
import threading
import time
import zlib
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records import Batch, CsvBatch, RecordBatch, error_row

_LOG = logging.getLogger(__name__)
NAMESPACE = "batch_predict"
_READ_CHUNK = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_CSV_FIELD_LIMIT = 1 << 30

FORMATS = ("tfrecord", "csv")


class InputError(ValueError):
    """Input options or files that cannot be used; the message says what to change."""


def infer_format(patterns: list[str]) -> str:
    kinds = set()
    for p in patterns:
        name = p.lower()
        if name.endswith((".csv", ".csv.gz")):
            kinds.add("csv")
        elif name.endswith((".tfrecord", ".tfrecord.gz", ".tfrecords", ".gz")):
            kinds.add("tfrecord")
        else:
            raise InputError(f"cannot infer the input format of {p} from its extension; "
                             "pass --input_format tfrecord|csv")
    if len(kinds) > 1:
        raise InputError("the inputs mix CSV and TFRecord files; score them in separate jobs "
                         "or pass --input_format")
    return kinds.pop()


def match_inputs(patterns: list[str]) -> list[tuple[str, int]]:
    """(path, size) of every file the patterns match; fails on a pattern matching nothing."""
    files: dict[str, int] = {}
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # BeamIOError with a per-pattern cause
            raise InputError(f"cannot list input {pattern}: {e}") from None
        matched = [m for m in matched if not m.path.endswith("/")]
        if not matched:
            raise InputError(f"input pattern {pattern} matches no files")
        for m in matched:
            files[m.path] = m.size_in_bytes
    return sorted(files.items())


# --- TFRecord framing ---------------------------------------------------------------------------
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def open_shard(path: str):
    """A binary stream of the shard's content, gunzipped when it starts with gzip magic."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    head = raw.read(2)
    if head == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), True
    raw.seek(0)
    return raw, False


_HEADER = struct.Struct("<QI")
_CRC = struct.Struct("<I")


def iter_tfrecord_batches(stream, max_records: int, chunk_bytes: int = _READ_CHUNK
                          ) -> Iterator[tuple]:
    """Yield ("ok", payloads, indices) lists of up to max_records good records, and
    ("error", index, error_type, message, payload) where a frame is damaged.

    Both CRCs of every frame are checked (masked CRC32C, as TensorFlow writes them). A bad data
    CRC loses one record; a bad length CRC or a broken stream loses the rest of the file.
    This loop is the reader's hot path: one pass per record, locals only, no calls but the
    two CRCs and one unpack.
    """
    import google_crc32c
    crc32c = google_crc32c.value
    unpack_header, unpack_crc = _HEADER.unpack_from, _CRC.unpack_from
    # read1 returns what one underlying read gives, so data decoded before a broken gzip
    # tail is not lost with the exception
    read = getattr(stream, "read1", stream.read)
    buf, pos, index, eof = b"", 0, 0, False
    payloads: list = []
    indices: list = []
    try:
        while True:
            if len(buf) - pos < 12 and not eof:
                chunk = read(chunk_bytes)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            if len(buf) - pos < 12:
                if len(buf) - pos:
                    if payloads:
                        yield ("ok", payloads, indices)
                        payloads, indices = [], []
                    yield ("error", index, "corrupt_record",
                           f"truncated record header at the end of the file ({len(buf) - pos} "
                           f"bytes); {index} records were read before it", buf[pos:])
                break
            length, length_crc = unpack_header(buf, pos)
            c = crc32c(buf[pos:pos + 8])
            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != length_crc:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                yield ("error", index, "unreadable_tail",
                       f"bad record length checksum (not a TFRecord file, or corrupt); {index} "
                       "records were read before it and the remainder of the file was not",
                       buf[pos:pos + 64])
                break
            end = pos + 12 + length
            if end + 4 > len(buf):
                if eof:
                    if payloads:
                        yield ("ok", payloads, indices)
                        payloads, indices = [], []
                    yield ("error", index, "corrupt_record",
                           f"truncated last record (needs {length} bytes); {index} records "
                           "were read before it", buf[pos + 12:])
                    break
                chunk = read(max(chunk_bytes, end + 4 - len(buf)))
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                continue
            data = buf[pos + 12:end]
            c = crc32c(data)
            if ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32 != \
                    unpack_crc(buf, end)[0]:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                yield ("error", index, "corrupt_record", "record data checksum mismatch", data)
            else:
                payloads.append(data)
                indices.append(index)
                if len(payloads) >= max_records:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
            pos = end + 4
            index += 1
    except (OSError, EOFError, zlib.error) as e:  # broken or cut-short gzip stream
        if payloads:
            yield ("ok", payloads, indices)
        yield ("error", index, "unreadable_tail",
               f"cannot decompress the file ({e}); {index} records were read before it and the "
               "remainder of the file was not", None)
        return
    if payloads:
        yield ("ok", payloads, indices)


def iter_tfrecords(stream, chunk_bytes: int = _READ_CHUNK) -> Iterator[tuple]:
    """Record by record: ("ok", index, payload) or ("error", index, type, message, payload)."""
    for item in iter_tfrecord_batches(stream, 1 << 16, chunk_bytes):
        if item[0] == "ok":
            yield from (("ok", i, p) for i, p in zip(item[2], item[1]))
        else:
            yield item


# --- CSV ----------------------------------------------------------------------------------------
def iter_csv(stream, header: list[str] | None = None, first_line: int = 1,
             first_index: int = 0) -> Iterator[tuple]:
    """Yield ("header", cols), ("ok", index, line, row) or ("error", index, line, type, msg, text).

    Blank lines are not records. The UTF-8 BOM is dropped; undecodable bytes are kept as
    surrogates so that conversion reports them on the row they belong to. `header`,
    `first_line` and `first_index` continue a file whose beginning was read elsewhere.
    """
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig" if header is None else "utf-8",
                            errors="surrogateescape", newline="")
    reader = csv.reader(text)
    index = first_index
    offset = first_line - 1
    last_line = 0
    while True:
        start = offset + last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            last_line = reader.line_num
            yield ("error", index if header is not None else None, start, "csv_format",
                   f"malformed CSV: {e}", None)
            if header is not None:
                index += 1
            continue
        last_line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip() and header is not None):
            continue  # blank line
        if header is None:
            header = [c.strip() for c in row]
            yield ("header", header)
            continue
        if len(row) != len(header):
            yield ("error", index, start, "csv_format",
                   f"row has {len(row)} columns, the header has {len(header)}", _csv_text(row))
        else:
            yield ("ok", index, start, row)
        index += 1


class _Prefixed(io.RawIOBase):
    """`head` bytes, then the rest of `stream`: hands a partly read file to the csv module."""

    def __init__(self, head: bytes, stream):
        self._head = memoryview(head)
        self._stream = stream

    def readable(self):
        return True

    def readinto(self, b):
        if len(self._head):
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(b))
        b[:len(data)] = data
        return len(data)


def _lone_cr(chunk: bytes) -> bool:
    """A carriage return outside a CRLF: a line end to the csv module, so line numbers would
    no longer follow the newlines counted here."""
    return b"\r" in chunk and chunk.count(b"\r") != chunk.count(b"\r\n")


def _arrow_ok(chunk: bytes) -> bool:
    """Whether pyarrow may parse this block with one row per line and the csv module's result:
    no quotes, no NUL, no lone carriage return. (Blank lines, which pyarrow skips, show up as
    a row count short of the line count and send the block to the csv module.)"""
    return b'"' not in chunk and b"\x00" not in chunk and not _lone_cr(chunk)


def iter_csv_blocks(stream, columns: list[str] | None = None, block_bytes: int = _READ_CHUNK
                    ) -> Iterator[tuple]:
    """CSV in blocks: yield ("header", cols), then ("table", table, text, first_index,
    first_line) for blocks that pyarrow parses into string columns (one row per line, `text`
    the block's raw lines), and `iter_csv` items for everything else.

    This is the reader's fast path: pyarrow's C++ tokenizer instead of a Python step per row.
    A block that pyarrow cannot take exactly as the csv module would (quotes, blank lines, a
    row with the wrong number of columns, invalid UTF-8) is read by `iter_csv` instead, with
    its line numbers and record indices continued; from the first quote on, the rest of the
    file is (a quoted field may span lines, and blocks are cut at line ends). `columns` limits
    the table to the named columns (the header keeps all names).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    read = getattr(stream, "read1", stream.read)
    buf, eof, broken = b"", False, None

    def fill(size):
        nonlocal buf, eof, broken
        pieces, have = [buf], len(buf)
        while not eof and have < size:
            try:
                data = read(size - have)
            except (OSError, EOFError, zlib.error) as e:  # broken or cut-short gzip stream
                data, broken = b"", e
            eof = not data
            pieces.append(data)
            have += len(data)
        buf = b"".join(pieces) if len(pieces) > 1 else buf

    fill(block_bytes)
    if buf.startswith(b"\xef\xbb\xbf"):
        buf = buf[3:]
    end = buf.find(b"\n")
    while end < 0 and not eof:  # a header longer than a block
        fill(len(buf) + block_bytes)
        end = buf.find(b"\n")
    head = buf[:end + 1] if end >= 0 else buf
    header = None
    if head.strip() and _arrow_ok(head):
        try:
            header = [c.strip() for c in next(csv.reader([head.decode("utf-8")]))]
        except (UnicodeDecodeError, csv.Error, StopIteration):
            header = None
    if header is None or len(set(header)) != len(header) or len(header) < 2:
        yield from iter_csv(io.BufferedReader(_Prefixed(buf, stream)))
        return
    yield ("header", header)
    buf = buf[len(head):]
    wanted = [c for c in (columns if columns is not None else header) if c in header]
    options = (pacsv.ReadOptions(column_names=header, block_size=max(block_bytes, 1 << 20)),
               pacsv.ParseOptions(newlines_in_values=False),
               pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                    include_columns=wanted, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False, null_values=[]))
    line, index = 2, 0
    while True:
        fill(block_bytes)
        if not buf:
            break
        cut = buf.rfind(b"\n") + 1 if not eof else len(buf)
        if cut == 0:  # a line longer than a block
            fill(len(buf) + block_bytes)
            continue
        chunk, buf = buf[:cut], buf[cut:]
        if b'"' in chunk or _lone_cr(chunk):
            yield from iter_csv(io.BufferedReader(_Prefixed(chunk + buf, stream)), header,
                                line, index)
            return
        lines = chunk.count(b"\n")
        rows = lines + (not chunk.endswith(b"\n"))
        table = None
        if b"\x00" not in chunk:
            try:
                table = pacsv.read_csv(pa.py_buffer(chunk), *options)
            except (pa.ArrowInvalid, pa.ArrowException):
                table = None
        if table is not None and table.num_rows == rows:
            yield ("table", table, chunk, index, line)
            index += rows
        else:
            for item in iter_csv(io.BytesIO(chunk), header, line, index):
                index = item[1] + 1
                yield item
        line += lines
    if broken is not None:
        yield ("error", index, line, "unreadable_tail", f"cannot decompress the file ({broken}); "
               f"{index} records were read before it and the remainder of the file was not",
               None)


class ReadAhead:
    """Runs a reading iterator in a helper thread, up to `depth` items ahead of its consumer.

    Used for CSV: decompression and pyarrow's CSV parser release the GIL, so the next block is
    read while the bundle thread converts, predicts and writes the previous one. (Not for
    TFRecord: its framing loop is Python per record and would only contend for the GIL.)
    Items and the iterator's exception (re-raised in the consumer) keep their order. `close()`
    stops the thread and waits for it: call it before closing the stream the iterator reads."""

    def __init__(self, items: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
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
                if not self._put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer as it is
            self._put((False, e))
            return
        self._put((False, None))

    def __iter__(self):
        while True:
            ok, value = self._queue.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value

    def close(self):
        self._stop.set()
        self._thread.join()


def _csv_text(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- the DoFn and transform ---------------------------------------------------------------------
class ReadShardDoFn(beam.DoFn):
    """Reads one shard (file path) into batches; emits error rows and one shard-stats row."""
    _csv_block_bytes = _READ_CHUNK

    def __init__(self, input_format: str, batch_size: int, columns: list[str] | None = None):
        self._format = input_format
        self._batch_size = batch_size
        self._columns = columns

    def setup(self):
        self._records = beam.metrics.Metrics.counter(NAMESPACE, "records_in")
        self._read_errors = beam.metrics.Metrics.counter(NAMESPACE, "read_errors")
        self._bytes = beam.metrics.Metrics.counter(NAMESPACE, "input_bytes")

    def process(self, path: str):
        start = time.monotonic()
        _LOG.info("read %s: start", path)
        stream, gz = open_shard(path)
        reader = self._read_tfrecord if self._format == "tfrecord" else self._read_csv
        stats = {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": gz}
        try:
            yield from reader(path, stream, stats)
        finally:
            stream.close()
        self._records.inc(stats["records"])
        self._read_errors.inc(stats["read_errors"])
        stats["read_seconds"] = round(time.monotonic() - start, 3)
        _LOG.info("read %s: %d records (%d unreadable) in %.1fs", path, stats["records"],
                  stats["read_errors"], stats["read_seconds"])
        yield beam.pvalue.TaggedOutput("shard_stats", (path, stats))

    def _read_tfrecord(self, path, stream, stats):
        for item in iter_tfrecord_batches(stream, self._batch_size):
            if item[0] == "ok":
                _, payloads, indices = item
                stats["records"] += len(payloads)
                yield _record_batch(path, payloads, indices)
            else:
                _, index, etype, message, payload = item
                stats["records"] += 1
                stats["read_errors"] += 1
                stats["unreadable_tail"] |= etype == "unreadable_tail"
                yield beam.pvalue.TaggedOutput("errors", error_row(path, index, etype, message,
                                                                   payload))

    def _read_csv(self, path, stream, stats):
        header, rows, indices, lines = None, [], [], []
        size = self._batch_size
        items = ReadAhead(iter_csv_blocks(stream, self._columns, self._csv_block_bytes))
        try:
            for item in items:
                kind = item[0]
                if kind == "header":
                    header = item[1]
                elif kind == "table":
                    _, table, text, first_index, first_line = item
                    n = table.num_rows
                    stats["records"] += n
                    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 10) + 1
                    for s in range(0, n, size):
                        e = min(s + size, n)
                        lo = int(ends[s - 1]) if s else 0
                        hi = int(ends[e - 1]) if e - 1 < len(ends) else len(text)
                        yield CsvBatch(path, header, None, np.arange(s, e) + first_index,
                                       np.arange(s, e) + first_line, table=table.slice(s, e - s),
                                       text=text[lo:hi])
                elif kind == "ok":
                    stats["records"] += 1
                    rows.append(item[3])
                    indices.append(item[1])
                    lines.append(item[2])
                    if len(rows) >= size:
                        yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))
                        rows, indices, lines = [], [], []
                else:
                    _, index, line, etype, message, text = item
                    stats["records"] += 1
                    stats["read_errors"] += 1
                    stats["unreadable_tail"] |= etype == "unreadable_tail"
                    yield beam.pvalue.TaggedOutput("errors", error_row(path, index, etype,
                                                                       message, text, line=line))
        except (OSError, EOFError, zlib.error) as e:  # a broken gzip stream under the csv module
            stats["records"] += 1
            stats["read_errors"] += 1
            stats["unreadable_tail"] = True
            yield beam.pvalue.TaggedOutput("errors", error_row(
                path, None, "unreadable_tail", f"cannot decompress the file ({e}); the remainder "
                "of the file was not read", None))
        finally:
            items.close()
        if rows:
            yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))


def _record_batch(path, payloads, indices) -> RecordBatch:
    return RecordBatch(path, np.array(payloads, dtype=object), np.array(indices, np.int64))


class ReadRecordBatches(beam.PTransform):
    """Files -> batches of records from one shard each (+ 'errors', 'shard_stats' outputs)."""

    def __init__(self, files: list[str], input_format: str, batch_size: int,
                 columns: list[str] | None = None):
        super().__init__()
        self._columns = columns
        if input_format not in FORMATS:
            raise InputError(f"--input_format must be one of {FORMATS}, got {input_format!r}")
        self._files = list(files)
        self._format = input_format
        self._batch_size = batch_size

    def expand(self, pbegin):
        return (pbegin
                | "ListShards" >> beam.Create(self._files, reshuffle=False)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.ParDo(ReadShardDoFn(self._format, self._batch_size,
                                                             self._columns))
                .with_output_types(Batch)
                .with_outputs("errors", "shard_stats", main="batches"))
