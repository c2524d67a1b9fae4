"""The model zoo: tiny SavedModels of every kind users bring, built offline, plus their data.

Each builder writes a real SavedModel with TensorFlow's own APIs, the way the original tool
did (never through `transforms.export`), so the pipeline meets them as a user's model:

- `build_estimator_export`: a TF1 graph in the shape Estimator exported (tf.compat.v1:
  string placeholder -> ParseExample (v1 op, as TF 1.x wrote it) or ParseExampleV2 -> model ->
  SavedModelBuilder), the four usual signatures, sparse features, a vocabulary file in
  `assets/` read by a hash table at load, under `export/<name>/<timestamp>/`.
- `build_estimator_raw_export`: a TF1 graph with raw placeholders (no parsing), one of unknown
  rank, like `build_raw_serving_input_receiver_fn` exports.
- `build_tf2_module`: a `tf.Module` with a parsing signature (fixed, ragged, var-len features)
  and a raw-tensor signature with several named inputs of mixed dtypes; outputs of mixed dtypes
  and shapes (bool, int32, int64 beyond 2**53, float64, non-UTF-8 strings, [None], [None,1],
  [None,k]).
- `build_keras_export` / `build_keras_parsing_export`: a Keras 3 functional model exported with
  `model.export()`, and saved with `tf.saved_model.save` and an explicit parsing signature.
- `build_missing_kernel_model`: loads, then fails its first call inside TensorFlow
  (`BoostedTreesBucketize` has an op definition but no kernel in this TensorFlow).

`example_bytes()` serializes logical rows with TensorFlow's own `tf.train.Example` protos (not
the pipeline's encoder) and `call_signature()` calls `loaded.signatures[...]` directly: the
independent reference every test compares the pipeline with.

Session fixtures at the bottom build each model once per test session (registered with
`pytest_plugins = ["tests.model_zoo"]` in the test modules that use them).
"""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest

# --- the Estimator-style TF1 export -----------------------------------------------------------
COUNTRIES = ["de", "fr", "us", "jp"]          # the vocabulary file shipped in assets/
ESTIMATOR_CLASSES = ["no", "yes"]
ESTIMATOR_FEATURES = {
    # name: (kind, dtype, shape, default) -- written out independently of transforms.feature_spec
    "age": ("fixed", "float32", [1], None),           # numeric_column without default: required
    "hours": ("fixed", "float32", [1], [40.0]),
    "dept_id": ("fixed", "int64", [1], [-1]),
    "country": ("fixed", "string", [1], [""]),        # vocabulary lookup, OOV bucket
    "vec": ("fixed", "float32", [3], [0.0, 0.0, 0.0]),
    "tags": ("varlen", "string", None, None),         # sparse, hashed, mean embedding
    "clicks": ("varlen", "int64", None, None),        # sparse, summed
}
ESTIMATOR_VERSIONS = (1600000000, 1600000600)         # the newest one must be chosen


def _tf_features(features: dict) -> dict:
    import tensorflow as tf
    out = {}
    for name, (kind, dtype, shape, default) in features.items():
        dt = tf.dtypes.as_dtype(dtype)
        if kind == "fixed":
            out[name] = tf.io.FixedLenFeature(shape, dt, default_value=default)
        elif kind == "varlen":
            out[name] = tf.io.VarLenFeature(dt)
        else:
            out[name] = tf.io.RaggedFeature(dt)
    return out


