"""JSONL input (`--input_format jsonl`): one JSON object per line, plain or gzip, local or gs://.

The "instances" convention of Vertex AI batch prediction and TF Serving's REST API: each line
is an object of feature name -> value or list of values, bytes as `{"b64": "..."}`, so a
Vertex batch job's JSONL input runs unchanged. Lines end with LF (a CR before it is JSON
whitespace); a line of nothing but spaces, tabs and CRs is blank: not a record, but a line
(line numbers count every line, as in an editor). A UTF-8 byte order mark is dropped at the
file's start only. A line that is not JSON, or not an object, is a `parse_error` row with its
line number and payload; one longer than --max_record_bytes (line end excluded) is a
`corrupt_record` row, read past in bounded pieces (a blank one, however long, is still blank).

**Values.** Lines are parsed with orjson; each batch becomes typed Arrow columns, built column
by column (`pa.array` over the batch's values in C++; a column holding anything else goes
value by value), which the parse step converts with the feature spec without a round trip
through text (`transforms.examples.typed_feature_column`):

    JSON value                           int64 feature       float32 feature     string feature
    integer                              the value           the value           type_mismatch
    number with a fraction, 1e400-like   parse_error         the value (out of   type_mismatch
      (beyond int64: out of range)                           range: parse_error)
    integral number (180.0, 1e3)         180, 1000           the value           type_mismatch
    true / false                         1 / 0               1.0 / 0.0           type_mismatch
    "NaN", "Infinity", "-Infinity"       parse_error         NaN, +-infinity     the text
    any other string                     type_mismatch       type_mismatch       UTF-8 bytes
    {"b64": "..."}                       type_mismatch       type_mismatch       the bytes
    list of the above                    the values: a varlen feature takes any number, a
                                         fixed one exactly its shape's (shape_mismatch else)
    null, a missing key, []              absent: the spec's default, or missing_feature
    any other object, a nested list,     an error row (type_mismatch / parse_error), whatever
      a list with null, numbers and        the feature
      strings in one list, bad base64

Keys not in the spec (nor --key_field) are ignored. A JSON number is exact where the feature
needs it: integers stay int64 up to 2**63 - 1 (beyond: out of int64 range), floats are
float64 until the parse step rounds them to float32 (finite beyond float32's range is an
error, as in CSV). A list of nothing but "NaN"/"Infinity" strings is a list of numbers (a
string feature with such a list is a type_mismatch row); a single one of those strings is
both (the feature decides). orjson refuses a number beyond float64's range (`1e400`): that
line is not JSON to it. The key column keeps its JSON type in the output rows (a string, a
number); its dtype for the job (`key_dtype`) is the type of the first record's key.

A record's outcome never depends on the records beside it: a batch in which one column holds
values that no one Arrow type converts exactly for every feature dtype (integers beyond
2**53 beside fractions, "NaN" beside numbers or other strings, lists beside scalars) is handed
over as several column batches, each exact (their records keep their indices and lines).

**Splitting** (see `transforms.formats.base`). A JSON string cannot hold a raw newline, so
every line starts a record (or a blank line) and a range's records start after each newline:
`summarize_range` counts a range's newlines, finds its first and last line start and whether
the line pieces at its ends are blank, and counts the non-blank lines between (numpy over the
bytes). `index_file` takes each block's start (the first line start in its range), record
index and line number from the prefix of those counts; `read_block` reads a block with the
serial reader from there. Blankness is the only per-line fact the index needs: a line over the
cap is a record (an error row) unless blank, whatever its length, so no length is summed.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import zlib
from typing import Iterator, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, READ_CHUNK, InputFormat,
                                     ReadAhead, SplitIndex, open_range, open_shard,
                                     shard_stream)
from transforms.records import MAX_PAYLOAD_BYTES, ColumnBatch, error_row

__all__ = ["JsonlInput", "JSONL", "RangeSummary", "summarize"]

_LOG = logging.getLogger(__name__)

_WS = b" \t\r"  # what a blank line holds (JSON's whitespace but the newline that ends it)
_BOM = b"\xef\xbb\xbf"
# bytes of a line decoded for an error row's payload: enough for MAX_PAYLOAD_BYTES characters
# and one more (a character is at most 4 bytes), so that the row says when it was cut
_PAYLOAD_BYTES = 4 * MAX_PAYLOAD_BYTES + 4
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_NON_FINITE_TEXT = pa.array(list(_NON_FINITE))
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_EXACT = 1 << 53  # integers up to this magnitude are exact in float64


# --- reading lines ------------------------------------------------------------------------------
def _iter_lines(stream, cap: int, block_bytes: int, drop_bom: bool) -> Iterator[tuple]:
    """The stream's lines, without their "\\n": ("lines", [line, ...]) for each block read,
    and ("long", first bytes, blank) for a line longer than the cap, which is read past in
    blocks and never held whole (memory: at most the cap and a block). A line of up to a
    block can still be longer than the cap: the caller checks the lengths it gets."""
    read = getattr(stream, "read1", None) or stream.read
    parts: list[bytes] = []  # the line read so far, while it has no line end
    have = 0
    data = b""
    if drop_bom:  # the file's first bytes, whatever sizes the stream hands over
        while len(data) < 3:
            more = read(3 - len(data))
            if not more:
                break
            data += more
        if data.startswith(_BOM):
            data = data[3:]
    while True:
        if not data:
            data = read(block_bytes)
            if not data:
                break
        pieces = data.split(b"\n")
        data = b""
        rest = pieces.pop()
        if pieces:
            if parts:
                parts.append(pieces[0])
                pieces[0] = b"".join(parts)
                parts, have = [], 0
            yield ("lines", pieces)
        if rest:
            parts.append(rest)
            have += len(rest)
        if have > cap + 1:  # longer than the cap, whatever ends it (one CR is not counted)
            head = b"".join(parts)
            blank = not head.strip(_WS)
            # the payload is the line's first _PAYLOAD_BYTES bytes (all of it when shorter),
            # as for a long line read whole: what was read so far depends on where the reads
            # happened to end (a block of a split file starts elsewhere than a serial read,
            # gzip hands over pieces of any size), and a shorter cut would also not be
            # flagged as cut
            kept = [head[:_PAYLOAD_BYTES]]
            room = _PAYLOAD_BYTES - len(kept[0])
            parts, have = [], 0
            while True:
                data = read(block_bytes)
                if not data:
                    break
                at = data.find(b"\n")
                piece = data if at < 0 else data[:at]
                if room > 0:
                    kept.append(piece[:room])
                    room -= len(kept[-1])
                blank = blank and not piece.strip(_WS)
                if at >= 0:
                    data = data[at + 1:]
                    break
            yield ("long", b"".join(kept), blank)
    if parts:
        yield ("lines", [b"".join(parts)])


def _text(raw: bytes) -> str:
    return raw[:_PAYLOAD_BYTES].decode("utf-8", "replace")


def _too_long(line: int, cap: int) -> str:
    return f"line {line} is longer than --max_record_bytes ({cap} bytes); it was skipped"


def _what(value) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"JSON {orjson.dumps(value).decode()}"
    return "a JSON number"


def _objects(stream, cap: int, limit: int) -> Iterator[dict]:
    """The first `limit` records of a stream that are JSON objects (start-up look-ups)."""
    seen = 0
    for kind, *item in _iter_lines(stream, cap, 64 << 10, drop_bom=True):
        if kind != "lines":
            continue
        for raw in item[0]:
            if len(raw) > cap + 1 or not raw.strip(_WS):
                continue
            seen += 1
            if seen > limit:
                return
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if type(value) is dict:
                yield value


# --- typed columns ------------------------------------------------------------------------------
# The Arrow types a column may be built as ("reps"), as bits: a value's mask holds every rep
# that converts it exactly for any feature dtype; a column is built as a rep all its values
# share. Scalars and lists are never mixed in one column.
_S_BOOL, _S_INT, _S_FLOAT, _S_BIN, _S_TEXT = 1, 2, 4, 8, 16
_L_BOOL, _L_INT, _L_FLOAT, _L_BIN = 32, 64, 128, 256
_ALL = 511  # an absent value: any rep
_NUMBER = _S_BOOL | _S_INT | _S_FLOAT
_ARROW = {_S_BOOL: pa.bool_(), _S_INT: pa.int64(), _S_FLOAT: pa.float64(),
          _S_BIN: pa.binary(), _S_TEXT: pa.string()}
_ARROW.update({bit << 5: pa.list_(_ARROW[bit]) for bit in (_S_BOOL, _S_INT, _S_FLOAT, _S_BIN)})


def _convert(rep: int):
    """Value -> what the rep's Arrow array takes."""
    base = rep if rep < 32 else rep >> 5
    if base == _S_INT:
        return int
    if base == _S_FLOAT:
        return lambda x: _NON_FINITE[x] if type(x) is str else float(x)
    if base == _S_BIN:
        return lambda x: x.encode("utf-8") if type(x) is str else x
    return lambda x: x  # bool, text


