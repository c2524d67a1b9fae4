"""Scale-out: large files are read in ranges by several workers, with the same results.

The oracle is independent of the pipeline: the files are written here record by record (the
CSV with Python's csv module, the TFRecord with TensorFlow's writer), so each record's index,
line number and expected fate (a prediction from the loaded model, or an error row) is known
before the pipeline runs. A one-worker run and a two-worker run (local multi_processing) must
both match it, and the metrics must show that both worker processes read the large file.

The runner's own splitting is exercised without a runner too: a restriction tracker split at
random points while the reading DoFn runs (what Dataflow's dynamic work rebalancing does)
must still give every record exactly once.
"""
import csv
import io
import os
import random

import numpy as np
import pytest
from hypothesis import Phase, given, settings, strategies as st

from pipeline.demo import demo_dtypes, demo_rows
from pipeline.run import read_summary
from tests.helpers import errors, expected_outputs, predictions, read_jsonl, run_job
from transforms import formats
from tests.gcs_emulator import gcs  # noqa: F401  (fixture)
from transforms.read import ReadBlocksDoFn, ReadFilesDoFn, index_locally
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

MP = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
DF = ["--runner", "DataflowRunner"]
SPLIT = 48 << 10  # small ranges, so that a few hundred KB make a dozen of them
N = 4000
BAD_AT = (17, 1500, 2999)  # records that are errors, by index


