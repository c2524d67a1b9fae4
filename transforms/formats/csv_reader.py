"""Reading CSV text: the csv module row by row (`iter_csv`), and blocks that pyarrow parses at
once (`iter_csv_blocks`), which hands whatever pyarrow cannot read exactly as the csv module
would to `iter_csv`.

CSV is read in blocks of a few MB: pyarrow's C++ parser turns a clean block into string
columns at once; a block it cannot read exactly as the stdlib `csv` module would (quotes, blank
lines, a wrong column count, invalid UTF-8) goes through `iter_csv`, which keeps the line
number of every row and lets one malformed row fail alone. Conversion to tensors happens later,
in `transforms.parse`, column by column.

Hostile files cost bounded memory and linear time: no line longer than `max_record_bytes` is
held; it becomes an error row and is read past in chunks. A file whose first line is not a
text header (NUL bytes, invalid UTF-8, longer than the cap) is one `unreadable_tail` row.
"""
from __future__ import annotations

import csv
import io
import zlib
from typing import Iterator

from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES, PAYLOAD_KEEP, READ_CHUNK
from transforms.records import csv_text

__all__ = ["NOT_READ", "arrow_header", "iter_csv", "iter_csv_blocks"]


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
                raise _LineTooLong(_text_payload(line[:PAYLOAD_KEEP].encode(
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
_BOM = b"\xef\xbb\xbf"  # UTF-8's byte order mark: dropped at a file's start only


def _header_error(line: int, why: str, payload) -> tuple:
    if isinstance(payload, bytes):
        payload = _text_payload(payload[:PAYLOAD_KEEP])
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
                yield _header_error(start, why, csv_text(row))
                return
            header = [c.strip() for c in row]
            yield ("header", header)
            continue
        if len(row) != len(header):
            yield ("error", index, start, "csv_format",
                   f"row has {len(row)} columns, the header has {len(header)}", csv_text(row))
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


def arrow_header(head: bytes) -> list[str] | None:
    """The column names in `head`, a file's first line (UTF-8 BOM dropped, line end kept),
    when `iter_csv_blocks` takes it as the header of its pyarrow path: text with no quote, NUL
    or lone carriage return, at least two names, no name twice. None when it does not (the
    file then goes to `iter_csv`, which finds its header, or its error, itself)."""
    if not head.strip() or _not_a_header(head) is not None or not _arrow_ok(head):
        return None
    try:
        header = [c.strip() for c in next(csv.reader([head.decode("utf-8")]))]
    except (csv.Error, StopIteration):
        return None
    if len(set(header)) != len(header) or len(header) < 2:
        return None
    return header


def iter_csv_blocks(stream, columns: list[str] | None = None, block_bytes: int = READ_CHUNK,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                    header: list[str] | None = None, first_index: int = 0,
                    first_line: int = 1) -> Iterator[tuple]:
    """CSV in blocks: yield ("header", cols), then ("table", table, text, first_index,
    first_line) for blocks that pyarrow parses into string columns (one row per line, `text`
    the block's raw lines), and `iter_csv` items for everything else.

    This is the reader's fast path: pyarrow's C++ tokenizer instead of a Python step per row.
    A block that pyarrow cannot take exactly as the csv module would (quotes, blank lines, a
    row with the wrong number of columns, invalid UTF-8, a BOM at its start, which pyarrow
    would drop) is read by `iter_csv` instead, with
    its line numbers and record indices continued; from the first quote on, the rest of the
    file is (a quoted field may span lines, and blocks are cut at line ends). `columns` limits
    the table to the named columns (the header keeps all names).

    A line longer than a block is gathered piece by piece and joined once; one longer than
    `max_record_bytes` is not kept: it is a `csv_format` row (payload: its first
    MAX_PAYLOAD_BYTES), read past in blocks, and reading goes on at the next line. A first
    line that is not a header (not text, or too long) is one `unreadable_tail` row.

    With `header` given, `stream` continues a file whose header (and first records) were read
    elsewhere, from a line start outside any quoted field: its first record has index
    `first_index` and begins on line `first_line`. No header is looked for or yielded and no
    BOM is dropped; the rest is read exactly as after a header (a block of a split file).
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
        first = buf[:PAYLOAD_KEEP]
        if found >= 0:
            buf = buf[found + 1:]
        elif skip:
            skip_line()
        return first

    if header is not None:  # a continuation: records from the first byte on
        header, line, index = list(header), first_line, first_index
    else:
        fill(block_bytes)
        if buf.startswith(_BOM):
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
        if head.strip():
            why = _not_a_header(head)
            if why is not None:
                yield _header_error(1, why, head)
                return
        header = arrow_header(head)
        if header is None:
            yield from iter_csv(io.BufferedReader(_Prefixed(buf, stream)),
                                max_record_bytes=max_record_bytes)
            return
        yield ("header", header)
        buf = buf[len(head):]
        line, index = 2, 0
    wanted = [c for c in (columns if columns is not None else header) if c in header]
    options = (pacsv.ReadOptions(column_names=header, block_size=max(block_bytes, 1 << 20)),
               pacsv.ParseOptions(newlines_in_values=False),
               pacsv.ConvertOptions(column_types={c: pa.string() for c in wanted},
                                    include_columns=wanted, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False, null_values=[]))
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
        # pyarrow drops a BOM at the start of what it parses; here it is text of a cell
        if b"\x00" not in chunk and not chunk.startswith(_BOM):
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
