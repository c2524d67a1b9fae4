"""Running one measurement in a fresh subprocess, and small statistics and table helpers.

Every measurement is a child process `python -m benchmarks.<module> --result FILE ...` that
writes one JSON object to FILE. The parent reaps the child with `os.wait4`, which gives that
child's own peak RSS (ru_maxrss: the larger of the child's and of any descendant it reaped,
e.g. multi-process SDK workers), and measures the child's wall time from just before spawning.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

__all__ = ["REPO", "ChildFailed", "snapshot_code", "child_env", "run_child", "child_args",
           "cpu_seconds", "write_result", "med", "span", "fmt", "pct", "ratios",
           "ratio_span", "markdown_table"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# where children import `pipeline`/`transforms`/`benchmarks` from (see snapshot_code)
CODE_DIR = REPO


class ChildFailed(RuntimeError):
    pass


def snapshot_code(dest: str, rev: str = "HEAD") -> str:
    """Export `rev`'s pipeline/ and transforms/ (plus the working tree's benchmarks/) to dest,
    and make every child import from there: other people edit the work tree while a
    benchmark runs, and numbers must belong to one commit. Returns the commit id."""
    global CODE_DIR
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.strip()
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    archive = subprocess.run(["git", "archive", commit, "pipeline", "transforms"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    shutil.copytree(os.path.join(REPO, "benchmarks"), os.path.join(dest, "benchmarks"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    CODE_DIR = dest
    return commit


def child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("NO_GCE_CHECK", "true")  # never probe the GCE metadata server
    env["PYTHONPATH"] = CODE_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(module: str, args: list[str], workdir: str, name: str,
              timeout: float = 3600.0) -> dict:
    """Run `python -m module --result F --spawned T args`; returns the child's JSON plus
    `peak_rss_mb`, `process_wall_s` and `log`. Raises ChildFailed with the log's tail."""
    os.makedirs(workdir, exist_ok=True)
    result_path = os.path.join(workdir, f"{name}.json")
    log_path = os.path.join(workdir, f"{name}.log")
    if os.path.exists(result_path):
        os.remove(result_path)
    spawned = time.time()
    cmd = [sys.executable, "-m", module, "--result", result_path,
           "--spawned", repr(spawned)] + list(args)
    with open(log_path, "wb") as log:
        log.write((" ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=CODE_DIR,
                                env=child_env())
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    wall = time.time() - spawned
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not os.path.exists(result_path):
        with open(log_path, errors="replace") as fh:
            tail = "".join(fh.readlines()[-30:])
        raise ChildFailed(f"{module} {name} exited with {code}; log {log_path}:\n{tail}")
    with open(result_path) as fh:
        out = json.load(fh)
    out["peak_rss_mb"] = round(usage.ru_maxrss / 1024.0, 1)
    out["process_wall_s"] = round(wall, 3)
    out["log"] = log_path
    return out


def child_args(parser, argv=None):
    """A child's own arguments plus the two every child takes from run_child."""
    parser.add_argument("--result", required=True, help="write the figures to this JSON file")
    parser.add_argument("--spawned", type=float, default=None,
                        help="time.time() when the parent spawned this process")
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children so far (load-robust cost:
    other people's processes on the machine inflate wall time far more than CPU time)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_result(path: str, result: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    os.replace(tmp, path)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def span(values, show=None) -> str:
    """'median (min–max)' of a list, or the one value; `show` formats each (default fmt)."""
    show = show or fmt
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return show(values[0])
    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def ratios(tops, bottoms) -> list:
    """Per-round ratios top / bottom (None where either is missing)."""
    return [t / b if t and b else None for t, b in zip(tops, bottoms)]


def ratio_span(tops, bottoms) -> str:
    """'median (min–max)' of the per-round ratios, in percent; '-' without any."""
    return span(ratios(tops, bottoms), pct)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])
