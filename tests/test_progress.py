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
    clock.t += 5  # start-up: workers load the model, nothing done yet
    assert rep.sample() == "progress: 0 records scored, 0% of input bytes read, 0 records/s, ETA -"
    clock.t += 5
    counters.add_read(500_000, 10_000, failed=20)  # 20 unreadable records
    counters.add_scored(8_000, failed=80)  # 80 error rows of the model step
    # the rate counts from the last sample before anything was done: 8,100 in 5 s; the
    # records left: 10,000 per 500,000 bytes of 2,000,000 is 40,000, less 8,100 done
    assert rep.record_rate is None
    assert rep.sample() == ("progress: 8,000 records scored, 25.0% of input bytes read, "
                            "1,620 records/s, ETA 20s")  # 31,900 / 1,620 = 19.7 s
    assert rep.record_rate == pytest.approx(1620)
    clock.t += 10
    counters.add_read(500_000, 10_000)
    counters.add_scored(4_000)  # slower: the weighted rate moves part of the way
    line = rep.sample()
    w1, w2 = 1 - math.exp(-5 / RATE_SECONDS), 1 - math.exp(-10 / RATE_SECONDS)
    gathered = 1 - math.exp(-15 / RATE_SECONDS)
    # the weighted average of 1,620 then 400 records/s, scaled by the weight gathered in 15 s
    rate = (w1 * 1620 + w2 * (400 - w1 * 1620)) / gathered
    assert rep.record_rate == pytest.approx(rate) == pytest.approx(741.07, abs=0.01)
    left = 20_000 * 2_000_000 / 1_000_000 - 12_100
    assert left / rate == pytest.approx(37.65, abs=0.01)
    assert line == ("progress: 12,000 records scored, 50.0% of input bytes read, "
                    "741 records/s, ETA 38s")
    clock.t += 5
    counters.add_read(1_000_000, 20_000)  # all read: the ETA is the records read, not done
    counters.add_scored(20_000)
    assert rep.sample().endswith("100% of input bytes read, 1,770 records/s, ETA 4s")
    clock.t += 3
    counters.add_scored(7_900)
    assert rep.sample(final=True) == ("progress: 39,900 records scored, 100% of input bytes "
                                      "read, 1,920 records/s, elapsed 28s")


def test_records_left_of_gzip_and_plain_files_apart():
    """An input of 100 MB of plain files and 25 MB of gzip ones holding 4 times the records
    per byte (4,000 and 16,000 records per MB: 800,000 records in all)."""
    mb = 1_000_000
    rep = ProgressReporter(125 * mb, stream=io.StringIO(), is_tty=False, interval=60,
                           clock=FakeClock(), counters=ProgressCounters(),
                           gzip_bytes=25 * mb, gzip_ratio=4.0)
    read = ProgressCounters()
    read.add_read(10 * mb, 40_000)  # plain only so far: gzip taken as 4x as dense
    read.add_scored(30_000)
    assert rep.records_left(read.snapshot()) == pytest.approx(800_000 - 30_000)
    read.add_read(5 * mb, 80_000, gzip=True)  # both kinds seen: each its own
    read.add_scored(80_000)
    assert rep.records_left(read.snapshot()) == pytest.approx(800_000 - 110_000)
    # without telling gzip bytes apart (all one kind: 120,000 records in 15 MB, so
    # 1,000,000 in 125 MB) the estimate is 25% too high
    blind = ProgressReporter(125 * mb, stream=io.StringIO(), is_tty=False, interval=60,
                             clock=FakeClock(), counters=ProgressCounters())
    assert blind.records_left(read.snapshot()) == pytest.approx(1_000_000 - 110_000)


def test_gzip_share_by_name_and_a_sample(tmp_path):
    import gzip

    from pipeline.progress import gzip_share
    text = b"".join(b"%d,%d,some text that compresses\n" % (i, i * i) for i in range(50_000))
    (tmp_path / "a.csv").write_bytes(text)
    (tmp_path / "b.csv.gz").write_bytes(gzip.compress(text))
    files = [(str(p), p.stat().st_size) for p in sorted(tmp_path.iterdir())]
    gz_bytes, ratio = gzip_share(files, probe=len(text))
    assert gz_bytes == (tmp_path / "b.csv.gz").stat().st_size
    assert ratio == pytest.approx(len(text) / gz_bytes, rel=0.01)
    assert gzip_share(files[:1]) == (0, None)
    (tmp_path / "b.csv.gz").write_bytes(b"not gzip at all")  # named .gz, is not: no ratio
    assert gzip_share(files)[1] is None