class _Bad(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def _bytes(value: dict, name: str) -> bytes:
    if len(value) != 1 or type(value.get("b64")) is not str:
        raise _Bad("type_mismatch", f"column {name!r}: a JSON object other than "
                                    '{"b64": "<base64>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("parse_error", f'column {name!r}: its "b64" value is not base64') from None


def _element(x, name: str) -> tuple[int, bool, object]:
    """(mask as a scalar, whether it is a float, the value to convert) of one value."""
    t = type(x)
    if t is float:
        # -0.0 is integral, but as an int64 it would lose its sign: a float only
        if x.is_integer() and -2.0 ** 63 <= x < 2.0 ** 63 and (x or math.copysign(1.0, x) > 0):
            return _S_INT | _S_FLOAT, True, x
        return _S_FLOAT, True, x
    if t is int:
        if _INT64_MIN <= x <= _INT64_MAX:
            # float64 rounds most integers beyond 2**53: those are int64 only
            return (_S_INT | _S_FLOAT if -_EXACT <= x <= _EXACT or float(x) == x
                    else _S_INT), False, x
        return _S_FLOAT, True, float(x)  # beyond int64: a number for float32 only
    if t is bool:
        return _NUMBER, False, x
    if t is str:
        return (_S_TEXT if x in _NON_FINITE else _S_BIN), False, x
    if t is dict:
        return _S_BIN, False, _bytes(x, name)
    if x is None:
        raise _Bad("parse_error", f"column {name!r}: a list holds a null value")
    raise _Bad("type_mismatch", f"column {name!r}: a list holds a list")


def _value(v, name: str) -> tuple[int, bool, object]:
    """(mask, whether it holds a float, the value to convert: None when absent)."""
    if type(v) is not list:
        return _element(v, name)
    if not v:
        return _ALL, False, None  # an empty list is an absent value
    mask, floats, numbers, strings, non_finite, out = _NUMBER, False, False, False, 0, []
    for x in v:
        m, f, x = _element(x, name)
        if m == _S_TEXT:  # a "NaN" in a list: a number beside numbers, text beside strings
            non_finite += 1
        elif m == _S_BIN:
            strings = True
        else:
            numbers = True
            mask &= m
            floats = floats or f
        out.append(x)
    if numbers and strings:
        raise _Bad("type_mismatch", f"column {name!r}: a list holds both numbers and strings")
    if strings:
        return _L_BIN, False, out
    if non_finite or not mask:
        # mask 0: an integer float64 rounds beside a number that is not an int64 (a fraction,
        # beyond int64): floats, which a float32 feature takes and an int64 one refuses anyway
        return _L_FLOAT, True, out
    return mask << 5, floats, out


def _pick(mask: int, floats: bool) -> int:
    """The rep of a column whose values share the reps in `mask`: bool before numbers, and
    float64 before int64 when some value is a float (pa.array's own choice)."""
    order = (_S_BOOL, _S_FLOAT, _S_INT) if floats else (_S_BOOL, _S_INT, _S_FLOAT)
    for bit in order + (_S_BIN, _S_TEXT):
        for b in (bit, bit << 5):
            if mask & b:
                return b
    raise AssertionError(mask)


class _Column:
    """One column of a batch: an Arrow array for every row, or the values and the rep of
    each group of rows (`tags`: the group of each row, None when one rep fits all)."""
    __slots__ = ("array", "values", "reps", "tags", "errors")

    def __init__(self, array=None, values=None, reps=(), tags=None, errors=None):
        self.array, self.values, self.reps, self.tags = array, values, reps, tags
        self.errors = errors or {}

    def build(self, rows: np.ndarray | None, n: int) -> pa.Array:
        """The column for `rows` (None: all n rows)."""
        if self.array is not None:
            return self.array if rows is None else self.array.take(pa.array(rows))
        if rows is None:
            rows = np.arange(n)
        rep = self.reps[self.tags[rows[0]] if self.tags is not None else 0]
        if rep is None:
            return pa.nulls(len(rows))
        convert = _convert(rep)
        if rep < 32:
            cells = [None if (v := self.values[i]) is None else convert(v) for i in rows]
        else:
            cells = [None if (v := self.values[i]) is None else list(map(convert, v))
                     for i in rows]
        return pa.array(cells, _ARROW[rep])


def _fast(values: list) -> pa.Array | None:
    """The column as pa.array infers it, when that is the rep the value-by-value path picks
    (every value of one JSON type); None when the values need that path."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return None
    t = array.type
    if t in (pa.int64(), pa.float64(), pa.bool_(), pa.null()):
        return array
    if t == pa.string():
        hits = pc.sum(pc.is_in(array, _NON_FINITE_TEXT)).as_py() or 0
        if hits == 0:
            return array.cast(pa.binary())
        return array if hits == len(array) - array.null_count else None
    if not pa.types.is_list(t):
        return None
    item = t.value_type
    flat = pc.list_flatten(array)
    if flat.null_count or not len(flat) or item not in (pa.int64(), pa.float64(), pa.bool_(),
                                                        pa.string()):
        return None
    if item == pa.string():
        if pc.any(pc.is_in(flat, _NON_FINITE_TEXT)).as_py():
            return None
        array = array.cast(pa.list_(pa.binary()))
    empty = pc.equal(pc.list_value_length(array), 0)
    if pc.any(empty).as_py():  # an empty list is an absent value
        array = pc.if_else(empty, pa.scalar(None, array.type), array)
    return array


def _column(values: list, name: str) -> _Column:
    array = _fast(values)
    if array is not None:
        return _Column(array=array)
    n = len(values)
    masks = np.full(n, _ALL, np.int64)
    floats = False
    kept: list = [None] * n
    errors = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        try:
            masks[i], f, kept[i] = _value(v, name)
        except _Bad as e:
            errors[i] = (e.error_type, str(e))
            continue
        floats = floats or f
    shared = int(np.bitwise_and.reduce(masks)) if n else _ALL
    if shared == _ALL:  # nothing but absent values
        return _Column(values=kept, reps=(None,), errors=errors)
    if shared:
        return _Column(values=kept, reps=(_pick(shared, floats),), errors=errors)
    # no one rep converts every value exactly: groups of rows, the largest first
    reps, tags = [], np.zeros(n, np.int64)
    left = masks != _ALL
    while left.any():
        best = max((b for b in _ARROW), key=lambda b: (int(np.count_nonzero(left & (masks & b != 0))),
                                                       -b))
        mine = left & (masks & best != 0)
        tags[mine] = len(reps)
        reps.append(best)
        left &= ~mine
    return _Column(values=kept, reps=tuple(reps), tags=tags, errors=errors)


def _batches(path: str, recs: list[dict], indices: list[int], lines: list[int],
             raws: list[bytes], columns: list[str] | None) -> Iterator:
    """The records as column batches (one, or one per group of rows a column needs), after
    the error rows of the values that no feature can take."""
    n = len(recs)
    if columns is None:  # every key the batch's objects have
        names = list(dict.fromkeys(k for rec in recs for k in rec))
    else:
        names = list(dict.fromkeys(columns))
    built = {name: _column([rec.get(name) for rec in recs], name) for name in names}
    bad: dict[int, tuple[str, str]] = {}
    for col in built.values():
        for i, why in col.errors.items():
            bad.setdefault(i, why)
    for i in sorted(bad):
        yield error_row(path, indices[i], *bad[i], _text(raws[i]), line=lines[i])
    keep = np.array([i for i in range(n) if i not in bad], np.int64) if bad else None
    tagged = [col.tags for col in built.values() if col.tags is not None]
    if not tagged:
        groups = [keep]
    else:
        rows = keep if keep is not None else np.arange(n)
        if not len(rows):
            return
        keys = np.stack([t[rows] for t in tagged], axis=1)
        _, first, which = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        which = which.reshape(-1)
        groups = [rows[which == g] for g in np.argsort(first)]
    index_array, line_array = np.asarray(indices, np.int64), np.asarray(lines, np.int64)
    for rows in groups:
        if rows is not None and not len(rows):
            continue
        table = pa.table({name: col.build(rows, n) for name, col in built.items()})
        chosen = slice(None) if rows is None else rows
        text = b"\n".join(raws if rows is None else [raws[i] for i in rows])
        yield ColumnBatch(path, table, index_array[chosen], line_array[chosen], text=text)


# --- splitting ----------------------------------------------------------------------------------
_SCAN_BYTES = 8 << 20  # a range is scanned this much at a time
_NON_BLANK = np.ones(256, bool)
_NON_BLANK[[9, 10, 13, 32]] = False  # "\n" too: a line's own end does not make it a record


class RangeSummary(NamedTuple):
    """`JsonlInput.summarize_range`'s result for the bytes [start, stop): line starts are the
    file's start and every byte after a "\\n"."""
    start: int
    stop: int
    newlines: int
    first: int | None   # the first line start in the range (None: none)
    last: int | None    # the last one
    head_blank: bool    # the bytes before `first` (all of them when None) are blank
    records: int        # non-blank lines from `first` up to `last` (each ends in the range)
    tail_blank: bool    # the bytes from `last` on are blank (True when None)


def _combine(x: RangeSummary, y: RangeSummary) -> RangeSummary:
    """x's bytes followed by y's."""
    newlines = x.newlines + y.newlines
    if x.first is None:
        if y.first is None:
            return RangeSummary(x.start, y.stop, newlines, None, None,
                                x.head_blank and y.head_blank, 0, True)
        return y._replace(start=x.start, newlines=newlines,
                          head_blank=x.head_blank and y.head_blank)
    if y.first is None:
        return x._replace(stop=y.stop, newlines=newlines,
                          tail_blank=x.tail_blank and y.head_blank)
    return RangeSummary(x.start, y.stop, newlines, x.first, y.last, x.head_blank,
                        x.records + y.records + (not (x.tail_blank and y.head_blank)),
                        y.tail_blank)


def _scan(data: bytes, base: int, line_start: bool, bom: int) -> RangeSummary:
    """Summarize `data`, the file's bytes from `base`; `line_start`: a line starts at `base`;
    `bom`: how many of its first bytes are the file's byte order mark (blank)."""
    a = np.frombuffer(data, np.uint8)
    n = len(a)
    nl = np.flatnonzero(a == 10)
    starts = nl + 1
    if len(starts) and starts[-1] == n:
        starts = starts[:-1]
    if line_start:
        starts = np.concatenate(([0], starts))
    non_blank = _NON_BLANK[a]
    if bom:
        non_blank[:bom] = False
    if not len(starts):
        return RangeSummary(base, base + n, len(nl), None, None, not non_blank.any(), 0, True)
    first, last = int(starts[0]), int(starts[-1])
    lines = np.logical_or.reduceat(non_blank, starts)
    return RangeSummary(base, base + n, len(nl), base + first, base + last,
                        not non_blank[:first].any(), int(np.count_nonzero(lines[:-1])),
                        not lines[-1])


def summarize(path: str, start: int, stop: int, size: int,
              scan_bytes: int = _SCAN_BYTES) -> RangeSummary | None:
    """The `RangeSummary` of the bytes [start, stop) of the plain file `path`, read
    `scan_bytes` at a time (and the byte before, to know whether a line starts at `start`);
    None when the file is shorter than `size` says (it changed: it is then read whole)."""
    bom = 0
    if start < len(_BOM) and size >= len(_BOM):
        with open_range(path, 0, len(_BOM)) as head:
            bom = len(_BOM) if head.read(len(_BOM)) == _BOM else 0
    with open_range(path, max(start - 1, 0), stop) as stream:
        line_start = start == 0 or stream.read(1) == b"\n"
        total, pos = None, start
        while pos < stop:
            data = stream.read(min(scan_bytes, stop - pos))
            if not data:
                return None
            part = _scan(data, pos, line_start, max(0, min(bom, pos + len(data)) - pos))
            total = part if total is None else _combine(total, part)
            pos += len(data)
            line_start = data[-1:] == b"\n"
    if total is None:
        return None
    return total


def _plan(path: str, size: int, ranges: list[tuple[int, int]],
          summaries: list) -> SplitIndex | str:
    """`JsonlInput.index_file`: the SplitIndex, or why the file is read whole."""
    if (not ranges or len(summaries) != len(ranges) or ranges[0][0] != 0
            or ranges[-1][1] != size
            or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:]))
            or any(s is None or (s.start, s.stop) != tuple(r)
                   for s, r in zip(summaries, ranges))):
        return "its range summaries do not cover the file (did it change while it was read?)"
    records, newlines = 0, 0  # records that start before the range; newlines before it
    open_line = None  # the line that runs into the range: whether it is a record so far
    found: list = []
    for (start, _), s in zip(ranges, summaries):
        if s.first is None:
            if open_line is not None:
                open_line = open_line or not s.head_blank
            found.append(None)
        else:
            if open_line is not None:
                records += open_line or not s.head_blank
            found.append((s.first, records, 1 + newlines + (s.first > start)))
            records += s.records
            open_line = not s.tail_blank
        newlines += s.newlines
    if found[0] is None or found[0][0] != 0:
        return "its first range does not start with a line"
    at = (size, records + bool(open_line), 1 + newlines)  # no line starts after: empty blocks
    blocks = []
    for block in reversed(found):
        at = block or at
        blocks.append(at)
    blocks.reverse()
    starts, first_index, first_line = (tuple(int(b[i]) for b in blocks) for i in range(3))
    return SplitIndex(path, size, True, starts, first_index, first_line)


