"""Staging a SavedModel (or a frozen graph file) from GCS into a local cache, once per worker
process.

Why: TensorFlow's own `gs://` support needs its GCS plugin and credentials of its own, and it
reads a SavedModel file by file with many small requests. We copy the model directory once with
`google-cloud-storage` (parallel downloads, checksum-validated by the client, then a size check
of every file against the listing) and let `tf.saved_model.load` read local files.

The cache is content-addressed: its directory name includes a fingerprint of the listing
(names, sizes, generations), so a model overwritten in place is staged anew, and an unchanged
one is reused by every DoFn instance and later bundles of the process (in-memory index), by
other worker processes on the same machine (a file lock plus a completed directory on disk),
and by the launcher and in-process workers of a local run.

Object names become local paths, so a hostile or broken bucket could try to write outside the
cache: names with `..`, an absolute path or a backslash are refused before anything is written,
and every target is checked to resolve inside the staging directory.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid

from transforms.errors import StagingError

__all__ = ["DOWNLOAD_THREADS", "RemoteFile", "split_gcs_uri", "check_relative_name", "fingerprint",
           "check_sizes", "list_model_files", "default_cache_dir", "stage_model",
           "stage_graph_file"]

_LOG = logging.getLogger(__name__)
DOWNLOAD_THREADS = 8
_COMPLETE_MARKER = ".staged"




@dataclasses.dataclass(frozen=True)
class RemoteFile:
    name: str        # full object name
    relative: str    # path below the model directory, '/'-separated
    size: int
    generation: int | None


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b/' -> ('bucket', 'a/b')."""
    if not uri.startswith("gs://"):
        raise StagingError(f"{uri} is not a gs:// path")
    bucket, _, prefix = uri[len("gs://"):].partition("/")
    if not bucket:
        raise StagingError(f"{uri} has no bucket name")
    return bucket, prefix.strip("/")


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_name(relative: str, uri: str) -> None:
    """Refuse object names that would land outside the staging dir: absolute, `..` or `.`
    segments, backslashes, drive letters, NUL (a hostile or broken bucket listing)."""
    parts = relative.split("/")
    if (not relative or "\\" in relative or relative.startswith("/")
            or _WINDOWS_DRIVE.match(relative) or any(p in ("..", ".") for p in parts)
            or "\x00" in relative):
        raise StagingError(
            f"refusing to stage {uri}: object name {relative!r} is not a plain relative path "
            "(it contains '..', '.', a backslash, a NUL or is absolute); a SavedModel never "
            "has such names, so the bucket content is broken or hostile")


def _inside(root: str, relative: str) -> str:
    """The local target of `relative` under `root`, guaranteed to resolve inside it."""
    target = os.path.realpath(os.path.join(root, *relative.split("/")))
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, target]) != real_root:
        raise StagingError(f"refusing to write {relative!r} outside the staging dir {root}")
    return target


def fingerprint(files: list[RemoteFile]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative):
        h.update(f"{f.relative}\0{f.size}\0{f.generation}\n".encode())
    return h.hexdigest()[:16]


def check_sizes(local_dir: str, files: list[RemoteFile]) -> None:
    """Every staged file exists with the size the listing announced."""
    wrong = []
    for f in files:
        path = _inside(local_dir, f.relative)
        actual = os.path.getsize(path) if os.path.exists(path) else None
        if actual != f.size:
            wrong.append(f"{f.relative}: {actual} bytes, expected {f.size}")
    if wrong:
        raise StagingError(f"staged model is incomplete ({len(wrong)} files differ from the "
                           f"bucket listing, e.g. {wrong[0]}); the model changed while it was "
                           "being copied, or the download was cut: retry")


