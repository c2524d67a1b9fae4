"""Columnar formatting of prediction batches: the row columns in order, and the JSON text of
their values, which the output formats (`transforms.formats.jsonl_output`, `csv_output`) share.

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
from typing import TYPE_CHECKING

import numpy as np
import orjson

if TYPE_CHECKING:
    from transforms.predict import PredictionBatch

__all__ = ["decoded_list", "json_fragments", "row_columns", "value_columns"]

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _b64(value: bytes) -> dict:
    return {"b64": base64.b64encode(value).decode("ascii")}


def _decode(value):
    if isinstance(value, (list, tuple)):  # a passthrough field's list
        return [_decode(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, np.generic):
        return value.item()
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


def decoded_list(arr: np.ndarray):
    """An array's values as JSON-ready Python values (lists per row beyond rank 1): bytes as
    str when valid UTF-8, else {"b64": ...}."""
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
    return [decoded_list(a) for a in arr]


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
        return list(map(orjson.dumps, decoded_list(arr)))
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
    """The output columns in order: the key (or shard and index), the passthrough fields in
    the order they were named, then the model outputs in name order."""
    if key_field is not None:
        cols = [(key_field, batch.keys)]
    else:
        cols = [("shard", batch.shards), ("index", batch.indices)]
    if batch.passthrough:
        cols += list(batch.passthrough.items())
    return cols + sorted(batch.outputs.items())


def value_columns(passthrough: list[str], output_names: list[str]) -> list[str]:
    """The names of the row columns after the key (or shard and index), in row order."""
    return list(passthrough) + sorted(output_names)
