"""CSV input (`--input_format csv`): a header line, then one record per row; plain or gzip.

CSV is text columns plus conversion: the reader (`transforms.formats.csv_reader`) hands the
parse step `CsvBatch`es of string columns (pyarrow's, for clean blocks) or of csv-module rows,
with the header, the line numbers and the raw text for error payloads; the parse step converts
the cells with the spec's types and checks the header (`transforms.parse.header_problem`).
The first input's header is checked at start-up (`check_first_shard`); the key is a column of
text, so its dtype is always string.

**Splitting** (see `transforms.formats.base`). A block must start where a record starts, and
in CSV that depends on everything before it: a quoted field may hold newlines, so a line start
begins a record only if it lies outside quotes. Each range of the file's grid is therefore
scanned for *both* quote states it could begin in (outside / inside a quoted field), with
numpy over the whole range (no Python step per byte or per line), under the RFC 4180 parity
model: every `"` toggles the state (a doubled `""` toggles twice). Per state the scan finds the
range's unquoted line starts (row boundaries): the first one (and the newlines before it), the
records (non-blank rows) between them, the longest row, and the pieces of rows cut by the
range's ends; beside them the facts no state changes: newlines, the parity of the quotes, a
lone carriage return. Range summaries compose (`_combine`: the second is read in the state
the first leaves), which is also how a range is scanned, a few MB at a time. `index_file`
resolves the true state of every range from range 0 on (the prefix of parities), joins the
rows cut by range ends, and takes each block's start, record index and line number from the
prefix sums. `read_block` reads the file's first block as a whole file is read (header and
all) and any other as a continuation (`iter_csv_blocks` given the header, the first record's
index and line): both paths, pyarrow and the csv module, as the serial reader.

The parity model is the csv module's reading only when quotes are well placed, so the scan
also checks, per state, that every opening quote is at a field start (after `,`, a newline, a
closing quote, or at the file's start) and that every closing quote ends its field (before
`,`, `\r`, `\n`, a quote, or the file's end). The file is read whole, not split, when in its
true states anything breaks the model or the serial reader's way with it:
- a quote placed otherwise (`ab"c`, `"a" b`: the csv module takes it as text);
- a lone carriage return (a line end to the csv module, not to the line count);
- a row longer than --max_record_bytes, line end included (the serial reader cuts long
  lines into error rows and restarts at the next physical line, which may lie in a quoted
  field; the csv module's field limit is the same cap);
- a header that is not the one the pyarrow path takes (`csv_reader.arrow_header`): the
  serial reader then reads the file with the csv module from its first byte, and its header
  may be anywhere.
NUL bytes and invalid UTF-8 do not change rows (the csv module of Python 3.11 on takes NUL as
text; every byte that shapes a row is ASCII) and do not stop a split (NUL does under 3.10,
whose csv module refuses a line that holds one). A blank row (no record) is one with no
comma, every byte ASCII whitespace (`str.strip`'s) apart from at most two quotes: an empty
line, spaces, `""` or a quoted field of whitespace. The rare row of whitespace and non-ASCII
bytes is decoded to tell (a few of those characters are whitespace): by the scan when the row
lies in its bytes, else by `index_file`, which reads it again.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import sys
import zlib
from typing import Iterator, NamedTuple

import numpy as np

from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, READ_CHUNK, ColumnType,
                                     InputFormat, ReadAhead, SplitIndex, open_range,
                                     open_shard, shard_stream)
from transforms.formats.csv_reader import NOT_READ, arrow_header, iter_csv_blocks
from transforms.parse import header_problem
from transforms.records import CsvBatch, error_row

__all__ = ["CsvInput", "CSV", "RangeSummary"]

_LOG = logging.getLogger(__name__)


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


# --- splitting: the quote-state scan -------------------------------------------------------------
_NL, _CR, _QUOTE = 10, 13, 34
_NONE = 256  # "no byte": before the file's start, after its end
_SCAN_BYTES = 8 << 20  # a range is scanned this much at a time (memory: a few times this)
# How a byte bears on whether its row is blank (a row of class 0 bytes and at most two quotes
# is blank; the csv module gives [] or one cell that str.strip() empties):
# 0 ASCII whitespace (str.strip's: \t \n \v \f \r \x1c-\x1f space) or a quote; 1 a byte of a
# non-ASCII character (a few of them are whitespace); 2 anything else (the row is a record).
_CLASS = np.full(256, 2, np.uint8)
_CLASS[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32, _QUOTE]] = 0
_CLASS[128:] = 1
_BLANK, _RECORD, _UNSURE = 0, 1, 2
# what may stand before an opening quote / after a closing one (index _NONE: no byte)
_OPEN_AFTER = np.zeros(257, bool)
_OPEN_AFTER[[ord(","), _NL, _QUOTE, _NONE]] = True
_CLOSE_BEFORE = np.zeros(257, bool)
_CLOSE_BEFORE[[ord(","), _CR, _NL, _QUOTE, _NONE]] = True
_EMPTY = (0, 0)  # a piece of a row: (highest byte class, quotes up to 3)
# the csv module reads NUL as text from Python 3.11 on; before, a line holding one is an error
# and reading restarts at the next line, which may lie in a quoted field
_CSV_TAKES_NUL = sys.version_info >= (3, 11)


def _piece(a: tuple, b: tuple) -> tuple:
    return max(a[0], b[0]), min(a[1] + b[1], 3)


def _kind(piece: tuple) -> int:
    """Whether a whole row is a record, blank, or unsure (blank only if its non-ASCII bytes
    are whitespace). Three quotes or more in a row without a comma hold a doubled quote: text."""
    cls, quotes = piece
    if cls == 2 or quotes >= 3:
        return _RECORD
    return _UNSURE if cls == 1 else _BLANK


class _Side(NamedTuple):
    """A stretch of the file read in one quote state at its start. Row boundaries are the
    unquoted line starts in [start, stop] (stop included: a row that ends there)."""
    ok: bool            # every quote is well placed (see the module docstring)
    first: int | None   # the first boundary; None: the stretch lies inside one row
    head: tuple         # the piece of a row before `first` (all of it when `first` is None)
    head_nl: int        # newlines before `first` (all of them when `first` is None)
    records: int        # records among the rows between boundaries
    longest: int        # the longest of those rows, in bytes
    unsure: tuple       # (start, end) of each row cut by a stretch's end that is _UNSURE,
                        # in order (`_scan` decodes those inside its bytes; `index_file` these)
    last: int | None    # the last boundary
    tail: tuple         # the piece of a row from `last` to the stretch's end


class RangeSummary(NamedTuple):
    """`CsvInput.summarize_range`'s result for the bytes [start, stop): what does not depend
    on the quote state at `start`, and a `_Side` for each state (0 outside, 1 inside)."""
    start: int
    stop: int
    newlines: int
    odd: int            # the parity of the quotes: the state at `stop` is the state at start ^ odd
    lone_cr: bool
    nul: bool
    sides: tuple


def _join(a: _Side, b: _Side, a_newlines: int) -> _Side:
    """Stretch `a` followed by stretch `b` (read in the state `a` leaves)."""
    ok = a.ok and b.ok
    if a.first is None:
        if b.first is None:
            return _Side(ok, None, _piece(a.head, b.head), a_newlines + b.head_nl, 0, 0,
                         (), None, _EMPTY)
        return b._replace(ok=ok, head=_piece(a.head, b.head), head_nl=a_newlines + b.head_nl)
    if b.first is None:
        return a._replace(ok=ok, tail=_piece(a.tail, b.head))
    records, longest, unsure = a.records + b.records, max(a.longest, b.longest), a.unsure
    if b.first > a.last:  # the row open at the end of `a` ends in `b`
        kind = _kind(_piece(a.tail, b.head))
        records += kind == _RECORD
        if kind == _UNSURE:
            unsure += ((a.last, b.first),)
        longest = max(longest, b.first - a.last)
    unsure += b.unsure  # in file order
    return _Side(ok, a.first, a.head, a.head_nl, records, longest, unsure, b.last, b.tail)


def _combine(x: RangeSummary, y: RangeSummary) -> RangeSummary:
    """The summary of x's bytes followed by y's."""
    return RangeSummary(x.start, y.stop, x.newlines + y.newlines, x.odd ^ y.odd,
                        x.lone_cr or y.lone_cr, x.nul or y.nul,
                        tuple(_join(x.sides[s], y.sides[s ^ x.odd], x.newlines)
                              for s in (0, 1)))


def _blank(row: bytes) -> bool:
    """Whether the csv module reads this row (no comma, at most two quotes, line end
    included) as blank: its one cell, decoded as the reader decodes, is whitespace."""
    return not row.decode("utf-8", "surrogateescape").replace('"', "").strip()


def _piece_class(a: np.ndarray, comma: np.ndarray, lo: int, hi: int) -> int:
    """The highest byte class in a[lo:hi]: a comma (class 2) is looked for first, as it is
    cheaper than classifying every byte."""
    if hi <= lo:
        return 0
    if comma[lo:hi].any():
        return 2
    return int(_CLASS.take(a[lo:hi]).max())


def _segment_classes(a: np.ndarray, comma: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The highest byte class in each segment [edges[i], edges[i+1]) of `a`, the last one up
    to its end (`edges` strictly increasing, all below len(a); `comma` is a's comma mask with
    one False more). Most rows hold a comma (class 2): only the bytes of the others are
    classified."""
    n = len(a)
    has = np.logical_or.reduceat(comma, edges)
    out = np.where(has, np.uint8(2), np.uint8(0))
    rest = np.flatnonzero(~has)
    if not len(rest):
        return out
    lo = edges[rest]
    lengths = np.append(edges, n)[rest + 1] - lo
    total = int(lengths.sum())
    if total * 4 > n:  # mostly comma-less rows: classify every byte
        return np.maximum(out, np.maximum.reduceat(_CLASS.take(a), edges))
    offsets = np.cumsum(lengths) - lengths  # of each segment in the gathered bytes
    gathered = a.take(np.arange(total) + np.repeat(lo - offsets, lengths))
    out[rest] = np.maximum.reduceat(_CLASS.take(gathered), offsets)
    return out


