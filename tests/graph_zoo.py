"""Models that are not an ordinary SavedModel, built offline with TensorFlow's own tools, each
with the original model it came from (the independent reference of every test):

- `build_frozen_estimator`: a TF1 Estimator-style graph (string placeholder -> the v1
  `ParseExample` op -> dense, hashed and sparse features -> heads) saved twice from one
  session: as a SavedModel with a `predict` signature (the original), and frozen with
  `tf.compat.v1.graph_util.convert_variables_to_constants` into `graph.pb`. `country` goes
  through a vocabulary lookup table with its keys in the graph (KeyValueTensorInitializer, as
  `categorical_column_with_vocabulary_list` builds it), so the graph is frozen with
  `init_all_tables` among its output nodes; `graph_no_init.pb` is the same graph frozen
  without it. (A vocabulary *file* would be a path outside the frozen graph.)
- `build_frozen_tf2`: a TF2 `tf.function` over named raw tensors (float32 [None,3], int64
  [None], string [None]) with variables, frozen with `convert_variables_to_constants_v2`; its
  inputs and outputs are written to the sidecar `graph.pb.json`. A second function parses
  serialized tf.Examples (`ParseExampleV2`) and calls the first: `parsing.pb` (+ sidecar).
  The originals are the unfrozen functions, saved as the SavedModel's `serving_default` and
  `parsing` signatures.
- `build_keras2_style_savedmodel`: a SavedModel that `tf.saved_model.load` cannot revive the
  way a TF <= 2.15 tf.keras export saved with its optimizer fails without Keras 2: a TF2 module
  with a parsing signature is saved, then its object graph (`SavedObjectGraph` in
  saved_model.pb) gets the optimizer a Keras 2 export holds: a user object registered as
  `_tf_keras_optimizer` with Adam-style `m`/`v` slot variables of the model's variables.
  Reviving slot variables calls `optimizer.add_slot`, which the generic `_UserObject` that
  stands in for an unregistered class does not have. The signatures and the checkpoint are
  untouched; an unmodified copy is kept as the original.

Session fixtures at the bottom (`pytest_plugins = ["tests.graph_zoo"]`).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

# --- a frozen TF1 Estimator-style graph ---------------------------------------------------------
FROZEN_FEATURES = {
    # name: (kind, dtype, shape, default), written out independently of transforms.feature_spec
    "age": ("fixed", "float32", [1], None),          # required
    "hours": ("fixed", "float32", [1], [40.0]),
    "country": ("fixed", "string", [1], [""]),       # vocabulary list, one OOV bucket
    "vec": ("fixed", "float32", [3], [0.0, 0.0, 0.0]),
    "tags": ("varlen", "string", None, None),
    "clicks": ("varlen", "int64", None, None),
}
FROZEN_SPEC_JSON = {  # what `describe` must print for it
    "age": {"kind": "fixed", "dtype": "float32", "shape": [1]},
    "clicks": {"kind": "varlen", "dtype": "int64"},
    "country": {"kind": "fixed", "dtype": "string", "shape": [1], "default": [""]},
    "hours": {"kind": "fixed", "dtype": "float32", "shape": [1], "default": [40.0]},
    "tags": {"kind": "varlen", "dtype": "string"},
    "vec": {"kind": "fixed", "dtype": "float32", "shape": [3], "default": [0.0, 0.0, 0.0]},
}
COUNTRIES = ["de", "fr", "us"]  # the vocabulary list; other countries are out of vocabulary
# NAME:TENSOR pairs of the frozen estimator graph, as a user passes them
FROZEN_INPUTS = "examples:input_example_tensor:0"
FROZEN_OUTPUTS = ("score:head/score:0,logits:head/logits:0,class_ids:head/class_ids:0,"
                  "classes:head/classes:0")


def _parse_example_v1(serialized, features: dict) -> dict:
    """What TF 1.x's parse_example built: the v1 `ParseExample` op with key constants."""
    import tensorflow as tf
    sparse = [(k, v) for k, v in sorted(features.items()) if v[0] == "varlen"]
    dense = [(k, v) for k, v in sorted(features.items()) if v[0] == "fixed"]
    defaults = [tf.constant([] if d is None else d, dtype=t) for _, (_, t, _, d) in dense]
    si, sv, ss, dv = tf.raw_ops.ParseExample(
        serialized=serialized, names=tf.constant([], tf.string),
        sparse_keys=[tf.constant(k) for k, _ in sparse],
        dense_keys=[tf.constant(k) for k, _ in dense], dense_defaults=defaults,
        sparse_types=[v[1] for _, v in sparse], dense_shapes=[v[2] for _, v in dense])
    out = {k: value for (k, _), value in zip(dense, dv)}
    for i, (k, _) in enumerate(sparse):
        out[k] = tf.SparseTensor(si[i], sv[i], ss[i])
    return out


