"""BigQuery on loopback for tests: `bqemulator` (DuckDB-backed, REST + Storage Read gRPC) and
the test-side shims that point the real clients at it. Nothing here is product code, and
nothing here talks to anything but 127.0.0.1.

The emulator process is started once per session (`bq_emulator_process`), on free loopback
ports, with a throwaway HOME that holds the DuckDB extensions it loads (copied from the pinned
`duckdb-extension-spatial` and `duckdb-extension-avro` wheels: without them it would try to
download the spatial extension). If it cannot start, the fixture fails with its stderr.

`bq` (module-scoped) applies the shims for one test module and undoes them afterwards:
- `BIGQUERY_EMULATOR_HOST`: google-cloud-bigquery's clients (the product's, Beam's) use it;
- `BigqueryV2.BASE_URL`: Beam's apitools client (jobs, tables, datasets) has no endpoint
  option;
- `google.auth.default` answers anonymous credentials (and Beam's credential cache is reset,
  then restored);
- the Storage Read client (Beam's DIRECT_READ) is built on an insecure channel to the
  emulator's gRPC port.
Emulator gaps, each with the smallest workaround, here only:
- `datasets.list` ignores its label filter, and Beam's read clean-up deletes every dataset the
  list returns: the clean-up filters by label on the client side;
- a query job does not write its result into its `destinationTable`, which Beam's query reads
  then read through the Storage API: the query is run as `CREATE OR REPLACE TABLE <temp> AS`;
- partition decorators (`table$YYYYMMDD`) are refused everywhere ("Invalid table id"), and an
  ingestion-time partitioned table keeps no partition of its own (its `_PARTITIONTIME` is the
  time of the query): a partition is emulated as a table of its own, `table__partition_YYYYMMDD`,
  by rewriting table ids in google-cloud-bigquery's REST requests (paths and JSON bodies) and
  back in its answers. So `tables.get` / `tabledata.list` of `t$20260101` and a copy job into
  it see that partition alone, as in BigQuery;
- a copy job does not update the destination's `numRows` (tables.get): the same rewriting
  counts the rows of a table it answers about.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

LOOPBACK = "127.0.0.1"
PROJECT = "bp-test"
_DUCKDB_VERSION = "v1.5.5"
_START_SECONDS = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _duckdb_home(home: str) -> str:
    """A HOME whose ~/.duckdb holds the extensions the emulator loads, from the pinned wheels."""
    target = os.path.join(home, ".duckdb", "extensions", _DUCKDB_VERSION, "linux_amd64")
    os.makedirs(target, exist_ok=True)
    for package in ("duckdb_extension_spatial", "duckdb_extension_avro"):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            pytest.fail(f"{package} is not installed (pip install -c requirements.lock -e "
                        "'.[test]')")
        found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "extensions",
                                       _DUCKDB_VERSION, "*.duckdb_extension"))
        if not found:
            pytest.fail(f"{package} holds no {_DUCKDB_VERSION} extension")
        for path in found:
            shutil.copy(path, target)
    return home


class EmulatorProcess:
    """The running `bqemulator start`: its REST URL and gRPC target on loopback."""

    def __init__(self, home: str, log_dir: str, gcs_root: str):
        self.rest_port, self.grpc_port = _free_port(), _free_port()
        self.url = f"http://{LOOPBACK}:{self.rest_port}"
        self.grpc_target = f"{LOOPBACK}:{self.grpc_port}"
        self._stderr_path = os.path.join(log_dir, "bqemulator.stderr")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIGQUERY_")}
        env.update(HOME=home, NO_GCE_CHECK="true", BQEMU_GCS_LOCAL_ROOT=gcs_root)
        self._stderr = open(self._stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bqemulator", "start", "--rest-host", LOOPBACK,
             "--rest-port", str(self.rest_port), "--grpc-host", LOOPBACK,
             "--grpc-port", str(self.grpc_port), "--project", PROJECT, "--ephemeral",
             "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=self._stderr, env=env, cwd=log_dir)

    def stderr(self) -> str:
        with open(self._stderr_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"bqemulator exited with code {self.proc.returncode} before it was "
                            f"ready; its stderr:\n{self.stderr()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"bqemulator did not answer {self.url}/readyz within {_START_SECONDS} s; "
                    f"its stderr:\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class Emulators:
    """bqemulator, and a GCS emulator that keeps its objects in the folder bqemulator reads
    gs:// URIs from (BigQuery load jobs read their files from gs://)."""

    def __init__(self, bigquery: EmulatorProcess, gcs_server, gcs_url: str):
        self.bigquery, self.gcs_server, self.gcs_url = bigquery, gcs_server, gcs_url


