"""Where the pipeline's time goes, per stage, from a py-spy recording of one pipeline run.

    python -m benchmarks.profile --model small --format tfrecord --rows 300000
    python -m benchmarks.profile --analyze FILE.raw      # re-read a recording

Records `python -m benchmarks.pipeline_child` (a fresh process, in-process FnApiRunner) with
`py-spy record --idle --threads --format raw`, so every sample of the thread that runs the
bundles counts, including time spent blocked in TensorFlow's thread pool. py-spy is a dev tool,
not a dependency: `pip install py-spy` into the venv.

Each sample of the busiest thread is given to one stage: a few *contexts* are checked first
(imports, planning, graph construction, the worker's model load), then the stack is read from
the leaf towards the root and the first frame of one of our modules (or of Beam) decides.
TensorFlow, numpy, orjson and pyarrow frames are transparent: their time goes to the frame of
ours that called them (e.g. a TF kernel inside `LoadedModel.predict` is "model call").
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

from benchmarks import data as bdata
from benchmarks import common
from benchmarks.common import REPO, child_env, markdown_table

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)$")

# (stage, predicate on (func, file)) checked leaf -> root; first match wins
_WAITS = ("Condition.wait", "Event.wait", "Thread._wait_for_tstate_lock", "Future.result",
          "_worker", "SimpleQueue.get")
LEAF_RULES = [
    ("read: TFRecord framing / CSV reader (transforms/read.py)",
     lambda fn, f: f.startswith("transforms/read.py")),
    ("parse: CSV -> tf.Example (transforms/parse.py, examples.py)",
     lambda fn, f: f.startswith(("transforms/parse.py", "transforms/examples.py"))),
    ("model call: signature incl. parse_example (transforms/model.py)",
     lambda fn, f: f.startswith("transforms/model.py")),
    ("predict: key parse tf.function + timing (PredictDoFn._call)",
     lambda fn, f: f.startswith("transforms/predict.py") and "_call" in fn),
    ("predict: chunking, gather/sort, latency rows (transforms/predict.py)",
     lambda fn, f: f.startswith("transforms/predict.py")),
    ("format: jsonl/csv text (transforms/format.py)",
     lambda fn, f: f.startswith("transforms/format.py")),
    ("metrics: events + CombineFn (transforms/metrics.py)",
     lambda fn, f: f.startswith("transforms/metrics.py")),
    ("write/finalize: ours (transforms/write.py)",
     lambda fn, f: f.startswith("transforms/write.py")),
    ("Beam IO: file sinks/sources, filesystems",
     lambda fn, f: f.startswith(("apache_beam/io/",))),
    ("Beam coders (encode/decode between stages)",
     lambda fn, f: f.startswith(("apache_beam/coders/",))),
    ("Beam runner / per-element dispatch",
     lambda fn, f: f.startswith("apache_beam/")),
    ("pipeline/ (other)", lambda fn, f: f.startswith("pipeline/")),
]
CONTEXT_RULES = [  # root -> leaf, whole stack
    ("imports (TF, Beam, pipeline modules)",
     lambda frames: any(fn == "main" and f.startswith("benchmarks/pipeline_child.py")
                        for fn, f in frames) and
     any(fn.startswith("_find_and_load") for fn, f in frames) and
     not any(fn == "run" and f.startswith("pipeline/run.py") for fn, f in frames)),
    ("plan: match inputs, load + warm up model, checks (pipeline/build.py plan_job)",
     lambda frames: any(fn == "plan_job" for fn, f in frames)),
    ("graph construction (build_pipeline, Pipeline())",
     lambda frames: any(fn in ("build_pipeline", "make_pipeline") for fn, f in frames)),
    ("worker setup: model load + warm-up (PredictDoFn.setup)",
     lambda frames: any(fn in ("setup", "_load") and f.startswith("transforms/predict.py")
                        for fn, f in frames)),
]


def parse_raw(path: str):
    """Yield (process, thread, [(func, file), ...] root->leaf, count)."""
    with open(path) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, count = line.rsplit(" ", 1)
            parts = stack.split(";")
            process = parts.pop(0) if parts and parts[0].startswith("process ") else "process"
            thread = parts.pop(0) if parts and parts[0].startswith("thread ") else ""
            frames = []
            for p in parts:
                m = _FRAME.match(p)
                if m:
                    frames.append((m["func"], _short(m["file"])))
                else:
                    frames.append((p, ""))
            yield process, thread, frames, int(count)


def _short(path: str) -> str:
    ours = re.search(r"(?:^|/)((?:pipeline|transforms|benchmarks)/[^/]+\.py)$", path)
    if ours and "site-packages/" not in path:
        return ours.group(1)
    for marker in ("site-packages/", REPO + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def classify(frames) -> str:
    for stage, rule in CONTEXT_RULES:
        if rule(frames):
            return stage
    if frames and frames[-1][0].startswith(_WAITS) and any(
            f.startswith("transforms/predict.py") for _, f in frames):
        return "predict: main thread waits for the model-call thread"
    for fn, f in reversed(frames):
        for stage, rule in LEAF_RULES:
            if rule(fn, f):
                return stage
    if any(f.startswith("tensorflow/") for _, f in frames):
        return "TensorFlow (outside our frames)"
    if not frames:
        return "no Python frames (interpreter start-up/exit, native)"
    return "other (interpreter, threading, runpy)"


def analyze(path: str, rate: int) -> dict:
    per_thread = collections.Counter()
    samples = []
    for process, thread, frames, count in parse_raw(path):
        tid = re.search(r"\((\d+)\)", thread)
        key = (process.split(":")[0], tid.group(1) if tid else thread)
        per_thread[key] += count
        samples.append((key, frames, count))
    main = per_thread.most_common(1)[0][0]
    stages = collections.Counter()
    leaves = collections.Counter()
    for key, frames, count in samples:
        if key != main:
            continue
        stage = classify(frames)
        stages[stage] += count
        ours = [f"{fn} ({f})" for fn, f in frames if f.startswith(("transforms/", "pipeline/"))]
        leaf = frames[-1] if frames else ("?", "")
        leaves[(stage, ours[-1] if ours else "-", f"{leaf[0]} ({leaf[1]})")] += count
    others = {f"thread {k[1]}": v for k, v in per_thread.items() if k != main}
    model_busy = sum(count for key, frames, count in samples if key != main and any(
        f.startswith("transforms/model.py") or (f.startswith("transforms/predict.py") and
                                                "_call" in fn) for fn, f in frames)
        and not (frames and frames[-1][0].startswith(_WAITS)))
    return {"rate": rate, "thread": main, "stages": stages, "leaves": leaves,
            "other_threads": others, "total": sum(stages.values()), "model_busy": model_busy}


def render(result: dict, title: str = "", top: int = 25) -> str:
    rate = result["rate"]
    stages = result["stages"]
    outside = ("imports", "no Python frames")
    imports = sum(v for k, v in stages.items() if k.startswith(outside))
    run_total = result["total"] - imports
    rows = []
    for stage, n in stages.most_common():
        share = "-" if stage.startswith(outside) else f"{100 * n / run_total:.1f}%"
        rows.append([stage, f"{n / rate:.2f}", share])
    out = [f"### {title}" if title else "",
           f"busiest thread {result['thread'][1]}: {result['total']} samples "
           f"at {rate} Hz; '% of run' excludes the imports and the samples without Python "
           "frames (interpreter start and exit).", "",
           markdown_table(["stage", "seconds", "% of run"], rows), "",
           f"model call on other threads (a PredictDoFn that overlaps it): "
           f"{result.get('model_busy', 0) / rate:.2f} s", "",
           f"top {top} (stage, our innermost frame, leaf frame):", ""]
    leaf_rows = [[f"{n / rate:.2f}", s, ours, leaf[:90]]
                 for (s, ours, leaf), n in result["leaves"].most_common(top)]
    out.append(markdown_table(["s", "stage", "our frame", "leaf"], leaf_rows))
    busy = sorted(result["other_threads"].items(), key=lambda kv: -kv[1])[:5]
    if busy:
        out += ["", "other threads (samples incl. idle): " +
                ", ".join(f"{k}: {v}" for k, v in busy)]
    return "\n".join(out) + "\n"


def record(pattern: str, model: str, out_fmt: str, work: str, rate: int,
           extra: list[str]) -> tuple[str, dict]:
    py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or \
        shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy not found: `.venv/bin/pip install py-spy` (dev tool only)")
    raw = os.path.join(work, "profile.raw")
    out = os.path.join(work, "out")
    shutil.rmtree(out, ignore_errors=True)
    result = os.path.join(work, "result.json")
    cmd = [py_spy, "record", "--idle", "--threads", "--format", "raw", "-r", str(rate),
           "-o", raw, "--", sys.executable, "-m", "benchmarks.pipeline_child",
           "--result", result, "--", "--model", model, "--input", pattern, "--output", out,
           "--key_field", "id", "--output_format", out_fmt] + extra
    with open(os.path.join(work, "profile.log"), "wb") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=common.CODE_DIR,
                       env=child_env())
    shutil.rmtree(out, ignore_errors=True)
    import json
    with open(result) as fh:
        return raw, json.load(fh)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analyze", help="an existing py-spy raw file")
    p.add_argument("--model", default="small", choices=sorted(bdata.MODELS))
    p.add_argument("--format", default="tfrecord", choices=["tfrecord", "csv"])
    p.add_argument("--output_format", default="jsonl", choices=["jsonl", "csv"])
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                      "batch-predict-bench-data"))
    p.add_argument("--work_dir", default=None)
    p.add_argument("--pipeline_args", default="")
    p.add_argument("--code", default="HEAD", help="git revision to profile, or 'worktree'")
    args = p.parse_args(argv)
    if args.analyze:
        print(render(analyze(args.analyze, args.rate), args.analyze, args.top))
        return 0
    work = args.work_dir or tempfile.mkdtemp(prefix="batch-predict-profile-")
    os.makedirs(work, exist_ok=True)
    commit = "worktree"
    if args.code != "worktree":
        commit = common.snapshot_code(os.path.join(work, "code"), args.code)[:10]
    bdata.ensure_model(args.data_dir, args.model)
    pattern = bdata.patterns(bdata.ensure_data(args.data_dir, args.rows))[args.format]
    raw, result = record(pattern, bdata.model_base(args.data_dir, args.model),
                         args.output_format, work, args.rate, args.pipeline_args.split())
    title = (f"commit {commit}: {args.model} model, {args.format} -> {args.output_format}, "
             f"{args.rows:,} "
             f"records: run() {result['run_s']} s, {result['e2e_eps']:.0f} ex/s e2e, "
             f"{(result.get('steady_eps') or 0):.0f} ex/s steady (under py-spy)")
    print(render(analyze(raw, args.rate), title, args.top))
    print(f"(raw profile: {raw})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
