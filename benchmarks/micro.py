"""Component micro-benchmarks behind the profile's suggestions, each A/B interleaved in one
process (so a loaded machine slows both sides alike): `python -m benchmarks.micro`.

Every case times the pipeline's current function and a prototype of the suggested change on
the same chunk (2048 records of the demo data, small model), and checks that both give the
same result where that is the claim. The prototypes live here, not in transforms/: they are
evidence for the suggestions, to be adopted (and tested) by whoever owns the code.
"""
from __future__ import annotations

import argparse
import glob
import itertools
import os
import re
import statistics
import tempfile
import time

import numpy as np
import orjson

from benchmarks import data as bdata

N = 2048


def timeit(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def ab(cases: dict, rounds: int = 7, reps: int = 20) -> dict:
    """Median seconds per call of each case, the cases interleaved round by round."""
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            times[k].append(timeit(fn, reps))
    return {k: statistics.median(v) for k, v in times.items()}


def show(title: str, res: dict, per: int = N) -> None:
    base = next(iter(res.values()))
    print(f"\n{title}")
    for k, v in res.items():
        print(f"  {k:<58} {v * 1e6 / per:8.2f} µs/record   {v / base:6.2f}x")


# --- prototype: columnar jsonl without per-row % formatting ------------------------------------
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def fast_jsonl(batch, key_field) -> bytes:
    """Byte-identical to transforms.format.to_jsonl (checked below), fewer per-row Python ops:
    2-D columns split once in C, ASCII-safe string columns used as they are (the quotes go into
    the constant pieces), rows assembled with one b''.join over zipped iterators."""
    from transforms import format as fmt
    streams, pending = [], b"{"
    for name, values in fmt.row_columns(batch, key_field):
        pending += orjson.dumps(name) + b":"
        frags = None
        if values.dtype == object and len(values):
            vals = values.tolist()
            if all(isinstance(v, bytes) for v in vals) and not _UNSAFE.search(b"".join(vals)):
                frags, pending = vals, pending + b'"'
        if frags is None:
            if values.dtype != object and values.ndim == 2 and len(values):
                inner = orjson.dumps(np.ascontiguousarray(values),
                                     option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
                frags = inner.replace(b"],[", b"]\n[").split(b"\n")
            else:
                frags = fmt.json_fragments(values)
            streams += [itertools.repeat(pending), frags]
            pending = b","
        else:
            streams += [itertools.repeat(pending), frags]
            pending = b'",'
    streams.append(itertools.repeat(pending[:-1] + b"}\n"))
    return b"".join(itertools.chain.from_iterable(zip(*streams)))[:-1]


def predict_cases(model_base: str, serialized: np.ndarray):
    import tensorflow as tf
    from transforms.model import open_model
    from transforms.predict import ModelConfig, PredictDoFn
    model = open_model(model_base, warm_up=True)
    cfg = ModelConfig(path=model.version.path, signature="serving_default", spec=model.spec,
                      key_field="id", key_dtype="string", keys_from_examples=True)
    key_parser = PredictDoFn(cfg, N)._build_key_parser()
    fn = model.loaded.signatures["serving_default"]
    arg = model.info.inputs[0].name
    key_spec = {"id": tf.io.FixedLenFeature([], tf.string, default_value="\x00")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def fused(x):  # one dispatch: the parsing signature + a cheap dense key parse
        out = dict(fn(**{arg: x}))
        out["__key"] = tf.io.parse_example(x, key_spec)["id"]
        return out

    def current():
        out = model.predict(serialized)
        values, has_key = key_parser(serialized)
        return out, values.numpy()[:, 0], has_key.numpy()

    def proposed():
        out = {k: v.numpy() for k, v in fused(tf.constant(serialized)).items()}
        keys = out.pop("__key")
        return out, keys, keys != b"\x00"

    a, b = current(), proposed()
    assert all(np.array_equal(a[0][k], b[0][k]) for k in a[0]) and np.array_equal(a[1], b[1])
    return {"current: model.predict + key parser (VarLen, sparse slice)": current,
            "model.predict alone (no key)": lambda: model.predict(serialized),
            "proposed: one tf.function, signature + FixedLen key": proposed}, model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__)
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                      "batch-predict-bench-data"))
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from transforms import format as fmt
    from transforms import metrics
    from transforms.predict import PredictionBatch
    base = bdata.ensure_model(args.data_dir, "small")
    ddir = bdata.ensure_data(args.data_dir, args.rows)
    tfr = sorted(glob.glob(os.path.join(ddir, "part-00000.tfrecord")))[0]
    serialized = np.array([r.numpy() for r in tf.data.TFRecordDataset(tfr).take(N)],
                          dtype=object)

    cases, model = predict_cases(base, serialized)
    show("predict: one chunk of 2048 serialized examples", ab(cases, args.rounds))

    outputs = model.predict(serialized)
    keys = tf.io.parse_example(serialized, {"id": tf.io.FixedLenFeature([], tf.string)}
                               )["id"].numpy()
    batch = PredictionBatch(np.full(N, tfr, dtype=object), np.arange(N), keys.astype(object),
                            outputs)
    assert fast_jsonl(batch, "id") == fmt.to_jsonl(batch, "id")
    show("format: one PredictionBatch (key + 5 outputs)", ab({
        "current: format.to_jsonl": lambda: fmt.to_jsonl(batch, "id"),
        "prototype: fast_jsonl (byte-identical)": lambda: fast_jsonl(batch, "id"),
        "format.to_csv (pyarrow), for scale": lambda: fmt.to_csv(batch, "id"),
    }, args.rounds))

    show("bookkeeping per chunk: shard counts", ab({
        "current: np.unique(shards.astype(str)) (predicted_events)":
            lambda: metrics.predicted_events(batch),
        "proposed: carry [(shard, count)] segments": lambda: [(tfr, N)],
    }, args.rounds))

    csv_cases(ddir, args.rounds)
    reader_cases(ddir, args.rounds)
    return 0


