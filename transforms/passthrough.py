"""Passthrough fields (`--passthrough_fields a,b`, Vertex AI's includedFields): input columns or
tf.Example features copied into every prediction row, with their type, so that downstream jobs
join predictions to the input without a second read.

What a row holds for a field:
- a feature of the model's spec: the value the model was given, after the spec's parsing
  (its dtype; the spec's default where the record has none), so that one record gives the
  same value whatever its input format: one value for a fixed feature of one value, a list
  of the shape's values (row-major) for a larger fixed shape, a list for a variable-length
  or ragged feature;
- any other field, as the source holds it: a CSV column is text (an empty cell is null, as
  it is an absent feature); a Parquet, JSONL or
  BigQuery column keeps its type (integers as int64, floats as float64 (float32 stays
  float32), booleans, strings, binary as string, lists of those; other Arrow types, e.g. a
  timestamp, as their text); a tf.Example feature has the kind the first record holding it
  gives it, one value if it holds one value there, else a list; absent or null is null.
The column's type is fixed at start-up from the spec or the first input (`FieldType`), so that
every file of a run has one schema. A record whose value does not fit it (a JSONL field that is
a number in the first record and text in another, a tf.Example feature of another kind, or of
several values where the first record has one) is a `type_mismatch` error row: a row is never written with a column silently dropped.

A field that is neither a spec feature nor in the first input is refused at start-up, as is a
field named like the key column, a model output column, or `shard`/`index` when rows carry
those.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from transforms.feature_spec import Feature, FeatureSpec
from transforms.formats.base import ColumnType
from transforms.records import RecordBatch, error_row

__all__ = ["FieldType", "passthrough_plan", "feature_type", "arrow_field_type", "json_field_type",
           "conform", "PassthroughReader"]

_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """One passthrough field: its output type, and where its values come from: `feature`, the
    spec's feature (parsed from the record's tf.Example), else `in_examples` (a feature of
    tf.Examples that the spec does not have) or a column of the input's column batches."""
    name: str
    column: ColumnType
    feature: Feature | None = None
    in_examples: bool = False


def feature_type(feature: Feature) -> ColumnType:
    """The output type of a spec feature's parsed value."""
    if feature.kind != "fixed":
        return ColumnType(feature.dtype, (None,))
    if feature.num_values == 1:
        return ColumnType(feature.dtype, ())
    return ColumnType(feature.dtype, (feature.num_values,))


def _arrow_leaf(t) -> str | None:
    import pyarrow as pa
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float32" if t == pa.float32() else "float64"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t):
        return "string"
    return None


def arrow_field_type(name: str, t) -> ColumnType:
    """The passthrough type of an Arrow column (Parquet's, BigQuery's): numbers, booleans and
    text as they are, lists of those as lists, a timestamp, date or decimal as its text; a
    struct, map or list of lists raises ValueError."""
    import pyarrow as pa
    leaf = _arrow_leaf(t)
    if leaf is not None:
        return ColumnType(leaf, ())
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        leaf = _arrow_leaf(t.value_type)
        if leaf is not None:
            return ColumnType(leaf, (None,))
    elif pa.types.is_temporal(t) or pa.types.is_decimal(t):
        return ColumnType("string", ())
    raise ValueError(f"--passthrough_fields {name!r} is a {t} column; a passthrough field is a "
                     "number, boolean, text, binary, timestamp, date or decimal column, or a "
                     "list of numbers, booleans or text")


def json_field_type(name: str, value) -> ColumnType:
    """The passthrough type of a JSON value (the first record's): integers as int64, other
    numbers as float64, booleans, text, lists of those (by their first element)."""
    def leaf(v):
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int):
            return "int64"
        if isinstance(v, float):
            return "float64"
        if isinstance(v, str):
            return "string"
        return None
    if isinstance(value, list):
        first = next((v for v in value if v is not None), "")
        kind = leaf(first)
        if kind is not None:
            return ColumnType(kind, (None,))
    else:
        kind = leaf(value)
        if kind is not None:
            return ColumnType(kind, ())
    raise ValueError(f"--passthrough_fields {name!r} holds {type(value).__name__} values in "
                     "the first record; a passthrough field is a number, boolean or text, or "
                     "a list of those")


