"""Models that are not a revivable SavedModel: frozen GraphDefs, and SavedModels whose object
graph cannot be revived but whose signatures run.

A frozen graph (`--model graph.pb`, a binary `GraphDef` whose variables were folded into
constants) becomes the same kind of signature a SavedModel has, the way TensorFlow's own
`load_v1_in_v2` turns a TF1 signature into one: the GraphDef is imported inside
`tf.compat.v1.wrap_function`, then pruned to a ConcreteFunction from the named input tensors
to the named output tensors, with keyword inputs named as the user named them. So
`transforms.introspect` (call convention, the spec behind a ParseExample op) and
`transforms.model.LoadedModel` treat it exactly like a SavedModel signature.

Its inputs and outputs come from `--model_inputs`/`--model_outputs` (`name:tensor,...`), or
else from a JSON sidecar next to the graph, `<graph>.pb.json`:
`{"inputs": {"name": "tensor", ...}, "outputs": {"name": "tensor", ...}}`.
"""
from __future__ import annotations

import difflib
import json
import os
import re

from transforms.errors import ModelError

__all__ = ["GRAPH_SUFFIX", "SIDECAR_SUFFIX", "GRAPH_SIGNATURE", "TABLES_INIT_NODE",
           "parse_tensor_map", "is_graph_path", "sidecar_tensor_maps", "FrozenGraph",
           "load_frozen_graph", "SignaturesOnly", "load_signatures_only"]

GRAPH_SUFFIX = ".pb"
SIDECAR_SUFFIX = ".json"          # graph.pb -> graph.pb.json
GRAPH_SIGNATURE = "serving_default"  # the one signature a frozen graph has

# a keyword name: what a feature, a CSV column and a prediction column are called
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# a tensor: a node name as TensorFlow allows it, then an optional output index
_TENSOR = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_./>\-]*(:[0-9]+)?")