def csv_cases(ddir: str, rounds: int) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from pipeline.demo import demo_spec
    from transforms.examples import FeatureColumn, encode_examples
    from transforms.parse import csv_to_examples
    from transforms.read import iter_csv
    from transforms.records import CsvBatch
    spec = demo_spec()
    path = sorted(glob.glob(os.path.join(ddir, "part-00000.csv")))[0]
    with open(path, "rb") as fh:
        blob = b"".join(itertools.islice(fh, N + 1))  # header + N rows
    import io

    def current():
        rows, header = [], None
        for item in iter_csv(io.BytesIO(blob)):
            if item[0] == "header":
                header = item[1]
            elif item[0] == "ok":
                rows.append(item[3])
        batch = CsvBatch(path, header, rows, np.arange(len(rows)), np.arange(len(rows)) + 2)
        return csv_to_examples(batch, spec, "id")[0].serialized

    pa_types = {"float32": pa.float32(), "int64": pa.int64(), "string": pa.binary()}
    types = {f.name: pa_types[f.dtype] for f in spec.values()}
    types["id"] = pa.string()

    def proposed():
        table = pacsv.read_csv(io.BytesIO(blob), convert_options=pacsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False))
        cols = []
        for f in spec.values():
            col = table.column(f.name)
            present = ~np.asarray(col.is_null())
            fill = b"" if f.dtype == "string" else 0
            values = np.asarray(col.fill_null(fill).to_numpy(zero_copy_only=False))
            if f.dtype == "string":
                values = values.astype(object)
            cols.append(FeatureColumn(f.name, f.dtype, values, present.astype(np.int32),
                                      present))
        return encode_examples(cols, table.num_rows)

    assert np.array_equal(current(), proposed())
    show("CSV: 2048 rows -> serialized tf.Examples (read + convert + encode)", ab({
        "current: csv module rows + convert_column + encode": current,
        "prototype: pyarrow typed columns + encode (identical bytes)": proposed,
    }, rounds, reps=5))


def reader_cases(ddir: str, rounds: int) -> None:
    import tensorflow as tf
    from transforms.read import iter_tfrecord_batches
    path = sorted(glob.glob(os.path.join(ddir, "part-00000.tfrecord")))[0]
    n = sum(1 for _ in tf.data.TFRecordDataset(path))

    def current():
        with open(path, "rb") as fh:
            return sum(len(item[1]) for item in iter_tfrecord_batches(fh, N)
                       if item[0] == "ok")

    def tfdata():
        return sum(len(b.numpy()) for b in tf.data.TFRecordDataset(path).batch(N))

    show(f"TFRecord reader: one plain shard ({n:,} records)", ab({
        "current: iter_tfrecord_batches (Python framing, CRC32C)": current,
        "tf.data.TFRecordDataset.batch -> numpy (C++)": tfdata,
    }, rounds, reps=1), per=n)


if __name__ == "__main__":
    raise SystemExit(main())
