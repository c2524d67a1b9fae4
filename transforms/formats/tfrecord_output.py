"""TFRecord output of `tf.Example`s (`--output_format tfrecord`, `.tfrecord` files;
`--output_format tfrecord_gzip`, `.tfrecord.gz` files, gzip as `tf.data.TFRecordDataset(...,
compression_type="GZIP")` and this tool's own TFRecord input read it).

One `tf.Example` per scored record, like TFX BulkInferrer's output examples: the key (or
`shard` and `index`) and every model output as features of the same names:
- floats (float16 to float64) as a float_list: tf.Example holds float32, so a float64 output
  is narrowed to float32; NaN and the infinities stay IEEE values;
- integers and bool as an int64_list (bool as 0 and 1; a uint64 above 2**63-1 wraps to the
  negative int64 of the same bits, as a cast to int64 does);
- strings as a bytes_list of the bytes as they are, UTF-8 or not (a CSV key's undecodable
  bytes, which the reader keeps as lone surrogates, are written as the original bytes);
- a vector or matrix flattened in row-major order into one list, of the length the model's
  signature declares for it (`[None, 4]`: 4 values per record).

Examples are encoded column-wise (`transforms.examples.encode_examples`) and framed as
TensorFlow's TFRecordWriter frames them (length, masked CRC32C of the length, data, masked
CRC32C of the data), without TensorFlow. A file without rows is empty (a gzip file holds an
empty gzip stream); both are valid TFRecord files of no record.
"""
from __future__ import annotations

import gzip
import struct
from typing import TYPE_CHECKING

import numpy as np

from transforms.errors import OutputError
from transforms.examples import FeatureColumn, encode_examples
from transforms.formats.base import ColumnType, OutputFormat, PredictionWriter
from transforms.formats.json_columns import row_columns
from transforms.formats.tfrecord_input import _masked

if TYPE_CHECKING:
    from transforms.predict import PredictionBatch

__all__ = ["TfrecordOutput", "TFRECORD", "TFRECORD_GZIP", "to_examples", "frame_records"]

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_FLOATS = ("float16", "half", "bfloat16", "float32", "float64", "double")
_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
_GZIP_LEVEL = 6  # zlib's default, which TensorFlow's GZIP writer uses too


def _feature_dtype(dtype: str, column: str) -> str:
    if dtype in _FLOATS:
        return "float32"
    if dtype in _INTS:
        return "int64"
    if dtype == "string":
        return "string"
    raise OutputError(f"--output_format tfrecord: column {column!r} has dtype {dtype}, which "
                      "a tf.Example feature cannot hold (it holds floats, integers, bool and "
                      "strings)")


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates beyond the reader's escapes: kept as they are
            return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _python_feature_column(name: str, values: np.ndarray, dtype: str) -> FeatureColumn:
    """An object array of Python values, lists and None (a passthrough field): a null is an
    absent feature, a list its values, a value a list of one."""
    dtype = _feature_dtype(dtype, name)
    n = len(values)
    rows = [[] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
            for v in values.tolist()]
    rows = [[x for x in r if x is not None] for r in rows]  # a null inside a list: no value
    width = max([len(r) for r in rows] + [1])
    if dtype == "string":
        flat = np.empty((n, width), dtype=object)
        flat[:] = b""
        for i, r in enumerate(rows):
            flat[i, :len(r)] = [_as_bytes(x) for x in r]
    else:
        flat = np.zeros((n, width), dtype=np.float32 if dtype == "float32" else np.int64)
        for i, r in enumerate(rows):
            flat[i, :len(r)] = r
    present = np.array([v is not None for v in values.tolist()], dtype=bool)
    return FeatureColumn(name, dtype, flat, np.array([len(r) for r in rows], np.int64),
                         present)


def _feature_column(name: str, values: np.ndarray, ctype: ColumnType | None = None
                    ) -> FeatureColumn:
    n = len(values)
    if values.dtype == object and values.ndim == 1 and ctype is not None and (
            ctype.dtype != "string" or ctype.shape not in ((), None)
            or any(v is None for v in values.tolist())):
        return _python_feature_column(name, values, ctype.dtype)
    flat = values.reshape(n, -1) if values.ndim != 2 else values
    if values.dtype == object or values.dtype.kind in "SU":
        dtype = "string"
        if values.dtype != object or not all(type(v) is bytes for v in flat.reshape(-1)):
            flat = np.array([_as_bytes(v) for v in flat.reshape(-1)] + [None],
                            dtype=object)[:-1].reshape(flat.shape)
    else:
        dtype = _feature_dtype(values.dtype.name, name)
        flat = flat.astype(np.float32 if dtype == "float32" else np.int64, copy=False)
    return FeatureColumn(name, dtype, flat, np.full(n, flat.shape[1], np.int64),
                         np.ones(n, bool))


def to_examples(batch: PredictionBatch, key_field: str | None,
                column_types: dict[str, ColumnType] | None = None) -> np.ndarray:
    """The batch's rows as serialized tf.Examples (an object array of bytes)."""
    types = column_types or {}
    columns = [_feature_column(name, values, types.get(name))
               for name, values in row_columns(batch, key_field)]
    return encode_examples(columns, len(batch))


def frame_records(records) -> bytes:
    """Records in TFRecord framing."""
    import google_crc32c
    crc = google_crc32c.value
    parts = []
    for record in records:
        head = _LENGTH.pack(len(record))
        parts += (head, _CRC.pack(_masked(crc(head))), record, _CRC.pack(_masked(crc(record))))
    return b"".join(parts)


class _TfrecordWriter(PredictionWriter):
    def __init__(self, fh, key_field: str | None, compress: bool,
                 column_types: dict[str, ColumnType]):
        self._key_field = key_field
        self._types = column_types
        # no file name and a zero time in the gzip header: the same rows give the same bytes
        self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=_GZIP_LEVEL,
                                   fileobj=fh, mtime=0) if compress else None
        self._out = self._gzip or fh

    def write(self, batch: PredictionBatch) -> None:
        self._out.write(frame_records(to_examples(batch, self._key_field, self._types)))

    def close(self) -> None:
        if self._gzip is not None:
            self._gzip.close()  # the gzip trailer; the file itself stays open


class TfrecordOutput(OutputFormat):
    name = "tfrecord"
    suffix = ".tfrecord"
    compress = False

    def open_writer(self, fh, key_field: str | None, columns: list[str],
                    column_types: dict[str, ColumnType]) -> PredictionWriter:
        for name, ctype in column_types.items():  # refused before any row is written
            _feature_dtype(ctype.dtype, name)
        return _TfrecordWriter(fh, key_field, self.compress, column_types)


class TfrecordGzipOutput(TfrecordOutput):
    name = "tfrecord_gzip"
    suffix = ".tfrecord.gz"
    compress = True


TFRECORD = TfrecordOutput()
TFRECORD_GZIP = TfrecordGzipOutput()
