"""Models and data for the benchmarks, built once and cached under a data dir.

Layout (everything is reused when its `.done` marker exists):
    models/small/1700000000/   pipeline.demo model, hidden (256, 256)
    models/heavy/1700000000/   the same features, hidden (2048, 2048, 2048)
    data/rows-N/               pipeline.demo.write_demo_data(rows=N, shards=4): 4 TFRecord
                               shards (shards 1 and 3 gzip) and 4 CSV shards, same rows; and
                               4 Parquet shards of those rows (typed columns, pyarrow's
                               default row groups), made from the CSV shards
    scaling/base/              4 plain TFRecord + 4 CSV shards of SCALING_UNIT/4 rows each
    scaling/rows-N/            4 shards, each the concatenation of N/SCALING_UNIT copies of
                               the base shard (TFRecord frames concatenate; CSV without the
                               repeated header), so large inputs cost seconds to make
    split/rows-N/              one plain TFRecord file and one CSV file of the same N rows
                               (unique ids), written SPLIT_CHUNK rows at a time: the large
                               single files that the pipeline reads in ranges (--split_bytes)

Run as a child: `python -m benchmarks.data --result F --root DIR --rows 100000 --rows 20000
--models small,heavy --scaling 100000,2000000 --split 1000000`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

__all__ = ["MODELS", "SCALING_UNIT", "model_base", "data_dir", "scaling_dir", "scaling_rows",
           "split_dir", "split_files", "patterns", "csv_to_parquet", "resolve_model",
           "csv_column_defaults",
           "ensure_model", "ensure_data", "ensure_scaling", "ensure_split"]

MODELS = {"small": (256, 256), "heavy": (2048, 2048, 2048)}
SHARDS = 4
SCALING_UNIT = 50_000  # rows in scaling/base (all shards together)
SPLIT_CHUNK = 100_000  # rows generated at a time for the single large files of split/
VERSION = "1700000000"


def model_base(root: str, name: str) -> str:
    return os.path.join(root, "models", name)


def data_dir(root: str, rows: int) -> str:
    return os.path.join(root, "data", f"rows-{rows}")


def scaling_dir(root: str, rows: int) -> str:
    return os.path.join(root, "scaling", f"rows-{scaling_rows(rows)}")


def scaling_rows(rows: int) -> int:
    """Scaling inputs are whole multiples of SCALING_UNIT."""
    return max(1, round(rows / SCALING_UNIT)) * SCALING_UNIT


def split_dir(root: str, rows: int) -> str:
    return os.path.join(root, "split", f"rows-{rows}")


def split_files(root: str, rows: int) -> dict:
    """{format: path} of the one large file per input format in split_dir."""
    directory = split_dir(root, rows)
    return {"tfrecord": os.path.join(directory, "part-00000.tfrecord"),
            "csv": os.path.join(directory, "part-00000.csv")}


def patterns(directory: str) -> dict:
    return {"tfrecord": os.path.join(directory, "part-*.tfrecord*"),
            "csv": os.path.join(directory, "part-*.csv"),
            "parquet": os.path.join(directory, "part-*.parquet")}


def csv_to_parquet(csv_path: str, parquet_path: str) -> str:
    """The demo rows of a CSV shard as a Parquet file: each column typed as its feature (the
    key a string), an empty cell a null (an absent value, as in the CSV)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from pipeline.demo import demo_dtypes
    arrow = {"float32": pa.float32(), "int64": pa.int64(), "string": pa.string()}
    types = {name: arrow[dtype] for name, dtype in demo_dtypes().items()}
    table = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(
        column_types=types, strings_can_be_null=True))
    pq.write_table(table, parquet_path)
    return parquet_path


def resolve_model(model: str) -> str:
    """The newest numeric version under an export base dir (or the dir itself)."""
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        return model
    versions = [d for d in os.listdir(model) if d.isdigit()]
    return os.path.join(model, max(versions, key=int))


def csv_column_defaults(header: list[str]) -> list:
    """`tf.io.decode_csv` record defaults for the demo data's columns: the demo spec's default,
    none for a required feature, string for a column that is not a feature (the id)."""
    import tensorflow as tf
    from pipeline.demo import demo_spec
    spec = demo_spec()
    defaults = []
    for name in header:
        f = spec[name] if name in spec else None
        dtype = tf.string if f is None else tf.dtypes.as_dtype(f.dtype)
        defaults.append(tf.constant([], dtype) if f is None or f.default is None
                        else tf.constant([f.default[0]], dtype))
    return defaults


def _done(path: str, meta: dict) -> bool:
    marker = os.path.join(path, ".done")
    if not os.path.exists(marker):
        return False
    with open(marker) as fh:
        return json.load(fh) == meta


