"""BigQuery output: `--output_table project:dataset.table[$YYYYMMDD]`, a table sink composed
with the file sink (`transforms.sink`): predictions go to the table; error rows, metrics,
manifest.json and _SUCCESS still go under --output, as files.

1. check: the dataset exists; the destination, if it exists, is a table this run may replace
   (not a view; for `$YYYYMMDD`, partitioned by day on ingestion time; not partitioned by a
   column the predictions lack) and holds no rows (the partition, for `$YYYYMMDD`) unless
   --overwrite; the load files have a gs:// home; and the file sink's checks of --output.
2. claim: the file sink's claim of --output, then this run's STAGING table, in the same
   dataset, named after the table and the run id, with the predictions' schema (and the
   destination's partitioning and clustering, which a copy needs to match), expiring in
   7 days so that a launcher killed outright leaves nothing for long. Releasing the claim
   deletes it (a run that failed leaves no staging table).
3. the job loads the predictions into staging: Beam's `WriteToBigQuery(method=FILE_LOADS)`,
   WRITE_TRUNCATE, so that a retried load replaces what a failed attempt loaded.
4. finalize, within the error budget: one copy job staging -> destination with WRITE_TRUNCATE
   (for `$YYYYMMDD`, of that partition only: the others are untouched) makes the new rows
   visible at once; then the staging table is deleted, then the files are committed as for a
   file output (manifest.json, which names the table and the copy job, and _SUCCESS last).
   Over the budget, the destination is not touched: staging is deleted and no _SUCCESS is
   written. Finalize is safe to run again: the copy job's id is derived from the run id, so a
   retry finds this run's copy done (and does not copy again, nor refuse the rows it finds);
   a deleted staging table and committed files are what `not_found_ok` and the file sink's own
   retry rules expect. The destination carries the label `batch_predict_run` (this run's id),
   which the refusal of a table that holds rows names.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable

import apache_beam as beam

from transforms.bigquery import tables
from transforms.errors import OutputError
from transforms.sink import FileFamilySink, Sink

__all__ = ["RUN_LABEL", "STAGING_DAYS", "TableSink", "WritePredictionRows", "output_sink"]

_LOG = logging.getLogger(__name__)
RUN_LABEL = "batch_predict_run"
STAGING_DAYS = 7
_COPY_ATTEMPTS = 5


def _label_value(run_id: str) -> str:
    return run_id.lower()  # label values: lower-case letters, digits, dashes, underscores


def _no_files(unused_job):
    """The load step's outputs as the Finalize step's side input: no files, and a wait for the
    load (and Beam's copy) jobs, which finish before their step does."""
    return ()


class WritePredictionRows(beam.PTransform):
    """Prediction batches -> rows loaded into the staging table (FILE_LOADS, Avro files,
    WRITE_TRUNCATE); outputs nothing, once the loads are done."""

    def __init__(self, staging: str, fields: list[dict], key_field: str | None,
                 load_location: str, project: str):
        super().__init__()
        self._staging, self._fields, self._key_field = staging, fields, key_field
        self._load_location, self._project = load_location, project

    def expand(self, batches):
        from apache_beam.io.gcp.bigquery import BigQueryDisposition, WriteToBigQuery
        from apache_beam.io.gcp.bigquery_tools import FileFormat
        loaded = (batches
                  | "ToRows" >> beam.FlatMap(tables.prediction_rows, self._key_field,
                                             self._fields)
                  | "LoadStaging" >> WriteToBigQuery(
                      self._staging, schema={"fields": self._fields},
                      method=WriteToBigQuery.Method.FILE_LOADS,
                      create_disposition=BigQueryDisposition.CREATE_NEVER,
                      write_disposition=BigQueryDisposition.WRITE_TRUNCATE,
                      temp_file_format=FileFormat.AVRO,
                      custom_gcs_temp_location=self._load_location, project=self._project))
        return ((loaded.destination_load_jobid_pairs, loaded.destination_copy_jobid_pairs)
                | "LoadJobs" >> beam.Flatten()
                | "Loaded" >> beam.FlatMap(_no_files))


class _TableClaim:
    """The file sink's claim, and this run's staging table (deleted on release)."""

    def __init__(self, files_claim, sink: TableSink, run_id: str):
        self._files_claim, self._sink, self._run_id = files_claim, sink, run_id

    def release(self) -> None:
        try:
            self._sink.drop_staging(self._run_id)
        except Exception as e:  # noqa: BLE001 -- it expires by itself; the lock must go
            _LOG.warning("could not delete the staging table %s (%s); it expires in %d days",
                         self._sink.staging(self._run_id), tables.one_line(e), STAGING_DAYS)
        finally:
            self._files_claim.release()


class TableSink(Sink):
    """Predictions into a BigQuery table (or one day partition) through a staging table and one
    copy job; everything else through the file sink at --output."""

    def __init__(self, table: tables.TableName, files: FileFamilySink, project: str | None,
                 temp_location: str | None):
        self.table = table
        self.files = files
        self.location = files.location
        self.project = project or table.project  # where the jobs run
        self._temp_location = temp_location
        self._bq_location: str | None = None     # the dataset's location (its jobs' too)
        self._dest_exists = False
        self._dest_fields: list = []
        self._time_partitioning: dict | None = {"type": "DAY"} if table.partition else None
        self._clustering: list[str] | None = None
        self.fields: list[dict] | None = None     # the rows' schema (describe_rows)

    # --- names ------------------------------------------------------------------------------
    def staging(self, run_id: str) -> tables.TableName:
        return self.table.sibling(f"{self.table.table}__bp_staging_"
                                  f"{run_id.lower().replace('-', '_')}")

    def load_location(self, run_id: str) -> str:
        """Where the load files are written: the run's staging dir of a gs:// --output
        (removed with it), else --temp_location."""
        if self.location.startswith("gs://"):
            return f"{self.files.staging_location(run_id)}/bigquery-load"
        return self._temp_location

    def _copy_job_id(self, run_id: str, attempt: int) -> str:
        digest = hashlib.sha256(self.table.target_id.encode()).hexdigest()[:12]
        return f"batch_predict_{run_id.replace('T', 't')}_{digest}_{attempt}"

    def _client(self):
        return tables.client(self.project)

    # --- 1. check ---------------------------------------------------------------------------
    def _rows_in_target(self, bq) -> tuple[int, str | None]:
        """(rows in the destination, or in its partition; the run that wrote it, if any)."""
        try:
            target = bq.get_table(self.table.target_id)
        except Exception as e:  # noqa: BLE001 -- NotFound: no such table or partition
            if tables.not_found(e):
                return 0, None
            raise
        found = bq.get_table(self.table.table_id) if self.table.partition else target
        buffered = target.streaming_buffer.estimated_rows if target.streaming_buffer else 0
        return int(target.num_rows or 0) + int(buffered or 0), \
            (found.labels or {}).get(RUN_LABEL)

    def check(self, overwrite: bool, inputs: list[str]) -> None:
        if not (self.location.startswith("gs://")
                or (self._temp_location or "").startswith("gs://")):
            raise OutputError("--output_table: BigQuery loads files from gs:// only; pass "
                              "--temp_location gs://BUCKET/tmp (or a gs:// --output: the load "
                              "files then go to its staging dir)")
        self.files.check(overwrite, inputs)
        bq = self._client()
        name = str(self.table)
        try:
            dataset = bq.get_dataset(f"{self.table.project}.{self.table.dataset}")
            self._bq_location = dataset.location
            try:
                dest = bq.get_table(self.table.table_id)
            except Exception as e:  # noqa: BLE001
                if not tables.not_found(e):
                    raise
                dest = None
            if dest is not None:
                self._check_destination(dest, name)
                rows, writer = self._rows_in_target(bq)
                if rows and not overwrite:
                    by = f", written by batch-predict run {writer}" if writer else ""
                    what = f"partition {self.table.partition} of {self.table.table_id}" \
                        if self.table.partition else f"table {self.table.table_id}"
                    raise OutputError(f"--output_table {name}: {what} holds {rows} rows{by}; "
                                      "pass --overwrite to replace them once this run "
                                      "succeeds, or choose another --output_table")
        except OutputError:
            raise
        except Exception as e:  # noqa: BLE001 -- the API's reason, in one line
            if tables.not_found(e):
                raise OutputError(f"--output_table {name}: dataset {self.table.project}:"
                                  f"{self.table.dataset} does not exist (or no access); create "
                                  "it first (bq mk --dataset)") from None
            raise OutputError(f"--output_table {name}: {tables.one_line(e)}") from None

    def _check_destination(self, dest, name: str) -> None:
        kind = dest.table_type or "TABLE"
        if kind != "TABLE":
            raise OutputError(f"--output_table {name} is a {kind}, not a table; choose a "
                              "table (it is created if missing)")
        tp = dest.time_partitioning
        if dest.range_partitioning is not None or (tp is not None and tp.field):
            column = tp.field if tp is not None and tp.field else \
                dest.range_partitioning.field
            raise OutputError(f"--output_table {name} is partitioned by column {column!r}, "
                              "which the prediction rows do not hold; choose a table that is "
                              "not partitioned by a column")
        if self.table.partition and (tp is None or (tp.type_ or "DAY") != "DAY"):
            raise OutputError(f"--output_table {name}: the table is not partitioned by day on "
                              "ingestion time, which a $YYYYMMDD decorator replaces one "
                              "partition of; drop the decorator to replace the whole table")
        self._dest_exists = True
        self._dest_fields = list(dest.schema or [])
        self._time_partitioning = {"type": "DAY"} if tp is not None else None
        self._clustering = list(dest.clustering_fields or []) or None

    def describe_rows(self, key_field: str | None, value_columns: list[str],
                      column_types: dict) -> None:
        """The rows' table schema, from the signature; refuses one the destination cannot
        take (a partition keeps its table's schema; clustering needs its columns)."""
        self.fields = tables.output_fields(key_field, value_columns, column_types)
        names = [f["name"] for f in self.fields]
        missing = [c for c in self._clustering or [] if c not in names]
        if missing:
            raise OutputError(f"--output_table {self.table}: the table is clustered by "
                              f"{missing[0]!r}, which the prediction rows do not hold")
        if self.table.partition and self._dest_fields and \
                not tables.same_schema(self._dest_fields, self.fields):
            have = ", ".join(f"{f.name} {tables.type_text(f)}" for f in self._dest_fields)
            want = ", ".join(f"{f['name']} {f['type'] if f['mode'] != 'REPEATED' else 'REPEATED ' + f['type']}"
                             for f in self.fields)
            raise OutputError(f"--output_table {self.table}: the table's columns ({have}) are "
                              f"not the predictions' ({want}); a partition keeps its table's "
                              "schema: choose another table, or replace the whole table")

    # --- 2. claim ---------------------------------------------------------------------------
    def _table_resource(self, name: tables.TableName, run_id: str, expires: bool):
        from google.cloud import bigquery
        t = bigquery.Table(name.table_id, schema=[bigquery.SchemaField.from_api_repr(f)
                                                  for f in self.fields])
        if self._time_partitioning is not None:
            t.time_partitioning = bigquery.TimePartitioning(type_="DAY")
        if self._clustering:
            t.clustering_fields = self._clustering
        t.labels = {RUN_LABEL: _label_value(run_id)}
        if expires:
            import datetime
            t.expires = datetime.datetime.now(datetime.timezone.utc) + \
                datetime.timedelta(days=STAGING_DAYS)
            t.description = (f"batch-predict staging table of run {run_id} for {self.table}; "
                             "deleted when the run ends")
        return t

    def claim(self, run_id: str):
        held = self.files.claim(run_id)
        try:
            self._client().create_table(self._table_resource(self.staging(run_id), run_id,
                                                             expires=True), exists_ok=True)
        except Exception as e:  # noqa: BLE001 -- the API's reason, in one line
            held.release()
            raise OutputError(f"--output_table {self.table}: cannot create the staging table "
                              f"{self.staging(run_id).table_id}: {tables.one_line(e)}") from None
        return _TableClaim(held, self, run_id)

    def drop_staging(self, run_id: str) -> None:
        self._client().delete_table(self.staging(run_id).table_id, not_found_ok=True)

    def staging_location(self, run_id: str) -> str:
        return self.files.staging_location(run_id)

    def write_rows(self, key_field: str | None, run_id: str) -> WritePredictionRows:
        """The job's predictions step: rows into this run's staging table."""
        staging = self.staging(run_id)
        return WritePredictionRows(f"{staging.project}:{staging.dataset}.{staging.table}",
                                   self.fields, key_field, self.load_location(run_id),
                                   self.project)

    # --- 4. finalize ------------------------------------------------------------------------
    def _copied(self, bq, run_id: str) -> tuple[str | None, int]:
        """(this run's successful copy job, if any; the next attempt's number)."""
        for attempt in range(_COPY_ATTEMPTS):
            try:
                job = bq.get_job(self._copy_job_id(run_id, attempt), project=self.project,
                                 location=self._bq_location)
            except Exception as e:  # noqa: BLE001
                if tables.not_found(e):
                    return None, attempt
                raise
            if job.state != "DONE":
                try:
                    job.result()
                except Exception:  # noqa: BLE001 -- a failed attempt: the next one is new
                    continue
            if job.error_result is None:
                return job.job_id, attempt + 1
        raise OutputError(f"--output_table {self.table}: {_COPY_ATTEMPTS} copy jobs of run "
                          f"{run_id} failed; run the job again")

    def _copy(self, bq, run_id: str, overwrite: bool) -> str:
        from google.cloud import bigquery
        done, attempt = self._copied(bq, run_id)
        if done is not None:
            _LOG.info("finalize: run %s copied into %s already (job %s)", run_id,
                      self.table, done)
            return done
        rows, writer = self._rows_in_target(bq)
        if rows and not overwrite:
            raise OutputError(f"--output_table {self.table} gained {rows} rows while this run "
                              f"was writing (run {writer or 'unknown'}); not replacing them "
                              "without --overwrite")
        bq.create_table(self._table_resource(self.table, run_id, expires=False),
                        exists_ok=True)
        job_id = self._copy_job_id(run_id, attempt)
        staging = self.staging(run_id).table_id
        config = bigquery.CopyJobConfig(
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            create_disposition=bigquery.CreateDisposition.CREATE_IF_NEEDED)
        start = time.monotonic()
        job = bq.copy_table(staging, self.table.target_id, job_id=job_id,
                            job_config=config, location=self._bq_location)
        job.result()
        dest = bq.get_table(self.table.table_id)
        dest.labels = {**(dest.labels or {}), RUN_LABEL: _label_value(run_id)}
        bq.update_table(dest, ["labels"])
        _LOG.info("finalize: copied %s into %s in %.1fs (job %s)", staging,
                  self.table.target_id, time.monotonic() - start, job_id)
        return job_id

    def finalize(self, run_id: str, staged: dict[str, str], within_budget: bool,
                 overwrite: bool, manifest_for: Callable[[str, list[str]], dict]) -> str:
        bq = self._client()
        copy_job = self._copy(bq, run_id, overwrite) if within_budget else None
        if not within_budget:
            _LOG.info("finalize: over the error budget; %s is not touched", self.table)
        self.drop_staging(run_id)

        def with_table(directory: str, outputs: list[str]) -> dict:
            manifest = manifest_for(directory, outputs)
            manifest["output_table"] = {"table": str(self.table), "copy_job": copy_job,
                                        "replaced": copy_job is not None}
            return manifest
        return self.files.finalize(run_id, staged, within_budget, overwrite, with_table)

    def outputs_of(self, run_id: str) -> str | None:
        return self.files.outputs_of(run_id)


def output_sink(opts, input_table: tables.TableName | None = None) -> Sink:
    """The sink the options name: files in --output, or with --output_table a table (and the
    files but the predictions in --output). Refuses a non-default --output_format with a
    table, and a table that is the input."""
    files = FileFamilySink(opts.output)
    text = getattr(opts, "output_table", None)
    if text is None:
        return files
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    from transforms.errors import OptionsError
    if opts.output_format != "jsonl":
        raise OptionsError(f"--output_format {opts.output_format}: predictions go to "
                           f"--output_table {text} as table rows; leave --output_format out")
    try:
        table = tables.parse_output_table(text)
    except ValueError as e:
        raise OptionsError(f"--output_table: {e}") from None
    if input_table is not None and input_table.table_id == table.table_id:
        raise OptionsError(f"--output_table {text} is the input table; write the predictions "
                           "to another table")
    cloud = opts.view_as(GoogleCloudOptions)
    return TableSink(table, files, cloud.project, cloud.temp_location)
