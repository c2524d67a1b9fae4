"""Claiming an output dir for one run: a lock that keeps a second run out, and the run's own
staging dir (`.tmp-<run id>`), created before any worker starts.

Local: an flock on `OUTPUT/.batch-predict.lock`; the file stays, the lock dies with the
launcher process however it ends, so a killed run never blocks the next one. Remote (gs://):
the lock object itself, created only if absent (a generation precondition) and deleted by the
run's finalize or its launcher; one left by a killed launcher is named in the refusal, to be
deleted by hand.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import socket
import time

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import OutputError

__all__ = ["LOCK", "OutputClaim", "is_remote", "literal", "staging_name", "claim_output",
           "release_remote_lock"]

_LOG = logging.getLogger(__name__)
LOCK = ".batch-predict.lock"


def is_remote(path: str) -> bool:
    return "://" in path


def literal(path: str) -> str:
    """`path` as a pattern that matches only itself. Beam's filesystems read the paths given to
    `match` and (on GCS) `delete` as glob patterns: a `*`, `?` or `[` in an output dir's name
    would otherwise reach other objects, e.g. a sibling dir's files."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def staging_name(run_id: str) -> str:
    return f".tmp-{run_id}"


@dataclasses.dataclass
class OutputClaim:
    """This run's hold on the output dir: a lock the launcher keeps until the job ends.

    Local: an flock on `.batch-predict.lock` (the file stays; the lock dies with the process,
    so a killed run never blocks the next one). Remote: the lock object itself, created only if
    absent (a generation precondition on GCS) and deleted by the run's finalize or launcher."""
    output: str
    run_id: str
    fd: int | None = None

    def release(self) -> None:
        """Give up the output dir (idempotent); an empty staging dir goes with it."""
        if not is_remote(self.output):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(self.output, staging_name(self.run_id)))
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        elif is_remote(self.output):
            release_remote_lock(self.output, self.run_id)


def _lock_text(run_id: str) -> bytes:
    return json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode()


def _holder(text: bytes) -> str:
    try:
        info = json.loads(text)
        return (f"run {info['run_id']}, process {info['pid']} on {info['host']}, since "
                f"{info['started']}")
    except (ValueError, KeyError, TypeError):
        return "another run"


def _os_error(output: str, e: OSError) -> OutputError:
    what = {errno.EROFS: "is on a read-only filesystem", errno.EACCES: "is not writable",
            errno.EPERM: "is not writable", errno.ENOSPC: "is on a full disk",
            errno.ENOTDIR: "has a parent that is not a directory"}.get(e.errno)
    return OutputError(f"cannot write to output dir {output}: "
                       f"{what or e.strerror or e}; choose another --output")


def claim_output(output: str, run_id: str) -> OutputClaim:
    """Create the output dir if needed, take its lock and create this run's staging dir.

    Fails with one OutputError when the dir is not writable or another run holds it."""
    if is_remote(output):
        return _claim_remote(output, run_id)
    import fcntl
    lock = os.path.join(output, LOCK)
    try:
        os.makedirs(output, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{lock} is a symlink; remove it") from None
        raise _os_error(output, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = os.pread(fd, 4096, 0)
        os.close(fd)
        raise OutputError(f"output dir {output} is in use by {_holder(held)}; wait for it to "
                          "finish or choose another --output") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _lock_text(run_id), 0)
        os.mkdir(os.path.join(output, staging_name(run_id)))
    except OSError as e:
        os.close(fd)
        raise _os_error(output, e) from None
    return OutputClaim(output, run_id, fd)


def _gcs_blob(path: str):
    from google.cloud import storage
    bucket, _, name = path[len("gs://"):].partition("/")
    return storage.Client(project=None).bucket(bucket).blob(name)


def _claim_remote(output: str, run_id: str) -> OutputClaim:
    lock = f"{output}/{LOCK}"
    if FileSystems.exists(lock):
        with FileSystems.open(lock, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            held = fh.read(4096)
        raise OutputError(f"output dir {output} is in use by {_holder(held)}; wait for it to "
                          f"finish, or delete {lock} if that run is gone")
    try:
        if lock.startswith("gs://"):
            from google.api_core import exceptions as gexc
            try:  # create only if absent: two launchers racing for one output, one wins
                _gcs_blob(lock).upload_from_string(_lock_text(run_id), if_generation_match=0)
            except gexc.PreconditionFailed:
                raise OutputError(f"output dir {output} is in use by another run that started "
                                  "just now; choose another --output") from None
        else:
            with FileSystems.create(lock) as fh:
                fh.write(_lock_text(run_id))
    except OutputError:
        raise
    except Exception as e:  # noqa: BLE001 -- any storage failure: one line, the cause named
        raise OutputError(f"cannot write to output dir {output}: {e}") from None
    return OutputClaim(output, run_id)


def release_remote_lock(output: str, run_id: str) -> None:
    """Delete the remote lock if it is this run's (a retried finalize may find it gone)."""
    lock = f"{output}/{LOCK}"
    try:
        if not FileSystems.exists(lock):
            return
        with FileSystems.open(lock, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            if json.loads(fh.read(4096)).get("run_id") != run_id:
                return
        FileSystems.delete([literal(lock)])
    except Exception as e:  # noqa: BLE001 -- a lock left behind is reported, not fatal
        _LOG.warning("could not release %s: %s", lock, e)
