"""Reading input shards into batches: TFRecord (plain or gzip) and CSV, local or gs://.

Files are opened through Beam's `FileSystems` (so gs:// works wherever Beam's GCS filesystem
does). TFRecord frames are checked with their CRCs record by record, so one corrupt record
becomes one error row instead of failing the file; gzip is detected from the magic bytes, not
the file name. CSV is read in blocks of a few MB: pyarrow's C++ parser turns a clean block into
string columns at once (`iter_csv_blocks`); a block it cannot read exactly as the stdlib `csv`
module would (quotes, blank lines, a wrong column count, invalid UTF-8) goes through `iter_csv`,
which keeps the line number of every row and lets one malformed row fail alone. Conversion to
tensors happens later, in `transforms.parse`, column by column.

Hostile files cost bounded memory and linear time: no record (TFRecord frame, CSV line) larger
than `max_record_bytes` (default DEFAULT_MAX_RECORD_BYTES, 128 MiB) is held; it becomes an
error row and is read past in chunks. A CSV file whose first line is not a text header (NUL
bytes, invalid UTF-8, longer than the cap) is one `unreadable_tail` row. Inputs are matched
once per file, whatever the spelling (`a`, `./a`, `/abs/a`, a symlink to it); a pattern that
names only a directory is an InputError.
"""
from __future__ import annotations

import csv
import gzip
import io
import itertools
import logging
import os
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

from transforms.errors import InputError
from transforms.metrics import JobCounters
from transforms.records import MAX_PAYLOAD_BYTES, Batch, CsvBatch, RecordBatch, error_row

_LOG = logging.getLogger(__name__)
_READ_CHUNK = 4 << 20
_GZIP_MAGIC = b"\x1f\x8b"
# The largest record (TFRecord frame or CSV line) read into memory; a larger one is an error
# row, so that a corrupt length field or a file with no line ends cannot exhaust memory.
DEFAULT_MAX_RECORD_BYTES = 128 << 20
# one byte beyond what an error row keeps, so that the row says its payload was cut
_PAYLOAD_KEEP = MAX_PAYLOAD_BYTES + 1

FORMATS = ("tfrecord", "csv")




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


def _same_file_key(path: str) -> str:
    """What identifies a file whatever its spelling: the resolved path of a local file (so
    `a`, `./a`, `/abs/a` and a symlink to it are one), the object name otherwise."""
    if "://" in path and not path.startswith("file://"):
        return path
    return os.path.realpath(path[len("file://"):] if path.startswith("file://") else path)


def _is_local_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


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
        for m in matched:
            first = files.setdefault(_same_file_key(m.path), (m.path, m.size_in_bytes))
            if first[0] != m.path:
                _LOG.info("input %s is the same file as %s: read once", m.path, first[0])
    return sorted(files.values())


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


def _masked(c: int) -> int:
    return ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32


def iter_tfrecord_batches(stream, max_records: int, chunk_bytes: int = _READ_CHUNK,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple]:
    """Yield ("ok", payloads, indices) lists of up to max_records good records, and
    ("error", index, error_type, message, payload) where a frame is damaged.

    Both CRCs of every frame are checked (masked CRC32C, as TensorFlow writes them). A bad data
    CRC loses one record; a bad length CRC or a broken stream loses the rest of the file.
    A length above `max_record_bytes` (a CRC-valid length can still be absurd: 2**40) is never
    allocated: the record is read and discarded in chunks, its data CRC checked on the way, and
    becomes one `corrupt_record` row (the first MAX_PAYLOAD_BYTES as payload) before reading
    goes on; if the file ends first, the rest of the file is one `unreadable_tail` row.
    Memory stays within about max_record_bytes + chunk_bytes, and every byte is copied a
    bounded number of times: a record longer than what one read returns is gathered in pieces
    and joined once (gzip's read1 returns small pieces).
    This loop is the reader's hot path: one pass per record, locals only, no calls but the
    two CRCs and one unpack.
    """
    import google_crc32c
    crc32c, extend = google_crc32c.value, google_crc32c.extend
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
            if length > max_record_bytes:
                if payloads:
                    yield ("ok", payloads, indices)
                    payloads, indices = [], []
                # read past it in chunks: head for the payload, CRC extended piece by piece
                data = buf[pos + 12:pos + 12 + length]
                head, crc, left = data[:_PAYLOAD_KEEP], crc32c(data), length - len(data)
                buf, pos = buf[pos + 12 + len(data):], 0
                while left and not eof:
                    chunk = read(min(chunk_bytes, left))
                    eof = not chunk
                    if len(head) < _PAYLOAD_KEEP:
                        head += chunk[:_PAYLOAD_KEEP - len(head)]
                    crc = extend(crc, chunk)
                    left -= len(chunk)
                pieces = [buf]
                while sum(map(len, pieces)) < 4 and not eof:
                    chunk = read(chunk_bytes)
                    eof = not chunk
                    pieces.append(chunk)
                buf = b"".join(pieces)
                if left or len(buf) < 4:
                    yield ("error", index, "unreadable_tail",
                           f"record length {length} is more than the rest of the file holds "
                           f"(and above --max_record_bytes {max_record_bytes}); {index} records "
                           "were read before it and the remainder of the file was not", head)
                    break
                crc_ok = _masked(crc) == unpack_crc(buf, 0)[0]
                yield ("error", index, "corrupt_record",
                       f"record of {length} bytes is larger than --max_record_bytes "
                       f"({max_record_bytes}); skipped (its data checksum "
                       f"{'matches' if crc_ok else 'does not match'})", head)
                pos = 4
                index += 1
                continue
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
                # gather the pieces the record still needs, then join them once
                pieces, need = [buf[pos:]], end + 4 - len(buf)
                while need > 0:
                    chunk = read(max(chunk_bytes, need))
                    if not chunk:
                        eof = True
                        break
                    pieces.append(chunk)
                    need -= len(chunk)
                buf, pos = b"".join(pieces), 0
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