def passthrough_plan(fields: list[str], spec: FeatureSpec, key_field: str | None,
                     value_columns: list[str], source_type, keys_in_examples: bool
                     ) -> list[FieldType]:
    """The fields' types, or a ValueError naming what is wrong with the first bad one.
    `value_columns`: the model output columns the rows hold; `source_type(name)`: the
    ColumnType of a field the spec does not have, from the job's first input (None when it is
    not there)."""
    taken = {key_field} if key_field is not None else {"shard", "index"}
    seen: set[str] = set()
    plan = []
    for name in fields:
        if name in seen:
            raise ValueError(f"--passthrough_fields names {name!r} twice")
        seen.add(name)
        if name in taken:
            what = "the key column" if key_field is not None else \
                "a column that rows without --key_field hold"
            raise ValueError(f"--passthrough_fields {name!r} is {what}; it is in every row "
                             "already")
        if name in value_columns:
            raise ValueError(f"--passthrough_fields {name!r} is also a model output column; "
                             "a row cannot hold two columns of one name")
        if name in spec:
            plan.append(FieldType(name, feature_type(spec[name]), feature=spec[name]))
            continue
        ctype = source_type(name)
        if ctype is None:
            raise ValueError(f"--passthrough_fields {name!r} is neither a feature of the "
                             "model's spec nor a field of the first input (of its first "
                             "1,000 records)")
        plan.append(FieldType(name, ctype, in_examples=keys_in_examples))
    return plan


def _value(v, dtype: str):
    """One value converted to `dtype`, or raises TypeError."""
    if isinstance(v, _Several):
        raise TypeError(repr(v))
    if dtype == "string":
        if isinstance(v, (bytes, str)):
            return v
        raise TypeError(f"{type(v).__name__} where text is expected")
    if dtype == "bool":
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        raise TypeError(f"{type(v).__name__} where true/false is expected")
    if isinstance(v, (bool, np.bool_)) or isinstance(v, (str, bytes)):
        raise TypeError(f"{type(v).__name__} where a number is expected")
    if dtype == "int64":
        if isinstance(v, (float, np.floating)) and math.isfinite(v) and v == int(v):
            v = int(v)
        if isinstance(v, (int, np.integer)):
            if not _INT64[0] <= int(v) <= _INT64[1]:
                raise TypeError(f"{v!r} is out of int64 range")
            return int(v)
        raise TypeError(f"{v!r} where an integer is expected")
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    raise TypeError(f"{type(v).__name__} where a number is expected")


def conform(values: list, ctype: ColumnType) -> tuple[np.ndarray, dict[int, str]]:
    """Python values (None for null) as one column of `ctype`: a typed numpy array when every
    value is there and the column holds one value per row, else an object array of values,
    lists and None. Returns it and {row: why} for values that do not fit."""
    n = len(values)
    out = np.empty(n, dtype=object)
    bad: dict[int, str] = {}
    listed = ctype.shape not in ((), None) or ctype.shape is None
    for i, v in enumerate(values):
        if v is None:
            out[i] = None
            continue
        try:
            if listed:
                if not isinstance(v, (list, tuple, np.ndarray)):
                    raise TypeError(f"{type(v).__name__} where a list is expected")
                if len(ctype.shape or ()) == 1 and ctype.shape[0] is not None \
                        and len(v) != ctype.shape[0]:
                    raise TypeError(f"{len(v)} values where {ctype.shape[0]} are expected")
                out[i] = [None if x is None else _value(x, ctype.dtype) for x in v]
            else:
                out[i] = _value(v, ctype.dtype)
        except TypeError as e:
            bad[i] = str(e)
            out[i] = None
    if not listed and not bad and n and all(v is not None for v in out):
        numeric = {"int64": np.int64, "float32": np.float32, "float64": np.float64,
                   "bool": bool}.get(ctype.dtype)
        if numeric is not None:
            return np.array(out.tolist(), dtype=numeric), bad
    return out, bad


def _parsed_column(parsed, feature: Feature | None) -> list:
    """A parsed tensor (dense, sparse or ragged) as one Python value per record."""
    import tensorflow as tf
    if isinstance(parsed, tf.sparse.SparseTensor):
        n = int(parsed.dense_shape[0])
        rows = parsed.indices.numpy()[:, 0]
        values = parsed.values.numpy()
        out = [[] for _ in range(n)]
        for r, v in zip(rows, values):
            out[r].append(v)
        return out
    if isinstance(parsed, tf.RaggedTensor):
        return [list(r) for r in parsed.to_list()]
    arr = parsed.numpy()
    if feature is not None and feature.num_values == 1:
        return list(arr.reshape(len(arr)))
    return [list(r) for r in arr.reshape(len(arr), -1)]