def test_no_rate_yet_and_unknown_size():
    rep, clock, counters = _reporter(total=1000)
    assert rep.sample() == "progress: 0 records scored, 0% of input bytes read, 0 records/s, ETA -"
    rep, clock, counters = _reporter(total=None)  # a BigQuery query: no % and no ETA
    clock.t += 2
    counters.add_scored(3_000)
    assert rep.sample() == "progress: 3,000 records scored, 1,500 records/s"
    rep, clock, counters = _reporter(total=None)  # a BigQuery table: its rows are known
    rep.total_records = 10_000
    clock.t += 2
    counters.add_scored(2_900, failed=100)
    assert rep.sample() == ("progress: 2,900 records scored, 30.0% of 10,000 records done, "
                            "1,500 records/s, ETA 5s")


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
    counters.add_read(50, 10)
    counters.add_scored(5)
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        rep.show(rep.sample())
    assert stream.getvalue() == ""  # no \r into a log file
    assert [r.getMessage() for r in caplog.records] == [
        "progress: 5 records scored, 50.0% of input bytes read, 5.00 records/s, ETA 3s"]


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
    (["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], True),
    (["--runner", "DataflowRunner"], False),
])
def test_local_runs_get_a_reporter(argv, shown):
    from types import SimpleNamespace

    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.run import live_progress
    plan = SimpleNamespace(source=None, files=[("a", 10), ("b", 5)])
    with live_progress(PipelineOptions(argv), plan) as reporter:
        assert isinstance(reporter, ProgressReporter) == shown
        if shown:
            assert reporter.total_bytes == 15
    bigquery = SimpleNamespace(source=object(), files=[])
    with live_progress(PipelineOptions(argv), bigquery) as reporter:
        assert (reporter.total_bytes if shown else None) is None


def test_worker_processes_publish_their_counts(demo_model_base, demo_data, tmp_path,
                                               monkeypatch, caplog):
    """Local worker subprocesses count in their own memory: what they publish to the run's
    progress dir adds up to every record of the input, and the dir is gone afterwards."""
    import os
    import tempfile

    from transforms.progress import PROGRESS_DIR_ENV
    monkeypatch.setenv(INTERVAL_ENV, "0.2")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        summary = run_job(demo_model_base, demo_data["dir"] + "/*.tfrecord*",
                          str(tmp_path / "out"), "--direct_running_mode", "multi_processing",
                          "--direct_num_workers", "2")
    assert summary["predicted"] == 1500
    lines = [r.getMessage() for r in caplog.records
             if r.getMessage().startswith("progress: ")]
    assert lines[-1].startswith("progress: 1,500 records scored, 100% of input bytes read, ")
    assert PROGRESS_DIR_ENV not in os.environ
    assert not list(temp.iterdir())  # the progress dir is gone


# --- how far into its input a run has read: counted as the formats read ---------------------
@pytest.fixture(scope="module")
def progress_inputs(tmp_path_factory):
    """3,000 demo rows as every input format (one file each), TFRecord also gzip."""
    import json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from pipeline import demo
    root = tmp_path_factory.mktemp("progress_inputs")
    files = demo.write_demo_data(str(root), rows=3000, shards=2)  # shard 1 is gzip
    table = pacsv.read_csv(files["csv"][0])
    pq.write_table(table, str(root / "a.parquet"), row_group_size=100)
    with open(root / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in table.to_pylist())
    return {"tfrecord": files["tfrecord"][0], "tfrecord_gzip": files["tfrecord"][1],
            "csv": files["csv"][0], "parquet": str(root / "a.parquet"),
            "jsonl": str(root / "a.jsonl"), "rows": table.num_rows}


def _read_counting(dofn, index) -> list:
    """(bytes read, records read) of the live counters as each output is handed on."""
    from transforms.progress import PROGRESS
    dofn.setup()
    base = PROGRESS.snapshot()
    seen = []
    for _ in dofn._read(index, 0, lambda block: block < index.blocks):
        now = PROGRESS.snapshot() - base
        seen.append((now.bytes_read, now.records_read))
    return seen


@pytest.mark.parametrize("fmt", ["tfrecord", "tfrecord_gzip", "csv", "parquet", "jsonl"])
@pytest.mark.parametrize("split_bytes", [0, 16384])
def test_bytes_read_add_up_to_the_input_size(progress_inputs, fmt, split_bytes):
    """Whole or in blocks, a file's bytes count once in full (Parquet's footer, read again
    for each block, and columns a job leaves out count as the bytes they span), with every
    record, and never go back."""
    import os

    from transforms import formats
    from transforms.read import ReadFilesDoFn, index_locally
    path = progress_inputs[fmt]
    size = os.path.getsize(path)
    input_format = formats.input_format(fmt.split("_")[0])
    index = index_locally(input_format, path, size, split_bytes)
    assert index.split == (split_bytes > 0 and fmt != "tfrecord_gzip")
    seen = _read_counting(ReadFilesDoFn(input_format, 50, columns=["id"]), index)
    assert seen[-1] == (size, progress_inputs["rows"])
    assert seen == sorted(seen)


