"""Finding, staging, loading and calling a SavedModel.

`open_model()` is what both the launcher (validation, fail fast) and every worker (in
`PredictDoFn.setup`) call: resolve the version, stage it locally if it lives on GCS, load it
with `tf.saved_model.load` (TF1 and TF2 exports alike; Keras 3's `load_model` cannot load plain
SavedModels), choose the signature, settle the feature spec and run one warm-up call.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from apache_beam.io.filesystems import FileSystems

from transforms.feature_spec import FeatureSpec, FeatureSpecError
from transforms.introspect import SignatureInfo, signature_info, spec_from_inputs

_LOG = logging.getLogger(__name__)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class ModelError(Exception):
    """The model cannot be used as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    path: str            # the SavedModel directory
    version: str | None  # the numeric export dir chosen from a base dir, if any


def _is_saved_model(path: str) -> bool:
    return any(FileSystems.exists(FileSystems.join(path, f)) for f in SAVED_MODEL_FILES)


def resolve_version(path: str) -> ModelVersion:
    """A SavedModel dir, or the newest numeric version in an export base dir."""
    path = path.rstrip("/")
    if _is_saved_model(path):
        return ModelVersion(path, None)
    candidates = {}
    for pattern_file in SAVED_MODEL_FILES:
        pattern = FileSystems.join(path, "*", pattern_file)
        try:
            matches = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError for unreadable buckets/dirs
            raise ModelError(f"cannot list model path {path}: {e}") from None
        for m in matches:
            version = m.path.rstrip("/").split("/")[-2]
            if version.isdigit():  # temp-1234 and other non-numeric dirs are unfinished
                candidates[int(version)] = version
    if not candidates:
        if not FileSystems.exists(path) and not FileSystems.match([path + "/*"])[0].metadata_list:
            raise ModelError(f"model path {path} does not exist")
        raise ModelError(
            f"{path} is neither a SavedModel (no saved_model.pb) nor an export base dir with "
            "numeric version subdirectories holding one")
    version = candidates[max(candidates)]
    return ModelVersion(FileSystems.join(path, version), version)


def configure_threads(intra_op: int, inter_op: int) -> None:
    """Set TF thread pools; only possible before TF's runtime starts in this process."""
    import tensorflow as tf
    if not (intra_op or inter_op):
        return
    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        _LOG.debug("TensorFlow already initialised in this process; thread settings kept")


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return text.strip().splitlines()[0][:500]


