"""Columnar formatting of prediction batches as JSON lines or CSV text.

A batch becomes one text blob (many lines), built column by column: numeric columns are
serialised in one `orjson` call each (float32 keeps its shortest float32 repr, int64 stays
exact) and split into per-row fragments; strings are decoded as UTF-8, or written as
`{"b64": ...}` (TF Serving's JSON convention) when they are not valid UTF-8. CSV is written by
pyarrow; vectors and matrices go into one cell as JSON arrays.

Keys follow the same rule as string outputs, whatever their source: bytes from a tf.Example,
or CSV cells, whose undecodable bytes the CSV reader keeps as lone surrogates (so the original
bytes are what `{"b64": ...}` holds).

Non-finite floats are written losslessly and alike in both formats, with the spellings of the
protobuf JSON mapping: in JSON the strings "NaN", "Infinity", "-Infinity" (also inside arrays);
in CSV cells NaN, Infinity, -Infinity (and the quoted JSON form inside JSON-array cells). JSON
has no such numbers and `orjson` would write `null`, which loses the value. Columns without
non-finite values keep the one-call fast path.
"""
from __future__ import annotations

import base64
import io
import itertools
import re

import numpy as np
import orjson

from transforms.predict import PredictionBatch

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _b64(value: bytes) -> dict:
    return {"b64": base64.b64encode(value).decode("ascii")}


