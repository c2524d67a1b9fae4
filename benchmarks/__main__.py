"""`python -m benchmarks [--quick] [options]` (or `make bench ARGS=...`): measure and print tables.

Sections (`--only`, default all):
  main          per model size x input format: (a) TF alone, (b) this pipeline per output
                format, (c) Beam RunInference peer; ratios within each round against the
                faster of two TF-alone runs bracketing it (rounds whose TF alone left a core
                idle do not count for the target), median (min–max) over --repeats rounds
  scaling       records vs us/record and peak RSS (small model, TFRecord -> jsonl), a
                least-squares line through every run, and Beam's own smallest jobs
                (benchmarks.beam_floor) against the fixed cost that line allows
  startup       100-record input: process start -> first prediction, minus the TF import;
                and `python -m pipeline` itself from spawn to exit
  multiprocess  heavy model: one process vs --direct_num_workers=2 multi_processing vs one
                process with --concurrent_model_calls 2, each with TF's own thread pools and
                with 1 intra-op thread, at each of --mp_rows (worker start-up is paid once
                per worker: it needs inputs to amortise); over several sizes each variant's
                start-up and per-record cost are fitted apart, with the break-even size
  batch         --batch_size sweep (small TFRecord/CSV, heavy TFRecord): e2e examples/s per
                batch size, relative to the default within each round

Every measurement is a fresh subprocess (see benchmarks.common). Models and data are cached in
--data_dir; outputs and logs go to --work_dir. The report is printed and written to
WORK_DIR/report.md (raw numbers: WORK_DIR/results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from benchmarks import data as bdata
from benchmarks.common import (ChildFailed, fmt, markdown_table, med, pct, pct_span, run_child,
                               span)

SECTIONS = ("main", "scaling", "startup", "multiprocess", "batch")
# Sizes: about 10 s of TF-alone work per run on the 2-core AMD EPYC host (small model ~90k
# ex/s TFRecord, ~230k CSV; heavy ~11k), so the main table measures throughput; the ~1 s a job
# spends before its first prediction has its own section (startup). At 300k / 30k (the
# defaults until 2026-12-01) a run lasts 1.5-3 s on that host and that fixed cost dominates.
# Multi-process at 120k and 480k: the workers' start-up (~3.5-4.5 s) needs input to amortise;
# at 100 records a run is almost all start-up, which pins each variant's fixed cost F.
DEFAULTS = {"rows": 1_000_000, "heavy_rows": 120_000, "repeats": 3,
            "scaling": "100000,500000,1000000,2000000", "output_formats": "jsonl,csv",
            "mp_rows": "100,120000,480000", "batch_sizes": "1024,2048,4096,8192,16384,auto"}
QUICK = {"rows": 100_000, "heavy_rows": 10_000, "repeats": 1,
         "scaling": "50000,200000", "output_formats": "jsonl", "mp_rows": "100,10000",
         "batch_sizes": "2048,8192"}
TARGETS = {"small": 0.50, "heavy": 0.90}
MP_ARGS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
MP_LABEL = "2 workers, multi_processing"  # the variant the target is judged on


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes, one round: {QUICK}")
    p.add_argument("--rows", type=int, help=f"records for the small model "
                                            f"(default {DEFAULTS['rows']})")
    p.add_argument("--heavy_rows", type=int, help=f"records for the heavy model "
                                                  f"(default {DEFAULTS['heavy_rows']})")
    p.add_argument("--repeats", type=int, help="rounds (default 3)")
    p.add_argument("--models", default="small,heavy")
    p.add_argument("--formats", default="tfrecord,csv", help="input formats")
    p.add_argument("--output_formats", help="pipeline output formats (default jsonl,csv)")
    p.add_argument("--peer_output_formats", default=None,
                   help="output formats for the RunInference peer (default: the first of "
                        "--output_formats; its cost is per element either way)")
    p.add_argument("--scaling", help="record counts for the scaling series, comma-separated "
                                     f"(default {DEFAULTS['scaling']}); 'off' to skip")
    p.add_argument("--scaling_repeats", type=int, default=None,
                   help="rounds of the scaling series (default: --repeats; its least-squares "
                        "line needs more than one run per size to pin the fixed cost)")
    p.add_argument("--startup_repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    p.add_argument("--mp_models", default="heavy",
                   help="models for the multiprocess section (issue 4 asks for heavy)")
    p.add_argument("--mp_rows", help="record counts for the multiprocess section (default "
                                     f"{DEFAULTS['mp_rows']})")
    p.add_argument("--batch_sizes", help=f"--batch_size values for the batch section (default "
                                         f"{DEFAULTS['batch_sizes']})")
    p.add_argument("--tf_mode", choices=["serialized", "parsed"], default="serialized",
                   help="TF-alone TFRecord variant (see benchmarks.tf_alone)")
    p.add_argument("--pipeline_args", default="",
                   help="extra flags for every pipeline run, e.g. '--batch_size=4096'")
    p.add_argument("--no_peer", action="store_true", help="skip the RunInference peer")
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                      "batch-predict-bench-data"))
    p.add_argument("--work_dir", default=None, help="default: a new temp dir")
    p.add_argument("--keep_outputs", action="store_true")
    p.add_argument("--from_results", default=None,
                   help="re-render the report of an earlier run from its results.json")
    p.add_argument("--code", default="HEAD",
                   help="git revision whose pipeline/ and transforms/ are measured (exported "
                        "to WORK_DIR/code, so edits made meanwhile do not leak in); "
                        "'worktree' = the working tree as it is while each child starts")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models = [m for m in args.models.split(",") if m]
    args.mp_models = [m for m in args.mp_models.split(",") if m]
    args.mp_rows = [int(x) for x in args.mp_rows.split(",") if x]
    args.batch_sizes = [x if x == "auto" else int(x) for x in args.batch_sizes.split(",") if x]
    args.formats = [f for f in args.formats.split(",") if f]
    args.output_formats = [f for f in args.output_formats.split(",") if f]
    args.peer_output_formats = ([f for f in args.peer_output_formats.split(",") if f]
                                if args.peer_output_formats else args.output_formats[:1])
    args.scaling = [] if args.scaling in ("off", "none", "") else \
        [bdata.scaling_rows(int(x)) for x in args.scaling.split(",")]
    args.only = [s for s in args.only.split(",") if s]
    args.startup_repeats = args.startup_repeats or args.repeats
    args.scaling_repeats = args.scaling_repeats or args.repeats
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="batch-predict-bench-")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work_dir
        # scaling_floor: Beam's own fixed cost per job, measured with the scaling series
        self.results: dict = {k: [] for k in SECTIONS + ("scaling_floor",)}
        self.n = 0

    # -- children ----------------------------------------------------------------------------
    def _out(self, name):
        path = os.path.join(self.work, "out", name)
        shutil.rmtree(path, ignore_errors=True)
        return path

    def _done(self, path):
        if not self.args.keep_outputs:
            shutil.rmtree(path, ignore_errors=True)

    def _name(self, label):
        self.n += 1
        return f"{self.n:03d}-{label}"

    def tf_alone(self, model, pattern, fmt_):
        return run_child("benchmarks.tf_alone",
                         ["--model", model, "--input", pattern, "--format", fmt_,
                          "--mode", self.args.tf_mode],
                         os.path.join(self.work, "logs"), self._name(f"tf-{fmt_}"))

    def pipeline(self, model, pattern, out_fmt, extra=(), label="pipe",
                 child="benchmarks.pipeline_child"):
        """One job in a fresh process; `child` benchmarks.cli_child runs `python -m pipeline`
        itself, timed spawn to exit."""
        name = self._name(f"{label}-{out_fmt}")
        out = self._out(name)
        argv = ["--", "--model", model, "--input", pattern, "--output", out,
                "--key_field", "id", "--output_format", out_fmt] + list(extra) + \
            self.args.pipeline_args.split()
        try:
            return run_child(child, argv, os.path.join(self.work, "logs"), name)
        finally:
            self._done(out)

    def peer(self, model, pattern, in_fmt, out_fmt):
        name = self._name(f"ri-{in_fmt}-{out_fmt}")
        out = self._out(name)
        try:
            return run_child("benchmarks.runinference",
                             ["--model", model, "--input", pattern, "--input_format", in_fmt,
                              "--output", out, "--output_format", out_fmt],
                             os.path.join(self.work, "logs"), name)
        finally:
            self._done(out)

    # -- sections ----------------------------------------------------------------------------
    def prepare(self):
        a = self.args
        rows = set()
        if "main" in a.only:
            rows |= {a.rows if m == "small" else a.heavy_rows for m in a.models}
        if "multiprocess" in a.only:
            rows |= set(a.mp_rows)
        if "batch" in a.only:
            rows |= {a.rows, a.heavy_rows}
        if "startup" in a.only:
            rows.add(100)
        models = set(a.models) | ({"small"} if {"scaling", "startup"} & set(a.only) else set())
        if "multiprocess" in a.only:
            models |= set(a.mp_models)
        if "batch" in a.only:
            models |= {"small", "heavy"}
        cmd = ["--root", a.data_dir, "--models", ",".join(sorted(models)),
               "--scaling", ",".join(map(str, a.scaling)) if "scaling" in a.only else ""]
        for r in sorted(rows):
            cmd += ["--rows", str(r)]
        log(f"preparing models {sorted(models)} and data {sorted(rows)} "
            f"(+ scaling {a.scaling if 'scaling' in a.only else []}) in {a.data_dir}")
        out = run_child("benchmarks.data", cmd, os.path.join(self.work, "logs"), "data")
        log(f"data ready ({out['seconds']}s)")

    def model(self, name):
        return bdata.model_base(self.args.data_dir, name)

    def run_main(self):
        a = self.args
        for rnd in range(a.repeats):
            for m in a.models:
                rows = a.rows if m == "small" else a.heavy_rows
                pats = bdata.patterns(bdata.data_dir(a.data_dir, rows))
                for f in a.formats:
                    rec = {"round": rnd, "model": m, "format": f, "rows": rows,
                           "pipeline": {}, "peer": {}}
                    log(f"round {rnd + 1}/{a.repeats} {m} {f} ({rows} rows): TF alone")
                    before = self.tf_alone(self.model(m), pats[f], f)
                    for of in a.output_formats:
                        log(f"  pipeline -> {of}")
                        rec["pipeline"][of] = self.pipeline(self.model(m), pats[f], of)
                    if not a.no_peer:
                        for of in a.peer_output_formats:
                            log(f"  RunInference peer -> {of}")
                            rec["peer"][of] = self.peer(self.model(m), pats[f], f, of)
                    log("  TF alone again")
                    after = self.tf_alone(self.model(m), pats[f], f)
                    rec["tf"] = dict(tf_reference(before, after), before=before, after=after)
                    self._check(rec)
                    self.results["main"].append(rec)
                    self.save()

    def _check(self, rec):
        expected = rec["tf"]["records"]
        for kind in ("pipeline", "peer"):
            for of, r in rec[kind].items():
                if r["records"] != expected:
                    log(f"WARNING: {kind} {rec['model']} {rec['format']}->{of} wrote "
                        f"{r['records']} predictions, TF alone scored {expected}")

    def run_scaling(self):
        a = self.args
        for rnd in range(a.scaling_repeats):
            for rows in a.scaling:
                pat = bdata.patterns(bdata.scaling_dir(a.data_dir, rows))["tfrecord"]
                log(f"scaling {rows} records (round {rnd + 1}/{a.scaling_repeats})")
                r = self.pipeline(self.model("small"), pat, "jsonl", label=f"scale{rows}")
                r["rows"] = rows
                r["round"] = rnd
                self.results["scaling"].append(r)
                self.save()
            log(f"scaling: Beam's own fixed cost per job (round {rnd + 1}/{a.scaling_repeats})")
            floor = run_child("benchmarks.beam_floor", [], os.path.join(self.work, "logs"),
                              self._name("beam-floor"))
            self.results["scaling_floor"].append(dict(floor, round=rnd))
            self.save()

    def run_startup(self):
        a = self.args
        pat = bdata.patterns(bdata.data_dir(a.data_dir, 100))["tfrecord"]
        for rnd in range(a.startup_repeats):
            log(f"start-up, 100 records (round {rnd + 1}/{a.startup_repeats})")
            r = self.pipeline(self.model("small"), pat, "jsonl", label="startup")
            r["round"] = rnd
            r["cli"] = self.pipeline(self.model("small"), pat, "jsonl", label="startup",
                                     child="benchmarks.cli_child")
            self.results["startup"].append(r)
            self.save()

    def run_multiprocess(self):
        a = self.args
        # defaults first (TensorFlow's own thread pools in every process), then the same with
        # the cores split: 1 intra-op thread per worker process / per call in flight
        one = ["--tf_intra_op_threads=1"]
        variants = [("1 process", []), (MP_LABEL, MP_ARGS),
                    ("1 process, --concurrent_model_calls 2", ["--concurrent_model_calls=2"]),
                    (MP_LABEL + ", --tf_intra_op_threads 1", MP_ARGS + one),
                    ("1 process, --concurrent_model_calls 2 --tf_intra_op_threads 1",
                     ["--concurrent_model_calls=2"] + one)]
        for rnd in range(a.repeats):
            for m in a.mp_models:
                for rows in a.mp_rows:
                    pat = bdata.patterns(bdata.data_dir(a.data_dir, rows))["tfrecord"]
                    rec = {"round": rnd, "model": m, "rows": rows, "variants": {}}
                    for label, extra in variants:
                        log(f"multiprocess {m} {rows} records: {label} "
                            f"(round {rnd + 1}/{a.repeats})")
                        try:
                            rec["variants"][label] = self.pipeline(self.model(m), pat, "jsonl",
                                                                   extra, label="mp")
                        except ChildFailed as e:
                            log(f"  FAILED: {str(e)[:2000]}")
                            rec["variants"][label] = {"failed": str(e)[-2000:]}
                    self.results["multiprocess"].append(rec)
                    self.save()

    BATCH_CASES = (("small", "tfrecord"), ("small", "csv"), ("heavy", "tfrecord"))

    def run_batch(self):
        a = self.args
        for rnd in range(a.repeats):
            for m, f in self.BATCH_CASES:
                rows = a.rows if m == "small" else a.heavy_rows
                pat = bdata.patterns(bdata.data_dir(a.data_dir, rows))[f]
                rec = {"round": rnd, "model": m, "format": f, "rows": rows, "sizes": {}}
                for size in a.batch_sizes:
                    log(f"batch size {size}: {m} {f} (round {rnd + 1}/{a.repeats})")
                    rec["sizes"][str(size)] = self.pipeline(
                        self.model(m), pat, "jsonl", [f"--batch_size={size}"], label="bs")
                self.results["batch"].append(rec)
                self.save()

    def save(self):
        with open(os.path.join(self.work, "results.json"), "w") as fh:
            json.dump({"args": vars(self.args), "machine": machine(),
                       "date": time.strftime('%Y-%m-%d %H:%M %Z'), **self.results}, fh,
                      indent=1, default=str)


# --- report -------------------------------------------------------------------------------------
def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_gb"] = round(int(fh.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        info["tensorflow"] = version("tensorflow")
        info["apache_beam"] = version("apache-beam")
    except Exception:
        pass
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True,
                                     cwd=os.path.dirname(os.path.dirname(__file__))
                                     ).stdout.strip()
    except OSError:
        pass
    return info


def _g(r, key):
    return None if r is None or "failed" in r else r.get(key)


def report(bench: Bench, argv: list[str], m: dict | None = None, date: str | None = None
           ) -> str:
    a = bench.args
    res = bench.results
    m = m or machine()
    out = [f"# batch-predict benchmarks — {date or time.strftime('%Y-%m-%d %H:%M %Z')}",
           "",
           f"machine: {m.get('cpu', '?')}, {m['cpus']} cores, {m.get('mem_gb', '?')} GB; "
           f"Python {m['python']}, TensorFlow {m.get('tensorflow')}, Beam {m.get('apache_beam')}"
           f"; code measured: {a.commit if a.commit == 'worktree' else a.commit[:10]}",
           f"command: python -m benchmarks {' '.join(argv)}".rstrip(),
           ""]
    if getattr(a, "quick", False):
        out += ["**--quick**: sizes this small are dominated by fixed costs (start-up, graph, "
                "finalize: ~2 s per run); the target columns are only meaningful for the full "
                "run.", ""]
    if res["main"]:
        out += main_tables(res["main"], a)
    if res["scaling"]:
        out += scaling_table(res["scaling"], res.get("scaling_floor"))
    if res["startup"]:
        out += startup_table(res["startup"])
    if res["multiprocess"]:
        out += multiprocess_table(res["multiprocess"])
    if res.get("batch"):
        out += batch_table(res["batch"])
    return "\n".join(out) + "\n"


def batch_table(recs) -> list[str]:
    from pipeline.options import DEFAULT_BATCH_SIZE
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["model"], r["format"], r["rows"]), []).append(r)
    seen = {s for r in recs for s in r["sizes"]}
    sizes = sorted(int(s) for s in seen if s != "auto") + (["auto"] if "auto" in seen else [])
    base = str(DEFAULT_BATCH_SIZE) if all(str(DEFAULT_BATCH_SIZE) in r["sizes"]
                                          for r in recs) else str(sizes[0])
    rows = []
    for (model, f, n), rs in groups.items():
        for size in sizes:
            vals = [_g(r["sizes"].get(str(size)), "e2e_eps") for r in rs]
            steady = [_g(r["sizes"].get(str(size)), "steady_eps") for r in rs]
            ratio = [v / _g(r["sizes"].get(base), "e2e_eps")
                     if v and _g(r["sizes"].get(base), "e2e_eps") else None
                     for v, r in zip(vals, rs)]
            rss = [_g(r["sizes"].get(str(size)), "peak_rss_mb") for r in rs]
            rows.append([model, f, f"{n:,}", size if size == "auto" else f"{size:,}", span(vals),
                         pct_span(ratio),
                         span(steady), span(rss)])
    return [f"## --batch_size (TFRecord/CSV -> jsonl; ratio to --batch_size {int(base):,} within "
            "each round)", "",
            markdown_table(["model", "input", "records", "--batch_size", "ex/s e2e",
                            f"vs {int(base):,}", "ex/s steady", "peak RSS MB"], rows), ""]


def tf_reference(before: dict, after: dict) -> dict:
    """TF alone at its best in the round: the faster of the runs before and after (b) and (c).

    Until 885bcaa some TF-alone runs looked half as fast with one core idle (2,900 instead of
    5,800 ex/s on the heavy model, cores busy ~1.1 of 2): the clock ran on while TF sat idle
    deleting the tf.data iterator (see benchmarks.tf_alone.measure; now timed apart). A mean
    of the two runs flattered the pipeline; the faster one can only make the ratios
    stricter, and still guards against any other slow TF-alone run."""
    best = max((before, after), key=lambda r: r.get("steady_eps") or 0)
    return dict(best, cpu_us_per_record=min(r["cpu_us_per_record"] for r in (before, after)))


def _tf_ref(rec: dict) -> dict:
    tf = rec["tf"]
    if "before" in tf and "after" in tf:  # also re-renders results saved with the older rule
        return tf_reference(tf["before"], tf["after"])
    return tf


def _cores_busy(tf_run: dict | None) -> float | None:
    if not tf_run:
        return None
    if tf_run.get("cores_busy") is not None:
        return tf_run["cores_busy"]
    cpu, wall = tf_run.get("cpu_s"), tf_run.get("e2e_s")
    return cpu / wall if cpu and wall else None


def valid_rounds(rs: list[dict]) -> list[bool]:
    """A round counts for the target when its TF-alone reference kept the cores about as busy
    as the best TF-alone run of the group (>= 70%): both of its runs slowed down (see
    tf_reference) would flatter the pipeline."""
    runs = [_cores_busy(x["tf"].get(k)) for x in rs for k in ("before", "after")]
    runs = [c for c in runs if c]
    if not runs:
        return [True] * len(rs)
    best = max(runs)
    return [(_cores_busy(_tf_ref(x)) or best) >= 0.7 * best for x in rs]


def main_tables(recs, a) -> list[str]:
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    rows, peer_rows = [], []
    for (model, f), rs in groups.items():
        tf = [_tf_ref(x)["steady_eps"] for x in rs]
        tf_cores = [_cores_busy(_tf_ref(x)) for x in rs]
        valid = valid_rounds(rs)
        for of in a.output_formats:
            pipes = [x["pipeline"].get(of) for x in rs]
            e2e = [_g(p, "e2e_eps") for p in pipes]
            steady = [_g(p, "steady_eps") for p in pipes]
            r_e2e = [p / t if p and t else None for p, t in zip(e2e, tf)]
            r_steady = [p / t if p and t else None for p, t in zip(steady, tf)]
            peers = [x["peer"].get(of) for x in rs]
            peer = [_g(p, "e2e_eps") for p in peers]
            r_peer = [p / t if p and t else None for p, t in zip(peer, tf)]
            vs_peer = [p / q if p and q else None for p, q in zip(e2e, peer)]
            target = TARGETS.get(model)
            ok = med([r for r, v in zip(r_e2e, valid) if v])
            dropped = f" ({valid.count(False)} of {len(rs)} rounds excluded)" \
                if not all(valid) else ""
            rows.append([model, f, of, f"{rs[0]['rows']:,}", span(tf),
                         fmt(med(tf_cores)) if any(tf_cores) else "-", span(e2e),
                         pct_span(r_e2e), span(steady), pct_span(r_steady),
                         span(peer) if any(peer) else "-",
                         pct_span(r_peer) if any(peer) else "-",
                         pct_span(vs_peer) if any(vs_peer) else "-",
                         f"{fmt(med([_g(p, 'run_to_first_pred_s') for p in pipes]))} / "
                         f"{fmt(med([_g(p, 'last_pred_to_end_s') for p in pipes]))}",
                         fmt(med([_g(p, "peak_rss_mb") for p in pipes])),
                         f"{pct(target)}: {'met' if ok and ok >= target else 'NOT met'}"
                         f"{dropped}" if target else "-"])
    header = ["model", "input", "output", "records", "(a) TF alone ex/s", "(a) cores busy",
              "(b) pipeline ex/s e2e", "(b)/(a) e2e", "(b) ex/s steady", "(b)/(a) steady",
              "(c) RunInference ex/s", "(c)/(a)", "(b)/(c) e2e", "(b) head / tail s",
              "pipeline RSS MB", "target"]
    n = max(len(v) for v in groups.values())
    return ["## Throughput, ratios within each round",
            "",
            f"median (min–max) over {n} round(s); every ratio is computed within one round, "
            "then summarised. (a) = TF alone steady-state (after its first batch, model load "
            "excluded, nothing written, timed up to its last batch's outputs; the faster of "
            "one run before and one after (b) and (c) in the same round; cores busy = its "
            "CPU-seconds per second, median); (b) e2e = "
            "records / wall time of `pipeline.run.run()` (plan + model load + graph + "
            "read/parse/predict/write + metrics + finalize; the TF/Beam imports excluded); "
            "(b) steady = records after the first model call / (end of run() − end of the "
            "first model call); (c) = Beam RunInference peer, e2e like (b). head = run() "
            "start → first model call done; tail = last model call → run() returns (writes, "
            "metrics, finalize). The target column compares the median (b)/(a) e2e with issue "
            "4's target, over the rounds whose (a) kept the cores at least 70% as busy as the "
            "best TF-alone run of the row (a slowed TF alone would flatter (b)).",
            "",
            markdown_table(header, rows), ""] + cpu_table(groups, a)


def cpu_table(groups, a) -> list[str]:
    rows = []
    for (model, f), rs in groups.items():
        tf = [_tf_ref(x).get("cpu_us_per_record") for x in rs]
        for of in a.output_formats:
            pipe = [_g(x["pipeline"].get(of), "cpu_us_per_record") for x in rs]
            peer = [_g(x["peer"].get(of), "cpu_us_per_record") for x in rs]
            rows.append([model, f, of, span(tf), span(pipe),
                         pct_span([t / p if t and p else None for t, p in zip(tf, pipe)]),
                         span(peer) if any(peer) else "-",
                         pct_span([t / p if t and p else None for t, p in zip(tf, peer)])
                         if any(peer) else "-"])
    if not any(r[3] != "-" for r in rows):
        return []
    return ["### CPU cost per record (less sensitive to other load on the machine)", "",
            "user+system CPU µs per record over the measured span (TF alone: from model load; "
            "(b)/(c): run()); efficiency = (a) CPU / (b or c) CPU, within one round. TF alone "
            "spreads its work over both cores, the pipeline mostly runs one Python thread, so "
            "efficiency and throughput ratios differ.", "",
            markdown_table(["model", "input", "output", "(a) TF alone CPU µs/rec",
                            "(b) pipeline CPU µs/rec", "(a)/(b) efficiency",
                            "(c) RunInference CPU µs/rec", "(a)/(c)"], rows), ""]


def scaling_table(recs, floors=None) -> list[str]:
    by: dict = {}
    for r in recs:
        by.setdefault(r["rows"], []).append(r)
    sizes = sorted(by)
    base_us = med([x["run_s"] / x["rows"] * 1e6 for x in by[sizes[0]]])
    base_rss = med([x["peak_rss_mb"] for x in by[sizes[0]]])
    rows = []
    marginals = []
    for i, n in enumerate(sizes):
        rs = by[n]
        us = [x["run_s"] / n * 1e6 for x in rs]
        st = [1e6 / x["steady_eps"] for x in rs if x.get("steady_eps")]
        rss = [x["peak_rss_mb"] for x in rs]
        cpu = [x.get("cpu_us_per_record") for x in rs]
        step = "-"
        if i:  # cost of the records added since the previous size
            prev = sizes[i - 1]
            marginals.append((med([x["run_s"] for x in rs]) - med([x["run_s"]
                                                                   for x in by[prev]]))
                             / (n - prev) * 1e6)
            step = f"{marginals[-1]:.2f}"
        rows.append([f"{n:,}", span([x["run_s"] for x in rs]), span(us),
                     f"{100 * (med(us) / base_us - 1):+.0f}%", step, span(cpu), span(st),
                     span(rss), f"{100 * (med(rss) / base_rss - 1):+.0f}%"])
    fit = linear_fit([(x["rows"], x["run_s"]) for x in recs])
    last = by[sizes[-1]]
    n0, n1 = sizes[0], sizes[-1]
    out = ["## Scaling (small model, TFRecord -> jsonl)", "",
           "marginal = (run() s − run() s of the previous size) / records added: the cost of "
           "each further record, with the fixed start-up (plan, model load, graph) taken out.",
           "",
           markdown_table(["records", "run() s", "µs/record e2e", "vs first",
                           "marginal µs/record", "CPU µs/record", "µs/record steady",
                           "peak RSS MB", "vs first"], rows), ""]
    if marginals:
        e2e_last = med([x["run_s"] for x in last]) / n1 * 1e6
        e2e_ok = abs(e2e_last / base_us - 1) <= 0.15
        why = "" if e2e_ok else (": it grows with the input" if e2e_last > base_us else
                                 ": the fixed start-up is spread over fewer records at the "
                                 "small end")
        spread = max(marginals) / min(marginals) - 1 if min(marginals) > 0 else float("inf")
        rss_ok = med([x["peak_rss_mb"] for x in last]) / base_rss - 1 < 0.20
        out += [f"Targets: e2e µs/record within 15% from {n0:,} to {n1:,} "
                f"({'met' if e2e_ok else 'NOT met'}{why}); marginal µs/record within 15% of "
                f"each other "
                f"({'met' if spread <= 0.15 else 'NOT met'}: {min(marginals):.2f}–"
                f"{max(marginals):.2f}); peak RSS growth < 20% "
                f"({'met' if rss_ok else 'NOT met'}).", ""]
    bound = None
    if fit is not None:
        per_record = fit[1]
        # e2e within 15%: F/n0 + c <= 1.15 (F/n1 + c), i.e. F <= 0.15 c / (1/n0 - 1.15/n1)
        bound = 0.15 * per_record / (1 / n0 - 1.15 / n1) if 1 / n0 > 1.15 / n1 else None
        out += [f"Least-squares line over {len(recs)} runs: run() s = F + c × records with "
                f"F = {fit[0]:.3f} s, c = {per_record * 1e6:.2f} µs."
                + (f" For e2e µs/record to stay within 15% from {n0:,} to {n1:,} at this c, "
                   f"the fixed cost F would have to be at most {bound:.3f} s." if bound else ""),
                ""]
    floors = [f for f in floors or [] if f.get("write_s") is not None]
    if floors:
        map_s, write_s = med([f["map_s"] for f in floors]), med([f["write_s"] for f in floors])
        out += [f"Beam's own fixed cost per job here ({len(floors)} fresh "
                f"process{'es' if len(floors) > 1 else ''}, "
                f"`benchmarks.beam_floor`, same runner): `Create | Map` {fmt(map_s)} s, "
                f"`Create | Map | WriteToText` {fmt(write_s)} s (median)."
                + (f" The smallest job that writes a file already costs "
                   f"{write_s / bound:.1f}x that bound, before any input, model or output "
                   f"of this pipeline." if bound and write_s > bound else ""), ""]
    return out


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares y = a + b·x over (x, y) points: (a, b); None without two distinct x."""
    points = [(x, y) for x, y in points if y is not None]
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression(*zip(*points))
    return intercept, slope


