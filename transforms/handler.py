"""The model handler seam: everything `PredictDoFn` needs from one kind of model.

Shaped like Beam's `ModelHandler` (apache_beam/ml/inference/base.py): a handler is small and
picklable, built by the launcher and carried to every worker inside the DoFn; `load()` builds
the heavy object (a loaded model) once per worker process, and every other method is handed
that object. What stays in the DoFn is generic: chunking, in-order concurrent calls, bisection
of failing chunks, out-of-memory back-off, batch-size tuning, timing and metrics.

A handler's calls fail in one of three ways (`classify`):
  RECORD         some record of the batch is at fault: the DoFn splits the batch until the
                 record is alone, and writes it as an error row of the failure's `error_type`
  OUT_OF_MEMORY  the batch is too large: split it, and keep calls at most that small from then on
  FATAL          anything else: the job fails with the error
No TensorFlow here: a handler imports its framework itself.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

import numpy as np

from transforms.errors import ERROR_TYPES
from transforms.feature_spec import FeatureSpec

__all__ = ["ModelHandler", "ModelDescription", "Failure", "KeyReader", "RECORD",
           "OUT_OF_MEMORY", "FATAL"]

RECORD = "record"
OUT_OF_MEMORY = "out_of_memory"
FATAL = "fatal"


@dataclasses.dataclass(frozen=True)
class Failure:
    """What a failed `run_batch` means for the records in it."""
    kind: str                        # RECORD, OUT_OF_MEMORY or FATAL
    error_type: str = "model_error"  # the error row's type once a record is isolated
    message: str = ""                # the error row's message: the reason, in one line

    def __post_init__(self):
        if self.kind not in (RECORD, OUT_OF_MEMORY, FATAL):
            raise ValueError(f"unknown failure kind {self.kind!r}")
        if self.error_type not in ERROR_TYPES:
            raise ValueError(f"unknown error type {self.error_type!r}")


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What a loaded model is and how it was loaded."""
    path: str                       # the model as loaded (a base dir resolved to one version)
    version: str | None             # the version chosen from a base dir, if any
    signature: str
    convention: str                 # how records reach it ("serialized", "tensors")
    output_names: tuple[str, ...]
    spec: FeatureSpec               # the feature spec that feeds it
    spec_source: str                # where that spec came from, in words
    load_seconds: float
    stage_seconds: float            # copying it to local disk first (0 for a local model)
    runtime: dict[str, Any]         # this process's runtime settings (model_loads row fields)
    runtime_note: str               # the same, for the load's log line
    kind: str = "model"             # what kind of model it is (e.g. "frozen_graph")


@dataclasses.dataclass(frozen=True)
class KeyReader:
    """Reads each record's key from the record itself (e.g. a feature of a tf.Example)."""
    name: str  # the key as the user named it (--key_field)
    # records -> (key of each record, whether it has one); a record without one is an error
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class ModelHandler(abc.ABC):
    """How to load one kind of model and score serialized records with it."""

    @abc.abstractmethod
    def shared_tag(self) -> str:
        """What identifies the loaded model: DoFns whose handlers give the same tag share one
        load per process (`beam.utils.shared.Shared`)."""

    @abc.abstractmethod
    def load(self) -> Any:
        """Stage the model (a local copy of a remote one), then open it; raises
        `transforms.errors.ModelError` with one sentence when it cannot."""

    @abc.abstractmethod
    def warm_up(self, model: Any) -> None:
        """One call on a synthetic record, so a model that loads but cannot run fails at
        start-up (ModelError) rather than on every record."""

    @abc.abstractmethod
    def describe(self, model: Any) -> ModelDescription:
        """Signature, call convention, output names, feature spec, load times."""

    @abc.abstractmethod
    def run_batch(self, model: Any, serialized: np.ndarray) -> dict[str, np.ndarray]:
        """Score serialized records: output name -> array whose first dimension is one row
        per record, in order. Raises on failure (see `classify`). Called from several threads
        at once with --concurrent_model_calls."""

    @abc.abstractmethod
    def classify(self, error: Exception) -> Failure:
        """What an exception raised by `run_batch` (or `KeyReader.read`) means."""

    def forwards_key(self, model: Any, name: str) -> bool:
        """Whether the model's output `name` is its input feature `name` passed through
        unchanged (so a --key_field of that name is one column, not two). False by default."""
        return False

    def key_reader(self) -> KeyReader | None:
        """Reads keys from the records, or None: no key, or keys that come with the records
        from an earlier step (CSV). Built once per DoFn, in setup()."""
        return None