def _decode(value):
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return _b64(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the CSV reader's undecodable bytes
            return _b64(value.encode("utf-8", "surrogateescape")
                        if all(0xDC80 <= ord(c) <= 0xDCFF for c in value
                               if 0xD800 <= ord(c) <= 0xDFFF)
                        else value.encode("utf-8", "surrogatepass"))
    return value


def _decoded_list(arr: np.ndarray):
    if arr.ndim == 1:
        try:
            if arr.dtype == object and len(arr) and isinstance(arr[0], bytes):
                return [v.decode("utf-8") for v in arr]
            if arr.dtype == object and len(arr) and isinstance(arr[0], str):
                values = arr.tolist()
                "".join(values).encode("utf-8")  # one check for the whole column
                return values
            return [_decode(v) for v in arr]
        except (UnicodeError, AttributeError, TypeError):
            return [_decode(v) for v in arr]
    return [_decoded_list(a) for a in arr]


def _non_finite_json(value) -> bytes:
    """The protobuf JSON mapping's string for a NaN or an infinity."""
    return b'"NaN"' if value != value else b'"Infinity"' if value > 0 else b'"-Infinity"'


def _json_with_non_finite(arr: np.ndarray) -> bytes:
    """JSON of one array (any rank) that holds NaN or infinities: the finite values keep
    orjson's text (float32's shortest repr), the others become the protobuf JSON strings."""
    finite = np.isfinite(arr)
    if finite.all():
        return orjson.dumps(np.ascontiguousarray(arr), option=_NUMPY)
    if arr.ndim > 1:
        return b"[" + b",".join(_json_with_non_finite(a) for a in arr) + b"]"
    zeroed = np.ascontiguousarray(np.where(finite, arr, 0).astype(arr.dtype))
    parts = orjson.dumps(zeroed, option=_NUMPY)[1:-1].split(b",")
    for i in np.flatnonzero(~finite):
        parts[i] = _non_finite_json(arr[i])
    return b"[" + b",".join(parts) + b"]"


def json_fragments(arr: np.ndarray) -> list[bytes]:
    """Per-row JSON text of one column ([n, ...] array)."""
    n = len(arr)
    if n == 0:
        return []
    if arr.dtype == object or arr.dtype.kind in "SU":
        return list(map(orjson.dumps, _decoded_list(arr)))
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        # only the rows holding NaN or an infinity take the slow path
        finite_rows = np.isfinite(arr.reshape(n, -1)).all(axis=1)
        zeroed = np.where(finite_rows.reshape((n,) + (1,) * (arr.ndim - 1)), arr, 0
                          ).astype(arr.dtype)
        out = json_fragments(zeroed)
        for i in np.flatnonzero(~finite_rows):
            out[i] = (_non_finite_json(arr[i]) if arr.ndim == 1
                      else _json_with_non_finite(arr[i]))
        return out
    if arr.ndim == 1:
        return orjson.dumps(arr, option=_NUMPY)[1:-1].split(b",")
    if arr.ndim == 2:
        # "[[a,b],[c,d]]" -> "[a,b]", "[c,d]" (numbers hold no brackets, so this is exact)
        return orjson.dumps(arr, option=_NUMPY)[1:-1].replace(b"],[", b"]\n[").split(b"\n")
    return [orjson.dumps(row, option=_NUMPY) for row in arr]


def row_columns(batch: PredictionBatch, key_field: str | None) -> list[tuple[str, np.ndarray]]:
    """The output columns in order: the key (or shard and index), then the model outputs."""
    if key_field is not None:
        cols = [(key_field, batch.keys)]
    else:
        cols = [("shard", batch.shards), ("index", batch.indices)]
    return cols + sorted(batch.outputs.items())


def _plain_ascii(values: np.ndarray) -> list | None:
    """The column's values as they are, when every one is bytes that JSON can quote verbatim
    (printable ASCII without quote or backslash): ids, labels, country codes..."""
    if values.dtype != object or values.ndim != 1 or not len(values):
        return None
    vals = values.tolist()
    if all(type(v) is bytes for v in vals):
        return None if _NEEDS_ESCAPE.search(b"".join(vals)) else vals
    if all(type(v) is str for v in vals):  # e.g. CSV keys
        joined = "\n".join(vals)
        if joined.count("\n") != len(vals) - 1 or _NEEDS_ESCAPE.search(
                joined.replace("\n", " ").encode("utf-8", "surrogatepass")):
            return None
        return joined.encode("ascii").split(b"\n")
    return None


def to_jsonl(batch: PredictionBatch, key_field: str | None) -> bytes:
    """One JSON object per row, assembled column-wise: per column a stream of per-row fragments
    and the constant text before it; rows are then one join over the zipped streams."""
    streams, pending = [], b"{"
    for name, values in row_columns(batch, key_field):
        pending += orjson.dumps(name) + b":"
        plain = _plain_ascii(values)
        if plain is not None:  # the quotes go into the constant pieces
            streams += [itertools.repeat(pending + b'"'), plain]
            pending = b'",'
        else:
            streams += [itertools.repeat(pending), json_fragments(values)]
            pending = b","
    streams.append(itertools.repeat(pending[:-1] + b"}\n"))
    return b"".join(itertools.chain.from_iterable(zip(*streams)))[:-1]


def csv_header(key_field: str | None, output_names: list[str]) -> list[str]:
    first = [key_field] if key_field is not None else ["shard", "index"]
    return first + sorted(output_names)


def to_csv(batch: PredictionBatch, key_field: str | None) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    arrays, names, non_finite = [], [], {}
    for name, values in row_columns(batch, key_field):
        names.append(name)
        if values.dtype != object and values.ndim == 1 and values.dtype.kind in "fiub":
            if values.dtype == np.float16:  # written like JSON lines: as float32
                values = values.astype(np.float32)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                non_finite[len(arrays)] = values
            arrays.append(pa.array(values))
        elif values.ndim == 1:
            arrays.append(pa.array([v if isinstance(v, str) else orjson.dumps(v).decode()
                                    for v in _decoded_list(values)], pa.string()))
        else:
            arrays.append(pa.array([f.decode() for f in json_fragments(values)], pa.string()))
    if non_finite:
        return _csv_rows(arrays, non_finite)
    out = io.BytesIO()
    pacsv.write_csv(pa.table(arrays, names=names), out,
                    pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue().rstrip(b"\n")


def _csv_rows(arrays: list, non_finite: dict[int, np.ndarray]) -> bytes:
    """The CSV text pyarrow's writer gives (quoting_style="needed": every string quoted, its
    quotes doubled; numbers in pyarrow's own text, which its cast to string shares), with
    NaN, Infinity and -Infinity where pyarrow would write nan, inf and -inf. Only for batches
    holding such values."""
    import pyarrow as pa
    import pyarrow.compute as pc
    cells = []
    for i, array in enumerate(arrays):
        if pa.types.is_string(array.type):
            cells.append(pc.binary_join_element_wise(
                '"', pc.replace_substring(array, '"', '""'), '"', ""))
            continue
        text = pc.cast(array, pa.string())
        if i in non_finite:
            values = non_finite[i]
            text = text.to_numpy(zero_copy_only=False)
            text[np.isnan(values)] = "NaN"
            text[np.isposinf(values)] = "Infinity"
            text[np.isneginf(values)] = "-Infinity"
            text = pa.array(text, pa.string())
        cells.append(text)
    rows = pc.binary_join_element_wise(*cells, ",")
    return "\n".join(rows.to_pylist()).encode("utf-8")