def startup_table(recs) -> list[str]:
    keys = [("process spawn → first prediction", "first_pred_s"),
            ("  of which TF import", "tf_import_s"),
            ("  of which Beam + pipeline imports", "beam_import_s"),
            ("  of which run() start → first prediction", "run_to_first_pred_s"),
            ("start-up (first prediction − spawn − TF import)", "startup_s"),
            ("run() total (100 records)", "run_s"),
            ("process wall total", "process_wall_s")]
    rows = [[label, span([r.get(k) for r in recs]) + " s"] for label, k in keys]
    clis = [r["cli"] for r in recs if r.get("cli")]
    if clis:  # older results have no CLI runs
        rows += [["`python -m pipeline` (imports where the CLI does): spawn → exit",
                  span([c.get("process_wall_s") for c in clis]) + " s"],
                 ["  of which interpreter exit after main() returned",
                  span([c["process_wall_s"] - c["main_returned_s"] for c in clis]) + " s"]]
    st = med([r.get("startup_s") for r in recs])
    return ["## Start-up (100-record TFRecord input, small model)", "",
            markdown_table(["", "median (min–max)"], rows), "",
            f"target: start-up under 5 s beyond the TF import: "
            f"{'met' if st is not None and st < 5 else 'NOT met'} ({fmt(st)} s).", ""]


