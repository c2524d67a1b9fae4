"""End-to-end A/B of suggested changes, without touching transforms/ (others own it):
`python -m benchmarks.prototypes [--rows N] [--repeats R] [--formats tfrecord,csv]`.

A variant is `REV[:proto+proto]`: the pipeline/ and transforms/ of git revision REV (exported
with git archive) plus prototypes injected into the pipeline child
(benchmarks.pipeline_child --prototype ...):
  overlap     `OverlappedPredictDoFn` through `pipeline.run.run(predict_dofn=...)`: chunk k's
              model call runs on a 1-thread executor (TensorFlow releases the GIL) while the
              main thread emits chunk k-1's results downstream (format, write, metrics) and the
              reader/parser produce the next batches.
  fast_jsonl  `transforms.format.to_jsonl` replaced by `benchmarks.micro.fast_jsonl`
              (byte-identical output) before the graph is built.
  tf1thread   TF intra-op threads set to 1 before TF starts (so the Python thread keeps a core).
Each round runs baseline and every variant back to back; the table gives each variant's e2e
examples/s as a ratio to the baseline of the same round (median, min–max).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from transforms.predict import PredictDoFn


class OverlappedPredictDoFn(PredictDoFn):
    """PredictDoFn with one model call in flight while the previous chunk's results go
    downstream. Failures fall back to the base class (synchronous bisection)."""

    def setup(self):
        super().setup()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="model-call")

    def teardown(self):
        self._pool.shutdown(wait=True)

    def start_bundle(self):
        super().start_bundle()
        self._pending = None
        self._ready = None

    def process(self, batch):
        yield from self._report_load()
        self._buffer.append(batch)
        self._buffered += len(batch)
        limit = getattr(self, "_chunk_limit", self._batch_size)  # older PredictDoFns lack it
        while self._buffered >= limit:
            chunk = self._take(limit)
            future = self._pool.submit(self._call, chunk.serialized)
            if self._pending is not None:
                yield from self._finish_pending()
            self._pending = (chunk, future)

    def _finish_pending(self):
        chunk, future = self._pending
        self._pending = None
        self._ready = (chunk, future)
        yield from self._score_chunk(chunk)

    def _score_range(self, chunk, positions, results, errors, *more):
        ready = self._ready
        if ready is not None and ready[0] is chunk and len(positions) == len(chunk.indices):
            self._ready = None
            try:
                outputs, keys, elapsed_ns = ready[1].result()
            except Exception:  # let the base class isolate the bad records, synchronously
                return super()._score_range(chunk, positions, results, errors, *more)
            n = len(positions)
            for name, value in outputs.items():
                if value.ndim == 0 or value.shape[0] != n:
                    raise ValueError(f"model output {name!r} has shape {value.shape} for a "
                                     f"batch of {n}; outputs need a leading batch dimension")
            results.append((positions, outputs, keys, elapsed_ns))
            return None
        return super()._score_range(chunk, positions, results, errors, *more)

    def finish_bundle(self):
        outputs = list(self._finish_pending()) if self._pending is not None else []
        for out in outputs:
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
            else:
                yield GlobalWindows.windowed_value(out)
        yield from super().finish_bundle()


def apply(names: list[str]) -> dict:
    """Install the named prototypes in this process; returns kwargs for pipeline.run.run."""
    inject = {}
    for name in names:
        if name == "overlap":
            inject["predict_dofn"] = OverlappedPredictDoFn
        elif name == "fast_jsonl":
            from benchmarks.micro import fast_jsonl
            from transforms import format as fmt
            fmt.to_jsonl = fast_jsonl
        elif name:
            raise SystemExit(f"unknown prototype {name!r}")
    return inject


PROTOTYPES = ("overlap", "fast_jsonl", "tf1thread")


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """'REV' or 'REV:proto+proto' (REV: a git revision; protos from PROTOTYPES)."""
    rev, _, protos = spec.partition(":")
    names = [x for x in protos.split("+") if x]
    bad = [x for x in names if x not in PROTOTYPES]
    if bad:
        raise SystemExit(f"unknown prototypes {bad} in {spec!r}; choose from {PROTOTYPES}")
    return rev or "HEAD", names


def main(argv=None) -> int:
    from benchmarks import common
    from benchmarks import data as bdata
    from benchmarks.common import markdown_table, pct_span, run_child, span
    p = argparse.ArgumentParser(prog="python -m benchmarks.prototypes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--model", default="small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--formats", default="tfrecord,csv")
    p.add_argument("--variants", default="HEAD,HEAD:fast_jsonl",
                   help="comma-separated REV[:proto+proto]; the first is the baseline, e.g. "
                        "282385a,282385a:overlap+fast_jsonl,HEAD,HEAD:fast_jsonl")
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                      "batch-predict-bench-data"))
    p.add_argument("--work_dir", default=None)
    args = p.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="batch-predict-proto-")
    variants = [v for v in args.variants.split(",") if v]
    parsed = {v: parse_variant(v) for v in variants}
    code_dirs, commits = {}, {}
    for rev in dict.fromkeys(r for r, _ in parsed.values()):
        code_dirs[rev] = os.path.join(work, "code", rev.replace("/", "_"))
        commits[rev] = common.snapshot_code(code_dirs[rev], rev, activate=False)[:10]
    bdata.ensure_model(args.data_dir, args.model)
    pats = bdata.patterns(bdata.ensure_data(args.data_dir, args.rows))
    model = bdata.model_base(args.data_dir, args.model)
    res: dict = {}
    n = 0
    for rnd in range(args.repeats):
        for f in [x for x in args.formats.split(",") if x]:
            for v in variants:
                rev, protos = parsed[v]
                n += 1
                out = os.path.join(work, "out", f"{n:03d}")
                shutil.rmtree(out, ignore_errors=True)
                print(f"[{time.strftime('%H:%M:%S')}] round {rnd + 1} {f} {v}", file=sys.stderr,
                      flush=True)
                intra = ["--tf_intra", "1"] if "tf1thread" in protos else []
                r = run_child("benchmarks.pipeline_child",
                              intra + ["--prototype", ",".join(x for x in protos
                                                               if x != "tf1thread"),
                                       "--", "--model", model, "--input", pats[f],
                                       "--output", out, "--key_field", "id",
                                       "--output_format", "jsonl"],
                              os.path.join(work, "logs"), f"{n:03d}-{f}-{v.replace(':', '_')}",
                              code_dir=code_dirs[rev])
                shutil.rmtree(out, ignore_errors=True)
                if r["records"] != args.rows:
                    print(f"WARNING: {v} scored {r['records']} of {args.rows}", file=sys.stderr)
                res.setdefault((f, v), []).append(r)
    rows = []
    for (f, v), rs in res.items():
        base = res[(f, variants[0])]
        e2e = [r["e2e_eps"] for r in rs]
        ratio = [r["e2e_eps"] / b["e2e_eps"] for r, b in zip(rs, base)]
        steady = [r.get("steady_eps") for r in rs]
        sratio = [(r.get("steady_eps") or 0) / b["steady_eps"] if b.get("steady_eps") else None
                  for r, b in zip(rs, base)]
        cpu = [r.get("cpu_us_per_record") for r in rs]
        rows.append([f, v, span(e2e), pct_span(ratio), span(steady), pct_span(sratio),
                     span(cpu)])
    print(f"## Variants, {args.model} model, {args.rows:,} records -> jsonl, {args.repeats} "
          f"round(s); commits: " + ", ".join(f"{r} = {c}" for r, c in commits.items()) + "\n")
    print(markdown_table(["input", "variant", "ex/s e2e", "vs baseline", "ex/s steady",
                          "vs baseline", "CPU µs/rec"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