def _parse_example_v1(serialized, features: dict) -> dict:
    """The graph TF 1.x's `parse_example` built: the v1 `ParseExample` op, one key constant per
    feature, empty defaults for required features and reshaped defaults for the others."""
    import tensorflow as tf
    sparse = [(k, v) for k, v in sorted(features.items()) if v[0] == "varlen"]
    dense = [(k, v) for k, v in sorted(features.items()) if v[0] == "fixed"]
    with tf.name_scope("ParseExample"):
        defaults = []
        for key, (_, dtype, shape, default) in dense:
            if default is None:
                defaults.append(tf.constant([], dtype=dtype, name=f"key_{key}"))
            else:
                value = tf.constant(default, dtype=dtype, name=f"key_{key}")
                defaults.append(tf.reshape(value, shape))
        si, sv, ss, dv = tf.raw_ops.ParseExample(
            serialized=serialized, names=tf.constant([], tf.string),
            sparse_keys=[tf.constant(k) for k, _ in sparse],
            dense_keys=[tf.constant(k) for k, _ in dense],
            dense_defaults=defaults, sparse_types=[v[1] for _, v in sparse],
            dense_shapes=[v[2] for _, v in dense])
    out = {k: value for (k, _), value in zip(dense, dv)}
    for i, (k, _) in enumerate(sparse):
        out[k] = tf.SparseTensor(si[i], sv[i], ss[i])
    return out


def _estimator_graph(serialized, feats: dict, vocab_path: str, seed: int):
    """The model behind every signature of the Estimator-style export; returns its heads."""
    import tensorflow as tf
    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)

    def var(name, shape, scale=0.5):
        return v1.get_variable(name, initializer=rng.normal(0, scale, shape).astype(np.float32))

    n = tf.shape(serialized)[0]
    asset = tf.constant(vocab_path, name="country_vocab_path")
    v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
    table = v1.lookup.StaticHashTable(v1.lookup.TextFileInitializer(
        asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
        tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
    country = tf.reshape(feats["country"], [-1])
    cid = table.lookup(country)
    cid = tf.where(cid < 0, tf.constant(len(COUNTRIES), tf.int64), cid)  # one OOV bucket
    country_emb = tf.nn.embedding_lookup(var("country_emb", (len(COUNTRIES) + 1, 2)), cid)
    dept = tf.math.floormod(tf.reshape(feats["dept_id"], [-1]), 8)
    dept_emb = tf.nn.embedding_lookup(var("dept_emb", (8, 2)), dept)
    tags = feats["tags"]
    tag_ids = tf.SparseTensor(tags.indices, tf.strings.to_hash_bucket_fast(tags.values, 16),
                              tags.dense_shape)
    tag_emb = v1.nn.safe_embedding_lookup_sparse(var("tag_emb", (16, 2)), tag_ids,
                                                 combiner="mean")
    clicks = tf.sparse.reduce_sum(tf.SparseTensor(
        feats["clicks"].indices, tf.cast(feats["clicks"].values, tf.float32),
        feats["clicks"].dense_shape), axis=1)
    dense = tf.concat([feats["age"] / 50.0, feats["hours"] / 40.0, feats["vec"],
                       tf.math.log1p(tf.abs(clicks))[:, None], country_emb, dept_emb,
                       tf.reshape(tag_emb, [-1, 2])], axis=1)
    hidden = tf.nn.relu(tf.matmul(dense, var("w1", (12, 6))) + var("b1", (6,), 0.1))
    logits = tf.matmul(hidden, var("w2", (6, 1))) + var("b2", (1,), 0.1)
    logistic = tf.sigmoid(logits)
    probabilities = tf.concat([1.0 - logistic, logistic], axis=1)
    class_ids = tf.argmax(probabilities, axis=1)
    classes_table = tf.constant(ESTIMATOR_CLASSES)
    return {
        "logits": logits,                                               # float32 [None,1]
        "logistic": logistic,                                           # float32 [None,1]
        "probabilities": probabilities,                                 # float32 [None,2]
        "class_ids": class_ids[:, None],                                # int64 [None,1]
        "classes": tf.gather(classes_table, class_ids)[:, None],        # string [None,1]
        "all_class_ids": tf.tile(tf.range(2)[None, :], [n, 1]),         # int32 [None,2]
        "all_classes": tf.tile(classes_table[None, :], [n, 1]),         # string [None,2]
        "country_hash": tf.strings.to_hash_bucket_fast(country, 2 ** 62),  # int64 [None]
        "logit64": tf.cast(logits[:, 0], tf.float64) / 3.0,            # float64 [None]
    }


def build_estimator_savedmodel(export_dir: str, parse_op: str = "v1", seed: int = 1,
                               vocab_dir: str | None = None) -> str:
    """One Estimator-style SavedModel version; the vocabulary file lives only in its assets/."""
    import tempfile

    import tensorflow as tf
    v1 = tf.compat.v1
    vocab_dir = vocab_dir or tempfile.mkdtemp(prefix="vocab-")
    vocab_path = os.path.join(vocab_dir, "country_vocab.txt")
    with open(vocab_path, "w") as fh:
        fh.write("\n".join(COUNTRIES) + "\n")
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        if parse_op == "v1":
            feats = _parse_example_v1(serialized, ESTIMATOR_FEATURES)
        else:
            feats = v1.io.parse_example(serialized, _tf_features(ESTIMATOR_FEATURES))
        heads = _estimator_graph(serialized, feats, vocab_path, seed)
        sig = v1.saved_model.signature_def_utils
        classification = sig.classification_signature_def(
            serialized, heads["all_classes"], heads["probabilities"])
        regression = sig.regression_signature_def(serialized, heads["logistic"])
        predict = sig.predict_signature_def({"examples": serialized}, heads)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": classification,
                                   "classification": classification,
                                   "regression": regression, "predict": predict},
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                main_op=tf.group(v1.tables_initializer(), v1.local_variables_initializer()),
                strip_default_attrs=True)
            builder.save()
    os.remove(vocab_path)  # loading must find the vocabulary in the SavedModel's assets/
    return export_dir


