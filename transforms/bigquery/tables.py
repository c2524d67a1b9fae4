"""BigQuery names and types: table names as the options give them, the client, and the two type
mappings (a table's columns as Arrow types for the parse step; the signature's outputs as a
table schema).

Names: `--input bq://project.dataset.table`, `--output_table project:dataset.table` (or
`project.dataset.table`), optionally with a partition decorator `$YYYYMMDD` on the output.
Every part is checked when the option is read, so a hostile value (a wildcard, a decorator that
is not a date, a project that cannot be one) is one line before anything starts.

Input columns are "typed like Parquet": each BigQuery type maps onto the Arrow type a Parquet
file of the same data would have (FLOAT64 -> double, INT64 -> int64, BOOL -> bool, STRING ->
string, BYTES -> binary, REPEATED -> list, NUMERIC -> decimal128, TIMESTAMP -> timestamp,
RECORD -> struct), so that the Parquet reader's start-up check and the parse step's typed
conversion apply as they are (`transforms.formats.parquet_input.schema_problems`,
`transforms.examples.typed_feature_column`); only the words of a refusal are BigQuery's.

Output columns follow the signature's declared dtypes (`ColumnType`): floats -> FLOAT64, signed
and small unsigned integers -> INT64, bool -> BOOL, strings -> STRING (a value that is not valid
UTF-8 as the text `{"b64": "..."}`, like the Parquet output); one value per row is NULLABLE, a
vector is REPEATED, and a value of rank > 1 is flattened row-major into one REPEATED column (its
shape is the signature's).
"""
from __future__ import annotations

import dataclasses
import datetime
import re

import numpy as np
import orjson
import pyarrow as pa

from transforms.errors import OutputError
from transforms.formats.base import ColumnType
from transforms.formats.json_columns import decoded_list, row_columns

__all__ = ["TableName", "parse_input_table", "parse_output_table", "client", "arrow_schema",
           "type_text", "schema_problems_in_bigquery_words", "key_dtype", "output_fields",
           "same_schema", "prediction_rows", "not_found", "one_line"]

_PROJECT = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DATASET = r"[A-Za-z0-9_]{1,1024}"
_TABLE = r"[\w-]{1,1024}"
_NAME = re.compile(rf"(?P<project>{_PROJECT})[:.](?P<dataset>{_DATASET})\.(?P<table>{_TABLE})"
                   r"(?:\$(?P<decorator>.*))?", re.DOTALL)
_FORM = "project:dataset.table (or project.dataset.table)"


@dataclasses.dataclass(frozen=True)
class TableName:
    """One BigQuery table, and for an output, the day partition it replaces (YYYYMMDD)."""
    project: str
    dataset: str
    table: str
    partition: str | None = None

    @property
    def table_id(self) -> str:
        """project.dataset.table, the form google-cloud-bigquery takes (no decorator)."""
        return f"{self.project}.{self.dataset}.{self.table}"

    @property
    def target_id(self) -> str:
        """table_id with the partition decorator, when there is one: what is replaced."""
        return self.table_id + (f"${self.partition}" if self.partition else "")

    @property
    def uri(self) -> str:
        return f"bq://{self.table_id}"

    def sibling(self, table: str) -> TableName:
        return TableName(self.project, self.dataset, table)

    def __str__(self) -> str:
        return f"{self.project}:{self.dataset}.{self.table}" + \
            (f"${self.partition}" if self.partition else "")


def _parse(text: str, example: str, decorator: bool) -> TableName:
    if "*" in text:
        raise ValueError(f"{text!r} names tables by a wildcard; name one table, {example}")
    m = _NAME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a BigQuery table name; give {example} (project: "
                         "lower-case letters, digits and dashes; dataset: letters, digits and "
                         "underscores; table: letters, digits, underscores and dashes)")
    partition = m["decorator"]
    if partition is not None:
        if not decorator:
            raise ValueError(f"{text!r} has a decorator; read one partition with "
                             "--input_query \"SELECT ... WHERE _PARTITIONDATE = ...\"")
        try:
            day = datetime.datetime.strptime(partition, "%Y%m%d")
        except ValueError:
            day = None
        if day is None or not re.fullmatch(r"\d{8}", partition):
            raise ValueError(f"{text!r}: the partition decorator ${partition} is not a date; "
                             "give $YYYYMMDD, e.g. $20261122")
    return TableName(m["project"], m["dataset"], m["table"], partition)