@pytest.fixture(scope="session")
def bq_emulator_process(tmp_path_factory):
    """bqemulator on free loopback ports and an on-disk GCS emulator sharing its gs:// folder,
    for the whole session; fails with bqemulator's stderr if it cannot start."""
    from gcp_storage_emulator.server import create_server
    from gcp_storage_emulator.settings import STORAGE_DIR
    home = _duckdb_home(str(tmp_path_factory.mktemp("bq-home")))
    shared = str(tmp_path_factory.mktemp("bq-gcs"))
    os.makedirs(os.path.join(shared, STORAGE_DIR), exist_ok=True)
    process = EmulatorProcess(home, str(tmp_path_factory.mktemp("bq-log")),
                              os.path.join(shared, STORAGE_DIR))
    # port 0: the kernel picks a free port as the server binds it
    gcs = create_server(LOOPBACK, 0, in_memory=False, data_dir=shared)
    gcs.start()
    try:
        process.wait_ready()
        yield Emulators(process, gcs, f"http://{LOOPBACK}:{gcs._api._httpd.server_address[1]}")
    finally:
        gcs.stop()
        process.stop()


# --- partitions as tables of their own ---------------------------------------------------------
_DECORATED = re.compile(r"([A-Za-z0-9_]+)(?:\$|%24)(\d{8})\b")
_SHADOW = re.compile(r"([A-Za-z0-9_]+)__partition_(\d{8})\b")


def _to_shadow(text: str) -> str:
    return _DECORATED.sub(r"\1__partition_\2", text)


def _from_shadow(text: str) -> str:
    return _SHADOW.sub(r"\1$\2", text)


def _rewrite(value, rewrite):
    if isinstance(value, str):
        return rewrite(value)
    if isinstance(value, dict):
        return {k: _rewrite(v, rewrite) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, rewrite) for v in value]
    return value


_TABLE_PATH = re.compile(r"/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)")


def _emulator_requests(real_api_request):
    """google-cloud-bigquery's REST requests, with partitions as tables of their own and a
    table's numRows counted (the emulator does not update it when a copy job writes rows)."""
    def api_request(self, method, path, query_params=None, data=None, *args, **kwargs):
        if isinstance(data, (bytes, str)):
            text = data.decode() if isinstance(data, bytes) else data
            data = json.dumps(_rewrite(json.loads(text), _to_shadow)) if text else data
        elif data is not None:
            data = _rewrite(data, _to_shadow)
        path = _to_shadow(path)
        answer = real_api_request(self, method, path, query_params, data, *args, **kwargs)
        table = _TABLE_PATH.fullmatch(path)
        if method == "GET" and table and isinstance(answer, dict) and "numRows" in answer:
            project, dataset, name = table.groups()
            counted = real_api_request(self, "POST", f"/projects/{project}/queries", data={
                "query": f"SELECT COUNT(*) FROM `{project}.{dataset}.{name}`",
                "useLegacySql": False})
            answer["numRows"] = counted["rows"][0]["f"][0]["v"]
        return _rewrite(answer, _from_shadow)
    return api_request


# --- Beam's query reads and clean-up -----------------------------------------------------------
def _query_into_temp_table(real_start_query_job):
    """The emulator ignores a query job's destinationTable: create that table from the query."""
    def start_query_job(self, project_id, query, use_legacy_sql, flatten_results, job_id,
                        priority, dry_run=False, kms_key=None, job_labels=None):
        if dry_run:
            return real_start_query_job(self, project_id, query, use_legacy_sql,
                                        flatten_results, job_id, priority, dry_run=True,
                                        kms_key=kms_key, job_labels=job_labels)
        from apache_beam.io.gcp.internal.clients import bigquery as api
        temp = self._get_temp_table(self._get_temp_table_project(project_id))
        ddl = (f"CREATE OR REPLACE TABLE `{temp.projectId}.{temp.datasetId}.{temp.tableId}` "
               f"AS {query}")
        request = api.BigqueryJobsInsertRequest(
            projectId=project_id,
            job=api.Job(configuration=api.JobConfiguration(
                query=api.JobConfigurationQuery(query=ddl, useLegacySql=False)),
                jobReference=api.JobReference(jobId=job_id, projectId=project_id)))
        return self._start_job(request)
    return start_query_job


def _clean_up_by_label(client_factory):
    """The emulator's datasets.list ignores its label filter: filter here, so that Beam's
    clean-up deletes only its own temporary datasets."""
    def clean_up(self, project_id, dataset_id=None, table_id=None, labels=None):
        client = client_factory()
        if isinstance(labels, dict) and not self.is_user_configured_dataset():
            for item in client.list_datasets(project_id, include_all=True):
                found = client.get_dataset(item.reference).labels or {}
                if all(found.get(k) == v for k, v in labels.items()):
                    client.delete_dataset(item.reference, delete_contents=True,
                                          not_found_ok=True)
            return
        client.delete_table(f"{project_id}.{dataset_id}.{table_id}", not_found_ok=True)
    return clean_up