def iter_tfrecords(stream, chunk_bytes: int = _READ_CHUNK,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple]:
    """Record by record: ("ok", index, payload) or ("error", index, type, message, payload)."""
    for item in iter_tfrecord_batches(stream, 1 << 16, chunk_bytes, max_record_bytes):
        if item[0] == "ok":
            yield from (("ok", i, p) for i, p in zip(item[2], item[1]))
        else:
            yield item


# --- CSV ----------------------------------------------------------------------------------------
class _LineTooLong(Exception):
    """A physical line longer than the record cap, already skipped by `_BoundedLines`."""

    def __init__(self, payload: str, mid_record: bool):
        super().__init__()
        self.payload = payload
        self.mid_record = mid_record


class _BoundedLines:
    """The lines of a text stream for the csv module, none longer than `cap` characters held
    in memory (a plain file iterator reads a whole line, however long). A longer line is read
    past in bounded pieces and raised as _LineTooLong, which the csv module passes on; it
    restarts at the next line. `count` is the number of lines taken from the stream."""

    def __init__(self, text, cap: int):
        self._text = text
        self._cap = cap
        self.count = 0
        self.record_start = True  # the csv module asks for the first line of a record

    def __iter__(self):
        return self

    def __next__(self) -> str:
        mid_record, self.record_start = not self.record_start, False
        line = self._text.readline(self._cap + 2)  # room for a CRLF
        if not line:
            raise StopIteration
        self.count += 1
        if len(line) > self._cap // 4:  # the cap is in bytes, like the block reader's
            if not line.endswith(("\n", "\r")):
                rest = line
                while rest and not rest.endswith(("\n", "\r")):
                    rest = self._text.readline(max(self._cap, 1))
            if len(line.rstrip("\r\n").encode("utf-8", "surrogateescape")) > self._cap:
                raise _LineTooLong(_text_payload(line[:_PAYLOAD_KEEP].encode(
                    "utf-8", "surrogateescape")), mid_record)
        return line