def parse_input_table(text: str) -> TableName:
    """`bq://project.dataset.table` (ValueError with the reason)."""
    if not text.startswith("bq://"):
        raise ValueError(f"{text!r} is not a bq:// table")
    return _parse(text[len("bq://"):], "bq://project.dataset.table", False)


def parse_output_table(text: str) -> TableName:
    """`project:dataset.table[$YYYYMMDD]` or `project.dataset.table[$YYYYMMDD]`."""
    return _parse(text, f"{_FORM}, optionally with $YYYYMMDD", True)


def client(project: str):
    """A google-cloud-bigquery client whose jobs run in (and are billed to) `project`, with the
    environment's default credentials."""
    from google.cloud import bigquery
    return bigquery.Client(project=project)


def not_found(e: BaseException) -> bool:
    from google.api_core import exceptions
    return isinstance(e, exceptions.NotFound)


def one_line(e: BaseException) -> str:
    """An API error's message on one line (google-api-core's hold the request and the body)."""
    text = getattr(e, "message", None) or str(e)
    return " ".join(str(text).split())[:300]


# --- BigQuery columns as Arrow types ----------------------------------------------------------
_CANONICAL = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL", "STRUCT": "RECORD"}
_ARROW = {"FLOAT64": pa.float64(), "INT64": pa.int64(), "BOOL": pa.bool_(),
          "STRING": pa.string(), "BYTES": pa.binary(), "NUMERIC": pa.decimal128(38, 9),
          "BIGNUMERIC": pa.decimal256(76, 38), "TIMESTAMP": pa.timestamp("us", tz="UTC"),
          "DATETIME": pa.timestamp("us"), "DATE": pa.date32(), "TIME": pa.time64("us"),
          "GEOGRAPHY": pa.string(), "JSON": pa.string(),
          "INTERVAL": pa.month_day_nano_interval()}


def _kind(field) -> str:
    kind = (field.field_type or "").upper()
    return _CANONICAL.get(kind, kind)


def _arrow_type(field) -> pa.DataType:
    kind = _kind(field)
    if kind == "RECORD":
        t = pa.struct([pa.field(f.name, _arrow_type(f)) for f in field.fields])
    else:
        t = _ARROW.get(kind, pa.binary() if kind == "RANGE" else pa.null())
    return pa.list_(t) if (field.mode or "").upper() == "REPEATED" else t


def arrow_schema(fields, names: list[str] | None = None) -> pa.Schema:
    """The Arrow schema of BigQuery schema fields (only `names`, in the table's order, when
    given): what a Parquet file of the same columns would hold."""
    keep = None if names is None else set(names)
    return pa.schema([pa.field(f.name, _arrow_type(f)) for f in fields
                      if keep is None or f.name in keep])


def type_text(field) -> str:
    """A column's type as BigQuery names it: "FLOAT64", "REPEATED INT64", "RECORD"."""
    kind = _kind(field)
    return f"REPEATED {kind}" if (field.mode or "").upper() == "REPEATED" else kind


_WORDS = [("it needs a number column (float, double or an integer type)",
           "it needs a FLOAT64 or INT64 column"),
          ("it needs a string or binary column", "it needs a STRING or BYTES column"),
          ("is a list column;", "is a REPEATED column;"),
          ("it needs a column of single values", "it needs a column that is not REPEATED"),
          ("it needs a list column of", "it needs a REPEATED column of"),
          ("a key must be a string, binary, integer or floating-point column",
           "a key must be a STRING, BYTES, INT64 or FLOAT64 column")]


def schema_problems_in_bigquery_words(problems: list[str], fields) -> list[str]:
    """The Parquet check's findings (`schema_problems` on `arrow_schema(fields)`), each type
    and wording as BigQuery says it."""
    out = []
    for problem in problems:
        for f in fields:
            arrow = str(_arrow_type(f))
            problem = problem.replace(f"column {f.name!r} ({arrow})",
                                      f"column {f.name!r} ({type_text(f)})")
            problem = problem.replace(f"{f.name!r} is a {arrow} column",
                                      f"{f.name!r} is a {type_text(f)} column")
        for arrow_words, bigquery_words in _WORDS:
            problem = problem.replace(arrow_words, bigquery_words)
        out.append(problem)
    return out