def _csv_file(path: str, rows: list[dict]) -> dict:
    """A CSV with a quoted multi-line cell every 7th row (so range starts fall inside quoted
    fields) and a non-number in a float column at BAD_AT; returns index -> line."""
    columns = list(demo_dtypes())
    out = io.StringIO(newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    lines, line = {}, 2
    for i, row in enumerate(rows):
        cells = ["" if row.get(c) is None else str(row[c]) for c in columns]
        if i % 7 == 3:
            cells[columns.index("country")] = f'X\n"line"\n{i}'
        if i in BAD_AT:
            cells[columns.index("n0")] = "not-a-number"
        before = out.tell()
        w.writerow(cells)
        lines[i] = line
        line += out.getvalue()[before:].count("\n")
    with open(path, "w", newline="") as fh:
        fh.write(out.getvalue())
    return lines


def _csv_rows(rows):
    """The rows as the model sees them from the CSV written by _csv_file."""
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if i % 7 == 3:
            row["country"] = f'X\n"line"\n{i}'
        out.append(row)
    return out


def _tfrecord_file(path: str, rows: list[dict]) -> None:
    """TFRecord frames written by TensorFlow; the data of the records at BAD_AT then has one
    byte flipped (a bad data CRC: one corrupt_record row each, reading goes on)."""
    import tensorflow as tf
    from transforms.examples import encode_rows
    payloads = list(encode_rows(rows, demo_dtypes()))
    with tf.io.TFRecordWriter(path) as w:
        for p in payloads:
            w.write(p)
    data = bytearray(open(path, "rb").read())
    offset = 0
    for i, p in enumerate(payloads):
        if i in BAD_AT:
            data[offset + 12 + len(p) // 2] ^= 0xFF
        offset += 16 + len(p)
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    rows = demo_rows(N, seed=11)
    csv_path, tfr_path = str(root / "big.csv"), str(root / "big.tfrecord")
    lines = _csv_file(csv_path, rows)
    _tfrecord_file(tfr_path, rows)
    assert os.path.getsize(csv_path) > 8 * SPLIT and os.path.getsize(tfr_path) > 8 * SPLIT
    return {"rows": rows, "csv": csv_path, "tfrecord": tfr_path, "lines": lines}


def _check_against_oracle(out: str, path: str, model_rows, demo_model, lines=None):
    expected = expected_outputs(demo_model, model_rows)
    rows = predictions(out)
    assert sorted(r["index"] for r in rows) == [i for i in range(N) if i not in BAD_AT]
    assert {r["shard"] for r in rows} == {path}
    for r in rows:
        np.testing.assert_allclose(r["score"], expected["score"][r["index"]], rtol=1e-5)
    errs = errors(out)
    assert sorted(e["index"] for e in errs) == list(BAD_AT)
    if lines is not None:
        assert {e["index"]: e["line"] for e in errs} == {i: lines[i] for i in BAD_AT}


def _outputs(out: str):
    """Everything a consumer reads, in an order that does not depend on the run."""
    key = lambda r: (r["shard"], r["index"])  # noqa: E731
    summary = read_summary(out)
    return (sorted(predictions(out), key=key), sorted(errors(out), key=key),
            {k: summary[k] for k in ("records_in", "predicted", "errors", "errors_by_type")})


def _assert_same_outputs(out: str, reference: str) -> None:
    """The same rows, errors and counts. Model outputs may differ in the last bit of a float32
    (TensorFlow's CPU kernels round differently for a batch of another size: the same model
    on the same records in calls of 37 and of 4,000 differs by up to 2.4e-7 relative), so
    floats are compared to 1e-6; everything else exactly."""
    (rows, errs, counts), (ref_rows, ref_errs, ref_counts) = _outputs(out), _outputs(reference)
    assert (errs, counts) == (ref_errs, ref_counts)
    assert len(rows) == len(ref_rows)
    for row, ref in zip(rows, ref_rows):
        assert row.keys() == ref.keys()
        for name, value in row.items():
            if isinstance(value, float) or (isinstance(value, list) and value
                                            and isinstance(value[0], float)):
                np.testing.assert_allclose(value, ref[name], rtol=1e-6, err_msg=name)
            else:
                assert value == ref[name], (name, row, ref)


def _shard_row(out: str, path: str) -> dict:
    [row] = [r for r in read_jsonl(os.path.join(out, "metrics", "shard_latency-*.jsonl"))
             if r["shard"] == path]
    return row


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_two_workers_read_one_large_file_with_one_workers_results(
        fmt, large, tmp_path, demo_model_base, demo_model):
    path = large[fmt]
    model_rows = _csv_rows(large["rows"]) if fmt == "csv" else large["rows"]
    lines = large["lines"] if fmt == "csv" else None
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_job(demo_model_base, path, one, "--split_bytes", str(SPLIT))
    _check_against_oracle(one, path, model_rows, demo_model, lines)
    run_job(demo_model_base, path, two, "--split_bytes", str(SPLIT),
            "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    _check_against_oracle(two, path, model_rows, demo_model, lines)
    _assert_same_outputs(two, one)

    readers = _shard_row(two, path)["records_by_worker"]
    loads = {str(r["pid"]) for r in read_jsonl(os.path.join(two, "metrics",
                                                            "model_loads-*.jsonl"))}
    assert len(readers) == 2 and min(readers.values()) > 0, readers  # both workers read it
    assert sum(readers.values()) == N
    assert {w.rsplit(":", 1)[1] for w in readers} <= loads  # the scoring worker processes
    assert len(_shard_row(one, path)["records_by_worker"]) == 1


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_reshuffled_batches_give_the_same_results(fmt, large, tmp_path, demo_model_base):
    """--reshuffle_batches on adds a Reshuffle between reading and the model: same outputs."""
    path = large[fmt]
    runs = {}
    for flag in ("on", "off"):
        out = str(tmp_path / flag)
        run_job(demo_model_base, path, out, "--split_bytes", "0", "--reshuffle_batches", flag)
        runs[flag] = out
        assert len(_shard_row(out, path)["records_by_worker"]) == 1  # read whole, by one
    _assert_same_outputs(runs["on"], runs["off"])


# --- the runner's splits, without a runner --------------------------------------------------------
def _serial(fmt: str, path: str) -> list[tuple]:
    dofn = ReadFilesDoFn(fmt, 97)
    dofn.setup()
    return _records(dofn.process_file(path))


def _records(outputs) -> list[tuple]:
    """(index, kind, payload or error type) per record, shard stats dropped."""
    out = []
    for item in outputs:
        tag = getattr(item, "tag", None)
        if tag == "shard_stats":
            continue
        if tag == "errors":
            out.append((item.value["index"], "error", item.value["error_type"],
                        item.value.get("line")))
            continue
        if getattr(item, "serialized", None) is not None:
            out += [(int(i), "ok", bytes(p)) for i, p in zip(item.indices, item.serialized)]
        else:
            out += [(int(i), "ok", c) for i, c in zip(item.indices, _cells(item))]
    return out


def _cells(batch) -> list[tuple]:
    """A CSV batch's cells per record, whether pyarrow (a table) or the csv module (rows)
    read them: all columns, in header order (the reader was given no column list)."""
    if batch.table is None:
        return [tuple(r) for r in batch.rows]
    return list(zip(*(batch.table.column(c).to_pylist() for c in batch.table.column_names)))


class _SplittingTracker(OffsetRestrictionTracker):
    """Splits itself, as a runner would from another thread, after some of its claims."""

    def __init__(self, restriction, rng: random.Random, residuals: list):
        super().__init__(restriction)
        self._rng, self._residuals = rng, residuals

    def try_claim(self, position):
        if self._rng.random() < 0.4:
            split = self.try_split(self._rng.choice([0.0, 0.1, 0.5, 0.9]))
            if split is not None:
                self._residuals.append(split[1])
        return super().try_claim(position)


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
# no shrinking: the seed of a failing example says all, and each example reads whole files
@settings(max_examples=20, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(seed=st.integers(0, 2 ** 32 - 1), split=st.sampled_from([SPLIT, 3 * SPLIT, 20000]))
def test_dynamic_splits_read_every_record_exactly_once(fmt, large, seed, split):
    path = large[fmt]
    index = index_locally(formats.input_format(fmt), path, os.path.getsize(path), split)
    assert index.split and index.blocks > 3
    rng = random.Random(seed)
    dofn = ReadBlocksDoFn(fmt, 97)
    dofn.setup()
    pending, got = [OffsetRange(0, index.blocks)], []
    while pending:  # residuals run in any order, as on other workers
        restriction = pending.pop(rng.randrange(len(pending)))
        got += _records(dofn.process(index, tracker=_SplittingTracker(restriction, rng,
                                                                     pending)))
    assert sorted(got) == sorted(_serial(fmt, path))


# --- what the plan decides --------------------------------------------------------------------
def test_gzip_files_are_read_whole_however_large(large, tmp_path):
    import gzip
    path = str(tmp_path / "big.csv.gz")
    with open(large["csv"], "rb") as src, gzip.open(path, "wb") as dst:
        dst.write(src.read())
    index = index_locally(formats.input_format("csv"), path, os.path.getsize(path), 4096)
    assert not index.split and index.blocks == 1


@pytest.mark.parametrize("argv, files, expected", [
    # in-process local run: one worker process, no ranges, nothing to spread
    ([], [("a.tfrecord", 10 << 20)], (1, 0, 1, False)),
    (["--split_bytes", str(4 << 20)], [("a.tfrecord", 10 << 20)], (1, 4 << 20, 3, False)),
    # local worker processes: ranges of the default size, never a reshuffle unless asked
    (MP, [("a.tfrecord", 200 << 20)], (2, 64 << 20, 4, False)),
    (MP, [("a.tfrecord.gz", 200 << 20)], (2, 64 << 20, 1, False)),
    (MP + ["--reshuffle_batches", "on"], [("a.tfrecord.gz", 1 << 20)], (2, 64 << 20, 1, True)),
    (["--reshuffle_batches", "on", "--split_bytes", "0"], [("a.tfrecord", 10 << 20)],
     (1, 0, 1, True)),
    # Dataflow: workers x the machine type's vCPUs; gzip files are one read each
    (DF + ["--max_num_workers", "5", "--machine_type", "n2-standard-8"],
     [(f"p{i}.csv.gz", 1 << 30) for i in range(39)], (40, 64 << 20, 39, True)),
    (DF + ["--max_num_workers", "5", "--machine_type", "n2-standard-8"],
     [("p.csv", 10 << 30)], (40, 64 << 20, 160, False)),
    (DF + ["--num_workers", "5", "--machine_type", "custom", "--reshuffle_batches", "off"],
     [("p.tfrecord.gz", 1 << 30)], (5, 64 << 20, 1, False)),
])
def test_the_plan_splits_and_reshuffles_only_where_it_pays(argv, files, expected):
    from pipeline.build import reshuffle, split_bytes, worker_processes
    from pipeline.options import BatchPredictOptions
    from transforms.read import read_units
    opts = BatchPredictOptions(["--model", "m", "--input", "i", "--output", "o", *argv])
    fmt = formats.infer_input_format([f for f, _ in files])
    units = read_units(files, fmt, split_bytes(opts))
    assert (worker_processes(opts), split_bytes(opts), units, reshuffle(opts, units)) == expected


def test_a_huge_file_gets_larger_ranges_not_millions_of_them():
    from transforms.read import MAX_RANGES, split_grid
    grid = split_grid(10 ** 12, 4096)  # 1 TB at the smallest split size
    assert len(grid) <= MAX_RANGES and grid[0][0] == 0 and grid[-1][1] == 10 ** 12
    assert all(a[1] == b[0] for a, b in zip(grid, grid[1:]))


@pytest.mark.parametrize("fmt", ["csv", "tfrecord"])
def test_a_large_gs_file_is_read_in_ranges_like_a_local_one(fmt, large, gcs, tmp_path):
    """Ranges of a gs:// file (Beam's GCS filesystem, seeks and bounded reads, against the
    emulator on loopback): the same records, indices and error rows as the local file."""
    remote = f"gs://bp-split/big.{fmt}"
    gcs.upload_bytes(remote, open(large[fmt], "rb").read())
    size = os.path.getsize(large[fmt])
    local = index_locally(formats.input_format(fmt), large[fmt], size, SPLIT)
    index = index_locally(formats.input_format(fmt), remote, size, SPLIT)
    assert index.split and (index.starts, index.first_index, index.first_line) == \
        (local.starts, local.first_index, local.first_line)
    dofn = ReadBlocksDoFn(fmt, 97)
    dofn.setup()
    got = []
    for piece in index.slices(3):  # as the reading step gets them
        got += _records(dofn.process(piece, tracker=OffsetRestrictionTracker(
            OffsetRange(0, piece.blocks))))
    assert sorted(got) == sorted(_serial(fmt, large[fmt]))
