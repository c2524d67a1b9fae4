"""Live progress of local runs: the reporter's arithmetic on a fake clock, and a real run."""
import io
import logging
import math

import pytest

from pipeline.progress import INTERVAL_ENV, RATE_SECONDS, ProgressReporter
from tests.helpers import run_job
from transforms.progress import ProgressCounters


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _reporter(total, is_tty=False, stream=None):
    clock, counters = FakeClock(), ProgressCounters()
    counters.add_read(500, 5)  # before the run: not this run's
    counters.add_scored(5)
    rep = ProgressReporter(total, stream=stream or io.StringIO(), is_tty=is_tty, interval=60,
                           clock=clock, counters=counters)
    return rep, clock, counters


def test_percent_rate_and_eta_from_counters():
    rep, clock, counters = _reporter(total=2_000_000)
    clock.t += 10
    counters.add_read(500_000, 12_345)
    counters.add_scored(12_345)
    # first sample: the rates are the plain rates over the first 10 s
    assert rep.sample() == ("progress: 12,345 records scored, 25.0% of input bytes read, "
                            "1,230 records/s, ETA 30s")
    assert rep.byte_rate == 50_000
    clock.t += 10
    counters.add_read(100_000)  # slower: the weighted rate moves part of the way
    counters.add_scored(1_000)
    line = rep.sample()
    w, gathered = 1 - math.exp(-10 / RATE_SECONDS), 1 - math.exp(-20 / RATE_SECONDS)
    # the weighted average of 50,000 then 10,000 bytes/s (the recent one weighs more than
    # in the plain mean of 30,000), scaled by the weight gathered in 20 s
    byte_rate = (w * 50_000 + w * (10_000 - w * 50_000)) / gathered
    assert rep.byte_rate == pytest.approx(byte_rate) == pytest.approx(26_697.2)
    assert rep.record_rate == pytest.approx(573.57, abs=0.01)
    assert 1_400_000 / byte_rate == pytest.approx(52.44, abs=0.01)
    assert line == ("progress: 13,345 records scored, 30.0% of input bytes read, "
                    "574 records/s, ETA 52s")
    clock.t += 5
    counters.add_read(1_400_000)
    assert rep.sample() == ("progress: 13,345 records scored, 100% of input bytes read, "
                            "418 records/s, elapsed 25s")  # 5 s with none scored


def test_no_rate_yet_and_unknown_size():
    rep, clock, counters = _reporter(total=1000)
    assert rep.sample() == "progress: 0 records scored, 0% of input bytes read, 0 records/s, ETA -"
    rep, clock, counters = _reporter(total=None)  # BigQuery input: no % and no ETA
    clock.t += 2
    counters.add_scored(3_000)
    assert rep.sample() == "progress: 3,000 records scored, 1,500 records/s"


def test_terminal_rewrites_one_line_in_place():
    stream = io.StringIO()
    rep, clock, counters = _reporter(total=100, is_tty=True, stream=stream)
    clock.t += 1
    counters.add_read(10, 1_000)
    counters.add_scored(1_000)
    rep.show(rep.sample())
    clock.t += 1
    counters.add_read(90)
    rep.show(rep.sample(), final=True)
    first, second = stream.getvalue().split("\r")[1:]
    assert first == "progress: 1,000 records scored, 10.0% of input bytes read, 1,000 records/s, ETA 9s"
    assert second.startswith("progress: 1,000 records scored, 100% of input bytes read")
    assert second.endswith("\n") and second.count("\n") == 1
    assert len(second.rstrip("\n")) >= len(first)  # pads over a longer previous line


def test_log_lines_when_not_a_terminal(caplog):
    stream = io.StringIO()
    rep, clock, counters = _reporter(total=100, is_tty=False, stream=stream)
    clock.t += 1
    counters.add_read(50)
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        rep.show(rep.sample())
    assert stream.getvalue() == ""  # no \r into a log file
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 0 records scored, 50.0% of input bytes read, 0 records/s, ETA 1s"]


def test_a_real_run_ends_at_100_percent(demo_model_base, demo_data, tmp_path, monkeypatch,
                                        caplog):
    monkeypatch.setenv(INTERVAL_ENV, "0.05")
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        summary = run_job(demo_model_base, demo_data["dir"] + "/*.tfrecord*", str(tmp_path / "out"))
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("progress: ")]
    assert lines, "no progress line"
    assert summary["predicted"] == 1500
    assert lines[-1].startswith("progress: 1,500 records scored, 100% of input bytes read, ")
    assert " elapsed " in lines[-1]


@pytest.mark.parametrize("argv, shown", [
    ([], True),
    (["--direct_running_mode", "multi_threading", "--direct_num_workers", "2"], True),
    (["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], False),
    (["--runner", "DataflowRunner"], False),
])
def test_only_runs_in_this_process_get_a_reporter(argv, shown):
    from types import SimpleNamespace

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.run import live_progress
    plan = SimpleNamespace(source=None, files=[("a", 10), ("b", 5)])
    reporter = live_progress(PipelineOptions(argv), plan)
    assert isinstance(reporter, ProgressReporter) == shown
    if shown:
        assert reporter.total_bytes == 15
    bigquery = live_progress(PipelineOptions(argv), SimpleNamespace(source=object(), files=[]))
    assert (bigquery.total_bytes if shown else None) is None
