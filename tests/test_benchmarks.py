"""The benchmark harness's own logic: TF alone counts every record and leaves tf.data's
iterator teardown out of its clock; the reference and verdict rules; the scaling arithmetic;
the one command end to end at a tiny size."""
import math

import pytest

from benchmarks import __main__ as bench
from benchmarks import tf_alone
from benchmarks.common import REPO


def test_tf_alone_scores_every_record_of_both_formats(demo_model_dir, demo_data):
    """1,500 fixture rows (one TFRecord shard gzip): every one is scored, in ceil(n/b) calls."""
    for fmt in ("tfrecord", "csv"):
        r = tf_alone.measure(demo_model_dir, sorted(demo_data[fmt]), fmt, "serialized", 256)
        assert r["records"] == len(demo_data["rows"]) == 1500, fmt
        # TFRecord: plain and gzip shards are two datasets concatenated (500 + 1000 records)
        assert r["calls"] == (2 + 4 if fmt == "tfrecord" else math.ceil(1500 / 256)), fmt
        assert r["iterator_teardown_s"] >= 0 and r["e2e_s"] > 0
        assert r["steady_eps"] > 0 and r["cores_busy"] > 0


def _run(eps, busy, cpu=10.0):
    return {"steady_eps": eps, "cores_busy": busy, "cpu_us_per_record": cpu}


def test_reference_is_the_faster_run_and_slowed_rounds_do_not_count():
    before, after = _run(5_000, 1.0, cpu=12.0), _run(11_000, 1.9, cpu=11.0)
    ref = bench.tf_reference(before, after)
    assert ref["steady_eps"] == 11_000 and ref["cpu_us_per_record"] == 11.0
    rounds = [{"tf": {"before": _run(11_000, 1.9), "after": _run(10_500, 1.8)}},
              {"tf": {"before": _run(5_600, 1.0), "after": _run(5_700, 1.05)}},  # both slowed
              {"tf": {"before": _run(5_600, 1.0), "after": _run(11_200, 1.85)}}]
    assert bench.valid_rounds(rounds) == [True, False, True]


def test_scaling_marginal_cost_is_the_difference_quotient():
    recs = [{"rows": n, "run_s": s, "steady_eps": 1e6 / 5.5, "peak_rss_mb": rss,
             "cpu_us_per_record": 9.0}
            for n, s, rss in ((100_000, 1.4, 750.0), (500_000, 3.8, 758.0),
                              (1_000_000, 6.8, 760.0))]
    out = "\n".join(bench.scaling_table(recs))
    # (3.8 - 1.4) s / 400k = 6.00 µs; (6.8 - 3.8) s / 500k = 6.00 µs
    assert "marginal µs/record within 15% of each other (met: 6.00–6.00)" in out
    assert "e2e µs/record within 15% from 100,000 to 1,000,000 (NOT met" in out
    assert "peak RSS growth < 20% (met)" in out
    # the points lie on run() = 0.8 s + 6 µs x records; e2e would stay within 15% only with
    # F <= 0.15 * 6 µs / (1/100k - 1.15/1M) = 0.102 s
    assert "F = 0.800 s, c = 6.00 µs" in out
    assert "F would have to be at most 0.102 s" in out


def test_scaling_line_is_the_least_squares_fit_and_a_growing_cost_is_named():
    import numpy as np
    sizes = (100_000, 500_000, 1_000_000, 2_000_000)
    # three rounds each; a per-record cost that grows with the input (0.75 s + 5 µs·n + k·n²)
    runs = [(n, 0.75 + 5e-6 * n + 8e-12 * n * n + jitter)
            for n in sizes for jitter in (-0.01, 0.0, 0.01)]
    recs = [{"rows": n, "run_s": s, "peak_rss_mb": 760.0} for n, s in runs]
    slope, intercept = np.polyfit([n for n, _ in runs], [s for _, s in runs], 1)
    fixed, per_record = bench.linear_fit([(n, s) for n, s in runs])
    assert math.isclose(fixed, intercept, rel_tol=1e-9)
    assert math.isclose(per_record, slope, rel_tol=1e-9)
    out = "\n".join(bench.scaling_table(recs))
    assert f"F = {intercept:.3f} s, c = {slope * 1e6:.2f} µs" in out
    # 13.3 µs/record at 100k, 21.4 at 2M: the e2e cost grows, and the report says so
    assert "(NOT met: it grows with the input)" in out
    assert "marginal µs/record within 15% of each other (NOT met" in out
    assert bench.linear_fit([(100_000, 1.0), (100_000, 1.2)]) is None