def multiprocess_table(all_recs) -> list[str]:
    out = []
    by_model: dict = {}
    for r in all_recs:
        by_model.setdefault((r.get("model", "heavy"), r["rows"]), []).append(r)
    for (model, n), recs in by_model.items():
        labels = list(recs[0]["variants"])
        base = labels[0]
        rows = []
        for label in labels:
            vals = [_g(r["variants"].get(label), "e2e_eps") for r in recs]
            bases = [_g(r["variants"].get(base), "e2e_eps") for r in recs]
            ratio = [v / b if v and b else None for v, b in zip(vals, bases)]
            walls = [_g(r["variants"].get(label), "process_wall_s") for r in recs]
            base_walls = [_g(r["variants"].get(base), "process_wall_s") for r in recs]
            wall_ratio = [b / w if w and b else None for w, b in zip(walls, base_walls)]
            rss = [_g(r["variants"].get(label), "peak_rss_mb") for r in recs]
            failed = sum(1 for r in recs if "failed" in (r["variants"].get(label) or {}))
            rows.append([label, span(vals), pct_span(ratio), span(walls), pct_span(wall_ratio),
                         span(rss), f"{failed} failed" if failed else ""])
        best = med([_g(r["variants"].get(MP_LABEL), "e2e_eps") / _g(r["variants"][base],
                                                                    "e2e_eps")
                    for r in recs if _g(r["variants"].get(MP_LABEL), "e2e_eps") and
                    _g(r["variants"][base], "e2e_eps")])
        out += [f"## Multi-process DirectRunner, {model} model ({n:,} records, "
                "TFRecord -> jsonl)", "",
                "ratio = this variant's e2e examples/s (run() wall, imports excluded) / one "
                "process's, within one round; the worker processes import TensorFlow and load "
                "the model inside run(), the single process before it, so the process-wall "
                "columns (spawn to exit, everything included) are given too. Peak RSS is the "
                "largest single process (ru_maxrss), not the sum.", "",
                markdown_table(["variant", "ex/s e2e", "vs 1 process", "process wall s",
                                "vs 1 process (wall)", "peak RSS MB", ""], rows), ""]
        if model == "heavy" and best is not None:
            out += [f"target (multi-process not slower than one process): "
                    f"{'met' if best >= 1.0 else 'NOT met'} at {n:,} records "
                    f"({pct(best)}, {MP_LABEL} with default settings, median over rounds).", ""]
    for model in dict.fromkeys(model for model, _ in by_model):
        out += multiprocess_lines([r for r in all_recs if r.get("model", "heavy") == model],
                                  model)
    return out