class LoadedModel:
    """A loaded signature plus the feature spec used to feed it."""

    def __init__(self, version: ModelVersion, local_dir: str, loaded, signature: str,
                 info: SignatureInfo, spec: FeatureSpec, spec_source: str,
                 load_seconds: float, stage_seconds: float):
        self.version = version
        self.local_dir = local_dir
        self.loaded = loaded  # keep the trackable object alive: its variables back `fn`
        self.signature = signature
        self.info = info
        self.spec = spec
        self.spec_source = spec_source
        self.load_seconds = load_seconds
        self.stage_seconds = stage_seconds
        self._fn = self._build_call(loaded.signatures[signature])

    def _build_call(self, fn):
        import tensorflow as tf
        if self.info.convention == "serialized":
            arg = self.info.inputs[0].name
            return lambda serialized: fn(**{arg: serialized})
        tf_spec = self.spec.to_tf()
        inputs = self.info.inputs

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def call(serialized):
            parsed = tf.io.parse_example(serialized, tf_spec)
            feeds = {}
            for t in inputs:
                value = parsed[t.name]
                if isinstance(value, tf.SparseTensor):
                    value = tf.sparse.to_dense(value)
                elif isinstance(value, tf.RaggedTensor):
                    value = value.to_tensor()
                value = tf.cast(value, t.dtype)
                if t.shape is not None and all(d is not None for d in t.shape[1:]):
                    value = tf.reshape(value, [-1] + list(t.shape[1:]))
                feeds[t.name] = value
            return fn(**feeds)
        return call

    def predict(self, serialized: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch of serialized tf.Examples; one array per signature output."""
        import tensorflow as tf
        out = self._fn(tf.constant(serialized, dtype=tf.string))
        return {k: v.numpy() for k, v in out.items()}

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.info.outputs]

    def warm_up(self) -> None:
        """One call on a synthetic example built from the spec (catches missing kernels)."""
        from transforms.examples import encode_rows
        row = {}
        for f in self.spec.values():
            if f.kind == "fixed":
                fill = {"float32": 0.0, "int64": 0, "string": ""}[f.dtype]
                row[f.name] = list(f.full_default() or (fill,) * f.num_values)
        example = encode_rows([row], {f.name: f.dtype for f in self.spec.values()})
        try:
            out = self.predict(example)
        except Exception as e:
            raise ModelError(
                f"the model loads but its first call fails (signature {self.signature!r}): "
                f"{_first_line(e)}. If this names an op or kernel, the model needs an op this "
                "TensorFlow lacks (a custom op library, or an op removed from TF)") from None
        for name, value in out.items():
            if value.ndim == 0 or value.shape[0] != 1:
                raise ModelError(f"output {name!r} is not batched (shape {value.shape} for "
                                 "one example); every output needs a leading batch dimension")


def stage_local(version: ModelVersion, cache_dir: str | None = None) -> tuple[str, float]:
    """A local directory holding the SavedModel, and the seconds spent staging it."""
    if not version.path.startswith("gs://"):
        if not os.path.isdir(version.path):
            raise ModelError(f"model path {version.path} is not a local directory; supported "
                             "locations are local paths and gs://")
        return version.path, 0.0
    from transforms.staging import stage_model
    start = time.monotonic()
    local = stage_model(version.path, cache_dir)
    return local, time.monotonic() - start


def open_model(path: str, signature: str = "serving_default",
               feature_spec: FeatureSpec | None = None, cache_dir: str | None = None,
               warm_up: bool = True) -> LoadedModel:
    """Resolve, stage, load and check a model; raises ModelError with one clear sentence."""
    import tensorflow as tf
    version = resolve_version(path)
    local, stage_seconds = stage_local(version, cache_dir)
    start = time.monotonic()
    try:
        loaded = tf.saved_model.load(local)
    except Exception as e:
        raise ModelError(f"cannot load SavedModel {version.path}: {_first_line(e)}") from None
    load_seconds = time.monotonic() - start
    signatures = sorted(loaded.signatures.keys())
    if signature not in loaded.signatures:
        raise ModelError(f"signature {signature!r} not found in {version.path}; available: "
                         f"{', '.join(signatures) or '(none)'}")
    try:
        info = signature_info(signature, loaded.signatures[signature])
    except FeatureSpecError as e:
        raise ModelError(f"signature {signature!r}: {e}") from None
    spec, source = _settle_spec(info, feature_spec)
    model = LoadedModel(version, local, loaded, signature, info, spec, source,
                        load_seconds, stage_seconds)
    if warm_up:
        model.warm_up()
    return model


def _settle_spec(info: SignatureInfo, given: FeatureSpec | None) -> tuple[FeatureSpec, str]:
    if info.parsed_spec is not None:
        if given is not None:
            diffs = given.diff(info.parsed_spec)
            if diffs:
                raise ModelError("--feature_spec does not match the spec the model parses: "
                                 + "; ".join(diffs))
            return given, "given (matches the model's parse op)"
        return info.parsed_spec, f"model ({info.name} parse op)"
    try:
        spec = given if given is not None else spec_from_inputs(info)
    except FeatureSpecError as e:
        raise ModelError(f"signature {info.name!r}: {e}; pass --feature_spec") from None
    missing = [t.name for t in info.inputs if t.name not in spec]
    if missing:
        raise ModelError(f"signature {info.name!r} needs inputs {missing} that the feature "
                         f"spec does not provide (spec has: {', '.join(spec)})")
    return spec, "given" if given is not None else f"model ({info.name} input signature)"


def model_size_bytes(local_dir: str) -> int:
    total = 0
    for root, _, files in os.walk(local_dir):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