def build_estimator_export(model_dir: str, parse_op: str = "v1") -> dict:
    """`<model_dir>/export/exporter/<ts>/` for two versions (different weights) plus an
    unfinished `temp-<ts>` dir, as Estimator's exporters left them."""
    base = os.path.join(model_dir, "export", "exporter")
    os.makedirs(base, exist_ok=True)
    for seed, ts in enumerate(ESTIMATOR_VERSIONS, start=1):
        build_estimator_savedmodel(os.path.join(base, str(ts)), parse_op, seed=seed)
    os.makedirs(os.path.join(base, "temp-1600000900"))
    return {"base": base, "newest": os.path.join(base, str(ESTIMATOR_VERSIONS[-1])),
            "oldest": os.path.join(base, str(ESTIMATOR_VERSIONS[0])),
            "version": str(ESTIMATOR_VERSIONS[-1])}


def estimator_rows(n: int, seed: int = 0) -> list[dict]:
    """Logical rows for the Estimator model; None = absent feature."""
    rng = np.random.default_rng(seed)
    words = ["red", "green", "blue", "x", "y", "zz", "caf\u00e9"]
    rows = []
    for i in range(n):
        row = {"id": f"e{seed}-{i}", "age": float(np.float32(rng.uniform(18, 90)))}
        if rng.random() < 0.8:
            row["hours"] = float(np.float32(rng.normal(40, 10)))
        if rng.random() < 0.8:
            row["dept_id"] = int(rng.integers(-5, 10**12))
        if rng.random() < 0.85:  # some out of vocabulary
            row["country"] = str(rng.choice(COUNTRIES + ["br", "xx"]))
        if rng.random() < 0.7:
            row["vec"] = [float(np.float32(v)) for v in rng.normal(0, 1, 3)]
        k = int(rng.integers(0, 4))
        if k:
            row["tags"] = [str(w) for w in rng.choice(words, k)]
        k = int(rng.integers(0, 3))
        if k:
            row["clicks"] = [int(v) for v in rng.integers(0, 1000, k)]
        rows.append(row)
    return rows


