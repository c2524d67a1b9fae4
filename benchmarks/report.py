"""The benchmark report: markdown tables from the raw results of `python -m benchmarks`.

Pure functions of the saved results (WORK_DIR/results.json), so a report can be re-rendered
(`python -m benchmarks --from_results FILE`) and each rule is tested on its own.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

from benchmarks.common import fmt, markdown_table, med, pct, ratio_span, ratios, span

__all__ = ["TARGETS", "MP_LABEL", "SPLIT_LABELS", "SPLIT_CPU_TARGET", "machine", "report",
           "tf_reference", "valid_rounds", "main_tables", "scaling_table", "linear_fit",
           "startup_table", "multiprocess_table", "batch_table", "split_table"]

# (b)/(a) end to end that the pipeline must reach, per model size
TARGETS = {"small": 0.50, "heavy": 0.90}
MP_LABEL = "2 workers, multi_processing"  # the variant judged against one process
# the split section's variants, (1) to (5): see benchmarks.__main__.split_variants
SPLIT_LABELS = ("1 process, whole file", "1 process, split", "2 workers, split",
                "2 workers, whole file, no reshuffle", "2 workers, whole file, reshuffled")
# (2)/(1) CPU µs per record at most this: the ranged reader costs at most 5% more per record
SPLIT_CPU_TARGET = 1.05


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh
                               if line.startswith("model name"))
        with open("/proc/meminfo") as fh:
            info["mem_gb"] = round(int(fh.readline().split()[1]) / 1e6, 1)
    except (OSError, StopIteration):
        pass
    from importlib.metadata import version
    info["tensorflow"] = version("tensorflow")
    info["apache_beam"] = version("apache-beam")
    return info


def _g(r, key):
    return None if r is None or "failed" in r else r.get(key)


def report(results: dict, args, m: dict | None = None, date: str | None = None) -> str:
    m = m or machine()
    commit = args.commit if args.commit == "worktree" else args.commit[:10]
    out = [f"# batch-predict benchmarks — {date or time.strftime('%Y-%m-%d %H:%M %Z')}", "",
           f"machine: {m.get('cpu', '?')}, {m['cpus']} cores, {m.get('mem_gb', '?')} GB; "
           f"Python {m['python']}, TensorFlow {m.get('tensorflow')}, Beam {m.get('apache_beam')}"
           f"; code measured: {commit}",
           f"command: python -m benchmarks {' '.join(args.argv)}".rstrip(), ""]
    if getattr(args, "quick", False):
        out += ["**--quick**: sizes this small are dominated by fixed costs (start-up, graph, "
                "finalize: ~2 s per run); the target columns are only meaningful for the full "
                "run.", ""]
    if results.get("main"):
        out += main_tables(results["main"], args.output_formats)
    if results.get("scaling"):
        out += scaling_table(results["scaling"], results.get("scaling_floor"))
    if results.get("startup"):
        out += startup_table(results["startup"])
    if results.get("multiprocess"):
        out += multiprocess_table(results["multiprocess"])
    if results.get("batch"):
        out += batch_table(results["batch"])
    if results.get("split"):
        out += split_table(results["split"])
    return "\n".join(out) + "\n"


# --- main: TF alone vs the pipeline vs RunInference ------------------------------------------
def tf_reference(before: dict, after: dict) -> dict:
    """TF alone at its best in the round: the faster of the runs before and after (b) and (c).

    Some TF-alone runs leave a core idle for the whole run (half the throughput, ~1 core busy
    instead of ~2); a mean of the two runs would flatter the pipeline. The faster one can only
    make the ratios stricter."""
    best = max((before, after), key=lambda r: r.get("steady_eps") or 0)
    return dict(best, cpu_us_per_record=min(r["cpu_us_per_record"] for r in (before, after)))


def valid_rounds(rs: list[dict]) -> list[bool]:
    """A round counts for the target when its TF-alone reference kept the cores about as busy
    as the best TF-alone run of the group (>= 70%): both of its runs slowed down (see
    tf_reference) would flatter the pipeline."""
    runs = [x["tf"][k].get("cores_busy") for x in rs if x.get("tf")
            for k in ("before", "after")]
    runs = [c for c in runs if c]
    if not runs:
        return [True] * len(rs)
    best = max(runs)
    return [(_reference(x).get("cores_busy") or best) >= 0.7 * best for x in rs]


def _reference(rec: dict) -> dict:
    """TF alone of the round ({} for an input format it does not read: Parquet)."""
    if not rec.get("tf"):
        return {}
    return tf_reference(rec["tf"]["before"], rec["tf"]["after"])


def main_tables(recs, output_formats) -> list[str]:
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["model"], r["format"]), []).append(r)
    rows, cpu_rows = [], []
    for (model, f), rs in groups.items():
        refs = [_reference(x) for x in rs]
        tf = [ref.get("steady_eps") for ref in refs]
        tf_cpu = [ref.get("cpu_us_per_record") for ref in refs]
        valid = valid_rounds(rs)
        for of in output_formats:
            pipes = [x["pipeline"].get(of) for x in rs]
            peers = [x["peer"].get(of) for x in rs]
            e2e = [_g(p, "e2e_eps") for p in pipes]
            peer = [_g(p, "e2e_eps") for p in peers]
            target = TARGETS.get(model) if any(tf) else None
            ok = med([r for r, v in zip(ratios(e2e, tf), valid) if v])
            verdict = f"{pct(target)}: {'met' if ok and ok >= target else 'NOT met'}" + (
                f" ({valid.count(False)} of {len(rs)} rounds excluded)" if not all(valid)
                else "") if target else "-"
            steady = [_g(p, "steady_eps") for p in pipes]
            head = fmt(med([_g(p, "run_to_first_pred_s") for p in pipes]))
            tail = fmt(med([_g(p, "last_pred_to_end_s") for p in pipes]))
            rows.append([model, f, of, f"{rs[0]['rows']:,}", span(tf),
                         fmt(med([ref.get("cores_busy") for ref in refs])), span(e2e),
                         ratio_span(e2e, tf), span(steady), ratio_span(steady, tf), span(peer),
                         ratio_span(peer, tf), ratio_span(e2e, peer), f"{head} / {tail}",
                         fmt(med([_g(p, "peak_rss_mb") for p in pipes])), verdict])
            pipe_cpu = [_g(p, "cpu_us_per_record") for p in pipes]
            peer_cpu = [_g(p, "cpu_us_per_record") for p in peers]
            cpu_rows.append([model, f, of, span(tf_cpu), span(pipe_cpu),
                             ratio_span(tf_cpu, pipe_cpu), span(peer_cpu),
                             ratio_span(tf_cpu, peer_cpu)])
    header = ["model", "input", "output", "records", "(a) TF alone ex/s", "(a) cores busy",
              "(b) pipeline ex/s e2e", "(b)/(a) e2e", "(b) ex/s steady", "(b)/(a) steady",
              "(c) RunInference ex/s", "(c)/(a)", "(b)/(c) e2e", "(b) head / tail s",
              "pipeline RSS MB", "target"]
    n = max(len(v) for v in groups.values())
    return ["## Throughput, ratios within each round", "",
            f"median (min–max) over {n} round(s); every ratio is computed within one round, "
            "then summarised. (a) = TF alone steady-state (after its first batch, model load "
            "excluded, nothing written, timed up to its last batch's outputs; the faster of "
            "one run before and one after (b) and (c) in the same round; cores busy = its "
            "CPU-seconds per second, median); (b) e2e = records / wall time of "
            "`pipeline.run.run()` (plan + model load + graph + read/parse/predict/write + "
            "metrics + finalize; the TF/Beam imports excluded); (b) steady = records after the "
            "first model call / (end of run() − end of the first model call); (c) = Beam "
            "RunInference peer, e2e like (b). head = run() start → first model call done; "
            "tail = last model call → run() returns (writes, metrics, finalize). The target "
            "column compares the median (b)/(a) e2e with the target, over the rounds whose (a) "
            "kept the cores at least 70% as busy as the best TF-alone run of the row.", "",
            markdown_table(header, rows), "",
            "### CPU cost per record (less sensitive to other load on the machine)", "",
            "user+system CPU µs per record over the measured span (TF alone: from model load; "
            "(b)/(c): run()); efficiency = (a) CPU / (b or c) CPU, within one round.", "",
            markdown_table(["model", "input", "output", "(a) TF alone CPU µs/rec",
                            "(b) pipeline CPU µs/rec", "(a)/(b) efficiency",
                            "(c) RunInference CPU µs/rec", "(a)/(c)"], cpu_rows), ""] + \
        parquet_vs_csv(groups, output_formats)


def parquet_vs_csv(groups: dict, output_formats) -> list[str]:
    """Parquet input against CSV input of the same rows, within each round: TF alone reads no
    Parquet, so the pipeline's own CSV path is the reference (target: at least as fast per
    record)."""
    rows = []
    for (model, f), rs in groups.items():
        csv = {x["round"]: x for x in groups.get((model, "csv"), [])}
        if f != "parquet" or not csv:
            continue
        for of in output_formats:
            pairs = [(x["pipeline"].get(of), csv[x["round"]]["pipeline"].get(of))
                     for x in rs if x["round"] in csv]
            pq_e2e, csv_e2e = [_g(p, "e2e_eps") for p, _ in pairs], [_g(c, "e2e_eps")
                                                                    for _, c in pairs]
            pq_cpu = [_g(p, "cpu_us_per_record") for p, _ in pairs]
            csv_cpu = [_g(c, "cpu_us_per_record") for _, c in pairs]
            ok = med(ratios(pq_e2e, csv_e2e))
            rows.append([model, of, f"{rs[0]['rows']:,}", span(pq_e2e), span(csv_e2e),
                         ratio_span(pq_e2e, csv_e2e), span(pq_cpu), span(csv_cpu),
                         ratio_span(csv_cpu, pq_cpu),
                         f"100%: {'met' if ok and ok >= 1 else 'NOT met'}" if ok else "-"])
    if not rows:
        return []
    return ["### Parquet input against CSV input (same rows, same round)", "",
            "(b) e2e ex/s of the pipeline reading the Parquet shards and the CSV shards of the "
            "same rows; CPU ratio = CSV CPU / Parquet CPU per record (above 100%: Parquet is "
            "cheaper). Target: Parquet in at least as fast per record as CSV in.", "",
            markdown_table(["model", "output", "records", "Parquet in ex/s e2e",
                            "CSV in ex/s e2e", "Parquet/CSV e2e", "Parquet CPU µs/rec",
                            "CSV CPU µs/rec", "CSV/Parquet CPU", "target"], rows), ""]


# --- scaling -----------------------------------------------------------------------------------
def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares y = a + b·x over (x, y) points: (a, b); None without two distinct x."""
    points = [(x, y) for x, y in points if y is not None]
    if len({x for x, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression(*zip(*points))
    return intercept, slope


def scaling_table(recs, floors=None) -> list[str]:
    by: dict = {}
    for r in recs:
        by.setdefault(r["rows"], []).append(r)
    sizes = sorted(by)
    base_us = med([x["run_s"] / x["rows"] * 1e6 for x in by[sizes[0]]])
    base_rss = med([x["peak_rss_mb"] for x in by[sizes[0]]])
    rows, marginals = [], []
    for i, n in enumerate(sizes):
        rs = by[n]
        us = [x["run_s"] / n * 1e6 for x in rs]
        step = "-"
        if i:  # cost of the records added since the previous size
            prev = sizes[i - 1]
            marginals.append((med([x["run_s"] for x in rs]) -
                              med([x["run_s"] for x in by[prev]])) / (n - prev) * 1e6)
            step = f"{marginals[-1]:.2f}"
        rss = [x["peak_rss_mb"] for x in rs]
        rows.append([f"{n:,}", span([x["run_s"] for x in rs]), span(us),
                     f"{100 * (med(us) / base_us - 1):+.0f}%", step,
                     span([x.get("cpu_us_per_record") for x in rs]),
                     span([1e6 / x["steady_eps"] for x in rs if x.get("steady_eps")]),
                     span(rss), f"{100 * (med(rss) / base_rss - 1):+.0f}%"])
    n0, n1 = sizes[0], sizes[-1]
    out = ["## Scaling (small model, TFRecord -> jsonl)", "",
           "marginal = (run() s − run() s of the previous size) / records added: the cost of "
           "each further record, with the fixed start-up (plan, model load, graph) taken out.",
           "",
           markdown_table(["records", "run() s", "µs/record e2e", "vs first",
                           "marginal µs/record", "CPU µs/record", "µs/record steady",
                           "peak RSS MB", "vs first"], rows), ""]
    if marginals:
        e2e_last = med([x["run_s"] for x in by[n1]]) / n1 * 1e6
        e2e_ok = abs(e2e_last / base_us - 1) <= 0.15
        why = "" if e2e_ok else (": it grows with the input" if e2e_last > base_us else
                                 ": the fixed start-up is spread over fewer records at the "
                                 "small end")
        spread = max(marginals) / min(marginals) - 1 if min(marginals) > 0 else float("inf")
        rss_ok = med([x["peak_rss_mb"] for x in by[n1]]) / base_rss - 1 < 0.20
        out += [f"Targets: e2e µs/record within 15% from {n0:,} to {n1:,} "
                f"({'met' if e2e_ok else 'NOT met'}{why}); marginal µs/record within 15% of "
                f"each other ({'met' if spread <= 0.15 else 'NOT met'}: {min(marginals):.2f}–"
                f"{max(marginals):.2f}); peak RSS growth < 20% "
                f"({'met' if rss_ok else 'NOT met'}).", ""]
    bound = None
    fit = linear_fit([(x["rows"], x["run_s"]) for x in recs])
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


# --- start-up ----------------------------------------------------------------------------------
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
    if clis:
        rows += [["`python -m pipeline` (imports where the CLI does): spawn → exit",
                  span([c.get("process_wall_s") for c in clis]) + " s"],
                 ["  of which interpreter exit after main() returned",
                  span([c["process_wall_s"] - c["main_returned_s"] for c in clis]) + " s"]]
    st = med([r.get("startup_s") for r in recs])
    return ["## Start-up (100-record TFRecord input, small model)", "",
            markdown_table(["", "median (min–max)"], rows), "",
            f"target: start-up under 5 s beyond the TF import: "
            f"{'met' if st is not None and st < 5 else 'NOT met'} ({fmt(st)} s).", ""]


# --- multi-process -----------------------------------------------------------------------------
def multiprocess_table(all_recs) -> list[str]:
    out = []
    by_size: dict = {}
    for r in all_recs:
        by_size.setdefault(r["rows"], []).append(r)
    for n, recs in by_size.items():
        labels = list(recs[0]["variants"])
        base = labels[0]

        def vals(label, key, rs=recs):
            return _variant_vals(rs, label, key)
        rows = []
        for label in labels:
            rows.append([label, span(vals(label, "e2e_eps")),
                         ratio_span(vals(label, "e2e_eps"), vals(base, "e2e_eps")),
                         span(vals(label, "process_wall_s")),
                         ratio_span(vals(base, "process_wall_s"), vals(label, "process_wall_s")),
                         span(vals(label, "peak_rss_mb")), _failed(recs, label)])
        best = med(ratios(vals(MP_LABEL, "e2e_eps"), vals(base, "e2e_eps")))
        out += [f"## Multi-process DirectRunner, heavy model ({n:,} records, "
                "TFRecord -> jsonl)", "",
                "ratio = this variant's e2e examples/s (run() wall, imports excluded) / one "
                "process's, within one round; the worker processes import TensorFlow and load "
                "the model inside run(), the single process before it, so the process-wall "
                "columns (spawn to exit, everything included) are given too. Peak RSS is the "
                "largest single process (ru_maxrss), not the sum.", "",
                markdown_table(["variant", "ex/s e2e", "vs 1 process", "process wall s",
                                "vs 1 process (wall)", "peak RSS MB", ""], rows), ""]
        if best is not None:
            out += [f"target (multi-process not slower than one process): "
                    f"{'met' if best >= 1.0 else 'NOT met'} at {n:,} records "
                    f"({pct(best)}, {MP_LABEL} with default settings, median over rounds).", ""]
    return out + _multiprocess_lines(all_recs)


def _variant_vals(recs, label, key) -> list:
    """`key` of variant `label` in each round (None where it failed or is missing)."""
    return [_g(r["variants"].get(label), key) for r in recs]


def _failed(recs, label) -> str:
    failed = sum(1 for r in recs if "failed" in (r["variants"].get(label) or {}))
    return f"{failed} failed" if failed else ""


def _multiprocess_lines(recs) -> list[str]:
    """Each variant's line run() s = F + c × records through its median run at each size:
    what its start-up costs once (F) apart from what each record costs (c), and at which
    input sizes it is not slower than one process (see _not_slower_when)."""
    sizes = sorted({r["rows"] for r in recs})
    if len(sizes) < 2:
        return []
    labels = list(recs[0]["variants"])
    # through each size's median run, so that one slow round of the host does not tilt the line
    fits = {label: linear_fit([(n, med([_g(r["variants"].get(label), "run_s")
                                        for r in recs if r["rows"] == n])) for n in sizes])
            for label in labels}
    base = fits[labels[0]]
    if base is None:
        return []
    rows = [[labels[0], f"{base[0]:.2f}", f"{base[1] * 1e6:.1f}", "100%", "-", "-"]]
    verdict = None
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
    out = ["### Start-up and per-record cost apart (heavy model; line through the median "
           f"run at {' and '.join(f'{n:,}' for n in sizes)} records)", "",
           "run() s = F + c × records per variant. Per record = one process's c / this "
           "variant's c (above 100%: each record is cheaper). The last column solves "
           "F + c × n <= one process's F + c × n for n.", "",
           markdown_table(["variant", "F s", "c µs/record", "per record vs 1 process",
                           "F vs 1 process", "not slower than 1 process"], rows), ""]
    if verdict:
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


# --- batch size --------------------------------------------------------------------------------
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
            runs = [r["sizes"].get(str(size)) for r in rs]
            bases = [_g(r["sizes"].get(base), "e2e_eps") for r in rs]
            vals = [_g(x, "e2e_eps") for x in runs]
            rows.append([model, f, f"{n:,}", size if size == "auto" else f"{size:,}",
                         span(vals), ratio_span(vals, bases),
                         span([_g(x, "steady_eps") for x in runs]),
                         span([_g(x, "peak_rss_mb") for x in runs])])
    return [f"## --batch_size (TFRecord/CSV -> jsonl; ratio to --batch_size {int(base):,} within "
            "each round)", "",
            markdown_table(["model", "input", "records", "--batch_size", "ex/s e2e",
                            f"vs {int(base):,}", "ex/s steady", "peak RSS MB"], rows), ""]



# --- one large file: the ranged reader ---------------------------------------------------------
def _readers(run) -> tuple:
    """(worker processes that read the file, the largest one's share of its records) of one
    run, from its records_by_worker; (None, None) without it."""
    by = _g(run, "records_by_worker")
    counts = [n for n in (by or {}).values() if n]
    if not counts:
        return None, None
    return len(counts), max(counts) / sum(counts)


def _pct1(v) -> str:
    """A ratio in percent to one decimal: near a 105% target, 104.6% is not 105%."""
    return f"{100 * v:.1f}%"


def _miscounted(recs, label) -> str:
    """Rounds where variant `label` wrote another number of predictions than the file has."""
    n = sum(1 for r in recs if _g(r["variants"].get(label), "records") not in (None, r["rows"]))
    return f"{n} with other record counts" if n else ""


def split_table(recs) -> list[str]:
    groups: dict = {}
    for r in recs:
        groups.setdefault((r["format"], r["rows"], r["split_bytes"]), []).append(r)
    rows, ratio_rows, verdicts = [], [], []
    one, ranged, two = SPLIT_LABELS[:3]
    for (f, n, split_bytes), rs in groups.items():
        def vals(label, key, rs=rs):
            return _variant_vals(rs, label, key)
        for k, label in enumerate(SPLIT_LABELS, 1):
            spread = [_readers(r["variants"].get(label)) for r in rs]
            rows.append([f, f"({k}) {label}", span(vals(label, "e2e_eps")),
                         span(vals(label, "cpu_us_per_record")),
                         span(vals(label, "process_wall_s")), span(vals(label, "peak_rss_mb")),
                         span([x[0] for x in spread], lambda v: f"{v:g}"),
                         span([x[1] for x in spread], pct),
                         ", ".join(filter(None, (_failed(rs, label), _miscounted(rs, label))))])
        cpu = ratios(vals(ranged, "cpu_us_per_record"), vals(one, "cpu_us_per_record"))
        cpu_med = med(cpu)
        verdict = "-" if cpu_med is None else "met" if cpu_med <= SPLIT_CPU_TARGET else "NOT met"
        verdicts.append(f"{f} {verdict}" + (f" ({_pct1(cpu_med)})" if cpu_med else ""))
        ratio_rows.append([f, f"{n:,}", f"{split_bytes:,}", span(cpu, _pct1), verdict,
                           ratio_span(vals(two, "e2e_eps"), vals(ranged, "e2e_eps")),
                           ratio_span(vals(two, "e2e_eps"), vals(one, "e2e_eps")),
                           ratio_span(vals(two, "process_wall_s"), vals(ranged, "process_wall_s")),
                           ratio_span(vals(two, "process_wall_s"), vals(one, "process_wall_s"))])
    n_rounds = max(len(v) for v in groups.values())
    return ["## One large file: reading it in ranges (small model, -> jsonl)", "",
            f"median (min–max) over {n_rounds} round(s). One plain file per input format, "
            "read (1) whole by one reader (`--split_bytes 0`, the serial reader), (2) in ranges "
            "of `--split_bytes` bytes in one process, (3) the same with "
            "`--direct_num_workers=2 --direct_running_mode=multi_processing`, and whole with 2 "
            "workers (4) without and (5) with the Reshuffle of record batches before the model "
            "(`--reshuffle_batches off|on`). ex/s e2e = records / run() wall (imports "
            "excluded); CPU µs/record over run() (the workers' CPU included once reaped); "
            "process wall = spawn to exit. Readers = worker processes with records of the file "
            "in its metrics/shard_latency row (`records_by_worker`); largest = the share of the "
            "busiest one.", "",
            markdown_table(["input", "variant", "ex/s e2e", "CPU µs/record", "process wall s",
                            "peak RSS MB", "readers", "largest reader", ""], rows), "",
            "### Ratios within each round", "",
            "(2)/(1) CPU = the ranged reader's CPU µs per record against the serial one's "
            f"(target at most {pct(SPLIT_CPU_TARGET)}, median over rounds); e2e ratios: above "
            "100% = more examples/s; wall ratios = process wall over process wall: below 100% "
            "= done sooner.", "",
            markdown_table(["input", "records", "--split_bytes", "(2)/(1) CPU µs/record",
                            f"target <= {pct(SPLIT_CPU_TARGET)}", "(3)/(2) e2e", "(3)/(1) e2e",
                            "(3)/(2) wall", "(3)/(1) wall"], ratio_rows), "",
            f"target (the ranged reader's CPU per record at most "
            f"{pct(SPLIT_CPU_TARGET - 1)} above the serial reader's, small model): "
            + "; ".join(verdicts) + ".", ""]