# --- the module fixture ------------------------------------------------------------------------
class BigQueryEmulator:
    """The emulator as a test module sees it: a real google-cloud-bigquery client and helpers.
    Each test uses a dataset of its own (`dataset`)."""

    def __init__(self, process: EmulatorProcess, gcs_url: str):
        self.process = process
        self.url = process.url
        self.gcs_url = gcs_url
        self.project = PROJECT
        self.load_bucket = "bp-bq-load"  # --temp_location gs://bp-bq-load/tmp
        self._datasets = 0

    def client(self):
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery
        return bigquery.Client(project=PROJECT, credentials=AnonymousCredentials(),
                               client_options=ClientOptions(api_endpoint=self.url))

    def dataset(self, prefix: str = "ds") -> str:
        """A new, empty dataset; returns "project.dataset"."""
        self._datasets += 1
        name = f"{prefix}_{os.getpid()}_{self._datasets}"
        self.client().create_dataset(f"{PROJECT}.{name}")
        return f"{PROJECT}.{name}"

    def create_table(self, table: str, schema: list, rows: list[dict] | None = None,
                     partitioned: bool = False):
        """A table of that schema ([(name, type, mode)]), its rows inserted."""
        from google.cloud import bigquery
        fields = [bigquery.SchemaField(name, kind, mode=mode) for name, kind, mode in schema]
        t = bigquery.Table(table, schema=fields)
        if partitioned:
            t.time_partitioning = bigquery.TimePartitioning(type_="DAY")
        client = self.client()
        client.create_table(t)
        if rows:
            errors = client.insert_rows_json(table, rows)
            assert not errors, errors
        return t

    def rows(self, table: str) -> list[dict]:
        """Every row of a table (or of one partition, `table$YYYYMMDD`) as dicts."""
        client = self.client()
        return [dict(r.items()) for r in client.list_rows(client.get_table(table))]

    def tables(self, dataset: str) -> list[str]:
        return sorted(t.table_id for t in self.client().list_tables(dataset))


@pytest.fixture(scope="module")
def bq(bq_emulator_process):
    """The shims for this module's tests (undone when they are done), and the emulator."""
    import google.auth
    from apache_beam.internal.gcp import auth as beam_auth
    from apache_beam.io.gcp import bigquery_tools
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery_storage_v1
    from google.cloud.bigquery import _http as bq_http
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
        BigQueryReadGrpcTransport)
    import grpc

    emulator = BigQueryEmulator(bq_emulator_process.bigquery, bq_emulator_process.gcs_url)
    real_read_client = bigquery_storage_v1.BigQueryReadClient
    target = bq_emulator_process.bigquery.grpc_target

    class LoopbackReadClient(real_read_client):
        def __init__(self, *args, **kwargs):
            kwargs.pop("credentials", None)
            kwargs["transport"] = BigQueryReadGrpcTransport(channel=grpc.insecure_channel(target))
            super().__init__(*args, **kwargs)

    saved_credentials = (beam_auth._Credentials._credentials_init,
                         beam_auth._Credentials._credentials)
    wrapper = bigquery_tools.BigQueryWrapper
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIGQUERY_EMULATOR_HOST", emulator.url)
        mp.setenv("STORAGE_EMULATOR_HOST", emulator.gcs_url)
        mp.setattr(bigquery_v2_client.BigqueryV2, "BASE_URL", f"{emulator.url}/bigquery/v2/")
        mp.setattr(google.auth, "default",
                   lambda *args, **kwargs: (AnonymousCredentials(), PROJECT))
        mp.setattr(bigquery_storage_v1, "BigQueryReadClient", LoopbackReadClient)
        mp.setattr(bq_http.Connection, "api_request",
                   _emulator_requests(bq_http.Connection.api_request))
        mp.setattr(wrapper, "_start_query_job", _query_into_temp_table(wrapper._start_query_job))
        mp.setattr(wrapper, "_clean_up_beam_labelled_temporary_datasets",
                   _clean_up_by_label(emulator.client))
        beam_auth._Credentials._credentials_init = False
        beam_auth._Credentials._credentials = None
        from google.cloud import storage
        gcs = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        if gcs.lookup_bucket(emulator.load_bucket) is None:
            gcs.create_bucket(emulator.load_bucket)
        try:
            yield emulator
        finally:
            (beam_auth._Credentials._credentials_init,
             beam_auth._Credentials._credentials) = saved_credentials