def _mark(path: str, meta: dict) -> None:
    with open(os.path.join(path, ".done"), "w") as fh:
        json.dump(meta, fh)


def ensure_model(root: str, name: str) -> str:
    from pipeline import demo
    base = model_base(root, name)
    meta = {"hidden": list(MODELS[name])}
    if not _done(base, meta):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        demo.build_demo_model(os.path.join(base, VERSION), hidden=MODELS[name])
        _mark(base, meta)
    return base


def ensure_data(root: str, rows: int) -> str:
    from pipeline import demo
    path = data_dir(root, rows)
    meta = {"rows": rows, "shards": SHARDS, "parquet": True}
    if not _done(path, meta):
        shutil.rmtree(path, ignore_errors=True)
        written = demo.write_demo_data(path, rows=rows, shards=min(SHARDS, rows))
        for csv_path in written["csv"]:
            csv_to_parquet(csv_path, csv_path[:-len(".csv")] + ".parquet")
        _mark(path, meta)
    return path


def ensure_scaling(root: str, rows: int) -> str:
    from pipeline import demo
    base = os.path.join(root, "scaling", "base")
    meta = {"unit": SCALING_UNIT, "shards": SHARDS}
    per = SCALING_UNIT // SHARDS
    if not _done(base, meta):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        for s in range(SHARDS):
            part = demo.demo_rows(per, seed=100 + s, start_id=s * per)
            demo.write_tfrecords(part, os.path.join(base, f"part-{s:05d}.tfrecord"))
            demo.write_csv(part, os.path.join(base, f"part-{s:05d}.csv"))
        _mark(base, meta)
    rows = scaling_rows(rows)
    path = scaling_dir(root, rows)
    copies = rows // SCALING_UNIT
    meta = {"rows": rows, "copies": copies}
    if not _done(path, meta):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        for s in range(SHARDS):
            for ext in ("tfrecord", "csv"):
                with open(os.path.join(base, f"part-{s:05d}.{ext}"), "rb") as fh:
                    blob = fh.read()
                header, body = (blob.split(b"\n", 1) if ext == "csv" else (None, blob))
                with open(os.path.join(path, f"part-{s:05d}.{ext}"), "wb") as out:
                    if header is not None:
                        out.write(header + b"\n")
                    for _ in range(copies):
                        out.write(body)
        _mark(path, meta)
    return path


def ensure_split(root: str, rows: int) -> str:
    """One TFRecord file and one CSV file of `rows` rows each (ids r0..r{rows-1}), built
    SPLIT_CHUNK rows at a time (each chunk its own seed) and appended, so memory stays flat."""
    from pipeline import demo
    path = split_dir(root, rows)
    meta = {"rows": rows, "chunk": SPLIT_CHUNK}
    if not _done(path, meta):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        files = split_files(root, rows)
        chunk_path = os.path.join(path, "chunk")
        for k, start in enumerate(range(0, rows, SPLIT_CHUNK)):
            part = demo.demo_rows(min(SPLIT_CHUNK, rows - start), seed=200 + k, start_id=start)
            for ext, write in (("tfrecord", demo.write_tfrecords), ("csv", demo.write_csv)):
                write(part, chunk_path)
                with open(chunk_path, "rb") as fh:
                    blob = fh.read()
                if ext == "csv" and start:  # one header, at the top
                    blob = blob.split(b"\n", 1)[1]
                with open(files[ext], "ab") as out:
                    out.write(blob)
        os.remove(chunk_path)
        _mark(path, meta)
    return path


def main(argv=None) -> int:
    from benchmarks.common import child_args, write_result
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data")
    parser.add_argument("--root", required=True)
    parser.add_argument("--models", default="small,heavy")
    parser.add_argument("--rows", type=int, action="append", default=[])
    parser.add_argument("--scaling", default="")
    parser.add_argument("--split", type=int, action="append", default=[],
                        help="rows of the single large files (split/rows-N)")
    args = child_args(parser, argv)
    start = time.time()
    out = {"models": {}, "data": {}, "scaling": {}, "split": {}}
    for name in filter(None, args.models.split(",")):
        out["models"][name] = ensure_model(args.root, name)
    for rows in args.rows:
        out["data"][str(rows)] = ensure_data(args.root, rows)
    for rows in filter(None, args.scaling.split(",")):
        out["scaling"][str(scaling_rows(int(rows)))] = ensure_scaling(args.root, int(rows))
    for rows in args.split:
        out["split"][str(rows)] = ensure_split(args.root, rows)
    out["seconds"] = round(time.time() - start, 1)
    write_result(args.result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
