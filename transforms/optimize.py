"""Freezing, Grappler-optimizing and (optionally) weight-quantizing a SavedModel for inference.

Every signature that can be carried over is frozen into one GraphDef whose variables are
constants, Grappler rewrites that graph for the signatures' outputs only, and the result is
written as a TF1-format SavedModel (one `serve` MetaGraph with the same signature names,
input/output keys and method names, and the same asset files). `tf.saved_model.load` loads
that format like any other, so the pipeline opens an optimized model with the code it opens
every model with, and the parse op behind a parsing signature keeps the constant keys and
defaults that `transforms.introspect.recover_spec` reads. Large weights go back into variables
when written (see `write_saved_model`): the graph keeps what Grappler made of it.

Two kinds of source:
- TF1 graphs (Estimator exports): loaded into a `tf.compat.v1.Session` the way TF1 Serving
  loaded them (main op run with the asset paths), then frozen with
  `convert_variables_to_constants_from_session_graph`. Lookup tables are not variables: the
  table ops and the main op that fills them from the vocabulary assets are kept, and the
  written SavedModel runs that main op at load, reading the assets it ships.
- TF2 objects (tf.Module, Keras): each signature's concrete function is frozen with
  `convert_variables_to_constants_v2`, and the frozen graphs are imported side by side, one
  name scope per signature. Freezing leaves lookup tables captured: each is rebuilt as a graph
  table from its revived `_create_resource`/`_initialize` functions, and a main op fills it
  at load (from the vocabulary asset it ships). A signature capturing any other resource is
  skipped, or refused when it is the chosen one or serving_default.

`read_optimization(saved_model_dir)` returns the record the optimize command leaves in the
SavedModel's `assets.extra/`, or None for a model it did not write.
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid

import numpy as np

from transforms.errors import ModelError

__all__ = ["RECORD_FILE", "GRAPPLER_PASSES", "QUANTIZE_MODES", "VARIABLE_MIN_ELEMENTS",
           "FrozenModel", "freeze_model",
           "optimize_graph", "fold_batch_norms", "quantize_weights", "write_saved_model",
           "write_record", "read_optimization"]

RECORD_FILE = os.path.join("assets.extra", "batch_predict_optimize.json")
# Grappler optimizers that help a frozen inference graph (RewriterConfig field names);
# "function" inlines the nested function calls TF2 graphs are made of, so that the others see
# one graph; "pruning" and "dependency" drop what the signatures do not fetch
GRAPPLER_PASSES = ("function", "constant_folding", "arithmetic", "layout", "remapping",
                   "shape", "dependency", "pruning", "loop", "common_subgraph_elimination")
# weight-only quantization: large float32 constants stored in a smaller type, cast back at run
QUANTIZE_MODES = ("none", "float16", "bfloat16")
_QUANTIZE_MIN_ELEMENTS = 64   # biases and small tables stay float32: no size to win
# constants from this size on are written as variables (see write_saved_model)
VARIABLE_MIN_ELEMENTS = 1 << 16
_FLOAT16_MAX = 65504.0
_SERVE = "serve"


@dataclasses.dataclass
class SignatureMap:
    name: str
    method: str
    inputs: dict[str, str]     # key -> tensor name in the frozen graph
    outputs: dict[str, str]


@dataclasses.dataclass
class FrozenModel:
    """One GraphDef holding every carried-over signature, with no variables left."""
    graph_def: object
    signatures: dict[str, SignatureMap]
    init_op: str | None              # op that fills lookup tables at load (TF1 main op)
    assets: dict[str, str]           # asset path tensor name -> file in the source assets/
    skipped: dict[str, str]          # signature -> why it could not be carried over
    source_format: str               # "tf1" | "tf2"

    def fetch_names(self) -> list[str]:
        """Tensors and ops Grappler must keep (with their names)."""
        names = [t for s in self.signatures.values()
                 for t in (*s.inputs.values(), *s.outputs.values())]
        names += list(self.assets)
        if self.init_op:
            names.append(self.init_op)
        return sorted(set(names))


def _read_saved_model(local_dir: str):
    from tensorflow.python.saved_model import loader_impl
    try:
        return loader_impl.parse_saved_model(local_dir)
    except Exception as e:  # noqa: BLE001 -- an unreadable saved_model.pb is the model's
        raise ModelError(f"cannot read the SavedModel proto in {local_dir}: {e}") from None


def _serve_meta_graph(saved_model):
    for mg in saved_model.meta_graphs:
        if _SERVE in mg.meta_info_def.tags:
            return mg
    raise ModelError("the SavedModel has no MetaGraph tagged 'serve'")


def freeze_model(local_dir: str, loaded, chosen: str) -> FrozenModel:
    """Freeze every signature that can be carried over (the chosen one and serving_default
    must be, or ModelError)."""
    meta = _serve_meta_graph(_read_saved_model(local_dir))
    if len(meta.object_graph_def.nodes):
        frozen = _freeze_tf2(local_dir, meta, loaded)
    else:
        frozen = _freeze_tf1(local_dir, meta)
    for must in {chosen, "serving_default"} & set(meta.signature_def):
        if must not in frozen.signatures:
            raise ModelError(f"signature {must!r} cannot be frozen: "
                             f"{frozen.skipped.get(must, 'unknown reason')}")
    return frozen


def _freeze_tf1(local_dir: str, meta) -> FrozenModel:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_from_session_graph)
    from tensorflow.python.util import deprecation
    v1 = tf.compat.v1
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess, deprecation.silence():
        v1.saved_model.loader.load(sess, list(meta.meta_info_def.tags), local_dir)
        init_op = None
        for key in ("saved_model_main_op", "legacy_init_op"):
            nodes = meta.collection_def[key].node_list.value if key in meta.collection_def \
                else []
            if nodes:
                init_op = nodes[0].split(":")[0]
                break
        signatures = {}
        for name, sig in meta.signature_def.items():
            signatures[name] = SignatureMap(
                name, sig.method_name, {k: v.name for k, v in sig.inputs.items()},
                {k: v.name for k, v in sig.outputs.items()})
        keep = {t.split(":")[0] for s in signatures.values()
                for t in (*s.inputs.values(), *s.outputs.values())}
        if init_op:
            keep.add(init_op)
        graph_def = convert_variables_to_constants_from_session_graph(
            sess, graph.as_graph_def(), sorted(keep))
    assets = {}
    for a in _asset_file_defs(meta):
        assets[a.tensor_info.name] = os.path.join(local_dir, "assets", a.filename)
    return FrozenModel(graph_def, signatures, init_op, assets, {}, "tf1")


def _asset_file_defs(meta) -> list:
    """The MetaGraph's AssetFileDefs: in its own field, or (older writers) as the
    `saved_model_assets` collection."""
    from tensorflow.core.protobuf import meta_graph_pb2
    out = list(meta.asset_file_def)
    if not out and "saved_model_assets" in meta.collection_def:
        for any_value in meta.collection_def["saved_model_assets"].any_list.value:
            a = meta_graph_pb2.AssetFileDef()
            any_value.Unpack(a)
            out.append(a)
    return out


def _freeze_tf2(local_dir: str, meta, loaded) -> FrozenModel:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)
    combined = tf.Graph()
    tables = _TableRebuilder(loaded, combined, local_dir)
    signatures, skipped = {}, {}
    for name in sorted(loaded.signatures.keys()):
        fn = loaded.signatures[name]
        try:
            frozen = convert_variables_to_constants_v2(fn)
        except Exception as e:  # noqa: BLE001 -- reported per signature
            skipped[name] = f"freezing failed: {_first_line(e)}"
            continue
        graph_def = frozen.graph.as_graph_def()
        # what freezing leaves captured are resources other than variables: lookup tables,
        # rebuilt as graph tables filled by the main op
        captured = {inner.name.split(":")[0]: outer for outer, inner in fn.graph.captures}
        input_map, unknown = {}, []
        for node in graph_def.node:
            if node.op == "Placeholder" and \
                    node.attr["dtype"].type == tf.resource.as_datatype_enum:
                handle = tables.handle(captured.get(node.name))
                if handle is None:
                    unknown.append(node.name)
                else:
                    input_map[f"{node.name}:0"] = handle
        if unknown:
            skipped[name] = ("it captures TF2 resources that are neither variables nor "
                             "lookup tables this tool can rebuild")
            continue
        inputs = _match_inputs(fn, frozen)
        if inputs is None:
            skipped[name] = "its inputs could not be matched with the frozen graph's"
            continue
        # the frozen function returns its flat outputs: the output dict's values by sorted key
        out_keys = sorted(fn.structured_outputs)
        if len(out_keys) != len(frozen.outputs):
            skipped[name] = "its outputs could not be matched with the frozen graph's"
            continue
        scope = f"sig_{_scope_name(name)}"
        with combined.as_default():
            tf.graph_util.import_graph_def(graph_def, input_map=input_map or None, name=scope)
        outputs = {k: f"{scope}/{t.name}" for k, t in zip(out_keys, frozen.outputs)}
        signatures[name] = SignatureMap(
            name, meta.signature_def[name].method_name if name in meta.signature_def
            else "tensorflow/serving/predict",
            {k: f"{scope}/{t}" for k, t in inputs.items()}, outputs)
    init_op = tables.init_op()
    return FrozenModel(combined.as_graph_def(), signatures, init_op, tables.assets, skipped,
                       "tf2")


class _TableRebuilder:
    """TF2 lookup tables (StaticHashTable and the like, revived with their `_create_resource`
    and `_initialize` functions) rebuilt as TF1 graph tables: the table op, with a shared name
    unique to this written model (two models loaded in one process must not share a table),
    and the initializer's ops, fed the table and the asset path as constants; the asset file
    is registered so that the written SavedModel ships it."""

    def __init__(self, loaded, graph, local_dir: str):
        import tensorflow as tf
        self.graph = graph
        self.assets: dict[str, str] = {}   # asset path const tensor -> source file
        self._inits: list[str] = []
        self._handles: dict[int, object] = {}
        self._local_assets = os.path.realpath(os.path.join(local_dir, "assets"))
        self._tag = uuid.uuid4().hex[:12]
        self._by_handle = {}
        for obj in tf.train.TrackableView(loaded).descendants():
            handle = getattr(obj, "_resource_handle", None)
            if handle is not None and hasattr(obj, "_create_resource") \
                    and hasattr(obj, "_initialize"):
                self._by_handle[id(handle)] = obj

    def handle(self, outer):
        """The rebuilt table's handle tensor in the graph for a captured handle, or None."""
        if outer is None:
            return None
        key = id(outer)
        if key not in self._handles:
            obj = self._by_handle.get(key)
            self._handles[key] = None if obj is None else self._rebuild(obj, len(self._inits))
        return self._handles[key]

    def _rebuild(self, obj, k: int):
        import tensorflow as tf
        from tensorflow.core.framework import graph_pb2
        create = _concrete(obj._create_resource)
        init = _concrete(obj._initialize)
        if create is None or init is None or create.graph.captures:
            return None
        ops = [n for n in create.graph.as_graph_def().node
               if n.op not in ("Placeholder", "NoOp", "Identity", "Const")]
        if len(ops) != 1:
            return None
        prefix = f"table_{k}"
        gd = graph_pb2.GraphDef()
        table = gd.node.add()
        table.CopyFrom(ops[0])
        table.name = f"{prefix}/{ops[0].name}"
        del table.input[:]
        table.attr["shared_name"].s = f"batch_predict_{self._tag}_{k}".encode()
        if "use_node_name_sharing" in table.attr:
            table.attr["use_node_name_sharing"].b = False
        captured = {inner.name.split(":")[0]: outer for outer, inner in init.graph.captures}
        renamed = {}
        for node in init.graph.as_graph_def().node:
            new_name = f"{prefix}/init/{node.name}"
            if node.op == "Placeholder":
                outer = captured.get(node.name)
                if outer is None:
                    return None  # an argument, not a capture: nothing to feed it with
                if outer.dtype == tf.resource:
                    if outer is not obj._resource_handle:
                        return None
                    renamed[node.name] = table.name
                    continue
                value = np.asarray(outer.numpy())
                const = gd.node.add()
                const.name, const.op = new_name, "Const"
                const.attr["dtype"].type = outer.dtype.as_datatype_enum
                const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, outer.dtype))
                if outer.dtype == tf.string and value.ndim == 0:
                    path = os.path.realpath(value.item().decode("utf-8", "replace"))
                    if os.path.dirname(path).startswith(self._local_assets):
                        self.assets[f"{new_name}:0"] = path
                renamed[node.name] = new_name
                continue
            copy = gd.node.add()
            copy.CopyFrom(node)
            copy.name = new_name
            renamed.setdefault(node.name, new_name)
        for node in gd.node:
            if node.name.startswith(f"{prefix}/init/"):
                node.input[:] = [_rename_input(i, renamed) for i in node.input]
        fetch = init.outputs[0].op.name if init.outputs else None
        if fetch is None or fetch not in renamed:
            return None
        with self.graph.as_default():
            tf.graph_util.import_graph_def(gd, name="")
        self._inits.append(renamed[fetch])
        return self.graph.get_tensor_by_name(f"{table.name}:0")

    def init_op(self) -> str | None:
        """One op that fills every rebuilt table (the SavedModel's main op)."""
        import tensorflow as tf
        if not self._inits:
            return None
        with self.graph.as_default():
            op = tf.group(*[self.graph.get_operation_by_name(n) for n in self._inits],
                          name="batch_predict_tables_init")
        return op.name