def _text_payload(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _too_long(line: int, cap: int) -> str:
    return f"line {line} is longer than --max_record_bytes ({cap} bytes); it was skipped"


def _not_a_header(raw: bytes) -> str | None:
    """Why the first line of a CSV file cannot be its header, if it cannot (text only: the
    columns are checked against the spec in transforms.parse)."""
    if b"\x00" in raw:
        return "it holds NUL bytes (a binary file?)"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not valid UTF-8 text"
    return None


NOT_READ = "; the remainder of the file was not read"


def _header_error(line: int, why: str, payload) -> tuple:
    if isinstance(payload, bytes):
        payload = _text_payload(payload[:_PAYLOAD_KEEP])
    return ("error", None, line, "unreadable_tail",
            f"line {line} is not a CSV header: {why}{NOT_READ}", payload)


def _field_limit(cap: int) -> None:
    # process-wide in the csv module: a quoted field may span lines, and this bounds it
    if csv.field_size_limit() != cap:
        csv.field_size_limit(cap)


def iter_csv(stream, header: list[str] | None = None, first_line: int = 1,
             first_index: int = 0, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
             ) -> Iterator[tuple]:
    """Yield ("header", cols), ("ok", index, line, row) or ("error", index, line, type, msg, text).

    Blank lines are not records. The UTF-8 BOM is dropped; undecodable bytes are kept as
    surrogates so that conversion reports them on the row they belong to. `header`,
    `first_line` and `first_index` continue a file whose beginning was read elsewhere.
    A line longer than `max_record_bytes` is a `csv_format` row and reading goes on at the
    next line, unless it continues a quoted field begun on an earlier line: where the next
    record starts is then unknown, and the rest of the file is one `unreadable_tail` row.
    A first line that is not text (NUL bytes, invalid UTF-8, too long, malformed) is one
    `unreadable_tail` row for the file.
    """
    _field_limit(max_record_bytes)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig" if header is None else "utf-8",
                            errors="surrogateescape", newline="")
    lines = _BoundedLines(text, max_record_bytes)
    reader = csv.reader(lines)
    index = first_index
    offset = first_line - 1
    while True:
        start = offset + lines.count + 1
        lines.record_start = True
        try:
            row = next(reader)
        except StopIteration:
            return
        except _LineTooLong as e:
            if header is None:
                yield _header_error(start, f"it is longer than --max_record_bytes "
                                           f"({max_record_bytes} bytes)", e.payload)
                return
            if e.mid_record:
                yield ("error", index, start, "unreadable_tail",
                       f"a quoted field that begins on line {start} runs into a line longer "
                       f"than --max_record_bytes ({max_record_bytes} bytes); {index} records "
                       "were read before it and the remainder of the file was not", e.payload)
                return
            yield ("error", index, start, "csv_format", _too_long(start, max_record_bytes),
                   e.payload)
            index += 1
            continue
        except csv.Error as e:
            if header is None:
                yield _header_error(start, f"malformed CSV ({e})", None)
                return
            yield ("error", index, start, "csv_format", f"malformed CSV: {e}", None)
            index += 1
            continue
        if not row or (len(row) == 1 and not row[0].strip() and header is not None):
            continue  # blank line
        if header is None:
            why = _not_a_header("\n".join(row).encode("utf-8", "surrogateescape"))
            if why is not None:
                yield _header_error(start, why, _csv_text(row))
                return
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


