"""Export helper: a SavedModel with a parsing serving signature built from a FeatureSpec.

The TF2 equivalent of Estimator's `build_parsing_serving_input_receiver_fn`: the exported
`serving_default` takes a batch of serialized `tf.Example`s, runs `tf.io.parse_example` with the
spec, and calls the model. A second signature (default name `predict_raw`) takes the parsed
features as named tensors, for callers that already have tensors.
"""
from __future__ import annotations

from typing import Callable

from transforms.feature_spec import FeatureSpec

__all__ = ["raw_input_signature", "densify", "export_parsing_model"]


def raw_input_signature(spec: FeatureSpec) -> dict:
    """Named TensorSpecs of what `parse_example(spec)` yields, densified."""
    import tensorflow as tf
    out = {}
    for f in spec.values():
        shape = [None] + list(f.shape) if f.kind == "fixed" else [None, None]
        out[f.name] = tf.TensorSpec(shape, tf.dtypes.as_dtype(f.dtype), name=f.name)
    return out


def densify(parsed: dict) -> dict:
    """Sparse/ragged parse outputs as dense tensors (zero/empty padded)."""
    import tensorflow as tf
    out = {}
    for name, value in parsed.items():
        if isinstance(value, tf.SparseTensor):
            value = tf.sparse.to_dense(value)
        elif isinstance(value, tf.RaggedTensor):
            value = value.to_tensor()
        out[name] = value
    return out


def export_parsing_model(model: Callable[[dict], dict], spec: FeatureSpec, export_dir: str,
                         raw_signature: str | None = "predict_raw", module=None) -> str:
    """Save `model` (dense features dict -> outputs dict) with a parsing `serving_default`.

    `module` is the tf.Module (or Keras model) that owns the variables `model` uses; it is the
    object that gets saved, so its variables and assets travel with the SavedModel.
    """
    import tensorflow as tf
    tf_spec = spec.to_tf()
    holder = module if module is not None else tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return model(densify(tf.io.parse_example(examples, tf_spec)))

    signatures = {"serving_default": serve_examples}
    if raw_signature:
        raw_spec = raw_input_signature(spec)

        @tf.function(input_signature=[raw_spec])
        def serve_raw(features):
            return model(features)

        # signatures take keyword tensors: unpack the dict into named inputs
        signatures[raw_signature] = serve_raw.get_concrete_function()
    holder._serve_examples = serve_examples  # keep the functions tracked by the module
    tf.saved_model.save(holder, export_dir, signatures=signatures)
    return export_dir