@pytest.mark.parametrize("fmt", ["tfrecord_gzip", "parquet", "jsonl"])
def test_bytes_read_move_within_a_file(progress_inputs, fmt):
    """A file read whole moves the percentage as it is read, not once at its end: gzip by
    the compressed bytes taken, Parquet by records, JSONL by each piece read."""
    import dataclasses
    import os

    from transforms import formats
    from transforms.formats.base import SplitIndex
    from transforms.read import ReadFilesDoFn
    path = progress_inputs[fmt]
    size = os.path.getsize(path)
    input_format = formats.input_format(fmt.split("_")[0])
    if fmt == "jsonl":
        input_format = dataclasses.replace(input_format, block_bytes=16384)  # its read size
    seen = _read_counting(ReadFilesDoFn(input_format, 50), SplitIndex(path, size))
    inside = {b for b, _ in seen if 0 < b < size}
    assert len(inside) >= 5, seen


def test_what_is_read_ahead_is_not_counted_until_handed_on():
    """ReadAhead (CSV, gzip JSONL) makes items in a helper thread ahead of its consumer: the
    position shown is the one its last item handed on was made at, not the stream's, which
    has moved on to the items waiting in the queue."""
    import threading

    from transforms.formats.base import ReadAhead
    stream = {"at": 0}
    queue_full = threading.Event()

    def items():
        for k in range(1, 6):
            stream["at"] = k * 100  # the stream read up to the end of item k
            yield k
            if k == 3:  # item 3 was queued behind item 2 (depth 2): item 1 was taken
                queue_full.set()

    stats = {"position": lambda: stream["at"]}
    ahead = ReadAhead(items(), depth=2, stats=stats)
    got = iter(ahead)
    assert next(got) == 1
    assert queue_full.wait(10)
    assert stats["position"]() == 100 and stream["at"] >= 300
    assert list(got) == [2, 3, 4, 5]
    assert stats["position"]() == 500  # all handed on: the stream's end
    ahead.close()


# --- a Dataflow job: progress from the job's Beam metrics -----------------------------------
@pytest.fixture(scope="module")
def finished_run(demo_model_base, demo_data, tmp_path_factory):
    """A real local run over the demo CSV shards plus a file with 3 unparsable rows, and
    the sizes of its input files."""
    import os
    import shutil

    from pipeline.run import run
    root = tmp_path_factory.mktemp("metrics_progress")
    for path in demo_data["csv"]:
        shutil.copy(path, root)
    header = open(demo_data["csv"][0]).readline()
    good = open(demo_data["csv"][0]).readlines()[1]
    with open(root / "bad.csv", "w") as f:
        f.write(header + good.replace("r0,", "x0,", 1)
                + "".join(f"x{i},not-a-number" + good[good.index(",", 3):]
                          for i in range(1, 4)))
    result, plan = run(["--model", demo_model_base, "--input", str(root / "*.csv"),
                        "--output", str(root / "out"), "--max_error_rate", "0.5"])
    sizes = sum(os.path.getsize(root / name) for name in os.listdir(root)
                if name.endswith(".csv"))
    return result, plan, sizes


def test_beam_metrics_give_the_runs_counts(finished_run):
    from pipeline.progress import BeamMetricsProgress
    from transforms.progress import ProgressCounts
    result, _, sizes = finished_run
    assert BeamMetricsProgress(result).snapshot() == ProgressCounts(
        bytes_read=sizes, records_read=1504, records_scored=1501, records_failed=3)


def test_a_dataflow_wait_shows_progress_from_the_jobs_metrics(finished_run, caplog):
    """remote_progress around the wait, for DataflowRunner options (the job here is a
    finished local one: offline, no Dataflow job runs)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.run import remote_progress
    result, plan, _ = finished_run
    options = PipelineOptions(["--runner", "DataflowRunner", "--project", "p", "--region",
                               "r", "--temp_location", "gs://b/t"])
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        with remote_progress(options, plan, result) as reporter:
            assert reporter.interval >= 10 and reporter.sample_seconds >= 10  # API calls
    assert caplog.messages[-1].startswith(
        "progress: 1,501 records scored, 100% of input bytes read, ")
    template = PipelineOptions(["--runner", "DataflowRunner", "--project", "p", "--region", "r",
                                "--temp_location", "gs://b/t", "--template_location",
                                "gs://b/t.json"])
    assert remote_progress(template, plan, result).__class__.__name__ == "nullcontext"
    assert remote_progress(PipelineOptions([]), plan, result).__class__.__name__ == \
        "nullcontext"


def test_a_failed_metrics_query_keeps_the_last_counts(finished_run):
    from pipeline.progress import BeamMetricsProgress
    result, _, _ = finished_run

    class Flaky:
        calls = 0

        def metrics(self):
            self.calls += 1
            if self.calls > 1:
                raise ConnectionError("the service did not answer")
            return result.metrics()

    progress = BeamMetricsProgress(Flaky())
    first = progress.snapshot()
    assert first.records_scored == 1501
    assert progress.snapshot() == first