def iter_csv_blocks(stream, columns: list[str] | None = None, block_bytes: int = _READ_CHUNK,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[tuple]:
    """CSV in blocks: yield ("header", cols), then ("table", table, text, first_index,
    first_line) for blocks that pyarrow parses into string columns (one row per line, `text`
    the block's raw lines), and `iter_csv` items for everything else.

    This is the reader's fast path: pyarrow's C++ tokenizer instead of a Python step per row.
    A block that pyarrow cannot take exactly as the csv module would (quotes, blank lines, a
    row with the wrong number of columns, invalid UTF-8) is read by `iter_csv` instead, with
    its line numbers and record indices continued; from the first quote on, the rest of the
    file is (a quoted field may span lines, and blocks are cut at line ends). `columns` limits
    the table to the named columns (the header keeps all names).

    A line longer than a block is gathered piece by piece and joined once; one longer than
    `max_record_bytes` is not kept: it is a `csv_format` row (payload: its first
    MAX_PAYLOAD_BYTES), read past in blocks, and reading goes on at the next line. A first
    line that is not a header (not text, or too long) is one `unreadable_tail` row.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    read = getattr(stream, "read1", stream.read)
    buf, eof, broken = b"", False, None
    cap = max_record_bytes
    # blocks no larger than the cap: a line longer than the cap then never fits in one, and
    # is always met (and refused) by long_line
    block_bytes = max(1, min(block_bytes, cap))

    def more(size: int) -> bytes:
        nonlocal eof, broken
        if eof:
            return b""
        try:
            data = read(size)
        except (OSError, EOFError, zlib.error) as e:  # broken or cut-short gzip stream
            data, broken = b"", e
        eof = not data
        return data

    def fill(size):
        nonlocal buf
        pieces, have = [buf], len(buf)
        while not eof and have < size:
            data = more(size - have)
            pieces.append(data)
            have += len(data)
        buf = b"".join(pieces) if len(pieces) > 1 else buf

    def gather_line() -> int:
        """Extend `buf` (which holds no newline) until it does, the stream ends or it is
        longer than the cap; each piece is searched once and they are joined once. Returns
        the newline's offset in buf, or -1."""
        nonlocal buf
        pieces, have, found = [buf], len(buf), -1
        while not eof and have <= cap:
            data = more(block_bytes)
            at = data.find(b"\n")
            pieces.append(data)
            if at >= 0:
                found = have + at
                break
            have += len(data)
        buf = b"".join(pieces)
        return found

    def skip_line():
        """Drop `buf` and the stream up to the next newline; `buf` keeps what follows it."""
        nonlocal buf
        buf = b""
        while not eof:
            data = more(block_bytes)
            at = data.find(b"\n")
            if at >= 0:
                buf = data[at + 1:]
                return

    def long_line(skip: bool = True) -> bytes | None:
        """For `buf` holding no newline: gather the line; if it is longer than the cap, drop
        it from `buf` (and, with `skip`, from the stream) and return its first bytes (for
        the payload)."""
        nonlocal buf
        found = gather_line()
        size = len(buf) if found < 0 else found - (found > 0 and buf[found - 1] == 13)
        if size <= cap:  # without its line end (CR LF or LF), like _BoundedLines
            return None
        first = buf[:_PAYLOAD_KEEP]
        if found >= 0:
            buf = buf[found + 1:]
        elif skip:
            skip_line()
        return first

    fill(block_bytes)
    if buf.startswith(b"\xef\xbb\xbf"):
        buf = buf[3:]
    end = buf.find(b"\n")
    if end < 0 and not eof:  # a header longer than a block
        first = long_line(skip=False)  # nothing after it is read
        if first is not None:
            yield _header_error(1, f"it is longer than --max_record_bytes ({cap} bytes)",
                                first)
            return
        end = buf.find(b"\n")
    head = buf[:end + 1] if end >= 0 else buf
    header = None
    if head.strip():
        why = _not_a_header(head)
        if why is not None:
            yield _header_error(1, why, head)
            return
        if _arrow_ok(head):
            try:
                header = [c.strip() for c in next(csv.reader([head.decode("utf-8")]))]
            except (csv.Error, StopIteration):
                header = None
    if header is None or len(set(header)) != len(header) or len(header) < 2:
        yield from iter_csv(io.BufferedReader(_Prefixed(buf, stream)),
                            max_record_bytes=max_record_bytes)
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
            first = long_line()
            if first is not None:
                yield ("error", index, line, "csv_format", _too_long(line, cap),
                       _text_payload(first))
                index += 1
                line += 1
            continue
        chunk, buf = buf[:cut], buf[cut:]
        if b'"' in chunk or _lone_cr(chunk):
            yield from iter_csv(io.BufferedReader(_Prefixed(chunk + buf, stream)), header,
                                line, index, max_record_bytes)
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
            for item in iter_csv(io.BytesIO(chunk), header, line, index, max_record_bytes):
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


def _grouped(items: Iterator[tuple], size: int = 1024) -> Iterator[list]:
    """The csv module's per-row items in lists of up to `size` (a table alone), so that the
    read-ahead queue hands over one list instead of one row at a time: a thread handoff per
    row cost more than reading the row. Items read before an exception are handed over
    before it."""
    group: list = []
    try:
        for item in items:
            if item[0] == "table":
                if group:
                    yield group
                    group = []
                yield [item]
            else:
                group.append(item)
                if len(group) >= size:
                    yield group
                    group = []
    except GeneratorExit:  # closed by its consumer: nothing more to hand over
        raise
    except BaseException:
        if group:
            yield group
        raise
    if group:
        yield group


def _csv_text(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- the DoFn and transform ---------------------------------------------------------------------
class ReadShardDoFn(beam.DoFn):
    """Reads one shard (file path) into batches; emits error rows and one shard-stats row."""
    _csv_block_bytes = _READ_CHUNK

    def __init__(self, input_format: str, batch_size: int, columns: list[str] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        self._format = input_format
        self._batch_size = batch_size
        self._columns = columns
        self._max_record_bytes = max_record_bytes

    def setup(self):
        self._metrics = JobCounters()

    def process(self, path: str):
        start = time.monotonic()
        _LOG.info("read %s: start", path)
        stream, gz = open_shard(path)
        reader = self._read_tfrecord if self._format == "tfrecord" else self._read_csv
        stats = {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": gz}
        raw = stream.fileobj if gz else stream  # the file itself, under the gunzipping
        try:
            yield from reader(path, stream, stats)
            stats["bytes"] = raw.tell()  # as stored: compressed bytes for a gzip file
        finally:
            stream.close()
        self._metrics.input_bytes.inc(stats["bytes"])
        self._metrics.records_in.inc(stats["records"])
        self._metrics.read_errors.inc(stats["read_errors"])
        stats["read_seconds"] = round(time.monotonic() - start, 3)
        _LOG.info("read %s: %d records (%d unreadable) in %.1fs", path, stats["records"],
                  stats["read_errors"], stats["read_seconds"])
        yield beam.pvalue.TaggedOutput("shard_stats", (path, stats))

    def _read_tfrecord(self, path, stream, stats):
        for item in iter_tfrecord_batches(stream, self._batch_size,
                                          max_record_bytes=self._max_record_bytes):
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
        items = ReadAhead(_grouped(iter_csv_blocks(stream, self._columns,
                                                   self._csv_block_bytes,
                                                   self._max_record_bytes)))
        try:
            for item in itertools.chain.from_iterable(items):
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
                 columns: list[str] | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        super().__init__()
        self._columns = columns
        self._max_record_bytes = max_record_bytes
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
                                                             self._columns,
                                                             self._max_record_bytes))
                .with_output_types(Batch)
                .with_outputs("errors", "shard_stats", main="batches"))
