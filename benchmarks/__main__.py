"""`python -m benchmarks [--quick] [options]` (or `make bench ARGS=...`): measure and print tables.

Sections (`--only`, default all):
  main          per model size x input format: (a) TF alone, (b) this pipeline per output
                format, (c) Beam RunInference peer; ratios within each round against the
                faster of two TF-alone runs bracketing it, median (min–max) over --repeats
                rounds, and the CPU cost per record of each
  scaling       records vs µs/record and peak RSS (small model, TFRecord -> jsonl), a
                least-squares line through every run, and Beam's own smallest jobs
                (benchmarks.beam_floor) against the fixed cost that line allows
  startup       100-record input: process start -> first prediction, minus the TF import;
                and `python -m pipeline` itself from spawn to exit
  multiprocess  heavy model: one process vs --direct_num_workers=2 multi_processing vs one
                process with --concurrent_model_calls 2, each with TF's own thread pools and
                with 1 intra-op thread, at each of --mp_rows; over several sizes each
                variant's start-up and per-record cost are fitted apart
  batch         --batch_size sweep (small TFRecord/CSV, heavy TFRecord): e2e examples/s per
                batch size, relative to the default within each round
  split         one large file per input format (--split_rows records, small model): read
                whole (--split_bytes 0, the serial reader) vs in ranges of --split_bytes_bench
                bytes, in one process and with 2 workers, and the whole file with 2 workers
                with and without --reshuffle_batches; CPU µs/record of the ranged reader against
                the serial one, and how many worker processes read the file (its row of the
                run's metrics/shard_latency)

Every measurement is a fresh subprocess (see benchmarks.common). Models and data are cached in
--data_dir; outputs and logs go to --work_dir. The report is printed and written to
WORK_DIR/report.md (raw numbers: WORK_DIR/results.json).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

from benchmarks import common
from benchmarks import data as bdata
from benchmarks.common import ChildFailed, run_child
from benchmarks.report import MP_LABEL, SPLIT_LABELS, machine, report

__all__ = ["SECTIONS", "DEFAULTS", "QUICK", "Bench", "parse_args", "main"]

SECTIONS = ("main", "scaling", "startup", "multiprocess", "batch", "split")
# Sizes: about 10 s of TF-alone work per run on a 2-core host, so the main table measures
# throughput; the ~1 s a job spends before its first prediction has its own section (startup).
# Multi-process at 120k and 480k: the workers' start-up (seconds) needs input to amortise; at
# 100 records a run is almost all start-up, which pins each variant's fixed cost.
# Split: 16 MiB ranges cut the 1M-record files (240 MiB TFRecord, 185 MiB CSV) into 15 and 12
# ranges (--quick: 2 MiB, as many for 100k records).
DEFAULTS = {"rows": 1_000_000, "heavy_rows": 120_000, "repeats": 3,
            "scaling": "100000,500000,1000000,2000000", "output_formats": "jsonl,csv,parquet",
            "mp_rows": "100,120000,480000", "batch_sizes": "1024,2048,4096,8192,16384,auto",
            "split_rows": 1_000_000, "split_bytes_bench": 16 << 20}
QUICK = {"rows": 100_000, "heavy_rows": 10_000, "repeats": 1,
         "scaling": "50000,200000", "output_formats": "jsonl", "mp_rows": "100,10000",
         "batch_sizes": "2048,8192", "split_rows": 100_000, "split_bytes_bench": 2 << 20}
PEER_FORMATS = ("tfrecord", "csv")  # the input formats TF alone and RunInference read
MP_ARGS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
ONE_THREAD = ["--tf_intra_op_threads=1"]
TWO_CALLS = ["--concurrent_model_calls=2"]
# TensorFlow's own thread pools in every process first, then the cores split: 1 intra-op
# thread per worker process / per call in flight
MP_VARIANTS = [("1 process", []), (MP_LABEL, MP_ARGS),
               ("1 process, --concurrent_model_calls 2", TWO_CALLS),
               (MP_LABEL + ", --tf_intra_op_threads 1", MP_ARGS + ONE_THREAD),
               ("1 process, --concurrent_model_calls 2 --tf_intra_op_threads 1",
                TWO_CALLS + ONE_THREAD)]
BATCH_CASES = (("small", "tfrecord"), ("small", "csv"), ("heavy", "tfrecord"))


def split_variants(split_bytes: int) -> list[tuple[str, list[str]]]:
    """The split section's variants, in SPLIT_LABELS order: the serial reader, the ranged one
    in one process and with 2 workers, and the whole file with 2 workers without and with the
    Reshuffle of record batches before the model."""
    whole, ranged = ["--split_bytes=0"], [f"--split_bytes={split_bytes}"]
    extras = [whole, ranged, ranged + MP_ARGS, whole + ["--reshuffle_batches=off"] + MP_ARGS,
              whole + ["--reshuffle_batches=on"] + MP_ARGS]
    return list(zip(SPLIT_LABELS, extras))


def file_readers(out_dir: str, path: str) -> dict:
    """`records_by_worker` ({"host:pid": records}) of the input file `path` from a finished
    run's metrics/shard_latency-*.jsonl ({} when the file has no row)."""
    name = os.path.basename(path)
    for part in sorted(glob.glob(os.path.join(out_dir, "metrics", "shard_latency-*.jsonl"))):
        with open(part) as fh:
            for line in fh:
                row = json.loads(line) if line.strip() else {}
                if os.path.basename(str(row.get("shard", ""))) == name:
                    return {"records_by_worker": row.get("records_by_worker")}
    return {}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"small sizes, one round: {QUICK}")
    p.add_argument("--rows", type=int,
                   help=f"records for the small model (default {DEFAULTS['rows']})")
    p.add_argument("--heavy_rows", type=int,
                   help=f"records for the heavy model (default {DEFAULTS['heavy_rows']})")
    p.add_argument("--repeats", type=int, help="rounds of every section (default 3)")
    p.add_argument("--models", default="small,heavy", help="models of the main section")
    p.add_argument("--formats", default="tfrecord,csv,parquet",
                   help="input formats (TF alone and RunInference read tfrecord and csv)")
    p.add_argument("--output_formats", help="pipeline output formats (default "
                                            f"{DEFAULTS['output_formats']}); "
                                            "the RunInference peer writes the first")
    p.add_argument("--scaling", help="record counts for the scaling series, comma-separated "
                                     f"(default {DEFAULTS['scaling']})")
    p.add_argument("--mp_rows", help="record counts for the multiprocess section (default "
                                     f"{DEFAULTS['mp_rows']})")
    p.add_argument("--batch_sizes", help=f"--batch_size values for the batch section (default "
                                         f"{DEFAULTS['batch_sizes']})")
    p.add_argument("--split_rows", type=int, help="records of the split section's one large "
                                                  f"file (default {DEFAULTS['split_rows']:,})")
    p.add_argument("--split_bytes_bench", type=int,
                   help="--split_bytes of the split section's ranged runs (default "
                        f"{DEFAULTS['split_bytes_bench']:,} = 16 MiB)")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
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
    for k, v in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    def items(text, kind=str):
        return [x if x == "auto" else kind(x) for x in text.split(",") if x]
    args.models, args.formats = items(args.models), items(args.formats)
    args.output_formats, args.only = items(args.output_formats), items(args.only)
    args.mp_rows, args.batch_sizes = items(args.mp_rows, int), items(args.batch_sizes, int)
    args.scaling = [bdata.scaling_rows(n) for n in items(args.scaling, int)]
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
    def _child(self, module, args, label, writes=False, inspect=None):
        """One child process; with `writes`, "{out}" in args is a fresh output dir, removed
        afterwards unless --keep_outputs; `inspect(out_dir)` -> dict, merged into the result,
        reads that dir before it goes."""
        self.n += 1
        name = f"{self.n:03d}-{label}"
        out = os.path.join(self.work, "out", name)
        if writes:
            shutil.rmtree(out, ignore_errors=True)
            args = [out if a == "{out}" else a for a in args]
        try:
            result = run_child(module, args, os.path.join(self.work, "logs"), name)
            if inspect is not None:
                result.update(inspect(out))
            return result
        finally:
            if writes and not self.args.keep_outputs:
                shutil.rmtree(out, ignore_errors=True)

    def tf_alone(self, model, pattern, fmt):
        return self._child("benchmarks.tf_alone",
                           ["--model", model, "--input", pattern, "--format", fmt], f"tf-{fmt}")

    def pipeline(self, model, pattern, out_fmt, extra=(), label="pipe", cli=False,
                 inspect=None):
        """One job in a fresh process; `cli`: `python -m pipeline` itself, spawn to exit;
        `inspect`: see _child."""
        argv = (["--cli"] if cli else []) + [
            "--", "--model", model, "--input", pattern, "--output", "{out}", "--key_field",
            "id", "--output_format", out_fmt] + list(extra) + self.args.pipeline_args.split()
        return self._child("benchmarks.pipeline_child", argv, f"{label}-{out_fmt}", writes=True,
                           inspect=inspect)

    def peer(self, model, pattern, in_fmt, out_fmt):
        return self._child("benchmarks.runinference",
                           ["--model", model, "--input", pattern, "--input_format", in_fmt,
                            "--output", "{out}", "--output_format", out_fmt],
                           f"ri-{in_fmt}-{out_fmt}", writes=True)

    def model(self, name):
        return bdata.model_base(self.args.data_dir, name)

    def rows(self, model):
        return self.args.rows if model == "small" else self.args.heavy_rows

    def pattern(self, rows, fmt="tfrecord"):
        return bdata.patterns(bdata.data_dir(self.args.data_dir, rows))[fmt]

    def run_variants(self, rec, model, pattern, variants, what, rnd, label, inspect=None):
        """Each (name, extra flags) of `variants`: one job on `pattern` -> jsonl, its result in
        rec["variants"][name]; a failed job is kept as {"failed": its log's tail}."""
        for name, extra in variants:
            log(f"{what}: {name} (round {rnd + 1}/{self.args.repeats})")
            try:
                rec["variants"][name] = self.pipeline(self.model(model), pattern, "jsonl",
                                                      extra, label=label, inspect=inspect)
            except ChildFailed as e:
                log(f"  FAILED: {str(e)[:2000]}")
                rec["variants"][name] = {"failed": str(e)[-2000:]}

    def save(self):
        with open(os.path.join(self.work, "results.json"), "w") as fh:
            json.dump({"args": vars(self.args), "machine": machine(),
                       "date": time.strftime('%Y-%m-%d %H:%M %Z'), **self.results}, fh,
                      indent=1, default=str)

    # -- sections ----------------------------------------------------------------------------
    def prepare(self):
        a = self.args
        rows, models = set(), set()
        if "main" in a.only:
            rows |= {self.rows(m) for m in a.models}
            models |= set(a.models)
        if "multiprocess" in a.only:
            rows |= set(a.mp_rows)
            models.add("heavy")
        if "batch" in a.only:
            rows |= {a.rows, a.heavy_rows}
            models |= {"small", "heavy"}
        if "startup" in a.only:
            rows.add(100)
        if {"scaling", "startup", "split"} & set(a.only):
            models.add("small")
        scaling = a.scaling if "scaling" in a.only else []
        split = [a.split_rows] if "split" in a.only else []
        cmd = ["--root", a.data_dir, "--models", ",".join(sorted(models)),
               "--scaling", ",".join(map(str, scaling))]
        for r in sorted(rows):
            cmd += ["--rows", str(r)]
        for r in split:
            cmd += ["--split", str(r)]
        log(f"preparing models {sorted(models)} and data {sorted(rows)} "
            f"(+ scaling {scaling}, + split {split}) in {a.data_dir}")
        out = run_child("benchmarks.data", cmd, os.path.join(self.work, "logs"), "data")
        log(f"data ready ({out['seconds']}s)")

    def run_main(self):
        a = self.args
        for rnd in range(a.repeats):
            for m in a.models:
                for f in a.formats:
                    pattern = self.pattern(self.rows(m), f)
                    rec = {"round": rnd, "model": m, "format": f, "rows": self.rows(m),
                           "pipeline": {}, "peer": {}}
                    # TF alone and RunInference read TFRecord and CSV; Parquet input is
                    # compared with the pipeline's CSV input of the same round (report.py)
                    peers = f in PEER_FORMATS
                    log(f"round {rnd + 1}/{a.repeats} {m} {f} ({rec['rows']} rows)" +
                        (": TF alone" if peers else ""))
                    before = self.tf_alone(self.model(m), pattern, f) if peers else None
                    for of in a.output_formats:
                        log(f"  pipeline -> {of}")
                        rec["pipeline"][of] = self.pipeline(self.model(m), pattern, of)
                    if peers and not a.no_peer:
                        of = a.output_formats[0]
                        log(f"  RunInference peer -> {of}")
                        rec["peer"][of] = self.peer(self.model(m), pattern, f, of)
                    if peers:
                        log("  TF alone again")
                        rec["tf"] = {"before": before,
                                     "after": self.tf_alone(self.model(m), pattern, f)}
                    for kind in ("pipeline", "peer"):
                        for of, r in rec[kind].items():
                            if r["records"] != rec["rows"]:
                                log(f"WARNING: {kind} {m} {f}->{of} wrote {r['records']} "
                                    f"predictions of {rec['rows']} records")
                    self.results["main"].append(rec)
                    self.save()

    def run_scaling(self):
        a = self.args
        for rnd in range(a.repeats):
            for rows in a.scaling:
                pattern = bdata.patterns(bdata.scaling_dir(a.data_dir, rows))["tfrecord"]
                log(f"scaling {rows} records (round {rnd + 1}/{a.repeats})")
                r = self.pipeline(self.model("small"), pattern, "jsonl", label=f"scale{rows}")
                self.results["scaling"].append(dict(r, rows=rows, round=rnd))
                self.save()
            log(f"scaling: Beam's own fixed cost per job (round {rnd + 1}/{a.repeats})")
            floor = self._child("benchmarks.beam_floor", [], "beam-floor")
            self.results["scaling_floor"].append(dict(floor, round=rnd))
            self.save()

    def run_startup(self):
        a = self.args
        for rnd in range(a.repeats):
            log(f"start-up, 100 records (round {rnd + 1}/{a.repeats})")
            r = self.pipeline(self.model("small"), self.pattern(100), "jsonl", label="startup")
            r["cli"] = self.pipeline(self.model("small"), self.pattern(100), "jsonl",
                                     label="startup-cli", cli=True)
            self.results["startup"].append(dict(r, round=rnd))
            self.save()

    def run_multiprocess(self):
        a = self.args
        for rnd in range(a.repeats):
            for rows in a.mp_rows:
                rec = {"round": rnd, "model": "heavy", "rows": rows, "variants": {}}
                self.run_variants(rec, "heavy", self.pattern(rows), MP_VARIANTS,
                                  f"multiprocess heavy {rows} records", rnd, "mp")
                self.results["multiprocess"].append(rec)
                self.save()

    def run_batch(self):
        a = self.args
        for rnd in range(a.repeats):
            for m, f in BATCH_CASES:
                rec = {"round": rnd, "model": m, "format": f, "rows": self.rows(m), "sizes": {}}
                for size in a.batch_sizes:
                    log(f"batch size {size}: {m} {f} (round {rnd + 1}/{a.repeats})")
                    rec["sizes"][str(size)] = self.pipeline(
                        self.model(m), self.pattern(self.rows(m), f), "jsonl",
                        [f"--batch_size={size}"], label="bs")
                self.results["batch"].append(rec)
                self.save()

    def run_split(self):
        a = self.args
        files = bdata.split_files(a.data_dir, a.split_rows)
        for f in a.formats:  # read once ahead: every variant, the first too, reads from the cache
            with open(files[f], "rb") as fh:
                while fh.read(16 << 20):
                    pass
        for rnd in range(a.repeats):
            for f in a.formats:
                rec = {"round": rnd, "model": "small", "format": f, "rows": a.split_rows,
                       "split_bytes": a.split_bytes_bench, "variants": {}}
                self.run_variants(rec, "small", files[f], split_variants(a.split_bytes_bench),
                                  f"split: one {f} file of {a.split_rows} records", rnd,
                                  f"split-{f}",
                                  inspect=lambda out, path=files[f]: file_readers(out, path))
                for label, r in rec["variants"].items():
                    if r.get("records", a.split_rows) != a.split_rows:
                        log(f"WARNING: split {f} {label} wrote {r['records']} predictions of "
                            f"{a.split_rows} records")
                self.results["split"].append(rec)
                self.save()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_results:
        with open(args.from_results) as fh:
            saved = json.load(fh)
        print(report(saved, argparse.Namespace(**saved["args"]), saved.get("machine"),
                     saved.get("date")))
        return 0
    args.argv = argv
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="batch-predict-bench-")
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
    text = report(bench.results, args)
    text += f"\n(total benchmark time {time.time() - start:.0f} s; logs in {args.work_dir})\n"
    with open(os.path.join(args.work_dir, "report.md"), "w") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
