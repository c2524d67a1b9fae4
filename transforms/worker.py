"""What a worker process does once, whatever the model: keep the loaded model for every DoFn
instance (thread) of the process, keep the collector off what loading made, and leave quickly.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
from typing import Any

__all__ = ["ModelHolder", "loading_phase", "heap_frozen", "exit_now"]

_heap_frozen = False


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