def build_frozen_estimator(root: str, seed: int = 21) -> dict:
    """{"graph": root/graph.pb, "graph_no_init": root/graph_no_init.pb, "saved_model":
    root/saved_model (the original)}."""
    import tensorflow as tf
    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        f = _parse_example_v1(serialized, FROZEN_FEATURES)

        def var(name, shape):
            return v1.get_variable(name, initializer=rng.normal(0, 0.5, shape).astype(
                np.float32))
        vocab = v1.lookup.StaticHashTable(v1.lookup.KeyValueTensorInitializer(
            tf.constant(COUNTRIES), tf.range(len(COUNTRIES), dtype=tf.int64)), -1)
        country = vocab.lookup(tf.reshape(f["country"], [-1]))
        country = tf.where(country < 0, tf.constant(len(COUNTRIES), tf.int64), country)
        tags = f["tags"]  # hashed
        tag_ids = tf.SparseTensor(tags.indices, tf.strings.to_hash_bucket_fast(tags.values, 8),
                                  tags.dense_shape)
        tag_emb = v1.nn.safe_embedding_lookup_sparse(var("tag_emb", (8, 2)), tag_ids,
                                                     combiner="mean")
        clicks = tf.sparse.reduce_sum(tf.SparseTensor(
            f["clicks"].indices, tf.cast(f["clicks"].values, tf.float32),
            f["clicks"].dense_shape), axis=1)
        dense = tf.concat([f["age"] / 50.0, f["hours"] / 40.0, f["vec"],
                           tf.math.log1p(clicks)[:, None],
                           tf.nn.embedding_lookup(var("country_emb", (len(COUNTRIES) + 1, 2)),
                                                  country),
                           tf.reshape(tag_emb, [-1, 2])], axis=1)
        hidden = tf.nn.relu(tf.matmul(dense, var("w1", (10, 4))) + var("b1", (4,)))
        with tf.name_scope("head"):
            logits = tf.identity(tf.matmul(hidden, var("w2", (4, 1))) + var("b2", (1,)),
                                 name="logits")
            score = tf.sigmoid(logits, name="score")
            class_ids = tf.cast(score[:, 0] > 0.5, tf.int64, name="class_ids")
            classes = tf.gather(tf.constant(["no", "yes"]), class_ids, name="classes")
        heads = {"score": score, "logits": logits, "class_ids": class_ids, "classes": classes}
        tables_init = v1.tables_initializer()  # named init_all_tables
        with v1.Session(graph=graph) as sess:
            sess.run([v1.global_variables_initializer(), tables_init])
            saved = os.path.join(root, "saved_model")
            builder = v1.saved_model.Builder(saved)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING], signature_def_map={
                    "predict": v1.saved_model.signature_def_utils.predict_signature_def(
                        {"examples": serialized}, heads)}, main_op=tables_init)
            builder.save()
            outputs = [f"head/{n}" for n in heads]
            frozen = v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), outputs + [tables_init.name])
            no_init = v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), outputs)
    paths = {}
    for name, graph_def in (("graph", frozen), ("graph_no_init", no_init)):
        paths[name] = os.path.join(root, f"{name}.pb")
        with open(paths[name], "wb") as fh:
            fh.write(graph_def.SerializeToString())
    return {**paths, "saved_model": saved}


def frozen_rows(n: int, seed: int = 0) -> list[dict]:
    """Logical rows for the frozen estimator graph; None = absent feature."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"id": f"g{seed}-{i}", "age": float(np.float32(rng.uniform(18, 90)))}
        if rng.random() < 0.8:
            row["hours"] = float(np.float32(rng.normal(40, 10)))
        if rng.random() < 0.8:
            row["country"] = str(rng.choice(["de", "fr", "us", "br"]))
        if rng.random() < 0.7:
            row["vec"] = [float(np.float32(v)) for v in rng.normal(0, 1, 3)]
        k = int(rng.integers(0, 4))
        if k:
            row["tags"] = [str(w) for w in rng.choice(["red", "blue", "caf\u00e9", "x"], k)]
        k = int(rng.integers(0, 3))
        if k:
            row["clicks"] = [int(v) for v in rng.integers(0, 1000, k)]
        rows.append(row)
    return rows


# --- a frozen TF2 function over raw tensors, with a sidecar --------------------------------------
def build_frozen_tf2(root: str, seed: int = 23) -> dict:
    """{"graph": root/graph.pb, "parsing": root/parsing.pb (each + .json), "saved_model": the
    unfrozen original}."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)
    rng = np.random.default_rng(seed)

    class Raw(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(rng.normal(0, 0.7, (3, 2)).astype(np.float32))
            self.emb = tf.Variable(rng.normal(0, 0.7, (7, 2)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="n"),
                                      tf.TensorSpec([None], tf.string, name="word")])
        def raw(self, x, n, word):
            h = tf.matmul(x, self.w) + tf.gather(self.emb, tf.strings.to_hash_bucket_fast(
                word, 7)) + tf.cast(tf.math.floormod(n, 5), tf.float32)[:, None] * 0.1
            probs = tf.nn.softmax(h)
            return {"probs": probs, "top": tf.argmax(probs, axis=1) + n}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def parsing(self, examples):
            f = tf.io.parse_example(examples, {
                "x": tf.io.FixedLenFeature([3], tf.float32, default_value=[0.0, 0.0, 0.0]),
                "n": tf.io.FixedLenFeature([], tf.int64),
                "word": tf.io.FixedLenFeature([], tf.string, default_value="none")})
            return self.raw(f["x"], f["n"], f["word"])

    module = Raw()
    saved = os.path.join(root, "saved_model")
    tf.saved_model.save(module, saved, signatures={"serving_default": module.raw,
                                                   "parsing": module.parsing})
    out = {"saved_model": saved}
    for name, function, args in (("graph", module.raw, ["x", "n", "word"]),
                                 ("parsing", module.parsing, ["examples"])):
        fn = function.get_concrete_function()
        frozen = convert_variables_to_constants_v2(fn)
        path = out[name] = os.path.join(root, f"{name}.pb")
        with open(path, "wb") as fh:
            fh.write(frozen.graph.as_graph_def().SerializeToString())
        # the frozen function's own tensor names: inputs are its placeholders (named after
        # the arguments), outputs its output tensors, in the order of the sorted output names
        # (the order nest flattens a dict in)
        inputs = {arg: t.name for arg, t in zip(args, frozen.inputs)}
        outputs = {k: t.name for k, t in zip(sorted(fn.structured_outputs), frozen.outputs)}
        with open(path + ".json", "w") as fh:
            json.dump({"inputs": inputs, "outputs": outputs}, fh)
    return out


