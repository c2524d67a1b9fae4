"""The embedded demo: a small tabular SavedModel and data it generates itself.

`build_demo_model` exports a 13-feature model (8 numeric, 3 integer ids, 2 strings) with two
hidden layers (256 by default) through `transforms.export`, so `serving_default` is a parsing
signature and `predict_raw` takes named tensors. `write_demo_data` writes the same random rows
as TFRecord shards (optionally gzip) and CSV shards, with an `id` column to join on.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from transforms.feature_spec import Feature, FeatureSpec

__all__ = ["NUMERIC", "IDS", "STRINGS", "COUNTRIES", "DEVICES", "demo_spec", "demo_dtypes",
           "build_demo_model", "demo_rows", "write_tfrecords", "write_csv", "write_demo_data"]

NUMERIC = [f"n{i}" for i in range(8)]
IDS = ["c0", "c1", "c2"]
STRINGS = ["country", "device"]
COUNTRIES = ["de", "fr", "us", "jp", "br", "in", "ng", "ca"]
DEVICES = ["phone", "tablet", "desktop"]


def demo_spec() -> FeatureSpec:
    feats = [Feature(n, "fixed", "float32", (), (0.0,)) for n in NUMERIC]
    feats += [Feature(n, "fixed", "int64", (), (0,)) for n in IDS]
    feats += [Feature("country", "fixed", "string", (), ("",)),
              Feature("device", "fixed", "string", ())]  # required: no default
    return FeatureSpec(feats)


def build_demo_model(export_dir: str, hidden: tuple[int, ...] = (256, 256), seed: int = 7) -> str:
    """Export the demo model; outputs: score [None], logits [None,1], label [None] string,
    bucket [None] int64, embedding [None,4]."""
    import tensorflow as tf
    from transforms.export import export_parsing_model

    rng = np.random.default_rng(seed)
    n_in = len(NUMERIC) + 8 * len(IDS) + 8 * len(STRINGS)

    class DemoModel(tf.Module):
        def __init__(self):
            super().__init__()
            self.emb = tf.Variable(rng.normal(0, 0.5, (64, 8)).astype(np.float32))
            sizes = [n_in, *hidden]
            self.layers = [(tf.Variable(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)),
                            tf.Variable(np.zeros(b, np.float32))) for a, b in zip(sizes, sizes[1:])]
            self.out_w = tf.Variable(rng.normal(0, 1 / np.sqrt(sizes[-1]),
                                                (sizes[-1], 5)).astype(np.float32))
            self.labels = tf.constant(["low", "high"])

        def __call__(self, f):
            numeric = tf.stack([tf.reshape(f[n], [-1]) for n in NUMERIC], axis=1)
            parts = [numeric]
            for n in IDS:
                parts.append(tf.nn.embedding_lookup(self.emb, tf.math.floormod(
                    tf.reshape(f[n], [-1]), 64)))
            for n in STRINGS:
                bucket = tf.strings.to_hash_bucket_fast(tf.reshape(f[n], [-1]), 64)
                parts.append(tf.nn.embedding_lookup(self.emb, bucket))
            x = tf.concat(parts, axis=1)
            for w, b in self.layers:
                x = tf.nn.relu(tf.matmul(x, w) + b)
            out = tf.matmul(x, self.out_w)
            logits = out[:, :1]
            score = tf.sigmoid(logits[:, 0])
            label_id = tf.cast(score > 0.5, tf.int64)
            return {"score": score, "logits": logits,
                    "label": tf.gather(self.labels, label_id),
                    "bucket": tf.math.floormod(tf.reshape(f["c0"], [-1]), 10) + label_id * 100,
                    "embedding": out[:, 1:5]}

    module = DemoModel()
    return export_parsing_model(module, demo_spec(), export_dir, module=module)


def demo_rows(n: int, seed: int = 1, start_id: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    numeric = rng.normal(0, 1, (n, len(NUMERIC))).astype(np.float32)
    ids = rng.integers(0, 100_000, (n, len(IDS)))
    countries = rng.integers(0, len(COUNTRIES), n)
    devices = rng.integers(0, len(DEVICES), n)
    rows = []
    for i in range(n):
        row = {"id": f"r{start_id + i}"}
        row.update({name: float(numeric[i, j]) for j, name in enumerate(NUMERIC)})
        row.update({name: int(ids[i, j]) for j, name in enumerate(IDS)})
        row["country"] = COUNTRIES[countries[i]]
        row["device"] = DEVICES[devices[i]]
        rows.append(row)
    return rows


def demo_dtypes() -> dict:
    """{column: dtype} of the demo rows: the key, then every feature."""
    d = {"id": "string"}
    d.update({f.name: f.dtype for f in demo_spec().values()})
    return d


def write_tfrecords(rows: list[dict], path: str, gzip: bool = False) -> str:
    import tensorflow as tf
    from transforms.examples import encode_rows
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip else "")
    with tf.io.TFRecordWriter(path, options) as w:
        for i in range(0, len(rows), 8192):
            for record in encode_rows(rows[i:i + 8192], demo_dtypes()):
                w.write(record)
    return path


def write_csv(rows: list[dict], path: str) -> str:
    columns = list(demo_dtypes())
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(row.get(c)) for c in columns])
    return path


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(float(np.float32(v)))
    return str(v)


def write_demo_data(data_dir: str, rows: int = 40_000, shards: int = 4, seed: int = 1) -> dict:
    """Write `rows` rows as TFRecord shards (half of them gzip) and as CSV shards."""
    os.makedirs(data_dir, exist_ok=True)
    per = -(-rows // shards)
    out = {"tfrecord": [], "csv": []}
    for s in range(shards):
        part = demo_rows(min(per, rows - s * per), seed=seed + s, start_id=s * per)
        gz = s % 2 == 1
        name = f"part-{s:05d}.tfrecord" + (".gz" if gz else "")
        out["tfrecord"].append(write_tfrecords(part, os.path.join(data_dir, name), gzip=gz))
        out["csv"].append(write_csv(part, os.path.join(data_dir, f"part-{s:05d}.csv")))
    return out