def _concrete(fn):
    """The one concrete function of a revived function, or None."""
    functions = getattr(fn, "concrete_functions", None)
    if functions is None:
        try:
            return fn.get_concrete_function()
        except Exception:  # noqa: BLE001 -- not a function this tool can read
            return None
    return functions[0] if len(functions) == 1 else None


def _rename_input(ref: str, renamed: dict) -> str:
    control = ref.startswith("^")
    name, _, port = ref.lstrip("^").partition(":")
    new = renamed.get(name, name)
    return ("^" if control else "") + new + (f":{port}" if port else "")


def _match_inputs(fn, frozen) -> dict[str, str] | None:
    """{signature input key: placeholder tensor name in the frozen graph}.

    A signature's placeholders are named after its TensorSpecs (`examples`, `x`, ...); the
    frozen function keeps them and drops the captured variables. Matched by that name, else
    by position (the flat inputs follow the sorted keys), else None."""
    specs = fn.structured_input_signature[1]
    by_op = {t.op.name: t.name for t in frozen.inputs}
    out = {k: by_op.get(spec.name or k) for k, spec in specs.items()}
    if all(out.values()) and len(set(out.values())) == len(out):
        return out
    keys = sorted(specs)
    if len(keys) != len(frozen.inputs):
        return None
    return {k: t.name for k, t in zip(keys, frozen.inputs)}