class _Several:
    """A tf.Example feature of several values where the column holds one."""

    def __init__(self, n: int):
        self.n = n

    def __repr__(self) -> str:
        return f"{self.n} values where one is expected"


def _one_value(values: list):
    return None if not values else values[0] if len(values) == 1 else _Several(len(values))


class PassthroughReader:
    """Attaches passthrough columns to record batches (in the parse step, after a column
    batch became tf.Examples): spec features and tf.Example features parsed from the
    serialized records, other columns taken from the column batch they came from."""

    def __init__(self, fields: list[FieldType]):
        self.fields = list(fields)

    def _tf_spec(self) -> dict:
        import tensorflow as tf
        spec = {}
        for f in self.fields:
            if f.feature is not None:
                spec[f.name] = f.feature.to_tf()
            elif f.in_examples:
                spec[f.name] = tf.io.VarLenFeature(tf.dtypes.as_dtype(
                    "float32" if f.column.dtype == "float32" else f.column.dtype))
        return spec

    def _parse(self, serialized: np.ndarray) -> tuple[dict[str, list], dict[int, str]]:
        """{field: values} of the fields parsed from tf.Examples, and {row: why} for records
        that do not parse with them (each record alone, when the batch fails)."""
        import tensorflow as tf
        spec = getattr(self, "_spec", None)
        if spec is None:
            spec = self._spec = self._tf_spec()
        if not spec:
            return {}, {}
        n = len(serialized)
        try:
            parsed = tf.io.parse_example(serialized, spec)
            return {name: _parsed_column(parsed[name], self._feature(name))
                    for name in spec}, {}
        except (tf.errors.InvalidArgumentError, ValueError):
            pass
        columns: dict[str, list] = {name: [None] * n for name in spec}
        bad: dict[int, str] = {}
        for i in range(n):
            try:
                one = tf.io.parse_example(serialized[i:i + 1], spec)
            except (tf.errors.InvalidArgumentError, ValueError) as e:
                bad[i] = str(e).splitlines()[0][:300]
                continue
            for name in spec:
                columns[name][i] = _parsed_column(one[name], self._feature(name))[0]
        return columns, bad

    def _feature(self, name: str) -> Feature | None:
        for f in self.fields:
            if f.name == name:
                return f.feature
        return None

    def attach(self, batch: RecordBatch, source_columns: dict[str, list] | None = None,
               payload=None) -> tuple[RecordBatch | None, list[dict]]:
        """`batch` with its passthrough columns, and error rows for records whose values do
        not fit their field's type (those leave the batch). `source_columns`: {field: one
        Python value per record of `batch`} for the fields taken from a column batch;
        `payload(i)`: record i's error payload (default: its serialized tf.Example)."""
        parsed, unparsed = self._parse(batch.serialized)
        columns: dict[str, np.ndarray] = {}
        bad: dict[int, tuple[str, str]] = {
            i: ("parse_error", f"passthrough fields: {why}") for i, why in unparsed.items()}
        for f in self.fields:
            raw = parsed.get(f.name)
            if raw is not None and f.in_examples and f.column.shape == ():
                raw = [_one_value(v) for v in raw]
            if raw is None:
                raw = (source_columns or {}).get(f.name)
            if raw is None:  # not in this batch's source (a later file without the column)
                raw = [None] * len(batch)
            values, problems = conform(raw, f.column)
            for i, why in problems.items():
                bad.setdefault(i, ("type_mismatch", f"passthrough field {f.name!r}: {why}"))
            columns[f.name] = values
        errors = [error_row(batch.shard, int(batch.indices[i]), etype, msg,
                            batch.serialized[i] if payload is None else payload(i),
                            line=None if batch.lines is None else int(batch.lines[i]))
                  for i, (etype, msg) in sorted(bad.items())]
        if not bad:
            return dataclasses.replace(batch, passthrough=columns), errors
        keep = np.ones(len(batch), dtype=bool)
        keep[list(bad)] = False
        if not keep.any():
            return None, errors
        return RecordBatch(batch.shard, batch.serialized[keep], batch.indices[keep],
                           keys=None if batch.keys is None else batch.keys[keep],
                           lines=None if batch.lines is None else batch.lines[keep],
                           passthrough={k: v[keep] for k, v in columns.items()}), errors
