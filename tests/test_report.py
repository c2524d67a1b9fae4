"""OUTPUT/report.html: a real run over CSV shards with bad rows, read back with html.parser and
compared with numbers computed here from the rows this test wrote; `python -m pipeline report`
re-renders it; a headless Chromium opens it offline (skipped, with the reason, without one)."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from pipeline import demo
from tests.gcs_emulator import gcs  # noqa: F401  (fixture)
from tests.helpers import errors, predictions, run_job

ALERT = "<script>alert(1)</script>"
CHARTS = {"throughput", "latency_histogram", "shard_latency", "batch_sizes", "model_loads"}


class ReportParser(HTMLParser):
    """What the page shows: metric values, shard rows, error types, charts, references."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.metrics: dict[str, str] = {}
        self.shards: dict[str, dict[str, str]] = {}
        self.error_types: dict[str, str] = {}
        self.charts: list[str] = []
        self.svgs = 0
        self.tags: list[tuple[str, dict]] = []
        self.error_rows = 0
        self.text: list[str] = []
        self._shard = self._type = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self.svgs += tag == "svg"
        if "data-chart" in a:
            self.charts.append(a["data-chart"])
        if tag == "tr":
            self._shard, self._type = a.get("data-shard"), a.get("data-error-type")
            if self._shard is not None:
                self.shards[self._shard] = {}
            self.error_rows += "data-error-row" in a
        if "data-metric" in a:
            self.metrics[a["data-metric"]] = a.get("data-value", "")
        if "data-field" in a and self._shard is not None:
            self.shards[self._shard][a["data-field"]] = a.get("data-value", "")
        if "data-field" in a and self._type is not None:
            self.error_types[self._type] = a["data-value"]

    def handle_data(self, data):
        self.text.append(data)


def _parse(path) -> ReportParser:
    p = ReportParser()
    with open(path, encoding="utf-8") as fh:
        p.feed(fh.read())
    return p


