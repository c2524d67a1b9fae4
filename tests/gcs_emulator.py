"""A real GCS on loopback for tests: `gcp-storage-emulator` plus a tiny GCE metadata server.

Why the metadata server: Beam's GCS filesystem looks up Google credentials in every process
before its first request. Without any, `google.auth.default()` fails and Beam retries it for
about 26 s per process (every multi-process worker pays it again). Answering the lookup from a
loopback metadata server (`GCE_METADATA_HOST` / `GCE_METADATA_IP`) makes it resolve at once to
Compute Engine credentials, whose token the emulator ignores. The service account is named
"default", not an e-mail address, so google-auth makes no further (remote) trust-boundary
lookup. Nothing here listens on, or talks to, anything but 127.0.0.1.

The environment variables are set in `os.environ`, so subprocess workers (DirectRunner
multi_processing, `python -m jobs ...`) inherit them. `gcs_env()` gives them for explicit use.

Use: `from tests.gcs_emulator import gcs  # noqa: F401` in a test module, then a `gcs` argument
(a module-scoped `GcsEmulator`).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

LOOPBACK = "127.0.0.1"
PROJECT = "emulated-project"
SERVICE_ACCOUNT = "default"  # not an e-mail: avoids google-auth's remote trust-boundary lookup


class _MetadataHandler(BaseHTTPRequestHandler):
    """The few metadata paths google-auth's Compute Engine credentials read."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.path.split("?")[0].rstrip("/")
        self.server.requests.append(path)
        root = "/computeMetadata/v1"
        account = f"{root}/instance/service-accounts/{SERVICE_ACCOUNT}"
        answers = {
            "": "",  # the detection ping on GCE_METADATA_IP
            f"{root}/project/project-id": PROJECT,
            f"{root}/project/numeric-project-id": "1234",
            f"{root}/universe/universe-domain": "googleapis.com",
            account: {"email": SERVICE_ACCOUNT, "aliases": ["default"],
                      "scopes": ["https://www.googleapis.com/auth/cloud-platform"]},
            f"{account}/token": {"access_token": "emulated-token", "expires_in": 3600,
                                 "token_type": "Bearer"},
        }
        if path not in answers:
            self.send_response(404)
            self.send_header("Metadata-Flavor", "Google")
            self.end_headers()
            return
        body = answers[path]
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type",
                         "application/json" if isinstance(body, dict) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass


class MetadataServer:
    def __init__(self):
        self._httpd = ThreadingHTTPServer((LOOPBACK, 0), _MetadataHandler)
        self._httpd.daemon_threads = True
        self._httpd.requests = []
        self.host = f"{LOOPBACK}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> list[str]:
        return list(self._httpd.requests)

    def start(self):
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()


class GcsEmulator:
    """The running emulator: its URL, a real `google.cloud.storage.Client`, small helpers."""

    def __init__(self, url: str, metadata: MetadataServer, server):
        self.url = url
        self.metadata = metadata
        self._server = server

    def client(self):
        from google.cloud import storage
        return storage.Client(project=PROJECT)

    def create_bucket(self, name: str):
        client = self.client()
        bucket = client.lookup_bucket(name)
        return bucket or client.create_bucket(name)

    def upload_dir(self, local_dir: str, gs_prefix: str) -> list[str]:
        """Copy a local tree to gs://bucket/prefix; returns the object names."""
        bucket_name, _, prefix = gs_prefix[len("gs://"):].partition("/")
        bucket = self.create_bucket(bucket_name)
        names = []
        for root, _, files in os.walk(local_dir):
            for f in files:
                path = os.path.join(root, f)
                rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
                name = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
                bucket.blob(name).upload_from_filename(path)
                names.append(name)
        return sorted(names)

    def upload_bytes(self, gs_path: str, data: bytes) -> None:
        bucket_name, _, name = gs_path[len("gs://"):].partition("/")
        self.create_bucket(bucket_name).blob(name).upload_from_string(data)

    def read_bytes(self, gs_path: str) -> bytes:
        bucket_name, _, name = gs_path[len("gs://"):].partition("/")
        return self.client().bucket(bucket_name).blob(name).download_as_bytes()

    def list(self, gs_prefix: str) -> list[str]:
        """Object names (relative to the prefix) under gs://bucket/prefix/."""
        bucket_name, _, prefix = gs_prefix[len("gs://"):].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(b.name[len(prefix):] for b in
                      self.client().list_blobs(bucket_name, prefix=prefix))


def gcs_env(emulator_url: str, metadata_host: str) -> dict[str, str]:
    """The variables that point GCS clients and credential lookup at loopback servers."""
    return {
        "STORAGE_EMULATOR_HOST": emulator_url,
        "GCE_METADATA_HOST": metadata_host,
        "GCE_METADATA_IP": metadata_host,
        "NO_GCE_CHECK": "false",  # let google-auth ask our loopback metadata server
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }


def _apply_to_loaded_google_auth(host: str, no_gce_check: bool) -> tuple | None:
    """google-auth reads some variables when its module is imported: update a loaded copy.

    Returns the previous values (to restore), or None when the module is not loaded yet (it
    will then read the environment itself)."""
    meta = sys.modules.get("google.auth.compute_engine._metadata")
    if meta is None:
        return None
    previous = (meta._GCE_METADATA_HOST, meta._NO_GCE_CHECK)
    meta._GCE_METADATA_HOST, meta._NO_GCE_CHECK = host, no_gce_check
    return previous


@pytest.fixture(scope="module")
def gcs():
    """A fresh, empty emulator (and metadata server) for the test module; the environment is
    restored when the module's tests are done, so other modules never see it."""
    from gcp_storage_emulator.server import create_server
    metadata = MetadataServer()
    metadata.start()
    # port 0: the kernel picks a free port as the server binds it (no bind-close-rebind race)
    server = create_server(LOOPBACK, 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    env = gcs_env(f"http://{LOOPBACK}:{port}", metadata.host)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    previous = _apply_to_loaded_google_auth(env["GCE_METADATA_HOST"], False)
    try:
        yield GcsEmulator(env["STORAGE_EMULATOR_HOST"], metadata, server)
    finally:
        if previous is not None:
            _apply_to_loaded_google_auth(*previous)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        metadata.stop()


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost"))


@contextlib.contextmanager
def deny_off_loopback():
    """Refuse (and record) every connection this process opens to a non-loopback address.

    (Worker subprocesses are not covered; they only get loopback endpoints from the env.)"""
    attempts = []
    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            attempts.append(address)
            raise ConnectionRefusedError(f"test guard: no connections off loopback ({address})")
        return real_connect(sock, address)

    socket.socket.connect = guarded_connect
    try:
        yield attempts
    finally:
        socket.socket.connect = real_connect


@pytest.fixture
def loopback_only():
    with deny_off_loopback() as attempts:
        yield attempts
    assert not attempts, f"tried to connect off loopback: {attempts}"