# --- the format ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JsonlInput(InputFormat):
    """JSON Lines of instances; `block_bytes` is how much is read at once."""
    block_bytes: int = READ_CHUNK
    name = "jsonl"
    title = "JSONL"
    extensions = (".jsonl", ".json", ".jsonl.gz", ".json.gz")

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        with shard_stream(path, stats) as stream:
            yield from self.read_stream(path, stream, batch_size, columns, max_record_bytes,
                                        read_ahead=stats.get("gzip", False), stats=stats)

    def read_stream(self, path: str, stream, batch_size: int, columns: list[str] | None = None,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, first_index: int = 0,
                    first_line: int = 1, file_start: bool = True,
                    read_ahead: bool = False, stats: dict | None = None) -> Iterator:
        """`read_shard` on an open stream, from record `first_index` on line `first_line`
        (a block of a split file: `file_start` False, no byte order mark is dropped).
        `read_ahead`: lines are read (gunzipped) a block ahead in a helper thread; `stats`:
        the shard's, for its live "position"."""
        cap = max_record_bytes
        recs, indices, lines, raws = [], [], [], []
        index, line = first_index, first_line
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        items = _iter_lines(stream, cap, self.block_bytes, file_start)
        ahead = ReadAhead(items, stats=stats) if read_ahead else None
        try:
            for item in (ahead if ahead is not None else items):
                if item[0] == "long":
                    if not item[2]:
                        yield error_row(path, index, "corrupt_record", _too_long(line, cap),
                                        _text(item[1]), line=line)
                        index += 1
                    line += 1
                    continue
                block = item[1]
                check = max(map(len, block)) > cap
                for raw in block:
                    if check and len(raw) - raw.endswith(b"\r") > cap:
                        if raw.strip(_WS):
                            yield error_row(path, index, "corrupt_record",
                                            _too_long(line, cap), _text(raw), line=line)
                            index += 1
                        line += 1
                        continue
                    try:
                        value = loads(raw)
                    except decode_error as e:
                        if raw.strip(_WS):
                            yield error_row(path, index, "parse_error",
                                            f"line {line} is not valid JSON: {e.msg} (column "
                                            f"{e.colno})", _text(raw), line=line)
                            index += 1
                        line += 1
                        continue
                    if type(value) is not dict:
                        yield error_row(path, index, "parse_error",
                                        f"line {line} is {_what(value)}, not a JSON object",
                                        _text(raw), line=line)
                    else:
                        recs.append(value)
                        indices.append(index)
                        lines.append(line)
                        raws.append(raw)
                        if len(recs) >= batch_size:
                            yield from _batches(path, recs, indices, lines, raws, columns)
                            recs, indices, lines, raws = [], [], [], []
                    index += 1
                    line += 1
        except (OSError, EOFError, zlib.error) as e:  # a broken or cut-short gzip stream
            yield error_row(path, index, "unreadable_tail",
                            f"cannot decompress the file ({e}); {index - first_index} records "
                            "were read before it and the remainder of the file was not", None,
                            line=line)
        finally:
            if ahead is not None:
                ahead.close()
        if recs:
            yield from _batches(path, recs, indices, lines, raws, columns)

    # --- splitting (see the module docstring) ---------------------------------------------------
    splittable = True

    def summarize_range(self, path: str, start: int, stop: int, size: int,
                        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> RangeSummary | None:
        return summarize(path, start, stop, size)

    def index_file(self, path: str, size: int, ranges: list[tuple[int, int]], summaries: list,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SplitIndex | None:
        index = _plan(path, size, ranges, summaries)
        if isinstance(index, str):
            _LOG.info("read %s whole, not in %d blocks: %s", path, len(ranges), index)
            return None
        return index

    def read_block(self, index: SplitIndex, block: int, batch_size: int,
                   columns: list[str] | None, max_record_bytes: int,
                   stats: dict) -> Iterator:
        stats["gzip"] = False
        stats["bytes"] = 0
        start, stop = index.starts[block], index.end(block)
        if stop <= start:
            return
        stream = open_range(index.path, start, stop, stats)
        try:
            yield from self.read_stream(index.path, stream, batch_size, columns,
                                        max_record_bytes, index.first_index[block],
                                        index.first_line[block], index.is_file_start(block))
            stats["bytes"] = stream.raw.read_bytes
        finally:
            stream.close()

    # --- start-up -------------------------------------------------------------------------------
    def key_dtype(self, path: str, key: str,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> str:
        """The JSON type of the key in the first record that has one (of the first 1,000):
        an integer or a boolean is int64, another number float32, anything else string."""
        stream, _ = open_shard(path)
        try:
            for record in _objects(stream, max_record_bytes, 1000):
                value = record.get(key)
                if value is None or value == []:  # absent, as the reading step takes them
                    continue
                if isinstance(value, int):
                    return "int64"
                return "float32" if isinstance(value, float) else "string"
        except (OSError, EOFError, zlib.error):
            pass
        finally:
            stream.close()
        return "string"

    def field_type(self, path: str, name: str,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        """The passthrough type of the field's value in the first record that has it (of the
        first 1,000), or None."""
        from transforms.passthrough import json_field_type
        stream, _ = open_shard(path)
        try:
            for record in _objects(stream, max_record_bytes, 1000):
                value = record.get(name)
                if value is not None:
                    return json_field_type(name, value)
        except (OSError, EOFError, zlib.error):
            pass
        finally:
            stream.close()
        return None

    def check_first_shard(self, path: str, spec, key_field: str | None,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        """A first input that is one JSON document rather than JSON Lines (an array, or an
        object written over several lines, as `.json` files often are) is refused: every
        line of it would be an error row."""
        stream, _ = open_shard(path)
        try:
            for kind, *item in _iter_lines(stream, max_record_bytes, 64 << 10, True):
                # a line over the cap comes whole or as its first bytes, depending on where
                # the reads end: its first bytes decide either way
                lines = [item[0]] if kind == "long" else item[0]
                if kind == "long" and item[1]:
                    continue
                for raw in lines:
                    text = raw.strip(_WS)
                    if not text:
                        if kind == "long":  # not blank, but no more than spaces so far
                            return
                        continue
                    if text.startswith(b"[") or text == b"{":
                        raise InputError(
                            f"{path} is not JSON Lines: its first line {_text(text[:40])!r} "
                            "begins a JSON array or an object written over several lines; "
                            "JSONL input holds one JSON object per line")
                    return
        except (OSError, EOFError, zlib.error):
            return  # the reading step reports it, with what could be read
        finally:
            stream.close()


JSONL = JsonlInput()
