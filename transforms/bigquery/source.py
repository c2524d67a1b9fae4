"""BigQuery input: `--input bq://project.dataset.table` or `--input_query "SELECT ..."`.

A table is read with Beam's `ReadFromBigQuery(method=DIRECT_READ)` (the Storage Read API,
only the columns the job reads); a query with the same transform (Beam runs it into a temporary
table, reads that through the Storage Read API, and deletes it). Rows arrive as dicts; the
`BatchRows` step gathers up to `--batch_size` of them and converts them to one Arrow table with
the columns' types (`tables.arrow_schema`: as a Parquet file of the same data would hold them),
the `ColumnBatch` the Parquet reader gives the parse step, so that the typed conversion is the
one Parquet input has. A row that does not fit that schema is a `type_mismatch` error row.

Start-up (`check_first_shard`, as for the first file of other formats): the table's schema
(or the query's, from a dry run) against the spec and the key, refused in one line by the
Parquet reader's rules in BigQuery's words: STRING for a number feature, NUMERIC, BIGNUMERIC,
TIMESTAMP, RECORD, REPEATED for a one-value feature, a missing required feature or key.

Record identity: rows have no stable order in BigQuery, so `--key_field` is required. A row's
`shard` is the table's `bq://` name (or "query"), its `index` its position in the rows one
reading worker received in that bundle (for error rows; it is not an identity); an error row's
payload is the row's values as a JSON object.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import time

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.bigquery import tables
from transforms.errors import InputError, OptionsError
from transforms.formats.parquet_input import schema_problems
from transforms.metrics import JobCounters
from transforms.read import WORKER
from transforms.records import Batch, ColumnBatch, error_row, in_global_window

__all__ = ["QUERY_SHARD", "BigQuerySource", "bigquery_input", "ReadBigQueryBatches",
           "BatchRowsDoFn", "ReadOutputs"]

_LOG = logging.getLogger(__name__)
QUERY_SHARD = "query"
# a fully qualified table in a query: `project.dataset.table` (its project bills the query
# when the job names no --project)
_QUALIFIED = re.compile(r"`([a-z](?:[a-z0-9-]{0,61}[a-z0-9])?)\.[A-Za-z0-9_]+\.[\w-]+`")

ReadOutputs = collections.namedtuple("ReadOutputs", ["batches", "errors", "shard_stats"])


def _stats() -> dict:
    return {"records": 0, "read_errors": 0, "unreadable_tail": False, "gzip": False,
            "bytes": 0, "files": 0, "blocks": 0, "worker": WORKER, "read_seconds": 0.0}


class BatchRowsDoFn(beam.DoFn):
    """BigQuery rows (dicts) -> ColumnBatches of at most `batch_size` rows, typed by `schema`
    (+ "errors": rows that do not fit it; "shard_stats": one per bundle)."""

    def __init__(self, shard: str, schema: pa.Schema, batch_size: int):
        self._shard = shard
        self._schema = schema
        self._batch_size = batch_size

    def setup(self):
        self._metrics = JobCounters()

    def start_bundle(self):
        self._rows: list[dict] = []
        self._next = 0  # the position of the next row in this bundle's rows
        self._stats = _stats()
        self._start = time.monotonic()

    def process(self, row: dict):
        self._rows.append(row)
        if len(self._rows) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        out = list(self._flush())
        self._stats["read_seconds"] = round(time.monotonic() - self._start, 3)
        self._metrics.records_in.inc(self._stats["records"])
        self._metrics.read_errors.inc(self._stats["read_errors"])
        if self._stats["records"]:
            out.append(beam.pvalue.TaggedOutput("shard_stats", (self._shard, self._stats)))
        yield from in_global_window(out)

    def _flush(self):
        rows, self._rows = self._rows, []
        if not rows:
            return
        first, self._next = self._next, self._next + len(rows)
        self._stats["records"] += len(rows)
        self._stats["blocks"] += 1
        try:
            table = pa.Table.from_pylist(rows, schema=self._schema)
            indices = np.arange(first, first + len(rows), dtype=np.int64)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            table, indices = yield from self._row_by_row(rows, first)
        if table.num_rows:
            yield ColumnBatch(self._shard, table, indices)

    def _row_by_row(self, rows: list[dict], first: int):
        """The rows that fit the schema as one table; an error row for each other one."""
        good, kept = [], []
        for i, row in enumerate(rows):
            try:
                pa.Table.from_pylist([row], schema=self._schema)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as e:
                self._stats["read_errors"] += 1
                yield beam.pvalue.TaggedOutput("errors", error_row(
                    self._shard, first + i, "type_mismatch",
                    f"the row does not fit the columns' types ({' '.join(str(e).split())})",
                    json.dumps(row, ensure_ascii=False, default=str)))
                continue
            good.append(row)
            kept.append(first + i)
        return (pa.Table.from_pylist(good, schema=self._schema),
                np.asarray(kept, dtype=np.int64))


class ReadBigQueryBatches(beam.PTransform):
    """A table or a query -> ColumnBatches (+ "errors", "shard_stats"), like
    `transforms.read.ReadRecordBatches` for files: ReadRows | BatchRows."""

    def __init__(self, shard: str, schema: pa.Schema, batch_size: int,
                 table: tables.TableName | None = None, query: str | None = None,
                 project: str | None = None):
        super().__init__()
        self._shard, self._schema, self._batch_size = shard, schema, batch_size
        self._table, self._query, self._project = table, query, project

    def expand(self, pbegin):
        from apache_beam.io.gcp.bigquery import ReadFromBigQuery
        method = ReadFromBigQuery.Method.DIRECT_READ
        if self._table is not None:
            read = ReadFromBigQuery(table=f"{self._table.project}:{self._table.dataset}."
                                          f"{self._table.table}",
                                    method=method, selected_fields=list(self._schema.names))
        else:
            read = ReadFromBigQuery(query=self._query, use_standard_sql=True, method=method,
                                    project=self._project)
        batched = (pbegin
                   | "ReadRows" >> read
                   | "BatchRows" >> beam.ParDo(BatchRowsDoFn(
                       self._shard, self._schema, self._batch_size))
                   .with_output_types(Batch).with_outputs("errors", "shard_stats",
                                                          main="batches"))
        # the shard's row in the metrics even when no row is read (an empty table)
        empty = pbegin | "NoRowShard" >> beam.Create([(self._shard, _stats())])
        stats = (batched.shard_stats, empty) | "ShardStats" >> beam.Flatten()
        return ReadOutputs(batched.batches, batched.errors, stats)


class BigQuerySource:
    """The input when it is a table or a query: what the plan asks of an input format (the
    start-up check of its columns, the key's dtype, `keys_in_examples`), and the read step."""
    name = "bigquery"
    title = "BigQuery"
    keys_in_examples = False
    splittable = False

    def __init__(self, table: tables.TableName | None = None, query: str | None = None,
                 project: str | None = None):
        self.table, self.query, self.project = table, query, project
        self.location = table.uri if table is not None else QUERY_SHARD
        self._fields = None
        self._bytes = 0
        self.rows: int | None = None  # a table's rows, as its metadata says; None for a query

    # --- the schema -------------------------------------------------------------------------
    def fields(self) -> list:
        """The table's (or the query's) schema fields, asked once."""
        if self._fields is not None:
            return self._fields
        bq = tables.client(self.project)
        try:
            if self.table is not None:
                found = bq.get_table(self.table.table_id)
                if (found.table_type or "TABLE") not in ("TABLE", "MATERIALIZED_VIEW"):
                    raise InputError(f"--input {self.location} is a {found.table_type}; the "
                                     "Storage Read API reads tables: select from it with "
                                     "--input_query")
                self._fields, self._bytes = list(found.schema), int(found.num_bytes or 0)
                self.rows = int(found.num_rows or 0)
            else:
                from google.cloud import bigquery
                job = bq.query(self.query, job_config=bigquery.QueryJobConfig(
                    dry_run=True, use_query_cache=False, use_legacy_sql=False))
                self._fields = list(job.schema or [])
                self._bytes = int(job.total_bytes_processed or 0)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 -- the API's reason, in one line
            if self.table is not None and tables.not_found(e):
                raise InputError(f"--input {self.location}: no such table (or no access to "
                                 "it)") from None
            what = f"--input {self.location}" if self.table is not None else \
                "--input_query: the query does not run"
            raise InputError(f"{what}: {tables.one_line(e)}") from None
        return self._fields

    def files(self) -> list[tuple[str, int]]:
        """The input as the plan lists files: one, the table (its bytes) or the query (the
        bytes it processes)."""
        self.fields()
        return [(self.location, self._bytes)]

    def arrow_schema(self, columns: list[str]) -> pa.Schema:
        return tables.arrow_schema(self.fields(), columns)

    # --- what the plan asks of an input format ------------------------------------------------
    def check_first_shard(self, path: str, spec, key_field: str | None,
                          max_record_bytes: int = 0) -> None:
        fields = self.fields()
        problems = schema_problems(tables.arrow_schema(fields), spec, key_field)
        problems = tables.schema_problems_in_bigquery_words(problems, fields)
        if problems:
            more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
            raise InputError(f"the columns of {self.location} do not fit the model: "
                             f"{'; '.join(problems[:4])}{more}")

    def key_dtype(self, path: str, key: str, max_record_bytes: int = 0) -> str:
        field = next((f for f in self.fields() if f.name == key), None)
        if field is None:
            raise InputError(f"--key_field {key!r} is not a column of {self.location}")
        dtype = tables.key_dtype(field)
        if dtype is None:
            raise InputError(f"--key_field {key!r} is a {tables.type_text(field)} column of "
                             f"{self.location}; a key must be a STRING, BYTES, INT64 or "
                             "FLOAT64 column")
        return dtype

    def field_type(self, path: str, name: str, max_record_bytes: int = 0):
        """The passthrough type of a column (None: no such column), as for Parquet."""
        from transforms.passthrough import arrow_field_type
        field = next((f for f in self.fields() if f.name == name), None)
        if field is None:
            return None
        return arrow_field_type(name, tables.arrow_schema([field]).field(0).type)

    def read_step(self, batch_size: int, columns: list[str]) -> ReadBigQueryBatches:
        """The read step: the rows of the columns the job reads, in typed batches."""
        return ReadBigQueryBatches(self.location, self.arrow_schema(columns), batch_size,
                                   table=self.table, query=self.query, project=self.project)


def _query_project(query: str) -> str | None:
    m = _QUALIFIED.search(query)
    return m.group(1) if m else None


def bigquery_input(opts) -> BigQuerySource | None:
    """The BigQuery input the options name (`--input bq://...` or `--input_query`), or None
    for files. A query runs in Beam's --project, else in the project of the first table it
    names (which then becomes the job's --project: Beam's query read needs one); BigQuery
    input needs --key_field."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    query = getattr(opts, "input_query", None)
    text = getattr(opts, "input", None)
    if query is None and not (text or "").strip().startswith("bq://"):
        return None
    if opts.key_field is None:
        raise OptionsError("BigQuery input needs --key_field: table rows have no stable order, "
                           "so a row's position cannot identify it; name the column to join "
                           "predictions on")
    project = opts.view_as(GoogleCloudOptions).project
    if query is None:
        try:
            table = tables.parse_input_table(text.strip())
        except ValueError as e:
            raise OptionsError(f"--input: {e}") from None
        return BigQuerySource(table=table, project=project or table.project)
    if project is None:
        project = _query_project(query)
        if project is None:
            raise OptionsError("--input_query needs a project to run in: pass --project "
                               "(Beam's option), or name its tables as "
                               "`project.dataset.table`")
        opts.view_as(GoogleCloudOptions).project = project
        _LOG.info("plan: the query runs in project %s (of the first table it names; pass "
                  "--project to choose)", project)
    return BigQuerySource(query=query, project=project)