def multiprocess_lines(recs, model: str) -> list[str]:
    """Each variant's line run() s = F + c × records through its median run at each size:
    what its start-up costs once (F) apart from what each record costs (c), and at which
    input sizes it is not slower than one process (see _not_slower_when)."""
    if len({r["rows"] for r in recs}) < 2:
        return []
    labels = list(recs[0]["variants"])
    sizes = sorted({r["rows"] for r in recs})
    # through each size's median run (like every other figure here: a slow round of the host
    # does not tilt the line)
    fits = {label: linear_fit([(n, med([_g(r["variants"].get(label), "run_s")
                                        for r in recs if r["rows"] == n])) for n in sizes])
            for label in labels}
    base = fits[labels[0]]
    if base is None:
        return []
    rows, verdict = [], None
    for label in labels[1:]:
        f = fits[label]
        if f is None:
            rows.append([label, "-", "-", "-", "-", "-"])
            continue
        extra, dc = f[0] - base[0], base[1] - f[1]  # dc > 0: each record is cheaper here
        when = _not_slower_when(extra, dc)
        rows.append([label, f"{f[0]:.2f}", f"{f[1] * 1e6:.1f}", pct(base[1] / f[1]),
                     f"{extra:+.2f} s", when])
        if label == MP_LABEL:
            verdict = (base[1] / f[1], extra, when)
    rows.insert(0, [labels[0], f"{base[0]:.2f}", f"{base[1] * 1e6:.1f}", "100%", "-", "-"])
    out = [f"### Start-up and per-record cost apart ({model} model; line through the median "
           f"run at {' and '.join(f'{n:,}' for n in sizes)} records)", "",
           "run() s = F + c × records per variant. Per record = one process's c / this "
           "variant's c (above 100%: each record is cheaper). The last column solves "
           "F + c × n <= one process's F + c × n for n.", "",
           markdown_table(["variant", "F s", "c µs/record", "per record vs 1 process",
                           "F vs 1 process", "not slower than 1 process"], rows), ""]
    if verdict and model == "heavy":
        per_rec, extra, when = verdict
        out += [f"{MP_LABEL}: each record at {pct(per_rec)} of one process's speed, "
                f"{extra:+.2f} s of start-up (the workers' interpreter, Beam and TensorFlow "
                f"imports and model loads); not slower than one process {when}.", ""]
    return out