# --- a TF1 export with raw placeholders (no parsing) -----------------------------------------
def build_estimator_raw_export(export_dir: str, seed: int = 3) -> str:
    """Signature `serving_default` with inputs age float32[None,1], country string[None],
    n_items int32[None] and extra float32 of unknown rank; output score float32[None,1]."""
    import tensorflow as tf
    v1 = tf.compat.v1
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        age = v1.placeholder(tf.float32, [None, 1], name="age")
        country = v1.placeholder(tf.string, [None], name="country")
        n_items = v1.placeholder(tf.int32, [None], name="n_items")
        extra = v1.placeholder(tf.float32, None, name="extra")  # unknown rank, as TF1 allowed
        w = v1.get_variable("w", initializer=rng.normal(0, 1, 4).astype(np.float32))
        bucket = tf.cast(tf.strings.to_hash_bucket_fast(country, 5), tf.float32)
        z = (age[:, 0] * w[0] / 50.0 + bucket * w[1] + tf.cast(n_items, tf.float32) * w[2]
             + tf.reshape(extra, [-1]) * w[3])
        score = tf.sigmoid(z)[:, None]
        predict = v1.saved_model.signature_def_utils.predict_signature_def(
            {"age": age, "country": country, "n_items": n_items, "extra": extra},
            {"score": score})
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": predict})
            builder.save()
    return export_dir


# --- a TF2 tf.Module: parsing and raw-tensor signatures, outputs of every dtype ---------------
TF2_FEATURES = {
    "x": ("fixed", "float32", [3], [0.0, 0.0, 0.0]),
    "n": ("fixed", "int64", [], None),
    "word": ("fixed", "string", [], ["none"]),
    "hist": ("ragged", "float32", None, None),
    "ids": ("varlen", "int64", None, None),
}
TF2_LABELS = ["alpha", "beta", "gamma"]


def build_tf2_module(export_dir: str, seed: int = 5) -> str:
    """`serving_default` parses TF2_FEATURES; `raw` takes x float32[None,3], n int64[None],
    word string[None], hist_sum float64[None], ids_count int32[None]."""
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    tf_spec = _tf_features(TF2_FEATURES)
    labels = tf.constant(TF2_LABELS)

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(rng.normal(0, 0.7, (3, 3)).astype(np.float32))
            self.emb = tf.Variable(rng.normal(0, 0.7, (16, 3)).astype(np.float32))
            self.v = tf.Variable(rng.normal(0, 0.7, (2, 3)).astype(np.float32))

        def heads(self, x, n, word, hist_sum, ids_count):
            extra = tf.stack([tf.cast(hist_sum, tf.float32),
                              tf.cast(ids_count, tf.float32)], axis=1)
            h = (tf.matmul(x, self.w) + tf.gather(self.emb, tf.strings.to_hash_bucket_fast(
                word, 16)) + tf.matmul(extra, self.v) * 0.1
                 + tf.cast(tf.math.floormod(n, 7), tf.float32)[:, None] * 0.05)
            probs = tf.nn.softmax(h)
            top = tf.argmax(probs, axis=1)
            top2 = tf.math.top_k(probs, 2).indices
            odd = tf.equal(tf.math.floormod(n, 2), 1)
            return {
                "score": probs[:, 0],                                      # float32 [None]
                "probs": probs,                                            # float32 [None,3]
                "top_id": top + n * 1_000_003 + 2 ** 60,                   # int64 [None]
                "label": tf.gather(labels, top),                           # string [None]
                "labels_top2": tf.gather(labels, top2),                    # string [None,2]
                "flag": probs[:, 0] > 0.3,                                 # bool [None]
                "score64": tf.cast(h[:, :1], tf.float64) / 3.0,            # float64 [None,1]
                "count": tf.cast(ids_count, tf.int32) * 10 + tf.cast(top, tf.int32),  # int32
                "tag": tf.strings.join([word, tf.where(odd, b"\xff", b"")]),  # bytes [None]
            }

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, tf_spec)
            return self.heads(f["x"], f["n"], f["word"], tf.reduce_sum(f["hist"], axis=1),
                              tf.sparse.reduce_sum(tf.sparse.map_values(
                                  tf.ones_like, f["ids"]), axis=1))

        @tf.function(input_signature=[
            tf.TensorSpec([None, 3], tf.float32, name="x"),
            tf.TensorSpec([None], tf.int64, name="n"),
            tf.TensorSpec([None], tf.string, name="word"),
            tf.TensorSpec([None], tf.float64, name="hist_sum"),
            tf.TensorSpec([None], tf.int32, name="ids_count")])
        def raw(self, x, n, word, hist_sum, ids_count):
            return self.heads(x, n, word, hist_sum, ids_count)

    module = Scorer()
    tf.saved_model.save(module, export_dir,
                        signatures={"serving_default": module.serve, "raw": module.raw})
    return export_dir


