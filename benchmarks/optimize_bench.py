"""`python -m benchmarks.optimize_bench`: optimized vs original model, measured in one run.

Models: the heavy demo model (`benchmarks.data.ensure_model(root, "heavy")`, hidden
(2048, 2048, 2048)) as it is and with float16 weights, and the Estimator-style TF1 export of
the test zoo (vocabulary asset, sparse features). Each is optimized with
`pipeline.optimize.optimize` on a sample of --batch realistic records (the demo rows; the
zoo's Estimator rows) and the figures it measures are tabulated:
- model call: median ms of --calls calls per model on the same batch, after two warm-up
  calls each, the two models called in turn (so machine load hits both alike);
- load + first call: `tf.saved_model.load` to the end of the first call, median of three
  loads of each model in turn, in the same process after TensorFlow has started;
- size on disk of the SavedModel dir.
Ratios are optimized / original. TensorFlow already runs Grappler on every function when it is
first called, so the lossless model-call ratio is expected near 1: the freeze removes variable
reads and the load-time function restoring, not arithmetic.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

__all__ = ["main"]


def _estimator_model(root: str) -> str:
    """The zoo's Estimator-style export base dir, built once under root."""
    from tests import model_zoo as zoo
    base = os.path.join(root, "models", "estimator")
    done = os.path.join(base, ".done")
    if not os.path.exists(done):
        shutil.rmtree(base, ignore_errors=True)
        zoo.build_estimator_export(base, "v1")
        open(done, "w").close()
    return os.path.join(base, "export", "exporter")


def _samples(work: str, batch: int) -> dict:
    from pipeline import demo
    from tests import model_zoo as zoo
    heavy = demo.write_tfrecords(demo.demo_rows(batch, seed=5),
                                 os.path.join(work, "heavy-sample.tfrecord"))
    est_dtypes = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}
    est = zoo.write_tfrecord(os.path.join(work, "estimator-sample.tfrecord"),
                             zoo.estimator_rows(batch, seed=5), est_dtypes)
    return {"heavy": heavy, "estimator": est}


def _row(label: str, quantize: str, record: dict, seconds: float) -> list[str]:
    f = record["figures"]
    (lat_a, lat_b), (load_a, load_b), (size_a, size_b) = (
        f["latency_ms"], f["load_s"], f["size_bytes"])
    diffs = [d for ds in record["outputs"].values() for d in ds if d["max_rel"] is not None]
    worst = max((d["max_abs"] for d in diffs), default=0.0)
    return [label, quantize, str(f["batch"]), f"{lat_a:.1f}", f"{lat_b:.1f}",
            f"{lat_b / lat_a:.2f}", f"{load_a:.2f}", f"{load_b:.2f}",
            f"{load_b / load_a:.2f}", f"{size_a / 1e6:.2f}", f"{size_b / 1e6:.2f}",
            f"{size_b / size_a:.2f}", f"{worst:.2g}", f"{seconds:.0f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optimize_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "batch-predict-bench-data"))
    parser.add_argument("--batch", type=int, default=4096, help="records per model call")
    parser.add_argument("--calls", type=int, default=7, help="timed calls per model")
    parser.add_argument("--skip_float16", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from benchmarks.data import ensure_model
    from pipeline.optimize import optimize

    work = tempfile.mkdtemp(prefix="optimize-bench-")
    try:
        heavy = ensure_model(args.data_dir, "heavy")
        estimator = _estimator_model(args.data_dir)
        samples = _samples(work, args.batch)
        runs = [("heavy MLP (2048x3)", heavy, "heavy", "none"),
                ("Estimator-style TF1", estimator, "estimator", "none")]
        if not args.skip_float16:
            runs.insert(1, ("heavy MLP (2048x3)", heavy, "heavy", "float16"))
        rows = []
        for i, (label, model, sample, quantize) in enumerate(runs):
            start = time.monotonic()
            # force: the benchmark reports a slower or lossy result instead of refusing it
            record = optimize(model, os.path.join(work, f"out-{i}"), sample=samples[sample],
                              quantize=quantize, force=True, batch=args.batch,
                              calls=args.calls, say=lambda _: None)
            rows.append(_row(label, quantize, record, time.monotonic() - start))
            print(f"measured {label} quantize={quantize}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = ["model", "quantize", "batch", "call ms orig", "call ms opt", "call ratio",
              "load s orig", "load s opt", "load ratio", "MB orig", "MB opt", "size ratio",
              "max abs diff", "optimize s"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nmodel call: median of {args.calls} per model on the same batch, after warm-up, "
          "interleaved; load: load + first call, after TensorFlow's start; ratios "
          "optimized/original")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
