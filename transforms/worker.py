"""What a worker process does once, whatever the model: start TensorFlow without its start-up
chatter, keep the loaded model for every DoFn instance (thread) of the process, keep the
collector off what loading made, and leave quickly.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
import threading
from typing import Any

__all__ = ["ModelHolder", "loading_phase", "heap_frozen", "exit_now",
           "TENSORFLOW_START_UP_CHATTER", "QUIET_WORKERS_ENV", "start_tensorflow_quietly",
           "inherited_by_workers"]

_heap_frozen = False


# What TensorFlow's C++ side prints on every start on a machine without a GPU. absl writes the
# I0000 lines before it reads TF_CPP_MIN_LOG_LEVEL, and the cuInit line at ERROR level, which
# only TF_CPP_MIN_LOG_LEVEL=3 would hide, together with every later C++ error worth reading;
# absl's and glog's own level variables (ABSL_MIN_LOG_LEVEL, GLOG_minloglevel) do not reach
# these lines. So the import and the device probe run with file descriptor 2 caught, and every
# other line is written out again.
TENSORFLOW_START_UP_CHATTER = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
)
# "1" in the local worker processes of a quiet launcher (`inherited_by_workers`): the first
# import of this package in them starts TensorFlow quietly
QUIET_WORKERS_ENV = "BATCH_PREDICT_QUIET_WORKERS"


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices (where the cuInit line comes from) with fd 2 in
    a temp file; then write what it caught to stderr, less TENSORFLOW_START_UP_CHATTER. The
    probe leaves the runtime uninitialized: thread pool sizes can still be set after it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            sys.stderr.write("".join(
                line for line in text.splitlines(keepends=True)
                if not any(c in line for c in TENSORFLOW_START_UP_CHATTER)))
            sys.stderr.flush()


@contextlib.contextmanager
def inherited_by_workers(name: str, value: str):
    """Environment variable `name` set to `value` while the block runs: local worker
    processes started in it (Beam's multi_processing mode) inherit it; restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class ModelHolder:
    """What `beam.utils.shared.Shared` keeps per process (it must be weak-referenceable,
    hence a class): the loaded model, and whether its load was reported yet."""

    def __init__(self, model: Any):
        self.model = model
        self.pid = os.getpid()
        self.reported = False
        self.lock = threading.Lock()


def heap_frozen() -> bool:
    """Whether a `loading_phase` of this process froze the heap already."""
    return _heap_frozen


@contextlib.contextmanager
def loading_phase():
    """A block that creates long-lived objects: TensorFlow's import, the model load, the graph.

    Importing TensorFlow and loading a model make ~400k objects that live as long as the
    process. The cyclic garbage collector's full passes over them found almost nothing and
    cost ~0.8 s of a job's start-up (6 passes of 0.03-0.24 s, growing with the heap), and
    interpreter exit spent ~1.2 s in a last pass. So the collector is paused inside the block,
    and on leaving it every object alive is frozen (`gc.freeze`): later passes only walk what
    the run creates. Frozen objects are still freed by reference counting; only reference
    cycles among them are never collected: in a process that runs several jobs (`python -m jobs
    run --backfill`, the tests) the first job's model stays in memory until the process ends
    (a full collection freed it before this; later jobs' models are collected as before).
    Once per process: a later block (a later job, a second DoFn instance) changes
    nothing, so later garbage is never frozen.
    """
    global _heap_frozen
    if _heap_frozen:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        _heap_frozen = True
        if enabled:
            gc.enable()


def exit_now() -> None:
    """atexit hook of a local multi-process worker: flush, then leave without finalizing.

    By then the SDK harness has finished its bundles, torn down the DoFns and closed its log
    channel. Finalizing an interpreter with TensorFlow loaded takes another 1.3-2 s (C++
    destructors, no Python left to run), and the DirectRunner waits for its workers to exit
    one after another at the end of every run. An exit after an uncaught error keeps code 1.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1 if getattr(sys, "last_value", None) is not None else 0)