def _scan(data: bytes, base: int, prev: int, after: int) -> RangeSummary:
    """Summarize `data`, the file's bytes from offset `base`; `prev` is the byte before it and
    `after` the byte after it (_NONE at the file's start / end). Vectorized: every step is
    numpy over the bytes, or over the positions of newlines and quotes."""
    a = np.frombuffer(data, np.uint8)
    n = len(a)
    nl = np.flatnonzero(a == _NL)
    q = np.flatnonzero(a == _QUOTE)
    cr = np.flatnonzero(a == _CR)
    lone_cr = False
    if len(cr):
        follow = a[np.minimum(cr + 1, n - 1)].astype(np.int16)
        if cr[-1] == n - 1:
            follow[-1] = after
        lone_cr = bool((follow != _NL).any())
    comma = np.zeros(n + 1, bool)  # one more: a segment may end at n
    np.equal(a, ord(","), out=comma[:n])
    ok = [True, True]
    if len(q):
        before = a[np.maximum(q - 1, 0)].astype(np.intp)
        if q[0] == 0:
            before[0] = prev
        behind = a[np.minimum(q + 1, n - 1)].astype(np.intp)
        if q[-1] == n - 1:
            behind[-1] = after
        opens, closes = _OPEN_AFTER[before], _CLOSE_BEFORE[behind]
        # quote j opens a field in state s when s + j is even
        ok = [bool(opens[0::2].all() and closes[1::2].all()),
              bool(opens[1::2].all() and closes[0::2].all())]
        quoted = np.searchsorted(q, nl) & 1  # the parity of the quotes before each newline
    whole = None
    sides = []
    for s in (0, 1):
        if len(q):
            ends = nl[quoted == s]  # newlines outside quotes: (s + quotes before) is even
        else:
            ends = nl if s == 0 else nl[:0]
        bounds = ends + 1
        if s == 0 and prev in (_NL, _NONE):
            bounds = np.concatenate(([0], bounds))
        if not len(bounds):
            if whole is None:
                whole = (_piece_class(a, comma, 0, n), min(len(q), 3))
            sides.append(_Side(ok[s], None, whole, len(nl), 0, 0, (), None, _EMPTY))
            continue
        first, last = int(bounds[0]), int(bounds[-1])
        head = (_piece_class(a, comma, 0, first),
                min(int(np.searchsorted(q, first)), 3))
        rows = len(bounds) - 1  # whole rows between boundaries
        at = bounds if last < n else bounds[:-1]  # segment starts: the rows, then the tail
        records, longest, tail = 0, 0, _EMPTY
        if len(at):
            seg_cls = _segment_classes(a, comma, at)
            if len(q):
                seg_q = np.diff(np.searchsorted(q, np.append(at, n)))
            else:
                seg_q = np.zeros(len(at), np.intp)
            if rows:
                row_cls, row_q = seg_cls[:rows], seg_q[:rows]
                record = (row_cls == 2) | (row_q >= 3)
                records = int(np.count_nonzero(record))
                # rows of whitespace and non-ASCII bytes (rare): decoded, as the reader does
                for i in np.flatnonzero((row_cls == 1) & ~record):
                    records += not _blank(data[bounds[i]:bounds[i + 1]])
                longest = int(np.diff(bounds).max())
            if last < n:
                tail = (int(seg_cls[-1]), min(int(seg_q[-1]), 3))
                if after == _NONE and _kind(tail) == _UNSURE:  # the file's last row, whole
                    tail = (0 if _blank(data[last:]) else 2, tail[1])
        sides.append(_Side(ok[s], base + first, head, int(np.searchsorted(nl, first)),
                           records, longest, (), base + last, tail))
    return RangeSummary(base, base + n, len(nl), len(q) & 1, lone_cr, b"\x00" in data,
                        tuple(sides))