def tf2_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"id": f"t{seed}-{i}", "n": int(rng.integers(-10**9, 10**9))}
        if rng.random() < 0.8:
            row["x"] = [float(np.float32(v)) for v in rng.normal(0, 1, 3)]
        if rng.random() < 0.8:
            row["word"] = str(rng.choice(["apple", "pear", "fig", "\u00fcber", "a b"]))
        k = int(rng.integers(0, 4))
        if k:
            row["hist"] = [float(np.float32(v)) for v in rng.normal(0, 2, k)]
        k = int(rng.integers(0, 3))
        if k:
            row["ids"] = [int(v) for v in rng.integers(-100, 10**12, k)]
        rows.append(row)
    return rows


def tf2_raw_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows for the `raw` signature: every input present (they are all required)."""
    rng = np.random.default_rng(seed)
    return [{"id": f"r{seed}-{i}",
             "x": [float(np.float32(v)) for v in rng.normal(0, 1, 3)],
             "n": int(rng.integers(-10**6, 10**6)),
             "word": str(rng.choice(["apple", "pear", "fig"])),
             "hist_sum": float(np.float32(rng.normal(0, 3))),
             "ids_count": int(rng.integers(0, 5))} for i in range(n)]


# --- Keras 3 ------------------------------------------------------------------------------------
KERAS_FEATURES = {
    "age": ("fixed", "float32", [1], None),
    "income": ("fixed", "float32", [1], [0.0]),
    "bucket": ("fixed", "int64", [1], [0]),
}


def _keras_model(seed: int = 11):
    import keras
    keras.utils.set_random_seed(seed)
    age = keras.Input((1,), name="age", dtype="float32")
    income = keras.Input((1,), name="income", dtype="float32")
    bucket = keras.Input((1,), name="bucket", dtype="int64")
    emb = keras.layers.Flatten()(keras.layers.Embedding(10, 2)(bucket))
    x = keras.layers.Concatenate()([age / 50.0, income / 1000.0, emb])
    h = keras.layers.Dense(4, activation="relu")(x)
    return keras.Model({"age": age, "income": income, "bucket": bucket},
                       {"prob": keras.layers.Dense(1, activation="sigmoid", name="prob")(h),
                        "scores": keras.layers.Dense(3, name="scores")(h)})


def build_keras_export(export_dir: str) -> str:
    """`model.export()`: `serving_default` takes age/income float32[None,1], bucket int64."""
    _keras_model().export(export_dir, format="tf_saved_model", verbose=False)
    return export_dir


def build_keras_parsing_export(export_dir: str) -> str:
    """`tf.saved_model.save` with an explicit parsing `serving_default` over KERAS_FEATURES."""
    import tensorflow as tf
    model = _keras_model()
    tf_spec = _tf_features(KERAS_FEATURES)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tf_example")])
    def serve(tf_example):
        out = model(tf.io.parse_example(tf_example, tf_spec))
        return {"prob": out["prob"], "scores": out["scores"]}

    tf.saved_model.save(model, export_dir, signatures={"serving_default": serve})
    return export_dir


def keras_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {"id": f"k{seed}-{i}", "age": float(np.float32(rng.uniform(18, 90)))}
        if rng.random() < 0.7:
            row["income"] = float(np.float32(rng.uniform(0, 5000)))
        if rng.random() < 0.7:
            row["bucket"] = int(rng.integers(0, 10))
        rows.append(row)
    return rows


# --- a model that loads, then fails its first call inside TensorFlow --------------------------
def build_missing_kernel_model(export_dir: str) -> str:
    """A TF1 boosted-trees-style export using `BoostedTreesBucketize`: the op is still defined
    (so the SavedModel loads) but this TensorFlow has no kernel for it."""
    import tensorflow as tf
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        feats = v1.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0])})
        buckets = tf.raw_ops.BoostedTreesBucketize(
            float_values=[tf.reshape(feats["x"], [-1])],
            bucket_boundaries=[tf.constant([0.0, 1.0, 2.0])])
        out = {"bucket": buckets[0]}
        predict = v1.saved_model.signature_def_utils.predict_signature_def(
            {"examples": serialized}, out)
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(
                sess, [v1.saved_model.tag_constants.SERVING],
                signature_def_map={"serving_default": predict})
            builder.save()
    return export_dir


# --- the independent reference: TF's own protos, the signature called directly ---------------
def example_bytes(rows: list[dict], dtypes: dict[str, str]) -> list[bytes]:
    """Serialize logical rows with `tf.train.Example` (None / missing key = absent feature)."""
    import tensorflow as tf
    out = []
    for row in rows:
        feats = {}
        for name, dtype in dtypes.items():
            value = row.get(name)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if dtype == "string":
                feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[v.encode("utf-8") for v in values]))
            elif dtype == "int64":
                feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            else:
                feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        out.append(tf.train.Example(features=tf.train.Features(feature=feats))
                   .SerializeToString())
    return out


def feature_dtypes(features: dict) -> dict[str, str]:
    return {name: f[1] for name, f in features.items()}


def call_signature(loaded, signature: str, **inputs) -> dict[str, np.ndarray]:
    """`loaded.signatures[signature](**inputs)` as numpy arrays."""
    import tensorflow as tf
    fn = loaded.signatures[signature]
    out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def call_parsing_signature(loaded, signature: str, rows: list[dict],
                           dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    fn = loaded.signatures[signature]
    (arg,) = fn.structured_input_signature[1]
    return call_signature(loaded, signature, **{arg: np.array(example_bytes(rows, dtypes),
                                                               dtype=object)})


# --- input files ------------------------------------------------------------------------------
def write_tfrecord(path: str, rows: list[dict], dtypes: dict[str, str]) -> str:
    import tensorflow as tf
    with tf.io.TFRecordWriter(path) as w:
        for record in example_bytes(rows, dtypes):
            w.write(record)
    return path


def csv_cell(value) -> str:
    """A CSV cell: '' for absent, '|' between the values of a list, floats as float32 repr."""
    if value is None:
        return ""
    if isinstance(value, list):
        return "|".join(csv_cell(v) for v in value)
    if isinstance(value, float):
        return repr(float(np.float32(value)))
    return str(value)


def write_csv(path: str, rows: list[dict], columns: list[str]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow([csv_cell(row.get(c)) for c in columns])
    return path


# --- session fixtures: each model built once per test session --------------------------------
@pytest.fixture(scope="session")
def estimator_v1(tmp_path_factory):
    """Estimator-style export whose graph uses the v1 ParseExample op (TF 1.x)."""
    return build_estimator_export(str(tmp_path_factory.mktemp("estimator_v1")), "v1")


@pytest.fixture(scope="session")
def estimator_v2(tmp_path_factory):
    """Estimator-style export whose graph uses ParseExampleV2 (TF 1.15+ / 2.x Estimator)."""
    return build_estimator_export(str(tmp_path_factory.mktemp("estimator_v2")), "v2")


@pytest.fixture(scope="session")
def estimator_raw(tmp_path_factory):
    return build_estimator_raw_export(str(tmp_path_factory.mktemp("est_raw") / "1"))


@pytest.fixture(scope="session")
def tf2_module(tmp_path_factory):
    return build_tf2_module(str(tmp_path_factory.mktemp("tf2") / "model"))


@pytest.fixture(scope="session")
def keras_export(tmp_path_factory):
    return build_keras_export(str(tmp_path_factory.mktemp("keras_export") / "model"))


@pytest.fixture(scope="session")
def keras_parsing(tmp_path_factory):
    return build_keras_parsing_export(str(tmp_path_factory.mktemp("keras_parse") / "model"))


@pytest.fixture(scope="session")
def missing_kernel_model(tmp_path_factory):
    return build_missing_kernel_model(str(tmp_path_factory.mktemp("bt") / "model"))


@pytest.fixture(scope="session")
def load():
    """tf.saved_model.load, cached per path (the reference side of every comparison)."""
    import tensorflow as tf
    cache = {}

    def _load(path):
        if path not in cache:
            cache[path] = tf.saved_model.load(path)
        return cache[path]
    return _load


# --- comparing prediction rows with the reference --------------------------------------------
def json_expected(value):
    """What a reference output value must look like in a JSON prediction row."""
    import base64
    if isinstance(value, np.ndarray):
        return [json_expected(v) for v in value]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# a few float32 ulps: a matmul or softmax over another batch size may round differently
CHUNKING_RTOL = 5e-7


def assert_value_matches(actual, expected, dtype, where: str, rtol: float = CHUNKING_RTOL):
    """`actual` (from JSON) equals the reference `expected` (numpy, one row) with its dtype
    honoured: ints exact and int-typed, bools bool-typed, bytes as UTF-8 or {"b64"}, floats
    exactly in their dtype (or within `rtol` where a test allows it)."""
    exp = json_expected(expected)
    if np.ndim(expected):
        assert isinstance(actual, list) and len(actual) == len(exp), (where, actual, exp)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_value_matches(a, e, dtype, f"{where}[{i}]", rtol)
        return
    kind = np.dtype(dtype).kind if dtype != object else "O"
    if kind == "b":
        assert isinstance(actual, bool) and actual == exp, (where, actual, exp)
    elif kind in "iu":
        assert isinstance(actual, int) and not isinstance(actual, bool) and actual == exp, \
            (where, actual, exp)
    elif kind == "f":
        assert isinstance(actual, float), (where, actual)
        # float32 is written as its shortest repr: read back as float32 it is the same value;
        # float64 keeps all its digits
        got = np.asarray(actual, dtype=np.dtype(dtype))
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=0, err_msg=where)
    else:
        assert actual == exp, (where, actual, exp)


def assert_rows_match(rows_by_key: dict, keys: list, expected: dict[str, np.ndarray],
                      rtol: float = CHUNKING_RTOL):
    """Every prediction row (by key) carries every reference output with its dtype."""
    assert sorted(rows_by_key) == sorted(keys)
    for i, key in enumerate(keys):
        row = rows_by_key[key]
        for name, values in expected.items():
            assert name in row, (key, name, sorted(row))
            assert_value_matches(row[name], values[i], values.dtype, f"{key}.{name}", rtol)


# the spec every Estimator-style export parses, as `describe` prints it (written by hand)
ESTIMATOR_SPEC_JSON = {
    "age": {"kind": "fixed", "dtype": "float32", "shape": [1]},
    "clicks": {"kind": "varlen", "dtype": "int64"},
    "country": {"kind": "fixed", "dtype": "string", "shape": [1], "default": [""]},
    "dept_id": {"kind": "fixed", "dtype": "int64", "shape": [1], "default": [-1]},
    "hours": {"kind": "fixed", "dtype": "float32", "shape": [1], "default": [40.0]},
    "tags": {"kind": "varlen", "dtype": "string"},
    "vec": {"kind": "fixed", "dtype": "float32", "shape": [3], "default": [0.0, 0.0, 0.0]},
}
