"""(b) This pipeline, measured in a fresh process: `pipeline.run.run(argv)` end to end.

Timeline recorded (wall clock, seconds since the parent spawned this process):
    tf_import_s      `import tensorflow` (done first, explicitly, so it is measured alone)
    beam_import_s    `import apache_beam` + the pipeline's modules
    run()            plan (match inputs, load + warm up the model), build the graph, run on the
                     FnApiRunner, finalize outputs; `run_s` is its wall time
    first_pred_s     when the first model call on real data returned (in-process runner only:
                     `PredictDoFn._call` is wrapped to note the time; the warm-up call made
                     while planning is not counted). Not available in multi-process mode.

Throughput: `e2e_eps` = records / run_s (everything after the imports: planning, model load,
graph construction, reading, parsing, predicting, writing, metrics, finalize);
`steady_eps` = (records - those of the first model call) / (end of run() - end of the first
model call), i.e. without start-up.
`startup_s` = first prediction - process spawn - TF import (issue 4's start-up definition).
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import threading  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--spawned", type=float, default=None)
    parser.add_argument("--prototype", default="",
                        help="comma-separated benchmarks.prototypes variants to install")
    parser.add_argument("--tf_intra", type=int, default=0,
                        help="set TF intra-op threads right after importing TF (the pipeline's "
                             "own --tf_intra_op_threads comes too late in-process: the "
                             "launcher has already started TF's runtime)")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    spawned = args.spawned or T_START
    pargs = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args

    t = time.time()
    import tensorflow  # noqa: F401
    tf_import = time.time() - t
    if args.tf_intra:
        tensorflow.config.threading.set_intra_op_parallelism_threads(args.tf_intra)
    t = time.time()
    import apache_beam  # noqa: F401
    from pipeline import run as prun
    from transforms import predict
    beam_import = time.time() - t

    calls = {"first": None, "first_n": 0, "last": None, "n": 0, "records": 0}
    lock = threading.Lock()
    original = predict.PredictDoFn._call

    def timed_call(self, serialized):
        out = original(self, serialized)
        now = time.time()
        with lock:
            if calls["first"] is None:
                calls["first"], calls["first_n"] = now, len(serialized)
            calls["last"] = now
            calls["n"] += 1
            calls["records"] += len(serialized)
        return out

    predict.PredictDoFn._call = timed_call

    from benchmarks.common import cpu_seconds
    cpu0 = cpu_seconds()
    inject = {}
    if args.prototype:
        from benchmarks.prototypes import apply
        inject = apply(args.prototype.split(","))
    t_run = time.time()
    _, plan = prun.run(pargs, **inject)
    t_end = time.time()
    cpu = cpu_seconds() - cpu0
    summary = prun.read_summary(plan.output_dir) or {}
    records = summary.get("predicted", 0)
    run_s = t_end - t_run
    out = {
        "kind": "pipeline", "argv": pargs,
        "records_in": summary.get("records_in"), "records": records,
        "errors": summary.get("errors"), "accounted": summary.get("accounted"),
        "tf_import_s": round(tf_import, 3), "beam_import_s": round(beam_import, 3),
        "imports_done_s": round(t_run - spawned, 3),
        "run_s": round(run_s, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_record": cpu / records * 1e6 if records else None,
        "e2e_eps": records / run_s if run_s else None,
        "summary_eps": summary.get("examples_per_second"),
        "model_calls": summary.get("model_calls"),
        "mean_model_us_per_example": summary.get("mean_us_per_example"),
        "latency_ms": summary.get("latency_ms"),
    }
    if calls["first"] is not None:
        steady = t_end - calls["first"]
        out.update({
            "first_pred_s": round(calls["first"] - spawned, 3),
            "run_to_first_pred_s": round(calls["first"] - t_run, 3),
            "startup_s": round(calls["first"] - spawned - tf_import, 3),
            "last_pred_to_end_s": round(t_end - calls["last"], 3),
            # the records of the first call were scored before `first`: not in the steady part
            "steady_eps": (records - calls["first_n"]) / steady
            if steady > 0 and records > calls["first_n"] else None,
            "observed_calls": calls["n"],
        })
    from benchmarks.common import write_result
    write_result(args.result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