def _not_slower_when(extra_fixed: float, cheaper_per_record: float) -> str:
    """For which input sizes n a variant with `extra_fixed` s more start-up and each record
    `cheaper_per_record` s cheaper than the baseline is not slower: extra <= cheaper × n."""
    def n():  # 3 significant figures
        return f"{float(f'{extra_fixed / cheaper_per_record:.3g}'):,.0f}"
    if cheaper_per_record > 0:
        return f"from {n()} records" if extra_fixed > 0 else "at every size"
    if cheaper_per_record < 0:
        return f"up to {n()} records" if extra_fixed < 0 else "at no size"
    return "at every size" if extra_fixed <= 0 else "at no size"


def rerender(path: str) -> int:
    with open(path) as fh:
        saved = json.load(fh)
    args = argparse.Namespace(**saved["args"])
    bench = Bench(args)
    for k in bench.results:
        bench.results[k] = saved.get(k, [])
    argv = saved["args"].get("argv", [])
    print(report(bench, argv, saved.get("machine"), saved.get("date")))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_results:
        return rerender(args.from_results)
    args.argv = argv
    bench = Bench(args)
    log(f"work dir {args.work_dir}")
    if args.code != "worktree":
        args.commit = common.snapshot_code(os.path.join(args.work_dir, "code"), args.code)
        log(f"measuring commit {args.commit[:10]} (exported to {common.CODE_DIR})")
    else:
        args.commit = "worktree"
    start = time.time()
    bench.prepare()
    for section in SECTIONS:
        if section in args.only:
            getattr(bench, f"run_{section}")()
    text = report(bench, argv)
    text += f"\n(total benchmark time {time.time() - start:.0f} s; logs in {args.work_dir})\n"
    with open(os.path.join(args.work_dir, "report.md"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