def _scope_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def optimize_graph(frozen: FrozenModel, passes=GRAPPLER_PASSES):
    """The frozen graph rewritten by Grappler for the signatures' fetches only."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph_def, name="")
        fetch = graph.get_collection_ref("train_op")  # what Grappler treats as fetch nodes
        for name in frozen.fetch_names():
            fetch.append(graph.get_tensor_by_name(name) if ":" in name
                         else graph.get_operation_by_name(name))
        meta = tf.compat.v1.train.export_meta_graph(graph=graph)
    config = config_pb2.ConfigProto()
    rewriter = config.graph_options.rewrite_options
    off, on = rewriter_config_pb2.RewriterConfig.OFF, rewriter_config_pb2.RewriterConfig.ON
    for field in ("function_optimization", "constant_folding", "arithmetic_optimization",
                  "layout_optimizer", "remapping", "shape_optimization",
                  "dependency_optimization", "loop_optimization",
                  "common_subgraph_elimination"):
        setattr(rewriter, field, off)
    chosen = {"function": "function_optimization", "constant_folding": "constant_folding",
              "arithmetic": "arithmetic_optimization", "layout": "layout_optimizer",
              "remapping": "remapping", "shape": "shape_optimization",
              "dependency": "dependency_optimization", "loop": "loop_optimization",
              "common_subgraph_elimination": "common_subgraph_elimination"}
    for p in passes:
        if p in chosen:
            setattr(rewriter, chosen[p], on)
    rewriter.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.TWO
    rewriter.min_graph_nodes = -1  # optimize small graphs too
    return tf_optimizer.OptimizeGraph(config, meta, verbose=False)


def fold_batch_norms(graph_def):
    """optimize_for_inference's batch-norm folding into the preceding Conv2D/MatMul weights
    (a no-op for graphs without that pattern)."""
    from tensorflow.python.tools import optimize_for_inference_lib
    return optimize_for_inference_lib.fold_batch_norms(graph_def)


def quantize_weights(graph_def, mode: str, keep: set[str]) -> tuple[object, int]:
    """float32 constants of at least _QUANTIZE_MIN_ELEMENTS values stored as `mode` and cast
    back to float32 where they are used; returns the graph and how many were converted.

    Constants that a parse op reads (keys, defaults) or that are fetched are left alone: the
    feature spec recovered from the model must not change. Constants beyond float16's range
    stay float32.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    if mode == "none":
        return graph_def, 0
    target = {"float16": tf.float16, "bfloat16": tf.bfloat16}[mode]
    protected = set(keep)
    for node in graph_def.node:
        if node.op.startswith("Parse"):  # ParseExample(V2), ParseSequenceExample, ...
            protected.update(i.lstrip("^").split(":")[0] for i in node.input)
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    converted = 0
    new_nodes = []
    for node in out.node:
        if node.op != "Const" or node.name in protected or \
                node.attr["dtype"].type != tf.float32.as_datatype_enum:
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        if value.size < _QUANTIZE_MIN_ELEMENTS or not np.all(np.isfinite(value)) or \
                np.max(np.abs(value)) > _FLOAT16_MAX:
            continue
        stored = node.name + "/quantized"
        small = tf.constant(value, dtype=target)  # eager: rounds to the target type
        qnode = type(node)()
        qnode.name, qnode.op = stored, "Const"
        qnode.device = node.device
        qnode.attr["dtype"].type = target.as_datatype_enum
        qnode.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(small.numpy(), dtype=target))
        new_nodes.append(qnode)
        # the original name now casts the stored value back: consumers are unchanged
        node.op = "Cast"
        node.ClearField("input")
        node.input.append(stored)
        node.ClearField("attr")
        node.attr["SrcT"].type = target.as_datatype_enum
        node.attr["DstT"].type = tf.float32.as_datatype_enum
        node.attr["Truncate"].b = False
        converted += 1
    out.node.extend(new_nodes)
    return out, converted