def key_dtype(field) -> str | None:
    """The key's dtype for a column of this type, as for a Parquet column (None: not a key)."""
    if (field.mode or "").upper() == "REPEATED":
        return None
    return {"INT64": "int64", "FLOAT64": "float32", "STRING": "string",
            "BYTES": "string"}.get(_kind(field))


# --- the signature's outputs as a table schema --------------------------------------------------
_FLOATS = {"float16", "half", "bfloat16", "float32", "float", "float64", "double"}
_INTS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"}


def _bigquery_type(name: str, dtype: str) -> str:
    if dtype in _FLOATS:
        return "FLOAT64"
    if dtype in _INTS:
        return "INT64"
    if dtype == "bool":
        return "BOOL"
    if dtype == "string":
        return "STRING"
    raise OutputError(f"--output_table: column {name!r} has dtype {dtype}, which has no "
                      "BigQuery column type here (FLOAT64 for floats, INT64 for integers up "
                      "to 32-bit unsigned and int64, BOOL, STRING)")


def output_fields(key_field: str | None, value_columns: list[str],
                  column_types: dict[str, ColumnType]) -> list[dict]:
    """The table schema of the prediction rows (BigQuery's JSON form: name, type, mode): the
    key (or shard and index), then `value_columns` (passthrough fields, outputs) in the order
    the rows hold them."""
    first = [key_field] if key_field is not None else ["shard", "index"]
    fields = []
    for name in first + list(value_columns):
        declared = column_types.get(name)
        if declared is None:
            raise OutputError(f"--output_table: the model does not declare the dtype of output "
                              f"{name!r}, so its BigQuery column type is unknown")
        scalar = declared.shape is not None and len(declared.shape) == 0
        fields.append({"name": name, "type": _bigquery_type(name, declared.dtype),
                       "mode": "NULLABLE" if scalar else "REPEATED"})
    return fields


def same_schema(fields, wanted: list[dict]) -> bool:
    """Whether a table's schema fields are the wanted ones (names, types, modes, in order)."""
    have = [(f.name, _kind(f), (f.mode or "NULLABLE").upper()) for f in fields]
    return have == [(w["name"], w["type"], w["mode"]) for w in wanted]


def _plain(value):
    """A value of an object column (a passthrough field's) as Avro takes it: numpy scalars as
    Python numbers, lists as lists, None as None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _flat(value) -> list:
    """One row's value as a REPEATED cell: nested lists row-major, a scalar as one value, a
    null as no value."""
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    return [v for item in value for v in _flat(item)]


def _text(value):
    """A STRING cell: text as it is, bytes that are not UTF-8 as the `{"b64": ...}` text."""
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return value if value is None or isinstance(value, str) else str(value)


def _cells(values: np.ndarray, field: dict) -> list:
    """One column of a prediction batch as the values of its BigQuery rows."""
    n = len(values)
    repeated = field["mode"] == "REPEATED"
    if values.dtype != object and values.dtype.kind not in "SU":
        if repeated:
            values = values.reshape(n, -1)  # rank > 1 row-major; a scalar is one value
        if field["type"] == "STRING":
            return values.astype(str).tolist()  # numbers in a text (key) column
        return values.tolist()  # float32 -> the same value as a double: exact
    if field["type"] == "STRING":
        cells = decoded_list(values)  # bytes: str when UTF-8, else {"b64": ...}
        if repeated:
            return [[_text(v) for v in _flat(row)] for row in cells]
        return [_text(v) for v in cells]
    cells = [_plain(v) for v in values]  # a passthrough field: None for a null
    return [_flat(v) for v in cells] if repeated else cells


def prediction_rows(batch, key_field: str | None, fields: list[dict]) -> list[dict]:
    """A prediction batch as BigQuery rows (dicts), the columns of `output_fields`."""
    columns = row_columns(batch, key_field)
    by_name = {f["name"]: f for f in fields}
    names = [name for name, _ in columns]
    cells = [_cells(values, by_name[name]) for name, values in columns]
    return [dict(zip(names, row)) for row in zip(*cells)]
