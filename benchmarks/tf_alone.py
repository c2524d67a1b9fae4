"""(a) TensorFlow alone: the upper bound the pipeline is compared with.

TFRecord input, `--mode serialized` (default, the issue's definition): per-compression
`tf.data.TFRecordDataset`s (gzip detected from the first bytes, like the pipeline) ->
`batch(4096)` -> `prefetch` -> the model's `serving_default` signature (which runs
`tf.io.parse_example` itself) -> `.numpy()` of every output. `--mode parsed`: `parse_example`
in a parallel `tf.data` map, then the raw-tensor signature `predict_raw` (parsing overlaps the
model call on the other core).

CSV input: `TextLineDataset` per file (header skipped) -> `batch(4096)` -> `tf.io.decode_csv` in
a parallel map (column defaults from the demo spec; a required column has no default) ->
`predict_raw`. One vectorised decode per batch; `CsvDataset`/`make_csv_dataset` produce one
record at a time before batching (chosen against on that ground, not measured).

Nothing is written: this is read -> parse -> predict only. Reported: `steady_eps` (after the
first batch: the number compared against), and `e2e_eps` (from `tf.saved_model.load` on), both
up to the last batch's outputs; the tf.data iterator's teardown after it is
`iterator_teardown_s` (see `measure`).
"""
from __future__ import annotations

import argparse
import glob
import os
import time

T_START = time.time()


def _resolve(model: str) -> str:
    if os.path.exists(os.path.join(model, "saved_model.pb")):
        return model
    versions = [d for d in os.listdir(model) if d.isdigit()]
    return os.path.join(model, max(versions, key=int))


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def tfrecord_dataset(files: list[str], batch: int):
    import tensorflow as tf
    plain = [f for f in files if not _is_gzip(f)]
    gz = [f for f in files if _is_gzip(f)]
    parts = []
    if plain:
        parts.append(tf.data.TFRecordDataset(plain, num_parallel_reads=len(plain)))
    if gz:
        parts.append(tf.data.TFRecordDataset(gz, compression_type="GZIP",
                                             num_parallel_reads=len(gz)))
    ds = parts[0]
    for p in parts[1:]:
        ds = ds.concatenate(p)
    return ds.batch(batch)


def csv_dataset(files: list[str], batch: int):
    import tensorflow as tf
    from pipeline.demo import demo_spec
    with open(files[0]) as fh:
        header = fh.readline().strip().split(",")
    spec = demo_spec()
    defaults = []
    for name in header:
        f = spec[name] if name in spec else None
        dtype = tf.string if f is None else tf.dtypes.as_dtype(f.dtype)
        if f is None or f.default is None:
            defaults.append(tf.constant([], dtype))  # required
        else:
            defaults.append(tf.constant([f.default[0]], dtype))
    keep = [n for n in header if n in spec]

    @tf.autograph.experimental.do_not_convert
    def decode(lines):
        cols = tf.io.decode_csv(lines, defaults)
        return {n: c for n, c in zip(header, cols) if n in keep}

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TextLineDataset(f).skip(1), cycle_length=len(files),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def measure(model_dir: str, files: list[str], fmt: str, mode: str, batch: int) -> dict:
    import tensorflow as tf
    from pipeline.demo import demo_spec
    from benchmarks.common import cpu_seconds
    cpu0 = cpu_seconds()
    t_load = time.time()
    model = tf.saved_model.load(_resolve(model_dir))
    load_s = time.time() - t_load
    if fmt == "csv":
        ds = csv_dataset(files, batch)
        fn = model.signatures["predict_raw"]
        call = lambda b: fn(**b)
    elif mode == "parsed":
        spec = demo_spec().to_tf()
        parse = tf.autograph.experimental.do_not_convert(
            lambda b: tf.io.parse_example(b, spec))
        ds = tfrecord_dataset(files, batch).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        fn = model.signatures["predict_raw"]
        call = lambda b: fn(**b)
    else:
        ds = tfrecord_dataset(files, batch)
        fn = model.signatures["serving_default"]
        call = lambda b: fn(examples=b)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    n = 0
    first_n = None
    t_first = None
    calls = 0
    batches = iter(ds)
    for b in batches:
        out = {k: v.numpy() for k, v in call(b).items()}
        n += len(out["score"])
        calls += 1
        if t_first is None:
            t_first, first_n = time.time(), n
    t_end = time.time()  # the last predictions are in hand
    cpu = cpu_seconds() - cpu0
    # Deleting a tf.data iterator waits for its background threads; TF 2.21 sometimes sits
    # idle here, with no CPU used, for a time that grows with the run (~2 s after a 3 s run,
    # ~14 s after a 27 s one: a sleeping thread whose period doubles, by the look of it
    # tf.data's autotuning loop). Nothing is predicted meanwhile, so it is timed apart, not
    # counted against TF alone's throughput.
    del batches
    teardown_s = time.time() - t_end
    steady_n = n - first_n
    return {
        "records": n, "calls": calls, "load_s": round(load_s, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_record": cpu / n * 1e6 if n else None,
        "e2e_s": round(t_end - t_load, 3),
        "iterator_teardown_s": round(teardown_s, 3),
        # CPU-seconds per second: ~ the core count when TF keeps every core busy
        "cores_busy": round(cpu / (t_end - t_load), 2) if t_end > t_load else None,
        "e2e_eps": n / (t_end - t_load),
        # one batch only: no steady state to speak of, fall back to end to end
        "steady_eps": steady_n / (t_end - t_first) if steady_n else n / (t_end - t_load),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--spawned", type=float, default=None)
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True, help="glob")
    parser.add_argument("--format", choices=["tfrecord", "csv"], required=True)
    parser.add_argument("--mode", choices=["serialized", "parsed"], default="serialized")
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--intra", type=int, default=0,
                        help="TF intra-op threads (0: TensorFlow's default, one per core)")
    parser.add_argument("--inter", type=int, default=0,
                        help="TF inter-op threads (0: TensorFlow's default)")
    args = parser.parse_args(argv)
    t = time.time()
    import tensorflow
    tf_import = time.time() - t
    tensorflow.config.threading.set_intra_op_parallelism_threads(args.intra)
    tensorflow.config.threading.set_inter_op_parallelism_threads(args.inter)
    files = sorted(glob.glob(args.input))
    out = measure(args.model, files, args.format, args.mode, args.batch_size)
    out.update({"kind": "tf_alone", "format": args.format, "mode": args.mode,
                "intra": args.intra, "inter": args.inter,
                "tf_import_s": round(tf_import, 3)})
    from benchmarks.common import write_result
    write_result(args.result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