class _FileChanged(Exception):
    """The file is shorter than its listed size."""


def _read_exactly(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise _FileChanged()
    return data


def summarize(path: str, start: int, stop: int, size: int,
              scan_bytes: int = _SCAN_BYTES) -> RangeSummary | None:
    """The `RangeSummary` of the bytes [start, stop) of the plain file `path`, read
    `scan_bytes` at a time (and the byte on either side, for the quote checks); None when the
    file is shorter than `size` says (it changed: `index_file` then has it read whole)."""
    try:
        return _summarize(path, start, stop, size, scan_bytes)
    except _FileChanged:
        return None


def _summarize(path: str, start: int, stop: int, size: int, scan_bytes: int) -> RangeSummary:
    lo, hi = max(start - 1, 0), min(stop + 1, size)
    with open_range(path, lo, hi) as stream:
        prev = _read_exactly(stream, 1)[0] if start > 0 else _NONE
        pos, total = start, None
        data = _read_exactly(stream, min(scan_bytes, stop - start))
        while True:
            end = pos + len(data)
            if end < stop:
                ahead = _read_exactly(stream, min(scan_bytes, stop - end))
                after = ahead[0]
            else:
                ahead = None
                after = _read_exactly(stream, 1)[0] if stop < size else _NONE
            part = _scan(data, pos, prev, after)
            total = part if total is None else _combine(total, part)
            if ahead is None:
                return total
            prev, pos, data = data[-1], end, ahead


def _first_line(path: str, size: int, cap: int) -> bytes | None:
    """The file's first line (line end included), or None when it has no line end within
    `cap` bytes (+ a BOM and a line end)."""
    limit = min(size, cap + 5)
    with open_range(path, 0, limit) as stream:
        data = b""
        while len(data) < limit:
            more = stream.read(min(64 << 10, limit - len(data)))
            if not more:
                break
            at = more.find(b"\n")
            if at >= 0:
                return data + more[:at + 1]
            data += more
    return None


def _plan(path: str, size: int, ranges: list[tuple[int, int]], summaries: list,
          cap: int) -> SplitIndex | str:
    """`CsvInput.index_file`: the SplitIndex, or why the file is read whole."""
    if (not ranges or len(summaries) != len(ranges) or ranges[0][0] != 0
            or ranges[-1][1] != size
            or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:]))
            or any(s is None or (s.start, s.stop) != tuple(r)
                   for s, r in zip(summaries, ranges))):
        return "its range summaries do not cover the file (did it change while it was read?)"
    state, sides = 0, []
    for summary in summaries:  # each range in its true state: the parity before it
        sides.append(summary.sides[state])
        state ^= summary.odd
    total = summaries[0]
    for summary in summaries[1:]:
        total = _combine(total, summary)
    whole = total.sides[0]
    records = whole.records
    if total.lone_cr:
        return "it holds a carriage return that does not end a line (\\r without \\n)"
    if total.nul and not _CSV_TAKES_NUL:
        return "it holds NUL bytes (the csv module of Python < 3.11 refuses their lines)"
    if not whole.ok:
        return "it holds a quote that neither opens nor closes a field (as in ab\"c or \"a\" b)"
    unsure = list(whole.unsure)
    if whole.last < size:  # the last row, ended by the file's end
        kind = _kind(whole.tail)
        records += kind == _RECORD
        if kind == _UNSURE:
            unsure.append((whole.last, size))
    if whole.longest > cap or size - whole.last > cap:
        return f"a row is longer than --max_record_bytes ({cap} bytes)"
    # rows of whitespace and non-ASCII bytes cut by range ends: read and decoded here
    extra = []  # where those that are records start
    for a, b in unsure:
        with open_range(path, a, b) as stream:
            try:
                row = _read_exactly(stream, b - a)
            except _FileChanged:
                return "it is shorter than its range summaries say (did it change?)"
            if not _blank(row):
                extra.append(a)
    records += len(extra)
    head = _first_line(path, size, cap)
    if head is None:
        return "its first line has no line end (the file is one line, or the line is " \
               "longer than --max_record_bytes)"
    header = arrow_header(head[3:] if head.startswith(b"\xef\xbb\xbf") else head)
    if header is None:
        return "its first line is not a header the fast reader takes (quotes, fewer than " \
               "two names, a name twice, not UTF-8 text)"
    # each range's first row boundary, with the record index and line number there
    found: list = [None] * len(ranges)
    prefix = None
    for k, ((_, stop), side) in enumerate(zip(ranges, sides)):
        if side.first is not None and side.first < stop:
            if prefix is None:
                found[k] = (0, 0, 1)
            else:
                joined = _join(prefix.sides[0], side, prefix.newlines)
                # the header is the file's first row, not a record
                found[k] = (side.first, joined.records - side.records - 1
                            + bisect.bisect_left(extra, side.first),
                            1 + prefix.newlines + side.head_nl)
        prefix = summaries[k] if prefix is None else _combine(prefix, summaries[k])
    if found[0] != (0, 0, 1):
        return "its first range does not start with a row"
    blocks = []
    at = (size, records - 1, 1 + total.newlines)  # no row starts after a range: an empty block
    for k in reversed(range(len(ranges))):
        at = found[k] or at
        blocks.append(at)
    blocks.reverse()
    starts, first_index, first_line = (tuple(int(b[i]) for b in blocks) for i in range(3))
    return SplitIndex(path, size, True, starts, first_index, first_line, tuple(header))


