"""Parquet output (`--output_format parquet`): one column per row field, the key (or `shard` and
`index`) first, then every model output in name order, typed as the model declares them.

Column types (Arrow, as pyarrow writes them to Parquet):
- float32 stays float32, float64 float64; float16 and bfloat16 become float32 (as the text
  formats write them); signed and unsigned integers keep their width; bool is boolean. NaN and
  the infinities stay IEEE values, Parquet's own.
- strings are UTF-8 `string` columns. A value that is not valid UTF-8 is written as the text
  `{"b64": "..."}` (its bytes in base64), the cell a CSV file holds for it: the column's type
  is fixed by the model's declared dtype before the first row, so that every file of a run has
  one schema, which a binary column for some files would break. Keys follow the same rule
  (CSV keys keep undecodable bytes as lone surrogates; the b64 text holds the original bytes).
- one value per row is a plain column; a vector is a fixed-size list (`[None, 4]`: 4 values),
  a matrix a fixed-size list of fixed-size lists; a dimension the signature leaves open
  (`[None, None]`), or declares of length 0, is a variable-length list (as many values as
  the batch's padded tensor held, like the JSON arrays); an output of unknown rank gets as
  many list levels as the first batch has (a plain list in a file without rows).

The schema comes from the declared dtypes and shapes (`ColumnType`); the value type of a column
from the first batch's arrays when there is one (a key's dtype is the input's), and a file
without rows (a run that scored nothing) holds the schema and no row group. Rows are buffered
into row groups of up to `ROW_GROUP_ROWS` rows or `ROW_GROUP_BYTES` bytes (one batch may exceed
that: it is never split). pandas, BigQuery and Spark read these files as they are; fixed-size
lists are stored as Parquet lists (pyarrow reads them back as fixed-size lists from the Arrow
schema it keeps in the file's metadata).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import orjson

from transforms.errors import OutputError
from transforms.formats.base import ColumnType, OutputFormat, PredictionWriter
from transforms.formats.json_columns import decoded_list, row_columns

if TYPE_CHECKING:
    from transforms.predict import PredictionBatch

__all__ = ["ParquetOutput", "PARQUET", "ROW_GROUP_ROWS", "ROW_GROUP_BYTES", "arrow_table"]

ROW_GROUP_ROWS = 65536
ROW_GROUP_BYTES = 64 << 20

_NARROWED = {"float16": "float32", "half": "float32", "bfloat16": "float32",
             "double": "float64"}
_VALUE_TYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                "uint32", "uint64", "bool", "string")


def _dtype_name(values: np.ndarray) -> str:
    """The TensorFlow-style dtype name of an output array: "string" for text of any kind."""
    if values.dtype == object or values.dtype.kind in "SU":
        return "string"
    return values.dtype.name


def _value_type(dtype: str, column: str):
    import pyarrow as pa
    name = _NARROWED.get(dtype, dtype)
    if name not in _VALUE_TYPES:
        raise OutputError(f"--output_format parquet: column {column!r} has dtype {dtype}, "
                          f"which this tool does not write to Parquet (it writes "
                          f"{', '.join(_VALUE_TYPES)} and float16, bfloat16 as float32)")
    return pa.string() if name == "string" else pa.bool_() if name == "bool" else \
        pa.from_numpy_dtype(np.dtype(name))


def column_type(name: str, declared: ColumnType | None, values: np.ndarray | None):
    """The Arrow type of one column: the value type of the batch's array (else the declared
    dtype), in as many list levels as one row's value has dimensions: fixed-size where the
    declared shape gives the length, variable where it does not."""
    import pyarrow as pa
    if values is not None and values.dtype == object and declared is not None \
            and declared.dtype != "string":
        values = None  # Python values (a passthrough field with nulls): the declared type
    if values is not None and values.dtype == object and values.ndim == 1 and \
            declared is not None and declared.shape not in ((), None):
        values = None  # lists of Python values: the declared type
    if values is not None:
        leaf = _value_type(_dtype_name(values), name)
        rank = values.ndim - 1
        shape = declared.shape if declared is not None else None
        dims = tuple(shape) if shape is not None and len(shape) == rank else (None,) * rank
    elif declared is not None:
        leaf = _value_type(declared.dtype, name)
        dims = tuple(declared.shape) if declared.shape is not None else (None,)
    else:  # neither declared nor seen: nothing is known of it
        leaf, dims = pa.null(), ()
    out = leaf
    for d in reversed(dims):
        # a dimension of length 0 is a (always empty) variable list: pyarrow cannot build
        # fixed-size lists of size 0
        out = pa.list_(out, d) if d else pa.list_(out)
    return out


def _numpy_dtype(leaf) -> np.dtype:
    """The numpy dtype of an Arrow number or boolean type (without pandas, which pyarrow's own
    `to_pandas_dtype` imports)."""
    import pyarrow as pa
    if pa.types.is_boolean(leaf):
        return np.dtype(bool)
    name = str(leaf)  # "float", "double", "int64", "uint8", ...
    return np.dtype({"float": "float32", "double": "float64"}.get(name, name))


def _text(flat: np.ndarray):
    """Strings as a UTF-8 column; a value that is not valid UTF-8 as `{"b64": "..."}` text."""
    import pyarrow as pa
    values = flat.tolist()
    try:
        return pa.array(values, pa.string())  # valid UTF-8 throughout: no per-value work
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeError, TypeError):
        return pa.array([v if isinstance(v, str) else orjson.dumps(v).decode()
                         for v in decoded_list(flat)], pa.string())


def _leaf_array(flat: np.ndarray, leaf):
    import pyarrow as pa
    if pa.types.is_string(leaf):
        if flat.dtype != object and flat.dtype.kind not in "SU":
            return pa.array(flat).cast(pa.string())  # numbers into a text key column
        return _text(flat)
    if pa.types.is_null(leaf):
        return pa.nulls(len(flat))
    if flat.dtype == object or flat.dtype.kind in "SU":
        return pa.array(flat.tolist()).cast(leaf)  # text into a number column: checked
    return pa.array(np.ascontiguousarray(flat).astype(_numpy_dtype(leaf), copy=False), leaf)


def _python_column(values: np.ndarray, arrow_type, leaf):
    """An object array of Python values, lists and None (a passthrough field) as an Arrow
    array: text as UTF-8, bytes that are not UTF-8 as `{"b64": ...}` text."""
    import pyarrow as pa
    text = pa.types.is_string(leaf)

    def fix(v):
        if v is None:
            return None
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        if text:
            d = decoded_list(np.array([v, None], dtype=object)[:1])[0]
            return d if isinstance(d, str) else orjson.dumps(d).decode()
        return v.item() if isinstance(v, np.generic) else v
    return pa.array([fix(v) for v in values.tolist()], arrow_type)


def arrow_column(values: np.ndarray, arrow_type):
    """One column's [n, ...] array as an Arrow array of `arrow_type` (`column_type`)."""
    import pyarrow as pa
    levels, leaf = [], arrow_type
    while pa.types.is_list(leaf) or pa.types.is_fixed_size_list(leaf):
        levels.append(leaf)
        leaf = leaf.value_type
    if values.dtype == object and values.ndim == 1 and (
            levels or any(v is None for v in values.tolist())):
        return _python_column(values, arrow_type, leaf)
    if values.ndim - 1 != len(levels):
        raise ValueError(f"an array of shape {values.shape} does not fit the column type "
                         f"{arrow_type}")
    array = _leaf_array(values.reshape(-1) if values.ndim > 1 else values, leaf)
    for depth in range(len(levels) - 1, -1, -1):
        level = levels[depth]
        count = int(np.prod(values.shape[:depth + 1]))  # lists at this level
        size = values.shape[depth + 1]
        if pa.types.is_fixed_size_list(level):
            array = pa.FixedSizeListArray.from_arrays(array, type=level)
        else:
            offsets = pa.array(np.arange(count + 1, dtype=np.int32) * size, pa.int32())
            array = pa.ListArray.from_arrays(offsets, array, type=level)
    return array


