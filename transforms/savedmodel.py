"""The TensorFlow SavedModel handler: `transforms.model` (find, stage, load, call a SavedModel,
or a frozen graph as one signature) behind the `transforms.handler.ModelHandler` seam, plus
what only TensorFlow can say: what its errors mean for a record, and the key of each
tf.Example.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from transforms.feature_spec import FeatureSpec
from transforms.handler import (FATAL, OUT_OF_MEMORY, RECORD, Failure, KeyReader,
                                ModelDescription, ModelHandler)
from transforms.model import LoadedModel, configure_threads, error_summary, open_model

__all__ = ["ModelConfig", "SavedModelHandler", "error_type_for"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything a worker needs to open the same model the launcher validated (picklable)."""
    path: str
    signature: str
    spec: FeatureSpec | None  # None: the model's own (the launcher settles it for workers)
    # a frozen graph's signature: ((name, tensor), ...) pairs; None: its sidecar's
    model_inputs: tuple | None = None
    model_outputs: tuple | None = None
    key_field: str | None = None
    key_dtype: str = "string"
    keys_from_examples: bool = False  # TFRecord input: the key is read from each tf.Example
    cache_dir: str | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    # the Predict step's settings for the worker process, whatever the model
    concurrent_calls: int = 1  # model calls in flight at once per worker process
    # local multi-process DirectRunner: worker processes (pid != launcher_pid) skip the
    # interpreter's finalization once Beam has torn them down (transforms.worker.exit_now)
    fast_worker_exit: bool = False
    launcher_pid: int = 0


def error_type_for(message: str) -> str:
    """The error type of one record, from TensorFlow's parse or model error message."""
    m = message.lower()
    if "is required but could not be found" in m:
        return "missing_feature"
    if "data types don't match" in m:
        return "type_mismatch"
    if "values != expected" in m or "values size" in m:
        return "shape_mismatch"
    if "could not parse example" in m or "can't parse serialized example" in m:
        return "parse_error"
    return "model_error"


class SavedModelHandler(ModelHandler):
    """One signature of a SavedModel, fed serialized tf.Examples."""

    def __init__(self, config: ModelConfig):
        self.config = config

    def shared_tag(self) -> str:
        return f"{self.config.path}|{self.config.signature}"

    def load(self) -> LoadedModel:
        cfg = self.config
        # thread pools first: they can only be set before TensorFlow's runtime starts
        configure_threads(cfg.intra_op_threads, cfg.inter_op_threads)
        return open_model(cfg.path, cfg.signature, cfg.spec, cfg.cache_dir, warm_up=False,
                          model_inputs=cfg.model_inputs, model_outputs=cfg.model_outputs)

    def warm_up(self, model: LoadedModel) -> None:
        model.warm_up()

    def describe(self, model: LoadedModel) -> ModelDescription:
        import tensorflow as tf
        threading = tf.config.threading
        intra = threading.get_intra_op_parallelism_threads()  # 0: one per core (TF's default)
        return ModelDescription(
            path=model.version.path, version=model.version.version, signature=model.signature,
            convention=model.info.convention, output_names=tuple(model.output_names),
            spec=model.spec, spec_source=model.spec_source, load_seconds=model.load_seconds,
            stage_seconds=model.stage_seconds, kind=model.kind,
            runtime={"tf_intra_op_threads": intra,
                     "tf_inter_op_threads": threading.get_inter_op_parallelism_threads()},
            runtime_note=f"TF intra-op threads: {intra or 'default'}")

    def forwards_key(self, model: LoadedModel, name: str) -> bool:
        return model.forwards(name)

    def run_batch(self, model: LoadedModel, serialized: np.ndarray) -> dict[str, np.ndarray]:
        return model.predict(serialized)

    def classify(self, error: Exception) -> Failure:
        import tensorflow as tf
        # TensorFlow quotes a bad record's bytes in its message; when they are not UTF-8 the
        # error surfaces as a decode error instead
        if isinstance(error, UnicodeDecodeError):
            return Failure(RECORD, "parse_error", "could not parse the record as a tf.Example "
                                                  "(TensorFlow's message held non-UTF-8 bytes)")
        if not isinstance(error, tf.errors.OpError):
            return Failure(FATAL)
        message = error_summary(error)
        kind = OUT_OF_MEMORY if isinstance(error, tf.errors.ResourceExhaustedError) else RECORD
        return Failure(kind, error_type_for(message), message)

    def key_reader(self) -> KeyReader | None:
        cfg = self.config
        if cfg.key_field is None or not cfg.keys_from_examples:
            return None
        import tensorflow as tf
        name = cfg.key_field
        dtype = tf.dtypes.as_dtype(cfg.key_dtype)
        feature = {name: tf.io.VarLenFeature(dtype)}

        def read(serialized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """(first key value of each record, whether it has one). Eager on purpose: a
            tf.function did the same work but cost ~0.1 s of tracing on every worker's first
            call, with the model waiting."""
            sparse = tf.io.parse_example(serialized, feature)[name]
            # rows that hold the key, and where each row's first value is
            rows, first = np.unique(sparse.indices.numpy()[:, 0], return_index=True)
            has_key = np.zeros(len(serialized), bool)
            has_key[rows] = True
            keys = np.full(len(serialized), b"", object) if dtype == tf.string else \
                np.zeros(len(serialized), dtype.as_numpy_dtype)
            keys[rows] = sparse.values.numpy()[first]
            return keys, has_key
        return KeyReader(name, read)