@dataclasses.dataclass(frozen=True)
class CsvInput(InputFormat):
    """CSV with a header line; `block_bytes` is how much is read (and parsed by pyarrow) at
    once."""
    block_bytes: int = READ_CHUNK
    name = "csv"
    title = "CSV"
    extensions = (".csv", ".csv.gz")

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        with shard_stream(path, stats) as stream:
            yield from self.read_stream(path, stream, batch_size, columns, max_record_bytes,
                                        stats=stats)

    def read_stream(self, path: str, stream, batch_size: int, columns: list[str] | None = None,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                    header: list[str] | None = None, first_index: int = 0,
                    first_line: int = 1, stats: dict | None = None) -> Iterator:
        """`read_shard` on an open stream of the shard's content. Reading runs a block ahead
        in a helper thread (`ReadAhead`): decompression and pyarrow's parser release the GIL.
        With `header`, the stream continues a file from a record that starts outside quotes
        (see `iter_csv_blocks`). `stats`: the shard's, for its live "position"."""
        rows, indices, lines = [], [], []
        size = batch_size
        items = ReadAhead(_grouped(iter_csv_blocks(stream, columns, self.block_bytes,
                                                   max_record_bytes, header, first_index,
                                                   first_line)), stats=stats)
        try:
            for item in itertools.chain.from_iterable(items):
                kind = item[0]
                if kind == "header":
                    header = item[1]
                elif kind == "table":
                    _, table, text, first_index, first_line = item
                    n = table.num_rows
                    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 10) + 1
                    for s in range(0, n, size):
                        e = min(s + size, n)
                        lo = int(ends[s - 1]) if s else 0
                        hi = int(ends[e - 1]) if e - 1 < len(ends) else len(text)
                        yield CsvBatch(path, header, None, np.arange(s, e) + first_index,
                                       np.arange(s, e) + first_line, table=table.slice(s, e - s),
                                       text=text[lo:hi])
                elif kind == "ok":
                    rows.append(item[3])
                    indices.append(item[1])
                    lines.append(item[2])
                    if len(rows) >= size:
                        yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))
                        rows, indices, lines = [], [], []
                else:
                    _, index, line, etype, message, text = item
                    yield error_row(path, index, etype, message, text, line=line)
        except (OSError, EOFError, zlib.error) as e:  # a broken gzip stream under the csv module
            yield error_row(path, None, "unreadable_tail", f"cannot decompress the file ({e}); "
                            "the remainder of the file was not read", None)
        finally:
            items.close()
        if rows:
            yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))

    # --- splitting (see the module docstring) ---------------------------------------------------
    splittable = True

    def summarize_range(self, path: str, start: int, stop: int, size: int,
                        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> RangeSummary:
        return summarize(path, start, stop, size)

    def index_file(self, path: str, size: int, ranges: list[tuple[int, int]], summaries: list,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SplitIndex | None:
        index = _plan(path, size, ranges, summaries, max_record_bytes)
        if isinstance(index, str):
            _LOG.info("read %s whole, not in %d blocks: %s", path, len(ranges), index)
            return None
        return index

    def read_block(self, index: SplitIndex, block: int, batch_size: int,
                   columns: list[str] | None, max_record_bytes: int,
                   stats: dict) -> Iterator:
        """The file's first block as `read_shard` reads a file (header and all); any other as
        the rest of a file whose header is `index.header`, from record `first_index[block]`
        on line `first_line[block]`."""
        stats["gzip"] = False
        stats["bytes"] = 0
        start, stop = index.starts[block], index.end(block)
        if stop <= start:
            return
        stream = open_range(index.path, start, stop, stats)
        try:
            if index.is_file_start(block):
                yield from self.read_stream(index.path, stream, batch_size, columns,
                                            max_record_bytes, stats=stats)
            else:
                yield from self.read_stream(index.path, stream, batch_size, columns,
                                            max_record_bytes, list(index.header),
                                            index.first_index[block], index.first_line[block],
                                            stats)
            stats["bytes"] = stream.raw.read_bytes
        finally:
            stream.close()

    def key_dtype(self, path: str, key: str, max_record_bytes: int) -> str:
        return "string"  # a column of text

    def field_type(self, path: str, name: str,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> ColumnType | None:
        """Text, when the first input's header names the column."""
        first = self._first_item(path, max_record_bytes)
        if first is not None and first[0] == "header" and name in first[1]:
            return ColumnType("string", ())
        return None

    def _first_item(self, path: str, max_record_bytes: int):
        """The first item the block reader gives for the file (its header, or what is wrong
        with its first line), or None for an empty file."""
        stream, _ = open_shard(path)
        try:
            items = iter_csv_blocks(stream, [], block_bytes=64 << 10,
                                    max_record_bytes=max_record_bytes)
            first = next(items, None)
            items.close()
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"cannot read the CSV header of {path}: {e}") from None
        finally:
            stream.close()
        return first

    def check_first_shard(self, path: str, spec, key_field: str | None,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        """The header of the job's first input: raises InputError when it is unreadable or
        when `transforms.parse.header_problem` finds fault with it."""
        first = self._first_item(path, max_record_bytes)
        if first is None or first[0] == "ok":
            return
        if first[0] == "error":
            raise InputError(f"{path}: {first[4].removesuffix(NOT_READ)}")
        if first[0] == "header":
            problem = header_problem(first[1], spec, key_field)
            if problem is not None:
                raise InputError(f"the CSV header of {path} does not fit the model: {problem}")


CSV = CsvInput()