def write_saved_model(graph_def, frozen: FrozenModel, export_dir: str,
                      min_variable_elements: int = VARIABLE_MIN_ELEMENTS) -> int:
    """A TF1-format SavedModel of `graph_def` with the frozen model's signatures, main op and
    assets (copied from the source's assets/ into export_dir/assets/); returns how many
    weights it stores as variables.

    Constants of at least `min_variable_elements` values go back into variables (saved in
    variables/, read once per call): a GraphDef that carries megabytes of constants is slow to
    load, because TensorFlow copies it for every signature it prunes and Grappler walks those
    constants again when each function is first called. Smaller constants stay in the graph.
    """
    import tensorflow as tf
    from tensorflow.core.framework import graph_pb2
    v1 = tf.compat.v1
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    # the asset path constants hold the path the model was exported from; point them at the
    # source's copy so that the builder copies it (a load feeds the staged path instead)
    by_node = {name.split(":")[0]: path for name, path in frozen.assets.items()}
    for node in gd.node:
        if node.name in by_node:
            node.attr["value"].tensor.CopyFrom(
                tf.make_tensor_proto(by_node[node.name].encode(), dtype=tf.string))
    weights = _weights_to_placeholders(gd, min_variable_elements, set(
        n.split(":")[0] for n in frozen.fetch_names()))
    graph = tf.Graph()
    with graph.as_default():
        feeds, input_map, inits = {}, {}, []
        for i, (name, value) in enumerate(sorted(weights.items())):
            initial = v1.placeholder(value.dtype, value.shape, name=f"weight_{i}_initial")
            var = v1.Variable(initial, name=f"weight_{i}", trainable=False, use_resource=True)
            feeds[initial] = value
            input_map[f"{name}:0"] = var.value()
            inits.append(var.initializer)
        tf.graph_util.import_graph_def(gd, input_map=input_map or None, name="")
        # the internal builder: the public one logs a TF1 deprecation warning per tensor
        from tensorflow.python.saved_model.utils_impl import (
            build_tensor_info_internal as build)
        sig_map = {}
        for name, s in frozen.signatures.items():
            sig_map[name] = v1.saved_model.signature_def_utils.build_signature_def(
                inputs={k: build(graph.get_tensor_by_name(t)) for k, t in s.inputs.items()},
                outputs={k: build(graph.get_tensor_by_name(t)) for k, t in s.outputs.items()},
                method_name=s.method)
        assets = [graph.get_tensor_by_name(name) for name in frozen.assets]
        main_op = graph.get_operation_by_name(frozen.init_op) if frozen.init_op else None
        with v1.Session(graph=graph) as sess:
            if inits:
                sess.run(inits, feed_dict=feeds)
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                sess, [_SERVE], signature_def_map=sig_map, assets_collection=assets or None,
                main_op=main_op, strip_default_attrs=True)
            builder.save()
    return len(weights)


