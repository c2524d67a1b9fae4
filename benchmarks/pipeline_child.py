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
model call), i.e. without start-up. `startup_s` = first prediction - process spawn - TF import.

`--cli`: the job as a user or a scheduler runs it instead, `python -m pipeline ARGS` with nothing
imported ahead (TensorFlow is imported where the command line imports it), timed from spawn to
exit by the parent (`process_wall_s`); `main_returned_s` is when the command's `main()`
returned, so `process_wall_s - main_returned_s` is the interpreter's exit.
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import threading  # noqa: E402

__all__ = ["main"]


def _cli(pargs: list[str], spawned: float) -> dict:
    import sys
    import pipeline.__main__ as cli
    sys.argv = ["pipeline"] + pargs  # as the command line sees it (any measured commit)
    code = cli.main()
    return {"kind": "cli", "argv": pargs, "exit_code": code,
            "main_returned_s": round(time.time() - spawned, 3)}


def _run(pargs: list[str], spawned: float) -> dict:
    t = time.time()
    import tensorflow  # noqa: F401
    tf_import = time.time() - t
    t = time.time()
    import apache_beam  # noqa: F401
    from benchmarks.common import cpu_seconds
    from pipeline import run as prun
    from transforms import predict
    beam_import = time.time() - t

    calls = {"first": None, "first_n": 0, "last": None}
    lock = threading.Lock()
    original = predict.PredictDoFn._call

    def timed_call(self, serialized):
        out = original(self, serialized)
        now = time.time()
        with lock:
            if calls["first"] is None:
                calls["first"], calls["first_n"] = now, len(serialized)
            calls["last"] = now
        return out

    predict.PredictDoFn._call = timed_call
    cpu0 = cpu_seconds()
    t_run = time.time()
    _, plan = prun.run(pargs)
    t_end = time.time()
    cpu = cpu_seconds() - cpu0
    summary = prun.read_summary(plan.output_dir) or {}
    records = summary.get("predicted", 0)
    run_s = t_end - t_run
    out = {
        "kind": "pipeline", "argv": pargs,
        "records_in": summary.get("records_in"), "records": records,
        "errors": summary.get("errors"),
        "tf_import_s": round(tf_import, 3), "beam_import_s": round(beam_import, 3),
        "run_s": round(run_s, 3), "cpu_s": round(cpu, 3),
        "cpu_us_per_record": cpu / records * 1e6 if records else None,
        "e2e_eps": records / run_s if run_s else None,
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
        })
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline_child")
    parser.add_argument("--cli", action="store_true",
                        help="run `python -m pipeline`'s main() instead of pipeline.run.run()")
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    from benchmarks.common import child_args, write_result
    args = child_args(parser, argv)
    spawned = args.spawned or T_START
    pargs = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    out = (_cli if args.cli else _run)(pargs, spawned)
    write_result(args.result, out)
    return out.get("exit_code", 0)


if __name__ == "__main__":
    raise SystemExit(main())