class _ProcessCache:
    """Per-process index of the directories already staged (a worker stages a model once;
    every DoFn instance, bundle and the launcher of a local run then reuse it)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.staged: dict[tuple[str, str], str] = {}


_CACHE = _ProcessCache()  # a plain object: no work happens at import time


def _make_client():
    import google.auth.exceptions
    from google.cloud import storage
    try:
        return storage.Client(project=None)  # reads need no project: don't require one
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise StagingError(
            "no Google credentials to read the model from GCS: run `gcloud auth "
            "application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a "
            f"service-account key file ({type(e).__name__})") from None


def list_model_files(client, uri: str) -> list[RemoteFile]:
    bucket, prefix = split_gcs_uri(uri)
    base = prefix + "/" if prefix else ""
    files = []
    try:
        blobs = list(client.list_blobs(bucket, prefix=base))
    except Exception as e:  # NotFound, Forbidden, transport errors: one clear line
        raise StagingError(f"cannot list {uri}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:300]}") from None
    for blob in blobs:
        relative = blob.name[len(base):]
        if relative.endswith("/") and not blob.size:  # a "directory" placeholder object
            continue
        check_relative_name(relative, uri)
        files.append(RemoteFile(blob.name, relative, int(blob.size or 0), blob.generation))
    if not files:
        raise StagingError(f"no objects under {uri}: is the model path right?")
    return files


def _download_all(client, bucket_name: str, files: list[RemoteFile], target: str,
                  threads: int) -> None:
    bucket = client.bucket(bucket_name)
    for f in files:  # create dirs first so download threads only write files
        os.makedirs(os.path.dirname(_inside(target, f.relative)), exist_ok=True)

    def fetch(f: RemoteFile):
        bucket.blob(f.name, generation=f.generation).download_to_filename(
            _inside(target, f.relative))

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(fetch, f): f for f in files}
        for future in concurrent.futures.as_completed(futures):
            error = future.exception()
            if error is not None:
                raise StagingError(
                    f"cannot download gs://{bucket_name}/{futures[future].name}: "
                    f"{type(error).__name__}: {str(error).splitlines()[0][:300]}") from None


@contextlib.contextmanager
def _file_lock(path: str):
    """Serialises staging of one model across the worker processes of a machine."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "batch-predict-models")


def stage_model(uri: str, cache_dir: str | None = None, client=None,
                threads: int = DOWNLOAD_THREADS) -> str:
    """Copy the SavedModel dir at gs://... into the local cache; returns the local dir."""
    client = client or _make_client()
    files = list_model_files(client, uri)
    if not any(f.relative in ("saved_model.pb", "saved_model.pbtxt") for f in files):
        raise StagingError(f"{uri} holds no saved_model.pb: not a SavedModel directory")
    return _stage_cached(client, uri, files, cache_dir, threads)


def stage_graph_file(uri: str, cache_dir: str | None = None, client=None) -> str:
    """Copy a frozen graph file at gs://... (and its `<name>.json` sidecar, if there is one)
    into the local cache; returns the local path of the graph file.

    Only those two objects are copied: the directory around a graph file may hold anything."""
    client = client or _make_client()
    bucket, name = split_gcs_uri(uri)
    wanted = {name: name.rsplit("/", 1)[-1], name + ".json": name.rsplit("/", 1)[-1] + ".json"}
    try:
        blobs = [b for b in client.list_blobs(bucket, prefix=name) if b.name in wanted]
    except Exception as e:  # NotFound, Forbidden, transport errors: one clear line
        raise StagingError(f"cannot list {uri}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:300]}") from None
    files = [RemoteFile(b.name, wanted[b.name], int(b.size or 0), b.generation) for b in blobs]
    if not any(f.name == name for f in files):
        raise StagingError(f"model path {uri} does not exist")
    local = _stage_cached(client, uri, files, cache_dir, DOWNLOAD_THREADS)
    return os.path.join(local, wanted[name])


def _stage_cached(client, uri: str, files: list[RemoteFile], cache_dir: str | None,
                  threads: int) -> str:
    """The local copy of `files` (listed under `uri`), staged once per listing fingerprint."""
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    key = (uri.rstrip("/"), cache_dir)
    bucket, prefix = split_gcs_uri(uri)
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{bucket}/{prefix}")[-80:]
    local = os.path.join(cache_dir, f"{readable}-{fingerprint(files)}")
    if _CACHE.staged.get(key) == local and os.path.exists(os.path.join(local,
                                                                       _COMPLETE_MARKER)):
        return local
    os.makedirs(cache_dir, exist_ok=True)
    with _CACHE.lock, _file_lock(local + ".lock"):  # threads of this process, then processes
        if os.path.exists(os.path.join(local, _COMPLETE_MARKER)):
            _LOG.info("model %s already staged in %s", uri, local)
        else:
            _stage_into(client, bucket, files, local, threads, uri)
        _CACHE.staged[key] = local
    return local


def _stage_into(client, bucket: str, files: list[RemoteFile], local: str, threads: int,
                uri: str) -> None:
    """Download into a fresh temp dir beside `local`, check it, then rename it into place."""
    start = time.monotonic()
    partial = f"{local}.partial-{uuid.uuid4().hex[:8]}"
    os.makedirs(partial)
    try:
        _download_all(client, bucket, files, partial, threads)
        check_sizes(partial, files)
        with open(os.path.join(partial, _COMPLETE_MARKER), "w") as fh:
            fh.write(uri + "\n")
        if os.path.exists(local):  # an earlier attempt died before its marker: replace it
            shutil.rmtree(local)
        os.rename(partial, local)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    total = sum(f.size for f in files)
    _LOG.info("staged %s: %d files, %.1f MB in %.1fs into %s", uri, len(files), total / 1e6,
              time.monotonic() - start, local)