def _write_shard(path, rows, bad_lines: dict[int, str]) -> None:
    """The demo rows as CSV, with raw `bad_lines` inserted before the row they are keyed by."""
    demo.write_csv(rows, str(path))
    lines = open(path, newline="").read().splitlines(keepends=True)
    for at in sorted(bad_lines, reverse=True):
        lines.insert(1 + at, bad_lines[at] + "\r\n")
    open(path, "w", newline="").write("".join(lines))


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, demo_model_base):
    """Three CSV shards: one with a row of the wrong width (whose text is a script tag), one
    with two unparseable numbers, one clean; scored in calls of at most 64 records."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    data.mkdir()
    columns = list(demo.demo_dtypes())
    bad_number = dict(zip(columns, ["bad0"] + ["1.0"] * (len(columns) - 1)))
    bad_number["n0"] = "abc"
    with_bad_number = ",".join(bad_number[c] for c in columns)
    plan = {"part-0.csv": {10: ALERT}, "part-1.csv": {5: with_bad_number,
                                                       50: with_bad_number.replace("bad0",
                                                                                   "bad1")},
            "part-2.csv": {}}
    expected = {"shards": {}, "by_type": {}}
    for s, (name, bad) in enumerate(sorted(plan.items())):
        rows = demo.demo_rows(150 + 40 * s, seed=11 + s, start_id=1000 * s)
        _write_shard(data / name, rows, bad)
        types = {"part-0.csv": {"csv_format": 1}, "part-1.csv": {"parse_error": 2},
                 "part-2.csv": {}}[name]
        expected["shards"][str(data / name)] = {
            "records": len(rows) + len(bad), "predicted": len(rows), "errors": len(bad),
            "types": types}
        for t, n in types.items():
            expected["by_type"][t] = expected["by_type"].get(t, 0) + n
    out = str(root / "out")
    summary = run_job(demo_model_base, str(data / "*.csv"), out, "--key_field", "id",
                      "--batch_size", "64", "--max_error_rate", "0.5")
    return {"out": out, "summary": summary, "expected": expected, "root": root}


def test_report_shows_the_accounting_computed_from_the_input(report_run):
    exp = report_run["expected"]
    page = _parse(os.path.join(report_run["out"], "report.html"))
    records = sum(s["records"] for s in exp["shards"].values())
    predicted = sum(s["predicted"] for s in exp["shards"].values())
    assert (int(page.metrics["records_in"]), int(page.metrics["predicted"]),
            int(page.metrics["errors"])) == (records, predicted, records - predicted)
    assert page.metrics["accounted"] == "true"
    assert {t: int(n) for t, n in page.error_types.items()} == exp["by_type"]
    assert set(page.shards) == set(exp["shards"])
    for shard, want in exp["shards"].items():
        got = page.shards[shard]
        assert (int(got["records"]), int(got["predicted"]), int(got["errors"])) == (
            want["records"], want["predicted"], want["errors"]), shard
        for q in ("p50", "p95", "p99"):
            assert float(got[q]) > 0, (shard, q)
    # and the pipeline's own outputs agree with the same independent numbers
    assert len(predictions(report_run["out"])) == predicted
    assert len(errors(report_run["out"])) == records - predicted
    assert page.error_rows == records - predicted  # fewer than MAX_ERROR_EXAMPLES: all shown


def test_report_shows_the_models_provenance_and_the_run_profile(report_run, demo_model_base):
    page = _parse(os.path.join(report_run["out"], "report.html"))
    manifest = json.load(open(os.path.join(report_run["out"], "manifest.json")))
    assert json.loads(page.metrics["model_version"]) == "1700000000"
    assert json.loads(page.metrics["model_kind"]) == manifest["model"]["kind"]
    assert json.loads(page.metrics["signature"]) == manifest["model"]["signature"]
    text = "".join(page.text)
    for value in (manifest["model"]["path"], manifest["model"]["version_path"],
                  manifest["model"]["kind"], manifest["model"]["signature"],
                  report_run["summary"]["feature_spec_source"]):
        assert value in text
    assert "report.html" in manifest["outputs"]
    profile = json.load(open(os.path.join(report_run["out"], "metrics/run_profile.json")))
    calls = report_run["summary"]["model_calls"]
    assert sum(p["calls"] for p in profile["timeline"]) == calls
    assert sum(p["records"] for p in profile["timeline"]) == report_run["summary"]["predicted"]
    assert sum(b["calls"] for b in profile["batch_sizes"]) == calls
    assert max(b["max"] for b in profile["batch_sizes"]) <= 64
    assert sum(profile["latency_histogram"]["counts"]) == calls


def test_report_is_self_contained_with_inline_charts(report_run):
    path = os.path.join(report_run["out"], "report.html")
    raw = open(path, encoding="utf-8").read()
    page = _parse(path)
    assert set(page.charts) == CHARTS
    assert page.svgs == len(CHARTS)
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "img", "iframe", "object", "embed"), tag
        for name in ("src", "href", "xlink:href"):
            ref = attrs.get(name)
            assert ref is None or ref.startswith("#"), (tag, name, ref)
    assert not re.search(r"url\(\s*['\"]?(?!#)", raw)  # only url(#clip-path) references
    assert "@import" not in raw


def test_error_payloads_are_escaped(report_run):
    raw = open(os.path.join(report_run["out"], "report.html"), encoding="utf-8").read()
    assert ALERT not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    assert not [t for t, _ in _parse(os.path.join(report_run["out"], "report.html")).tags
                if t == "script"]


def test_the_report_command_renders_the_same_page(report_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(report_run["out"], out)
    written = (out / "report.html").read_bytes()
    (out / "report.html").unlink()
    done = subprocess.run([sys.executable, "-m", "pipeline", "report", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "report.html")
    assert (out / "report.html").read_bytes() == written


def test_the_report_command_reads_and_writes_gs(report_run, gcs, tmp_path, capsys):
    from pipeline.report import main as report_main
    local = tmp_path / "copy"
    shutil.copytree(report_run["out"], local)
    written = (local / "report.html").read_bytes()
    (local / "report.html").unlink()
    gcs.upload_dir(str(local), "gs://bp-report/out")
    assert report_main(["gs://bp-report/out/"]) == 0
    assert capsys.readouterr().out.strip() == "gs://bp-report/out/report.html"
    assert gcs.read_bytes("gs://bp-report/out/report.html") == written
    assert report_main(["gs://bp-report/nothing"]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(_chromium() is None,
                    reason="no chromium on PATH (Debian: apt-get install chromium, as root); "
                           "the headless-browser check of report.html needs it")
def test_a_headless_browser_renders_the_report_offline(report_run, tmp_path):
    url = "file://" + os.path.join(report_run["out"], "report.html")
    dom = _browser("--dump-dom", "--enable-logging=stderr", "--v=0", url, tmp_path=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = _parse_text(dom.stdout)
    assert rendered.svgs == len(CHARTS) and set(rendered.charts) == CHARTS
    assert rendered.metrics["records_in"] == _parse(url[len("file://"):]).metrics["records_in"]
    console = [line for line in dom.stderr.splitlines()
               if "CONSOLE" in line or "Failed to load resource" in line
               or "net::ERR" in line]
    assert console == []
    shot = tmp_path / "report.png"
    done = _browser(f"--screenshot={shot}", "--window-size=1280,2000",
                    "--hide-scrollbars", url, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 2000)


def _parse_text(text: str) -> ReportParser:
    p = ReportParser()
    p.feed(text)
    return p


def test_csv_rows_written_as_planned(report_run):
    """The input really holds the bad rows the expectations count (guards the fixture)."""
    part0 = os.path.join(report_run["root"], "data", "part-0.csv")
    with open(part0, newline="") as fh:
        assert [ALERT] in list(csv.reader(fh))


def test_the_timeline_stays_bounded_and_keeps_every_count():
    """A long run (calls over ~3 hours, two workers) is coarsened to at most
    TIMELINE_MAX_POINTS intervals, and merging accumulators of different intervals loses
    no record and no call."""
    from transforms.metrics import ALL, TIMELINE_MAX_POINTS, JobMetricsFn
    fn = JobMetricsFn()
    accs = []
    for worker, span in ((0, 10_000.0), (1, 30.0)):  # one long, one short (finer) timeline
        acc = fn.create_accumulator()
        for i in range(2_000):
            at = 1_700_000_000.0 + span * i / 2_000
            acc = fn.add_input(acc, (ALL, ("call", (1_000.0 + i, 7, 7, at))))
        accs.append(acc)
    assert accs[1][ALL]["interval"] < accs[0][ALL]["interval"]
    [row] = fn.extract_output(fn.merge_accumulators(accs))
    profile = row["profile"]
    assert len(profile["timeline"]) <= TIMELINE_MAX_POINTS
    assert sum(p["calls"] for p in profile["timeline"]) == 4_000
    assert sum(p["records"] for p in profile["timeline"]) == 28_000
    interval = profile["interval_seconds"]
    assert all(p["start"] % interval == 0 for p in profile["timeline"])
    assert profile["batch_sizes"] == [{"min": 7, "max": 7, "calls": 4_000}]
    assert sum(profile["latency_histogram"]["counts"]) == 4_000


def test_job_start_up_does_not_import_matplotlib():
    code = ("import sys, pipeline.run, transforms.write, transforms.report; "
            "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr
