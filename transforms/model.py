"""Finding, staging, loading and calling a SavedModel (or a frozen graph).

`open_model()` is what both the launcher (validation, fail fast) and every worker (in
`PredictDoFn.setup`) call, through `transforms.savedmodel.SavedModelHandler`: resolve the
version, stage it locally if it lives on GCS, load it with `tf.saved_model.load` (TF1 and TF2
exports alike; Keras 3's `load_model` cannot load plain SavedModels), choose the signature,
settle the feature spec and run one warm-up call.

Model kinds (`MODEL_KINDS`), all ending as one signature called the same way:
  saved_model                  `tf.saved_model.load` revived the SavedModel
  saved_model_signatures_only  reviving its objects failed (a Keras 2 export saved with its
                               optimizer, with no Keras 2 installed); its signatures were
                               loaded alone (`transforms.graph_models.load_signatures_only`)
  frozen_graph                 a frozen GraphDef file (`transforms.graph_models`)
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np

from apache_beam.io.filesystems import FileSystems

from transforms.errors import FeatureSpecError, ModelError
from transforms.feature_spec import FeatureSpec
from transforms.graph_models import (is_graph_path, load_frozen_graph, load_signatures_only,
                                     sidecar_tensor_maps)
from transforms.introspect import (SignatureInfo, feed_problems, signature_info,
                                   spec_from_inputs)

__all__ = ["SAVED_MODEL_FILES", "MODEL_KINDS", "ModelVersion", "resolve_version",
           "configure_threads", "error_summary", "UnbatchedOutput", "LoadedModel", "stage_local",
           "RawModel", "load_signature", "open_model", "settle_spec", "model_size_bytes"]

_LOG = logging.getLogger(__name__)
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
MODEL_KINDS = ("saved_model", "saved_model_signatures_only", "frozen_graph")


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
            "numeric version subdirectories holding one" + _deeper_hint(path))
    version = candidates[max(candidates)]
    return ModelVersion(FileSystems.join(path, version), version)


def _deeper_hint(path: str) -> str:
    """Point at export base dirs one level down (Estimator's `export/<exporter>/<ts>/`)."""
    bases = set()
    for f in SAVED_MODEL_FILES:
        try:
            matches = FileSystems.match([FileSystems.join(path, "*", "*", f)])[0].metadata_list
        except Exception:  # listing failed: no hint, the main message stands
            return ""
        bases.update(m.path.rstrip("/").rsplit("/", 2)[0] for m in matches
                     if m.path.rstrip("/").split("/")[-2].isdigit())
    if not bases:
        return ""
    return f"; export base dirs found below it: {', '.join(sorted(bases)[:5])}"


def _concise(e):
    """The same OpError (class, node, op) with `error_summary` as its message."""
    try:
        return type(e)(e.node_def, e.op, error_summary(e, limit=4000))
    except TypeError:  # an OpError subclass with another constructor: keep it as it is
        return e


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


def error_summary(e: BaseException, limit: int = 500) -> str:
    """The sentence that says what went wrong, from a TensorFlow error, on one line (an error
    row's message, a start-up error).

    TF prefixes errors raised while running a graph built in this process with "Graph
    execution error:" and a "Detected at node ... (most recent call last):" traceback; the
    reason comes after. Those lines, the `[[{{node ...}}]]` suffixes and blank lines are
    dropped, and every run of whitespace becomes one space.
    """
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    lines, in_trace = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Detected at node") or stripped.startswith("Detected unsupported"):
            in_trace = True
            continue
        if in_trace and (line[:1].isspace() or not stripped):
            continue  # the traceback's indented "File ..." lines
        in_trace = False
        if not stripped or stripped in ("Graph execution error:",
                                        "<stack traces unavailable>") or \
                stripped.startswith("[["):
            continue
        lines.append(stripped)
    return " ".join(" ".join(lines or [text]).split())[:limit]


class UnbatchedOutput(ValueError):
    """A signature output without one row per record: it cannot be split into rows."""


class LoadedModel:
    """A loaded signature plus the feature spec used to feed it."""

    def __init__(self, version: ModelVersion, local_dir: str, loaded, signature: str,
                 info: SignatureInfo, spec: FeatureSpec, spec_source: str,
                 load_seconds: float, stage_seconds: float, kind: str = "saved_model",
                 load_note: str | None = None):
        self.version = version
        self.kind = kind            # one of MODEL_KINDS
        self.load_note = load_note  # why it was not loaded the ordinary way, if it was not
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
                # a fixed feature parses as [batch, *shape]; feed_problems checked that it has
                # as many values as the input takes per example ([1] -> [], [] -> [1], ...)
                if t.shape is not None and all(d is not None for d in t.shape[1:]):
                    value = tf.reshape(value, [-1] + list(t.shape[1:]))
                feeds[t.name] = value
            return fn(**feeds)
        return call

    def predict(self, serialized: np.ndarray) -> dict[str, np.ndarray]:
        """Score a batch of serialized tf.Examples; one array per signature output.

        A failing call raises the same `tf.errors.OpError` class with the reason only: the
        parse step of a named-tensor signature runs in a tf.function built in this process,
        whose errors otherwise start with a long Python traceback, which would push the
        reason out of a per-record error message (and out of its classification). An output
        without a leading batch dimension raises UnbatchedOutput.
        """
        import tensorflow as tf
        try:
            out = self._fn(tf.constant(serialized, dtype=tf.string))
        except tf.errors.OpError as e:
            raise _concise(e) from None
        outputs = {k: v.numpy() for k, v in out.items()}
        n = len(serialized)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise UnbatchedOutput(f"model output {name!r} has shape {value.shape} for a "
                                      f"batch of {n}; outputs need a leading batch dimension")
        return outputs

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.info.outputs]

    def forwards(self, name: str) -> bool:
        """Whether the output `name` is the input feature `name` passed through unchanged (the
        Estimator `forward_features` pattern), on three synthetic records with distinct
        values of it; False when the feature is not a scalar of the spec."""
        from transforms.examples import encode_rows
        feature = self.spec.get(name)
        if feature is None or feature.kind != "fixed" or feature.num_values != 1 \
                or name not in self.output_names:
            return False
        values = {"float32": [1.5, -2.25, 1e6], "int64": [101, -7, 2 ** 40],
                  "string": ["k0", "key-1", "\u00fcber"]}[feature.dtype]
        rows = []
        for value in values:
            row = {}
            for f in self.spec.values():
                fill = {"float32": 0.0, "int64": 0, "string": ""}[f.dtype]
                row[f.name] = list(f.full_default() or (fill,) * f.num_values) \
                    if f.kind == "fixed" else [fill]
            row[name] = [value]
            rows.append(row)
        try:
            out = self.predict(encode_rows(rows, {f.name: f.dtype for f in self.spec.values()}))
        except Exception:  # noqa: BLE001 -- a model that cannot say is not forwarding
            return False
        got = out[name].reshape(len(rows), -1)
        if got.shape[1] != 1:
            return False
        expected = np.array([v.encode() if isinstance(v, str) else v for v in values],
                            dtype=object if feature.dtype == "string" else None)
        return bool(np.all(got[:, 0] == expected))

    def warm_up(self) -> None:
        """One call on a synthetic example built from the spec (catches missing kernels)."""
        from transforms.examples import encode_rows
        row = {}
        for f in self.spec.values():
            fill = {"float32": 0.0, "int64": 0, "string": ""}[f.dtype]
            if f.kind == "fixed":
                row[f.name] = list(f.full_default() or (fill,) * f.num_values)
            else:  # one value: a model may rightly fail on an empty sequence (x[:, 0])
                row[f.name] = [fill]
        example = encode_rows([row], {f.name: f.dtype for f in self.spec.values()})
        try:
            self.predict(example)
        except UnbatchedOutput as e:
            raise ModelError(str(e)) from None
        except Exception as e:  # any failure here is the model's: report it in one sentence
            reason = error_summary(e)
            hint = ""
            if "OpKernel" in reason or "Op type not registered" in reason:
                hint = (" (the model uses an op this TensorFlow has no kernel for: load its "
                        "custom op library, or re-export it with ops this TensorFlow has)")
            raise ModelError(
                f"the model loads but its first call fails on a synthetic example built from "
                f"the feature spec (signature {self.signature!r}): {reason}{hint}") from None


def stage_local(version: ModelVersion, cache_dir: str | None = None) -> tuple[str, float]:
    """A local directory holding the SavedModel (a local file, for a frozen graph), and the
    seconds spent staging it."""
    graph = is_graph_path(version.path)
    if not version.path.startswith("gs://"):
        if graph and not os.path.isfile(version.path):
            raise ModelError(f"model path {version.path} does not exist (a frozen graph "
                             "file; supported locations are local paths and gs://)")
        if not graph and not os.path.isdir(version.path):
            raise ModelError(f"model path {version.path} is not a local directory; supported "
                             "locations are local paths and gs://")
        return version.path, 0.0
    from transforms.staging import stage_graph_file, stage_model
    start = time.monotonic()
    local = (stage_graph_file if graph else stage_model)(version.path, cache_dir)
    return local, time.monotonic() - start


@dataclasses.dataclass
class RawModel:
    """A loaded model and its chosen signature, before the feature spec is settled."""
    version: ModelVersion
    local_dir: str
    loaded: object
    signature: str
    info: SignatureInfo
    load_seconds: float
    stage_seconds: float
    kind: str = "saved_model"     # one of MODEL_KINDS
    load_note: str | None = None  # why it was not loaded the ordinary way, if it was not


def _load_saved_model(local: str, path: str) -> tuple[object, str, str | None]:
    """(loaded, kind, note): `tf.saved_model.load`, else its signatures alone.

    Reviving a SavedModel re-creates its Python objects; a Keras 2 export saved with its
    optimizer needs Keras 2's own classes for that (`'_UserObject' object has no attribute
    'add_slot'` without them), yet its signatures are plain graph functions over checkpointed
    variables. When revival fails, the signature-level loader is tried; if that fails too, the
    revival error is the one reported."""
    import tensorflow as tf
    try:
        return tf.saved_model.load(local), "saved_model", None
    except Exception as e:  # noqa: BLE001 -- any revival failure: try the signatures alone
        revival = error_summary(e, limit=300)
    try:
        loaded = load_signatures_only(local)
    except Exception:  # noqa: BLE001 -- the SavedModel itself is unusable: say why it failed
        raise ModelError(f"cannot load SavedModel {path}: {revival}") from None
    note = (f"its objects cannot be revived ({revival}); its signatures were loaded alone with "
            "the signature-level loader")
    _LOG.warning("SavedModel %s: %s", path, note)
    return loaded, "saved_model_signatures_only", note


