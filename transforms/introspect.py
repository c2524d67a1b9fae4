"""Reading a SavedModel signature: its call convention and the feature spec it parses.

The spec is recovered from the `ParseExample` (TF1 graphs, Estimator exports) or
`ParseExampleV2` (TF2 functions) node behind the signature: its constant inputs carry the
feature keys and defaults, its attributes the dtypes and shapes. Nested functions (TF2's
`StatefulPartitionedCall`) are searched through the graph's function library.
"""
from __future__ import annotations

import dataclasses

from transforms.errors import FeatureSpecError
from transforms.feature_spec import Feature, FeatureSpec

__all__ = ["PARSE_OPS", "TF_EXAMPLE_DTYPE", "TensorInfo", "SignatureInfo", "signature_info",
           "spec_from_inputs", "feed_problems", "recover_spec"]

PARSE_OPS = ("ParseExample", "ParseExampleV2")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple  # None for unknown dims; () for scalars; None overall when unknown rank

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ",".join(
            "None" if d is None else str(d) for d in self.shape) + "]"
        return f"{self.dtype}{dims}"


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    convention: str            # "serialized": one string input of serialized tf.Examples
    parsed_spec: FeatureSpec | None  # what the signature's own parse op reads, if any
    spec_error: str | None = None    # why a parse op was found but could not be read

    def to_json(self) -> dict:
        out = {"convention": self.convention,
               "inputs": {t.name: t.describe() for t in self.inputs},
               "outputs": {t.name: t.describe() for t in self.outputs}}
        if self.parsed_spec is not None:
            out["parses"] = self.parsed_spec.to_json()["features"]
        if self.spec_error is not None:
            out["parse_op_unreadable"] = self.spec_error
        return out


def _tensor_info(name, spec) -> TensorInfo:
    shape = None if spec.shape.rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name, spec.dtype.name, shape)


def signature_info(name: str, fn) -> SignatureInfo:
    """Inspect a loaded signature (a ConcreteFunction from `loaded.signatures`)."""
    inputs = tuple(_tensor_info(k, v) for k, v in sorted(fn.structured_input_signature[1].items()))
    outputs = tuple(_tensor_info(k, v) for k, v in sorted(fn.structured_outputs.items()))
    try:
        parsed, error = recover_spec(fn), None
    except FeatureSpecError as e:  # a parse op we cannot read: the caller may pass a spec
        parsed, error = None, str(e)
    serialized = ((parsed is not None or error is not None) and len(inputs) == 1
                  and inputs[0].dtype == "string")
    return SignatureInfo(name, inputs, outputs, "serialized" if serialized else "tensors",
                         parsed if serialized else None, error if serialized else None)


def spec_from_inputs(info: SignatureInfo) -> FeatureSpec:
    """A default spec for a raw-tensor signature: one feature per input, named like it.

    `[None, k...]` inputs become fixed features of shape `[k...]` (required); `[None, None]`
    inputs become variable-length features (fed densified, zero-padded to the longest row of
    the chunk). Inputs whose per-example shape is unknown (unknown rank, or an unknown
    dimension other than a single one) cannot be derived: the user passes a spec.
    """
    feats = []
    for t in info.inputs:
        dtype = TF_EXAMPLE_DTYPE.get(t.dtype)
        if dtype is None:
            raise FeatureSpecError(f"input {t.name!r} has dtype {t.dtype}, which tf.Example "
                                   "cannot carry")
        if t.shape is None:
            raise FeatureSpecError(f"input {t.name!r} has an unknown shape, so its feature "
                                   "cannot be derived from the signature")
        if len(t.shape) == 0:
            raise FeatureSpecError(f"input {t.name!r} is a scalar without a batch dimension")
        inner = t.shape[1:]
        if all(d is not None for d in inner):
            feats.append(Feature(t.name, "fixed", dtype, tuple(inner)))
        elif len(inner) == 1:
            feats.append(Feature(t.name, "varlen", dtype))
        else:
            raise FeatureSpecError(f"input {t.name!r} has shape {t.describe()}: only [None, "
                                   "k...] (fixed) and [None, None] (variable-length) inputs "
                                   "can be derived from the signature")
    return FeatureSpec(feats)


# tf.Example carries float32, int64 and bytes; these input dtypes are fed by a cast from them
TF_EXAMPLE_DTYPE = {
    "float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float32",
    "int8": "int64", "int16": "int64", "int32": "int64", "int64": "int64", "uint8": "int64",
    "uint16": "int64", "uint32": "int64", "uint64": "int64", "string": "string",
}
_CASTS_FROM = {  # spec dtype -> input dtypes it can be cast to without reinterpreting values
    "float32": {"float16", "bfloat16", "float32", "float64"},
    "int64": {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
              "uint8", "uint16", "uint32", "uint64", "bool"},
    "string": {"string"},
}


