"""(a) TensorFlow alone: the upper bound the pipeline is compared with.

TFRecord input: per-compression `tf.data.TFRecordDataset`s (gzip detected from the first bytes,
like the pipeline) -> `batch(4096)` -> `prefetch` -> the model's `serving_default` signature
(which runs `tf.io.parse_example` itself) -> `.numpy()` of every output.

CSV input: `TextLineDataset` per file (header skipped) -> `batch(4096)` -> `tf.io.decode_csv` in
a parallel map (column defaults from the demo spec; a required column has no default) ->
`predict_raw`. One vectorised decode per batch; `CsvDataset`/`make_csv_dataset` produce one
record at a time before batching (chosen against on that ground, not measured).

Nothing is written: this is read -> parse -> predict only. Reported: `steady_eps` (after the
first batch: the number compared against), and `e2e_eps` (from `tf.saved_model.load` on), both
up to the last batch's outputs; the tf.data iterator's teardown after it is
`iterator_teardown_s` (see `measure`). `cores_busy` is CPU-seconds per wall second.
"""
from __future__ import annotations

import argparse
import glob
import time

__all__ = ["tfrecord_dataset", "csv_dataset", "measure"]


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def tfrecord_dataset(files: list[str], batch: int):
    import tensorflow as tf
    parts = []
    for compression in ("", "GZIP"):
        group = [f for f in files if _is_gzip(f) == bool(compression)]
        if group:
            parts.append(tf.data.TFRecordDataset(group, compression_type=compression,
                                                 num_parallel_reads=len(group)))
    ds = parts[0]
    for p in parts[1:]:
        ds = ds.concatenate(p)
    return ds.batch(batch)


def csv_dataset(files: list[str], batch: int):
    import tensorflow as tf
    from benchmarks.data import csv_column_defaults
    from pipeline.demo import demo_spec
    with open(files[0]) as fh:
        header = fh.readline().strip().split(",")
    defaults = csv_column_defaults(header)
    spec = demo_spec()

    @tf.autograph.experimental.do_not_convert
    def decode(lines):
        cols = tf.io.decode_csv(lines, defaults)
        return {n: c for n, c in zip(header, cols) if n in spec}

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TextLineDataset(f).skip(1), cycle_length=len(files),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def measure(model_dir: str, files: list[str], fmt: str, batch: int) -> dict:
    import tensorflow as tf
    from benchmarks.common import cpu_seconds
    from benchmarks.data import resolve_model
    cpu0 = cpu_seconds()
    t_load = time.time()
    model = tf.saved_model.load(resolve_model(model_dir))
    load_s = time.time() - t_load
    if fmt == "csv":
        ds = csv_dataset(files, batch)
        fn = model.signatures["predict_raw"]
        call = lambda b: fn(**b)  # noqa: E731
    else:
        ds = tfrecord_dataset(files, batch)
        fn = model.signatures["serving_default"]
        call = lambda b: fn(examples=b)  # noqa: E731
    n, calls, first_n, t_first = 0, 0, None, None
    batches = iter(ds.prefetch(tf.data.AUTOTUNE))
    for b in batches:
        out = {k: v.numpy() for k, v in call(b).items()}
        n += len(out["score"])
        calls += 1
        if t_first is None:
            t_first, first_n = time.time(), n
    t_end = time.time()  # the last predictions are in hand
    cpu = cpu_seconds() - cpu0
    # Deleting a tf.data iterator waits for its background threads; TF 2.21 sometimes sits
    # idle here, with no CPU used, for a time that grows with the run (a sleeping thread whose
    # period doubles, by the look of it tf.data's autotuning loop). Nothing is predicted
    # meanwhile, so it is timed apart, not counted against TF alone's throughput.
    del batches
    teardown_s = time.time() - t_end
    steady_n = n - first_n
    return {
        "records": n, "calls": calls, "load_s": round(load_s, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_record": cpu / n * 1e6 if n else None,
        "e2e_s": round(t_end - t_load, 3),
        "iterator_teardown_s": round(teardown_s, 3),
        "cores_busy": round(cpu / (t_end - t_load), 2) if t_end > t_load else None,
        "e2e_eps": n / (t_end - t_load),
        # one batch only: no steady state to speak of, fall back to end to end
        "steady_eps": steady_n / (t_end - t_first) if steady_n else n / (t_end - t_load),
    }


def main(argv=None) -> int:
    from benchmarks.common import child_args, write_result
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tf_alone")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="glob")
    parser.add_argument("--format", choices=["tfrecord", "csv"], required=True)
    parser.add_argument("--batch_size", type=int, default=4096)
    args = child_args(parser, argv)
    t = time.time()
    import tensorflow  # noqa: F401
    tf_import = time.time() - t
    out = measure(args.model, sorted(glob.glob(args.input)), args.format, args.batch_size)
    out.update({"kind": "tf_alone", "format": args.format, "tf_import_s": round(tf_import, 3)})
    write_result(args.result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