def _weights_to_placeholders(graph_def, min_elements: int, keep: set[str]) -> dict:
    """Large floating-point constants of the top-level graph turned into placeholders (in
    place), so that import_graph_def can map them to variables; returns {name: value}."""
    import tensorflow as tf
    floats = {t.as_datatype_enum for t in (tf.float32, tf.float16, tf.bfloat16, tf.float64)}
    out = {}
    for node in graph_def.node:
        if node.op != "Const" or node.name in keep or node.attr["dtype"].type not in floats:
            continue
        dims = node.attr["value"].tensor.tensor_shape.dim
        if int(np.prod([d.size for d in dims])) < min_elements:
            continue
        out[node.name] = tf.make_ndarray(node.attr["value"].tensor)
        shape = node.attr["value"].tensor.tensor_shape
        node.op = "Placeholder"
        del node.attr["value"]
        node.attr["shape"].shape.CopyFrom(shape)
    return out


def write_record(export_dir: str, record: dict) -> str:
    path = os.path.join(export_dir, RECORD_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(record, fh, indent=2, sort_keys=True)
        fh.write("\n")
    return path


def read_optimization(saved_model_dir: str) -> dict | None:
    """The optimize command's record in a SavedModel (local or gs://), or None when the model
    was not written by it (or the record is unreadable)."""
    from apache_beam.io.filesystems import FileSystems
    path = FileSystems.join(saved_model_dir.rstrip("/"), *RECORD_FILE.split(os.sep))
    try:
        if not FileSystems.exists(path):
            return None
        with FileSystems.open(path) as fh:
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
