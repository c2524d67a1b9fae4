"""`python -m benchmarks.progress_eta`: how close a local run's live ETA comes to the time
that was really left.

One local run of `python -m pipeline` (in-process runner, the default) over --rows demo
records (benchmarks.data: 4 shards per format, cached under --data_dir), with progress lines
every --interval seconds. Each line is stamped when the launcher reads it; the run's "really
left" time at a line is from that stamp to the stamp of the final progress line (written
once the last record is scored, before finalize). For every line past 10% of the input
bytes that shows an ETA, the relative error is (ETA - really left) / really left. Printed:
the lines counted, the share within 20%, the median and largest |error|, and the same for
the lines with at least --min_left seconds left (an ETA is shown in whole seconds, so a
line 2 s before the end can be 50% off by rounding alone).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

__all__ = ["main", "eta_errors"]

_LINE = re.compile(r"progress: .*?([\d.]+)% of input bytes read.*?(?:ETA ((?:\d+h)?(?:\d+m)?\d*s?|-)"
                   r"|elapsed)")


def _seconds(text: str) -> float | None:
    if text in (None, "-"):
        return None
    parts = re.findall(r"(\d+)([hms])", text)
    return float(sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts))


def eta_errors(stamped: list[tuple[float, str]]) -> list[tuple[float, float, float]]:
    """(percent, ETA s, really left s) of each progress line past 10% that shows an ETA,
    from (arrival time, line) pairs whose last progress line is the final one."""
    lines = [(t, _LINE.search(text)) for t, text in stamped]
    lines = [(t, m) for t, m in lines if m]
    if not lines:
        return []
    end = lines[-1][0]
    out = []
    for t, m in lines[:-1]:
        pct, eta = float(m.group(1)), _seconds(m.group(2))
        if pct >= 10.0 and eta is not None and end - t > 0:
            out.append((pct, eta, end - t))
    return out


def _summary(rows: list[tuple[float, float, float]]) -> str:
    if not rows:
        return "no line"
    errors = [abs(eta - left) / left for _, eta, left in rows]
    within = sum(e <= 0.2 for e in errors) / len(errors)
    return (f"{len(rows)} lines, {within:.0%} within 20%, median |error| "
            f"{statistics.median(errors):.0%}, largest {max(errors):.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.progress_eta",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--model", default="small", help="small or heavy (benchmarks.data)")
    p.add_argument("--format", default="tfrecord", help="tfrecord, csv or parquet")
    p.add_argument("--input", default=None,
                   help="a glob to score instead of the --rows data (e.g. only plain files)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between lines")
    p.add_argument("--min_left", type=float, default=5.0)
    p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "bench-data"))
    p.add_argument("--pipeline_args", default="", help="more options for the run")
    a = p.parse_args(argv)

    from benchmarks import data
    model = data.ensure_model(a.data_dir, a.model)
    inputs = a.input or data.patterns(data.ensure_data(a.data_dir, a.rows))[a.format]
    with tempfile.TemporaryDirectory() as work:
        cmd = [sys.executable, "-m", "pipeline", "--model", model, "--input", inputs,
               "--output", os.path.join(work, "out"), *a.pipeline_args.split()]
        env = dict(os.environ, BATCH_PREDICT_PROGRESS_SECONDS=str(a.interval))
        print("$", " ".join(cmd[1:]), flush=True)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, env=env)
        stamped = [(time.monotonic(), line) for line in proc.stderr]
        if proc.wait() != 0:
            sys.stderr.writelines(line for _, line in stamped[-20:])
            return 1
    rows = eta_errors(stamped)
    print(f"run: {time.monotonic() - started:.1f} s, "
          f"{a.input or f'{a.rows:,} records, {a.format}'}, model {a.model}")
    print(f"{'pct':>6} {'ETA s':>7} {'left s':>7} {'error':>7}")
    for pct, eta, left in rows:
        print(f"{pct:6.1f} {eta:7.0f} {left:7.1f} {(eta - left) / left:+7.0%}")
    print("all lines past 10%:", _summary(rows))
    print(f"lines with >= {a.min_left:g} s left:",
          _summary([r for r in rows if r[2] >= a.min_left]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