def parse_tensor_map(text: str, what: str = "the pair") -> tuple[tuple[str, str], ...]:
    """`name:tensor,name:tensor` -> ((name, tensor), ...) sorted by name; ValueError (one
    line) for an empty or malformed pair or a repeated name. The name ends at the first
    colon, so `score:head/score:0` is the name `score` for the tensor `head/score:0`."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        name, sep, tensor = item.partition(":")
        name, tensor = name.strip(), tensor.strip()
        if not sep or not _NAME.fullmatch(name) or not _TENSOR.fullmatch(tensor):
            raise ValueError(
                f"{what} {item!r} is not NAME:TENSOR (e.g. examples:input_example_tensor:0 or "
                "score:head/score:0; NAME is letters, digits, _ . -, TENSOR a graph node name "
                "with an optional :index)")
        pairs.append((name, tensor))
    names = [n for n, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    return tuple(sorted(pairs))


def is_graph_path(path: str) -> bool:
    """Whether `--model` names a frozen graph file (`*.pb`) rather than a SavedModel dir (a
    local directory named `*.pb` is a directory)."""
    path = path.rstrip("/")
    if not path.startswith("gs://") and os.path.isdir(path):
        return False
    return path.endswith(GRAPH_SUFFIX) and os.path.basename(path) != "saved_model.pb"


def sidecar_tensor_maps(local_file: str, path: str) -> tuple[tuple, tuple]:
    """(inputs, outputs) from the sidecar `<graph>.json` beside the local copy of the graph;
    ModelError (one line) when it is missing or malformed. `path` is the graph as given."""
    sidecar = local_file + SIDECAR_SUFFIX
    shown = path.rstrip("/") + SIDECAR_SUFFIX
    if not os.path.exists(sidecar):
        raise ModelError(
            f"frozen graph {path} needs its input and output tensors: pass --model_inputs and "
            f"--model_outputs (NAME:TENSOR,...), or put a sidecar {shown} beside it holding "
            '{"inputs": {"NAME": "TENSOR", ...}, "outputs": {"NAME": "TENSOR", ...}}')
    try:
        with open(sidecar, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as e:
        raise ModelError(f"sidecar {shown} is not readable JSON: "
                         f"{' '.join(str(e).split())}") from None
    maps = []
    for key in ("inputs", "outputs"):
        value = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(value, dict) or not value or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ModelError(f'sidecar {shown}: "{key}" must be a non-empty object of '
                             '"NAME": "TENSOR" strings')
        try:
            maps.append(parse_tensor_map(",".join(f"{k}:{v}" for k, v in value.items()),
                                         f"{key} entry"))
        except ValueError as e:
            raise ModelError(f"sidecar {shown}: {e}") from None
    return maps[0], maps[1]


class FrozenGraph:
    """A frozen graph as a loaded model: one signature (`signatures`, like a SavedModel's),
    keyword inputs and outputs named as given."""

    def __init__(self, wrapped, fn):
        self.wrapped = wrapped  # the imported graph behind `fn`: kept alive with it
        self.signatures = {GRAPH_SIGNATURE: fn}


# ops whose state a frozen graph cannot carry: their values come from a checkpoint or a run
_VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp", "TemporaryVariable")
# lookup tables are filled by running their initializers once; TF1's tables_initializer()
# names its op `init_all_tables`, and a graph frozen with that among its output nodes keeps it
_TABLE_OPS = ("HashTable", "HashTableV2", "MutableHashTable", "MutableHashTableV2",
              "MutableHashTableOfTensors", "MutableHashTableOfTensorsV2",
              "MutableDenseHashTable", "MutableDenseHashTableV2")
TABLES_INIT_NODE = "init_all_tables"


def _node(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _needed_nodes(graph_def, feeds: set[str], fetches: list[str]) -> set[str]:
    """Nodes the fetches depend on, stopping at fed nodes."""
    nodes = {n.name: n for n in graph_def.node}
    seen, stack = set(), [_node(f) for f in fetches]
    while stack:
        name = stack.pop()
        if name in seen or name not in nodes:
            continue
        seen.add(name)
        if name not in feeds:
            stack.extend(_node(i) for i in nodes[name].input)
    return seen


def load_frozen_graph(local_file: str, path: str, inputs: tuple, outputs: tuple,
                      named_by: tuple[str, str] = ("--model_inputs", "--model_outputs")
                      ) -> FrozenGraph:
    """Import the frozen GraphDef in `local_file` and prune it to a signature from `inputs` to
    `outputs` ((name, tensor) pairs); ModelError (one line) for a file that is not a GraphDef,
    a tensor the graph does not have, or outputs that need something the inputs do not feed.
    `path` is the graph as the user named it and `named_by` where the inputs and the outputs
    were named (the options, or the sidecar), for messages."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    try:
        with open(local_file, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise ModelError(f"cannot read frozen graph {path}: {e.strerror}") from None
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, ValueError) as e:
        raise ModelError(f"{path} is not a frozen graph (a binary GraphDef protobuf): "
                         f"{' '.join(str(e).split()) or type(e).__name__}") from None
    if not graph_def.node:
        raise ModelError(f"{path} is not a frozen graph: it holds no graph nodes")
    names = [n.name for n in graph_def.node]
    by_name = {n.name: n for n in graph_def.node}

    def check(option: str, name: str, ref: str) -> None:
        node = by_name.get(_node(ref))
        if node is None:
            close = difflib.get_close_matches(_node(ref), names, n=3, cutoff=0.5)
            raise ModelError(
                f"{option} {name}:{ref}: frozen graph {path} has no node {_node(ref)!r}"
                + (f"; close node names: {', '.join(close)}" if close else
                   f" ({len(names)} nodes, e.g. {', '.join(names[:3])})"))

    for option, pairs in zip(named_by, (inputs, outputs)):
        for name, ref in pairs:
            check(option, name, ref)
    fed = {_node(ref) for _, ref in inputs}
    needed = _needed_nodes(graph_def, fed, [ref for _, ref in outputs])
    # a PlaceholderWithDefault left unfed takes its default, as in TensorFlow Serving
    unfed = sorted(n for n in needed - fed if by_name[n].op == "Placeholder")
    if unfed:
        raise ModelError(f"the outputs of frozen graph {path} need placeholder(s) "
                         f"{', '.join(unfed)}, which {named_by[0]} does not feed")
    variables = sorted(n for n in needed if by_name[n].op in _VARIABLE_OPS)
    if variables:
        raise ModelError(f"{path} is not frozen: its outputs read variable(s) "
                         f"{', '.join(variables[:3])}; freeze it first (TensorFlow's "
                         "convert_variables_to_constants)")
    tables = sorted(n for n in needed if by_name[n].op in _TABLE_OPS)
    if tables and TABLES_INIT_NODE not in by_name:
        raise ModelError(f"the outputs of frozen graph {path} read lookup table(s) "
                         f"{', '.join(tables[:3])}, but it has no {TABLES_INIT_NODE} node to "
                         f"fill them: freeze it with {TABLES_INIT_NODE} among the output nodes")

    def import_graph():
        tf.compat.v1.import_graph_def(graph_def, name="")
    try:
        wrapped = tf.compat.v1.wrap_function(import_graph, [])
    except Exception as e:  # unknown op types, bad attributes: TensorFlow's reason, one line
        raise ModelError(f"cannot import frozen graph {path}: "
                         f"{' '.join(str(e).split())[:500]}") from None
    graph = wrapped.graph

    def tensor(option: str, name: str, ref: str):
        try:
            return graph.as_graph_element(ref if ":" in ref else ref + ":0")
        except (KeyError, ValueError):  # the node exists (checked): a bad output index
            count = len(graph.get_operation_by_name(_node(ref)).outputs)
            valid = f" ({_node(ref)}:0 to {_node(ref)}:{count - 1})" if count else ""
            raise ModelError(f"{option} {name}:{ref}: node {_node(ref)!r} of frozen graph "
                             f"{path} has {count} output(s){valid}") from None

    if tables:  # the tables are resources of the imported graph: filled once, read by `fn`
        try:
            wrapped.prune(feeds=[], fetches=[graph.get_operation_by_name(TABLES_INIT_NODE)])()
        except Exception as e:  # e.g. a vocabulary file that was not frozen into the graph
            raise ModelError(f"frozen graph {path}: its {TABLES_INIT_NODE} fails: "
                             f"{' '.join(str(e).split())[:500]}") from None
    feeds = [tensor(named_by[0], name, ref) for name, ref in inputs]
    fetches = {name: tensor(named_by[1], name, ref) for name, ref in outputs}
    # the input signature of a SavedModel signature: ((), {name: TensorSpec}) in name order,
    # called with keyword arguments
    signature = ((), {name: tf.TensorSpec(t.shape, t.dtype, name=name)
                      for (name, _), t in zip(inputs, feeds)})
    try:
        fn = wrapped.prune(feeds=feeds, fetches=fetches, input_signature=signature,
                           are_keyword_args_also_positional=True)
    except Exception as e:  # e.g. an output that depends on state the inputs cannot reach
        raise ModelError(f"cannot build a signature from frozen graph {path}: "
                         f"{' '.join(str(e).split())[:500]}") from None
    return FrozenGraph(wrapped, fn)


def load_signatures_only(local_dir: str):
    """A SavedModel's signatures without its object graph: TensorFlow's signature-level loader
    (`load_v1_in_v2`, what `tf.saved_model.load` uses for TF1 exports) reads the MetaGraph's
    signature defs and restores the variables from the checkpoint, so Python objects that
    cannot be revived (a Keras 2 optimizer, when no Keras 2 is installed) are never touched.
    Returns an object whose `signatures` are ConcreteFunctions."""
    from tensorflow.python.saved_model import load_v1_in_v2
    return SignaturesOnly(load_v1_in_v2.load(local_dir, tags=["serve"]))


class SignaturesOnly:
    """A SavedModel loaded by its signatures alone: the serving signatures, without the
    `__saved_model_init_op` entry a TF2 export also lists as a signature (the loader already
    ran it; `tf.saved_model.load` hides it the same way)."""

    def __init__(self, loaded):
        self.loaded = loaded  # its variables back the signatures: kept alive with them
        self.signatures = {name: fn for name, fn in loaded.signatures.items()
                           if name != _INIT_OP_SIGNATURE}


_INIT_OP_SIGNATURE = "__saved_model_init_op"  # tensorflow.saved_model constants' init op key