def tf2_raw_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"r{seed}-{i}", "x": [float(np.float32(v)) for v in rng.normal(0, 1, 3)],
             "n": int(rng.integers(-10**12, 10**12)),
             "word": str(rng.choice(["apple", "pear", "\u00fcber"]))} for i in range(n)]


# --- a SavedModel whose objects cannot be revived (Keras 2 optimizer) ----------------------------
KERAS2_FEATURES = {
    "x": ("fixed", "float32", [2], None),
    "k": ("fixed", "int64", [1], [0]),
}


def build_keras2_style_savedmodel(root: str, seed: int = 29) -> dict:
    """{"model": the SavedModel that fails revival, "original": the unmodified copy}."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    rng = np.random.default_rng(seed)
    spec = {"x": tf.io.FixedLenFeature([2], tf.float32),
            "k": tf.io.FixedLenFeature([1], tf.int64, default_value=[0])}

    class Dense(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(rng.normal(0, 1, (2, 3)).astype(np.float32),
                                      name="kernel")
            self.bias = tf.Variable(rng.normal(0, 1, (3,)).astype(np.float32), name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, spec)
            logits = (tf.matmul(f["x"], self.kernel) + self.bias
                      + tf.cast(f["k"], tf.float32) * 0.25)
            return {"probs": tf.nn.softmax(logits), "label": tf.argmax(logits, axis=1)}

    module = Dense()
    original = os.path.join(root, "original")
    tf.saved_model.save(module, original, signatures={"serving_default": module.serve})
    model = os.path.join(root, "keras2")
    shutil.copytree(original, model)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(model, "saved_model.pb"), "rb") as fh:
        proto.ParseFromString(fh.read())
    graph = proto.meta_graphs[0].object_graph_def
    variables = [i for i, node in enumerate(graph.nodes) if node.HasField("variable")]
    assert len(variables) == 2, "expected the module's kernel and bias"
    optimizer_id = len(graph.nodes)
    optimizer = graph.nodes.add()
    optimizer.user_object.identifier = "_tf_keras_optimizer"
    optimizer.user_object.version.producer = 1
    optimizer.user_object.version.min_consumer = 1
    for var_id in variables:
        for slot_name in ("m", "v"):  # Adam's slots, as tf.keras saved them
            slot_id = len(graph.nodes)
            slot = graph.nodes.add()
            slot.CopyFrom(graph.nodes[var_id])
            slot.variable.name = f"{graph.nodes[var_id].variable.name}/{slot_name}"
            ref = optimizer.slot_variables.add()
            ref.original_variable_node_id = var_id
            ref.slot_name = slot_name
            ref.slot_variable_node_id = slot_id
    child = graph.nodes[0].children.add()
    child.local_name = "optimizer"
    child.node_id = optimizer_id
    with open(os.path.join(model, "saved_model.pb"), "wb") as fh:
        fh.write(proto.SerializeToString())
    return {"model": model, "original": original}


def keras2_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"id": f"k{seed}-{i}", "x": [float(np.float32(v)) for v in rng.normal(0, 2, 2)]}
        if rng.random() < 0.7:
            row["k"] = int(rng.integers(-3, 4))
        rows.append(row)
    return rows


# --- session fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def frozen_estimator(tmp_path_factory):
    return build_frozen_estimator(str(tmp_path_factory.mktemp("frozen_estimator")))


@pytest.fixture(scope="session")
def frozen_tf2(tmp_path_factory):
    return build_frozen_tf2(str(tmp_path_factory.mktemp("frozen_tf2")))


@pytest.fixture(scope="session")
def keras2_style(tmp_path_factory):
    return build_keras2_style_savedmodel(str(tmp_path_factory.mktemp("keras2")))