def load_signature(path: str, signature: str = "serving_default",
                   cache_dir: str | None = None, model_inputs: tuple | None = None,
                   model_outputs: tuple | None = None) -> RawModel:
    """Resolve, stage and load a model and inspect the chosen signature (ModelError if not).

    `model_inputs`/`model_outputs` ((name, tensor) pairs) name a frozen graph's signature;
    a frozen graph without them reads them from its sidecar."""
    if os.path.basename(path.rstrip("/")) in SAVED_MODEL_FILES:
        raise ModelError(f"--model {path} names the SavedModel's protobuf file: give the "
                         "directory that holds it")
    graph = is_graph_path(path)
    if graph:
        path = path.rstrip("/")
    if (model_inputs or model_outputs) and not graph:
        raise ModelError(f"--model_inputs and --model_outputs name the tensors of a frozen "
                         f"graph (a .pb file), but --model {path} is not one; a SavedModel's "
                         "signature is chosen with --signature")
    version = ModelVersion(path, None) if graph else resolve_version(path)
    local, stage_seconds = stage_local(version, cache_dir)
    start = time.monotonic()
    if graph:
        named_by = ("--model_inputs" if model_inputs else f"{path}.json inputs",
                    "--model_outputs" if model_outputs else f"{path}.json outputs")
        if not (model_inputs and model_outputs):
            inputs, outputs = sidecar_tensor_maps(local, path)
            model_inputs, model_outputs = model_inputs or inputs, model_outputs or outputs
        loaded, kind, note = (load_frozen_graph(local, path, model_inputs, model_outputs,
                                                named_by), "frozen_graph", None)
    else:
        loaded, kind, note = _load_saved_model(local, version.path)
    load_seconds = time.monotonic() - start
    signatures = sorted(loaded.signatures.keys())
    if signature not in loaded.signatures:
        raise ModelError(f"signature {signature!r} not found in {version.path}; available: "
                         f"{', '.join(signatures) or '(none)'}")
    info = signature_info(signature, loaded.signatures[signature])
    return RawModel(version, local, loaded, signature, info, load_seconds, stage_seconds,
                    kind, note)


def open_model(path: str, signature: str = "serving_default",
               feature_spec: FeatureSpec | None = None, cache_dir: str | None = None,
               warm_up: bool = True, model_inputs: tuple | None = None,
               model_outputs: tuple | None = None) -> LoadedModel:
    """Resolve, stage, load and check a model; raises ModelError with one clear sentence."""
    raw = load_signature(path, signature, cache_dir, model_inputs, model_outputs)
    spec, source = settle_spec(raw.info, feature_spec)
    model = LoadedModel(raw.version, raw.local_dir, raw.loaded, signature, raw.info, spec,
                        source, raw.load_seconds, raw.stage_seconds, raw.kind, raw.load_note)
    if warm_up:
        model.warm_up()
    return model


def settle_spec(info: SignatureInfo, given: FeatureSpec | None) -> tuple[FeatureSpec, str]:
    """The spec that feeds the signature and where it came from; ModelError if none can."""
    if info.convention == "serialized":
        if info.parsed_spec is None:  # it parses, but its parse op could not be read
            if given is None:
                raise ModelError(f"signature {info.name!r}: {info.spec_error}")
            return given, f"given (the model's parse op could not be read: {info.spec_error})"
        if given is not None:
            diffs = given.diff(info.parsed_spec)
            if diffs:
                raise ModelError(f"--feature_spec does not match what signature {info.name!r} "
                                 f"parses ({len(diffs)} feature(s) differ): " + "; ".join(diffs))
            return given, "given (matches the model's parse op)"
        return info.parsed_spec, f"model ({info.name} parse op)"
    try:
        spec = given if given is not None else spec_from_inputs(info)
    except FeatureSpecError as e:
        raise ModelError(f"signature {info.name!r}: {e}; pass --feature_spec") from None
    problems = feed_problems(info, spec)
    if problems:
        raise ModelError(f"signature {info.name!r} takes named tensors that the "
                         f"{'given' if given is not None else 'derived'} feature spec cannot "
                         f"feed: {'; '.join(problems)} (spec has: {', '.join(spec)})")
    return spec, "given" if given is not None else f"model ({info.name} input signature)"


def model_size_bytes(local_dir: str) -> int:
    """Bytes of the model on local disk (a frozen graph: its file)."""
    if os.path.isfile(local_dir):
        return os.path.getsize(local_dir)
    total = 0
    for root, _, files in os.walk(local_dir):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