def test_scaling_sets_tf_alone_and_beam_s_own_floor_against_the_bound():
    """TF alone on the same inputs (model load to last output) and Beam's own per-job cost are
    reported beside the pipeline's line and the fixed-cost bound it implies."""
    sizes = (100_000, 500_000, 1_000_000)
    recs = [{"rows": n, "run_s": 0.8 + 6e-6 * n, "peak_rss_mb": 750.0,
             "tf": {"e2e_s": 0.3 + 5e-6 * n}} for n in sizes]
    floors = [{"map_s": 0.09, "write_s": w} for w in (0.30, 0.40, 0.45)]
    out = "\n".join(bench.scaling_table(recs, floors))
    row = next(line for line in out.splitlines() if line.startswith("| 1,000,000"))
    # TF alone: 0.8 s / 100k = 8.00 µs, 5.3 s / 1M = 5.30 µs: -34%
    assert row.rstrip(" |").endswith("| 5.30                   | -34%")
    assert "went from 8.00 to 5.30 µs/record (-34%): it does not stay within 15% either" in out
    assert "(TF alone: F = 0.300 s, c = 5.00 µs)" in out
    # bound 0.15 * 6 µs / (1/100k - 1.15/1M) = 0.1017 s; the write floor's median 0.40 s
    assert "`Create | Map` 0.090 s, `Create | Map | WriteToText` 0.400 s (median)" in out
    assert f"costs {0.40 / (0.15 * 6e-6 / (1e-5 - 1.15e-6)):.1f}x that bound" in out
    assert "3.9x that bound" in out


def _mp(rows, **runs):
    labels = {"one": "1 process", "two": bench.MP_LABEL, "calls": "1 process, 2 calls",
              "bad": "2 workers, worse"}
    return {"model": "heavy", "rows": rows,
            "variants": {labels[k]: {"run_s": v, "e2e_eps": rows / v} for k, v in runs.items()}}


def test_multiprocess_start_up_and_per_record_cost_are_taken_apart():
    """run() = F + c·n per variant over both sizes: 2 workers with F 1.0 -> 5.0 s and c 90 ->
    80 µs break even at 4 s / 10 µs = 400,000 records."""
    recs = []
    for n in (120_000, 480_000):
        for jitter in (-0.02, 0.0, 0.02):  # symmetric: the fit stays on the exact line
            recs.append(_mp(n, one=1.0 + 90e-6 * n + jitter, two=5.0 + 80e-6 * n - jitter,
                            calls=0.8 + 85e-6 * n, bad=3.0 + 95e-6 * n))
    out = "\n".join(bench.multiprocess_table(recs))
    table = out.split("### Fixed start-up")[1]
    cells = {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")]
                                   for line in table.splitlines() if line.startswith("| "))}
    assert cells[bench.MP_LABEL] == ["5.00", "80.0", "112%", "+4.00 s", "400,000"]
    assert cells["1 process"] == ["1.00", "90.0", "100%", "-", "-"]
    assert cells["1 process, 2 calls"][-1] == "from the start"
    assert cells["2 workers, worse"][-1] == "never"
    assert ("each record at 112% of one process's speed, +4.00 s of start-up" in out
            and "not slower than one process from about 400,000 records on" in out)
    # at either size alone, the table still judges the whole job
    assert "NOT met at 120,000 records" in out


def test_cli_child_runs_the_command_line_job_and_times_its_exit_apart(tmp_path, demo_model_base,
                                                                      demo_data):
    from benchmarks.common import fmt, run_child
    from pipeline.run import read_summary
    out = str(tmp_path / "out")
    r = run_child("benchmarks.cli_child",
                  ["--", "--model", demo_model_base, "--input", demo_data["dir"] + "/*.csv",
                   "--output", out], str(tmp_path / "logs"), "cli")
    assert r["exit_code"] == 0
    assert 0 < r["main_returned_s"] < r["process_wall_s"]
    assert read_summary(out)["predicted"] == len(demo_data["rows"]) == 1500
    startup = {"first_pred_s": 3.0, "tf_import_s": 2.0, "startup_s": 1.0, "cli": r}
    table = "\n".join(bench.startup_table([startup]))
    assert "spawn → exit" in table
    exit_row = next(line for line in table.splitlines() if "interpreter exit" in line)
    assert f"| {fmt(r['process_wall_s'] - r['main_returned_s'])} s" in exit_row


@pytest.mark.slow
def test_one_command_runs_tf_alone_the_pipeline_and_the_peer_on_the_same_records(tmp_path):
    """`python -m benchmarks` end to end at a tiny size: every child of the main section
    (TF alone before and after, the pipeline, the RunInference peer) scores all 3,000 records
    of both input formats, and the report has a row for each."""
    import json
    import subprocess
    import sys
    rows = 3000
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--code", "worktree", "--only", "main",
         "--models", "small", "--formats", "tfrecord,csv", "--output_formats", "jsonl",
         "--rows", str(rows), "--repeats", "1", "--data_dir", str(tmp_path / "data"),
         "--work_dir", str(work)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    assert sorted(r["format"] for r in results["main"]) == ["csv", "tfrecord"]
    for rec in results["main"]:
        assert rec["tf"]["before"]["records"] == rec["tf"]["after"]["records"] == rows
        assert rec["pipeline"]["jsonl"]["records"] == rows, rec["format"]
        assert rec["pipeline"]["jsonl"]["errors"] == 0
        assert rec["peer"]["jsonl"]["records"] == rows, rec["format"]
    report = (work / "report.md").read_text()
    assert report.strip() in proc.stdout  # what is printed is what is kept
    throughput = report.split("## Throughput")[1].split("### CPU cost")[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in throughput.splitlines()
             if line.startswith("| small ")]
    assert sorted(c[:4] for c in cells) == [
        ["small", "csv", "jsonl", f"{rows:,}"], ["small", "tfrecord", "jsonl", f"{rows:,}"]]