def feed_problems(info: SignatureInfo, spec: FeatureSpec) -> list[str]:
    """Why `spec` cannot feed the named-tensor inputs of a signature (empty if it can).

    Each input is fed the feature of the same name, parsed with the spec, densified, cast to
    the input's dtype and reshaped to `[batch, *per-example shape]`.
    """
    problems = []
    for t in info.inputs:
        if t.name not in spec:
            problems.append(f"input {t.name!r} ({t.describe()}) has no feature of that name")
            continue
        f = spec[t.name]
        if t.dtype not in _CASTS_FROM[f.dtype]:
            problems.append(f"input {t.name!r} is {t.dtype} but feature {t.name!r} is "
                            f"{f.dtype}")
            continue
        if t.shape is None:
            continue  # unknown rank: the signature accepts any shape
        if len(t.shape) == 0:
            problems.append(f"input {t.name!r} is a scalar without a batch dimension")
            continue
        inner = t.shape[1:]
        if f.kind == "fixed":
            if all(d is not None for d in inner):
                need = 1
                for d in inner:
                    need *= d
                if need != f.num_values:
                    problems.append(f"input {t.name!r} takes {need} value(s) per example "
                                    f"({t.describe()}); feature {t.name!r} has "
                                    f"{f.num_values} (shape {list(f.shape)})")
            elif len(inner) != len(f.shape) or any(
                    d is not None and d != s for d, s in zip(inner, f.shape)):
                problems.append(f"input {t.name!r} ({t.describe()}) does not accept feature "
                                f"{t.name!r} of shape {list(f.shape)}")
        elif len(inner) != 1 or inner[0] is not None:
            problems.append(f"input {t.name!r} ({t.describe()}) cannot take the "
                            f"{f.kind} feature {t.name!r}: its number of values per example "
                            "varies; only [None, None] inputs take one")
    return problems


# --- parse-op discovery ----------------------------------------------------------------------
_PASS_THROUGH = ("Identity", "Snapshot", "Reshape", "ExpandDims", "Squeeze")


def _node_name(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


class _Scope:
    """Nodes of one graph or function body, to resolve constant inputs by name."""

    def __init__(self, nodes):
        self.nodes = {n.name: n for n in nodes}

    def const(self, ref: str):
        import tensorflow as tf
        node = self.nodes.get(_node_name(ref))
        seen = 0
        # defaults pass through value-preserving ops (parse_example reshapes them); we flatten
        while node is not None and node.op in _PASS_THROUGH and seen < 20:
            node = self.nodes.get(_node_name(node.input[0]))
            seen += 1
        if node is None or node.op != "Const":
            raise FeatureSpecError(f"the parse op's input {ref!r} is not a constant; pass "
                                   "--feature_spec explicitly")
        return tf.make_ndarray(node.attr["value"].tensor)


def _find_parse_nodes(graph_def):
    scopes = [(_Scope(graph_def.node), graph_def.node)]
    for fdef in graph_def.library.function:
        scopes.append((_Scope(fdef.node_def), fdef.node_def))
    for scope, nodes in scopes:
        for node in nodes:
            if node.op in PARSE_OPS:
                yield scope, node


def _dtype_name(enum) -> str:
    import tensorflow as tf
    return tf.dtypes.as_dtype(enum).name


def _shape(attr_shape) -> tuple:
    if attr_shape.unknown_rank or any(d.size < 0 for d in attr_shape.dim):
        raise FeatureSpecError("the model parses a feature with an unknown dimension "
                               "(FixedLenSequenceFeature); pass --feature_spec explicitly")
    return tuple(int(d.size) for d in attr_shape.dim)


def _spec_from_node(scope: _Scope, node) -> FeatureSpec:
    import numpy as np
    a = node.attr
    data_inputs = [i for i in node.input if not i.startswith("^")]
    feats: list[Feature] = []
    tdense = [_dtype_name(t) for t in a["Tdense"].list.type]
    shapes = [_shape(s) for s in a["dense_shapes"].list.shape]
    sparse_types = [_dtype_name(t) for t in a["sparse_types"].list.type]
    if node.op == "ParseExampleV2":
        sparse_keys = [k.decode() for k in np.ravel(scope.const(data_inputs[2]))]
        dense_keys = [k.decode() for k in np.ravel(scope.const(data_inputs[3]))]
        ragged_keys = [k.decode() for k in np.ravel(scope.const(data_inputs[4]))]
        default_refs = data_inputs[5:5 + len(dense_keys)]
        ragged_types = [_dtype_name(t) for t in a["ragged_value_types"].list.type]
    else:
        ns, nd = a["Nsparse"].i, a["Ndense"].i
        sparse_keys = [scope.const(r).item().decode() for r in data_inputs[2:2 + ns]]
        dense_keys = [scope.const(r).item().decode() for r in data_inputs[2 + ns:2 + ns + nd]]
        default_refs = data_inputs[2 + ns + nd:2 + ns + 2 * nd]
        ragged_keys, ragged_types = [], []
    for key, dtype, shape, ref in zip(dense_keys, tdense, shapes, default_refs):
        default = np.ravel(scope.const(ref))
        dflt = None if default.size == 0 else tuple(
            v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v
            for v in default.tolist())
        feats.append(Feature(key, "fixed", dtype, shape, dflt))
    feats += [Feature(k, "varlen", t) for k, t in zip(sparse_keys, sparse_types)]
    feats += [Feature(k, "ragged", t) for k, t in zip(ragged_keys, ragged_types)]
    return FeatureSpec(sorted(feats, key=lambda f: f.name))


def recover_spec(fn) -> FeatureSpec | None:
    """The feature spec parsed behind a signature, or None if it has no parse op."""
    specs = []
    for scope, node in _find_parse_nodes(fn.graph.as_graph_def()):
        spec = _spec_from_node(scope, node)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        return None
    if len(specs) > 1:
        raise FeatureSpecError(
            f"the signature parses examples in {len(specs)} different ways; pass "
            "--feature_spec explicitly")
    return specs[0]