def arrow_table(batch: PredictionBatch, key_field: str | None, schema):
    """A prediction batch as an Arrow table of `schema` (the row columns, in order)."""
    import pyarrow as pa
    columns = row_columns(batch, key_field)
    arrays = [arrow_column(values, schema.field(name).type) for name, values in columns]
    return pa.Table.from_arrays(arrays, schema=schema)


class _Stream:
    """The staged file's stream as pyarrow's writer uses it: it asks for the position, which
    not every filesystem's stream can give, so the bytes written are counted here. Closing is
    the caller's."""

    closed = False

    def __init__(self, fh):
        self._fh, self._pos = fh, 0

    def write(self, data) -> int:
        self._fh.write(data)
        n = memoryview(data).nbytes
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class _ParquetWriter(PredictionWriter):
    def __init__(self, fh, key_field: str | None, output_names: list[str],
                 column_types: dict[str, ColumnType]):
        self._stream = _Stream(fh)
        self._key_field = key_field
        first = [key_field] if key_field is not None else ["shard", "index"]
        self._names = first + list(output_names)  # the columns after the key, in row order
        self._types = column_types
        for name in self._names:  # a dtype no column can hold is refused before any row
            if name in column_types:
                column_type(name, column_types[name], None)
        self._writer = None
        self._schema = None
        self._pending: list = []
        self._rows = self._bytes = 0

    def _open(self, batch: PredictionBatch | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        seen = dict(row_columns(batch, self._key_field)) if batch is not None else {}
        names = list(seen) if seen else self._names
        self._schema = pa.schema([(n, column_type(n, self._types.get(n), seen.get(n)))
                                  for n in names])
        self._writer = pq.ParquetWriter(self._stream, self._schema)

    def write(self, batch: PredictionBatch) -> None:
        if self._writer is None:
            self._open(batch)
        table = arrow_table(batch, self._key_field, self._schema)
        self._pending.append(table)
        self._rows += table.num_rows
        self._bytes += table.nbytes
        if self._rows >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._rows, self._bytes = [], 0, 0

    def close(self) -> None:
        if self._writer is None:
            self._open(None)
        self._flush()
        self._writer.close()


class ParquetOutput(OutputFormat):
    name = "parquet"
    suffix = ".parquet"

    def open_writer(self, fh, key_field: str | None, columns: list[str],
                    column_types: dict[str, ColumnType]) -> PredictionWriter:
        return _ParquetWriter(fh, key_field, columns, column_types)


PARQUET = ParquetOutput()
