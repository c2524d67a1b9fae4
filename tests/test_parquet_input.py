"""Parquet input: typed columns through the real pipeline, start-up checks, row-group splits.

Files are written with pyarrow, with the column types a Parquet producer gives (float and
double, int32 and int64, strings, dictionary-encoded strings, lists); the real pipeline scores
them and the predictions are compared with an oracle that calls the SavedModel directly on
the same rows (tests/helpers.expected_outputs). Splitting is checked the way the runner reads:
every block of a split file, in slices and under random dynamic splits, gives exactly the
records and error rows of one serial read.
"""
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker

from pipeline.demo import IDS, NUMERIC, demo_rows
from pipeline.run import main
from tests import model_zoo as zoo
from tests.helpers import (assert_close, by_key, errors, expected_outputs, predictions,
                           read_jsonl, run_job)
from transforms import formats
from transforms.errors import InputError
from transforms.feature_spec import Feature, FeatureSpec
from transforms.formats.parquet_input import PARQUET, _GroupStarts, schema_problems
from transforms.read import ReadBlocksDoFn, ReadFilesDoFn, index_locally

# fixtures: `gcs` (GCS emulated on loopback), the model zoo's models and `load`
pytest_plugins = ["tests.gcs_emulator", "tests.model_zoo"]

def _table(rows: list[dict], key_type=pa.string()) -> pa.Table:
    """The demo rows with the types a Parquet producer writes: half the numbers float32 and
    half double, one id column int32, `device` dictionary-encoded; None is a null."""
    cols = {"id": pa.array([r.get("id") for r in rows], key_type)}
    for j, name in enumerate(NUMERIC):
        cols[name] = pa.array([r.get(name) for r in rows],
                              pa.float32() if j % 2 else pa.float64())
    for j, name in enumerate(IDS):
        cols[name] = pa.array([r.get(name) for r in rows], pa.int32() if j == 1 else pa.int64())
    cols["country"] = pa.array([r.get("country") for r in rows], pa.string())
    cols["device"] = pa.array([r.get("device") for r in rows], pa.string()).dictionary_encode()
    return pa.table(cols)


def _write(table: pa.Table, path, row_group_size: int | None = None) -> str:
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)


def _damage_row_group(path: str, group: int) -> None:
    """Overwrite the page header that starts row group `group` (the others stay readable)."""
    start = _GroupStarts(pq.ParquetFile(path).metadata)[group]
    data = bytearray(open(path, "rb").read())
    data[start:start + 16] = b"\xff" * 16
    open(path, "wb").write(bytes(data))


def _check_against_oracle(out: str, rows: list[dict], demo_model):
    """Every prediction row equals the SavedModel called directly on the same row (a None
    value: the feature is absent from the tf.Example)."""
    got = by_key(predictions(out))
    want = expected_outputs(demo_model, [{k: v for k, v in r.items() if k != "id"}
                                         for r in rows])
    assert set(got) == {r["id"] for r in rows}
    for i, row in enumerate(rows):
        pred = got[row["id"]]
        for name in ("score", "logits", "embedding"):
            assert_close(pred[name], want[name][i])
        assert pred["label"] == want["label"][i].decode()
        assert pred["bucket"] == int(want["bucket"][i])


@pytest.fixture(scope="module")
def parquet_demo(demo_data, tmp_path_factory):
    """The 1,500 demo rows as 3 Parquet files of 500 rows (row groups of 128 rows)."""
    root = tmp_path_factory.mktemp("parquet_demo")
    rows = demo_data["rows"]
    paths = [_write(_table(rows[s * 500:(s + 1) * 500]), root / f"part-{s}.parquet", 128)
             for s in range(3)]
    return {"dir": str(root), "paths": paths, "rows": rows}


# --- the real pipeline ------------------------------------------------------------------------
def test_typed_demo_rows_score_like_the_model_called_directly(parquet_demo, demo_data,
                                                              demo_model_base, demo_model,
                                                              tmp_path):
    out, ref = str(tmp_path / "parquet"), str(tmp_path / "tfrecord")
    summary = run_job(demo_model_base, os.path.join(parquet_demo["dir"], "*.parquet"), out,
                      "--key_field", "id", "--batch_size", "200")
    assert summary["input_format"] == "parquet"  # inferred from the extension
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (1500, 1500, 0)
    _check_against_oracle(out, parquet_demo["rows"], demo_model)
    # and the same rows as the demo's TFRecord shards give the same predictions
    run_job(demo_model_base, ",".join(demo_data["tfrecord"]), ref, "--key_field", "id")
    want = by_key(predictions(ref))
    for key, row in by_key(predictions(out)).items():
        assert row.keys() == want[key].keys()
        assert (row["label"], row["bucket"]) == (want[key]["label"], want[key]["bucket"])
        assert_close(row["embedding"], want[key]["embedding"])


def test_nulls_bad_values_and_unreadable_files_are_error_rows(tmp_path, demo_model_base,
                                                               demo_model):
    """A null is an absent value (the default, or missing_feature when there is none), a
    double beyond float32 is a parse_error, a null key a missing_key row, each at its record
    index; a damaged row group is one error row and the rest of the file is read; a file that
    is not Parquet is one row. An int64 key column keeps its type in the output."""
    rows = demo_rows(300, seed=41)
    for i, row in enumerate(rows):
        row["id"] = 1000 + i
    rows[3]["n0"] = None          # default 0.0
    rows[5]["c1"] = None          # default 0
    rows[7]["country"] = None     # default ""
    rows[9]["device"] = None      # required: missing_feature
    rows[11]["n2"] = 1e39         # a double beyond float32's range
    rows[13]["n3"] = 3.0e38       # in a float32 column, near its largest value: fine
    rows[15]["id"] = None         # missing_key
    data = tmp_path / "in"
    data.mkdir()
    _write(_table(rows, pa.int64()), data / "a.parquet", 100)
    other = demo_rows(300, seed=42)
    for i, row in enumerate(other):
        row["id"] = 5000 + i
    damaged = _write(_table(other, pa.int64()), data / "b.parquet", 100)
    _damage_row_group(damaged, 1)
    (data / "c.parquet").write_bytes(b"id,n0\nr1,0.5\n")
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, str(data / "*.parquet"), out, "--key_field", "id",
                      "--max_error_rate", "1")
    assert summary["records_in"] == 300 + (200 + 1) + 1
    errs = {(os.path.basename(e["shard"]), e["index"]): e for e in errors(out)}
    assert {k: (e["error_type"], e["message"]) for k, e in errs.items()} == {
        ("a.parquet", 9): ("missing_feature", "required column 'device' is empty"),
        ("a.parquet", 11): ("parse_error", "column 'n2': 1e+39 is out of float32 range"),
        ("a.parquet", 15): ("missing_key", "key column 'id' is empty"),
        ("b.parquet", 100): ("unreadable_tail", errs[("b.parquet", 100)]["message"]),
        ("c.parquet", 0): (
            "unreadable_tail", "not a readable Parquet file: it does not start with Parquet's "
            "magic bytes PAR1 (it starts with b'id,n'); no record of the file was read"),
    }
    damaged_row = errs[("b.parquet", 100)]["message"]  # pyarrow's reason in between, one line
    assert damaged_row.startswith("row group 1 (records 100-199) cannot be read: Couldn't "
                                  "deserialize thrift")
    assert damaged_row.endswith("; 0 of its records were read before it and the rest of the "
                                "row group was not") and damaged_row.isprintable()
    payload = errs[("a.parquet", 11)]["payload"]  # the row's values, as JSON
    assert '"n2": 1e+39' in payload and '"id": 1011' in payload
    assert all(isinstance(r["id"], int) for r in predictions(out))
    good = [r for i, r in enumerate(rows) if i not in (9, 11, 15)]
    good += [r for i, r in enumerate(other) if not 100 <= i < 200]
    _check_against_oracle(out, good, demo_model)


def test_list_columns_feed_fixed_shapes_and_variable_length_features(tmp_path, estimator_v1,
                                                                     load):
    """An Estimator export with a fixed [3] float feature and variable-length string and int64
    features, fed by Parquet list columns (a null: an absent feature), gives the model's own
    outputs; a list of the wrong length and a null inside a list are their rows' errors."""
    rows = zoo.estimator_rows(150, seed=4)
    bad = [{**rows[0], "id": "short", "vec": [1.0, 2.0]},
           {**rows[1], "id": "hole", "clicks": [3, None]}]

    def column(name, t):
        return pa.array([r.get(name) for r in rows + bad], t)
    table = pa.table({"id": column("id", pa.string()), "age": column("age", pa.float64()),
                      "hours": column("hours", pa.float32()),
                      "dept_id": column("dept_id", pa.int64()),
                      "country": column("country", pa.string()),
                      "vec": column("vec", pa.list_(pa.float32())),
                      "tags": column("tags", pa.list_(pa.string())),
                      "clicks": column("clicks", pa.large_list(pa.int64()))})
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], _write(table, tmp_path / "est.parquet", 64), out,
                      "--signature", "predict", "--key_field", "id", "--batch_size", "200",
                      "--max_error_rate", "1")
    assert (summary["records_in"], summary["predicted"]) == (152, 150)
    assert [(e["index"], e["error_type"], e["message"]) for e in errors(out)] == [
        (150, "shape_mismatch", "column 'vec' has 2 values, shape [3] needs 3"),
        (151, "parse_error", "column 'clicks': a list holds a null value")]
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}
    expected = zoo.call_parsing_signature(load(estimator_v1["newest"]), "predict", rows, dtypes)
    # one model call, as in the oracle: the graph pads varlen features to the batch's longest
    # list, so other batches may differ in the last bit
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected, rtol=0)


# --- start-up checks ------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda t: t.set_column(t.schema.get_field_index("n0"), "n0",
                            pa.array([str(v) for v in t.column("n0").to_pylist()])),
     "column 'n0' (string) cannot hold feature 'n0' (float32): it needs a number column "
     "(float, double or an integer type)"),
    (lambda t: t.set_column(t.schema.get_field_index("c0"), "c0",
                            pa.array([[v] for v in t.column("c0").to_pylist()])),
     "column 'c0' (list<element: int64>) is a list column; feature 'c0' is one int64 value per "
     "record: it needs a column of single values"),
    (lambda t: t.drop_columns(["device"]), "required feature 'device' is not a column"),
    (None, "is not a readable Parquet file: it does not end with Parquet's magic bytes PAR1: "
           "cut short (an incomplete copy or upload?)"),
])
def test_a_first_file_the_model_cannot_use_is_refused_in_one_line(
        change, message, tmp_path, demo_model_base, capsys):
    path = tmp_path / "in.parquet"
    table = _table(demo_rows(20, seed=5))
    if change is None:
        _write(table, path)
        path.write_bytes(path.read_bytes()[:-100])  # an upload cut short
    else:
        _write(change(table), path)
    code = main(["--model", demo_model_base, "--input", str(path), "--output",
                 str(tmp_path / "out"), "--key_field", "id"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    if change is not None:
        assert err[0].startswith(f"error: the columns of {path} do not fit the model: ")
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


SPEC = FeatureSpec([
    Feature("x", "fixed", "float32", (), (0.0,)),
    Feature("n", "fixed", "int64", ()),
    Feature("pair", "fixed", "float32", (2,), (0.0,)),
    Feature("tags", "varlen", "string"),
])
GOOD = {"x": pa.float64(), "n": pa.int32(), "pair": pa.list_(pa.float32()),
        "tags": pa.list_(pa.binary()), "id": pa.int64()}


@pytest.mark.parametrize("types, problems", [
    ({}, []),
    ({"x": pa.int8(), "n": pa.float64(), "pair": pa.large_list(pa.int64()),
      "tags": pa.string()}, []),  # numbers convert (integral floats to int64); a single tag
    ({"pair": pa.list_(pa.float32(), 2), "x": pa.dictionary(pa.int32(), pa.float64())}, []),
    ({"n": pa.string()}, ["column 'n' (string) cannot hold feature 'n' (int64): it needs a "
                          "number column (float, double or an integer type)"]),
    ({"x": pa.decimal128(10, 2)}, ["column 'x' (decimal128(10, 2)) cannot hold feature 'x' "
                                   "(float32): it needs a number column (float, double or an "
                                   "integer type)"]),
    ({"tags": pa.list_(pa.int64())}, ["column 'tags' (list<item: int64>) cannot hold feature "
                                      "'tags' (string): it needs a string or binary column"]),
    ({"pair": pa.float32()}, ["column 'pair' (float) holds one value per record; feature "
                              "'pair' has shape [2]: it needs a list column of 2 values"]),
    ({"pair": pa.list_(pa.float32(), 3)}, ["column 'pair' (fixed_size_list<item: float>[3]) "
                                           "holds lists of 3 values; feature 'pair' has shape "
                                           "[2], 2 values"]),
    ({"pair": pa.list_(pa.list_(pa.float32()))}, [
        "column 'pair' (list<item: list<item: float>>) holds lists of lists; feature 'pair' "
        "needs its float32 values as one flat list per record"]),
    ({"id": pa.list_(pa.string())}, ["--key_field 'id' is a list<item: string> column; a key "
                                     "must be a string, binary, integer or floating-point "
                                     "column"]),
    ({"n": None, "id": None}, ["required feature 'n' is not a column",
                               "--key_field 'id' is not a column"]),
    ({"n": None, "N": pa.int64()}, ["column 'N' matches feature 'n' only in letter case; "
                                    "rename the column to 'n'"]),
])
def test_column_types_are_checked_against_the_spec(types, problems):
    fields = {**GOOD, **types}
    schema = pa.schema([(name, t) for name, t in fields.items() if t is not None])
    assert schema_problems(schema, SPEC, "id") == problems


def test_a_repeated_column_or_no_feature_at_all_is_refused(tmp_path):
    path = str(tmp_path / "dup.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array([1.0]), pa.array([2.0]), pa.array([3])],
                                        names=["x", "x", "n"]), path)
    with pytest.raises(InputError) as e:
        PARQUET.check_first_shard(path, SPEC, None)
    assert str(e.value) == (f"the columns of {path} do not fit the model: column 'x' appears "
                            "2 times, so which one holds the values is unclear")
    assert schema_problems(pa.schema([("a", pa.int64())]), FeatureSpec([SPEC["x"]]), None) == \
        ["it has none of the model's features ('x'); its columns are 'a'"]
    assert schema_problems(pa.schema([("n", pa.int64())]), FeatureSpec([SPEC["x"], SPEC["n"]]),
                           "x") == ["--key_field 'x' is not a column"]  # a key that is a feature
    # a later file with a repeated column: one error row per row group, nothing misread
    [row] = list(PARQUET.read_shard(path, 10, ["x", "n"], 1 << 20, {}))
    assert (row["index"], row["error_type"]) == (0, "unreadable_tail")
    assert "column 'x' appears 2 times" in row["message"]


def test_the_key_keeps_its_type(tmp_path):
    path = _write(pa.table({"k": pa.array([1], pa.int32()), "f": pa.array([1.0]),
                            "s": pa.array([b"a"]), "b": pa.array([True])}), tmp_path / "k.parquet")
    assert [PARQUET.key_dtype(path, k) for k in ("k", "f", "s")] == \
        ["int64", "float32", "string"]
    with pytest.raises(InputError, match="--key_field 'b' is a bool column"):
        PARQUET.key_dtype(path, "b")
    with pytest.raises(InputError, match=r"--key_field 'z' is not a column of .* \(it has: "
                                         r"'k', 'f', 's', 'b'\)"):
        PARQUET.key_dtype(path, "z")


def test_only_the_columns_the_job_reads_are_read(tmp_path):
    rows = demo_rows(2000, seed=6)
    rng = np.random.default_rng(6)
    table = _table(rows).append_column("notes", pa.array([rng.bytes(250).hex()
                                                          for _ in rows]))
    path = _write(table, tmp_path / "wide.parquet", 700)
    stats = {}
    batches = list(PARQUET.read_shard(path, 300, ["n0", "id", "missing"], 1 << 20, stats))
    assert [len(b) for b in batches] == [300, 300, 100] * 2 + [300, 300]
    assert all(b.table.column_names == ["n0", "id"] for b in batches)
    assert np.concatenate([b.indices for b in batches]).tolist() == list(range(2000))
    assert stats["bytes"] < os.path.getsize(path) / 10  # the notes were not read


# --- splitting by row groups ------------------------------------------------------------------
def _records(outputs) -> list[tuple]:
    """(index, "ok", cells) per record and (index, "error", type, message) per error row."""
    out = []
    for item in outputs:
        tag = getattr(item, "tag", None)
        if tag == "shard_stats":
            continue
        if tag == "errors":
            out.append((item.value["index"], "error", item.value["error_type"],
                        item.value["message"]))
            continue
        cells = zip(*(item.table.column(c).to_pylist() for c in item.table.column_names))
        out += [(int(i), "ok", c) for i, c in zip(item.indices, cells)]
    return out


def _serial(path: str) -> list[tuple]:
    dofn = ReadFilesDoFn("parquet", 97, ["id", "n0", "c1", "device"])
    dofn.setup()
    return _records(dofn.process_file(path))


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


@pytest.fixture(scope="module")
def many_groups(tmp_path_factory):
    """3,000 demo rows in row groups of 150, the 8th damaged."""
    path = _write(_table(demo_rows(3000, seed=8)),
                  tmp_path_factory.mktemp("groups") / "groups.parquet", 150)
    _damage_row_group(path, 7)
    return path


def test_blocks_are_the_row_groups_starting_in_each_range(many_groups):
    size = os.path.getsize(many_groups)
    index = index_locally(PARQUET, many_groups, size, 8192)
    starts = _GroupStarts(pq.ParquetFile(many_groups).metadata)
    groups = [starts[g] for g in range(len(starts))]
    assert index.split and index.blocks == -(-size // 8192) > 5
    assert index.starts[0] == 0 and list(index.starts) == sorted(index.starts)
    for k in range(index.blocks):
        mine = [g for g, s in enumerate(groups) if k * 8192 <= s < (k + 1) * 8192]
        assert [g for g, s in enumerate(groups)
                if index.starts[k] <= s < index.end(k)] == mine
        assert index.first_index[k] == 150 * sum(s < k * 8192 for s in groups)
    # a file whose row groups all start in the first range, or a small one, is read whole
    assert index_locally(PARQUET, many_groups, size, size - 1).blocks == 1
    assert not index_locally(PARQUET, many_groups, size, 0).split


@pytest.mark.parametrize("seed", range(4))
def test_split_reads_give_the_serial_records_and_error_rows(many_groups, seed):
    serial = _serial(many_groups)
    assert len(serial) == 3000 - 150 + 1
    assert [r for r in serial if r[1] == "error"][0][:3] == (1050, "error", "unreadable_tail")
    index = index_locally(PARQUET, many_groups, os.path.getsize(many_groups), 8192)
    dofn = ReadBlocksDoFn("parquet", 97, ["id", "n0", "c1", "device"])
    dofn.setup()
    got = []
    if seed == 0:  # in slices, as the reading step gets them
        for piece in index.slices(3):
            got += _records(dofn.process(piece, tracker=OffsetRestrictionTracker(
                OffsetRange(0, piece.blocks))))
        assert got == serial  # in order, too
    else:  # under dynamic splits, residuals in any order
        rng = random.Random(seed)
        pending = [OffsetRange(0, index.blocks)]
        while pending:
            restriction = pending.pop(rng.randrange(len(pending)))
            got += _records(dofn.process(index, tracker=_SplittingTracker(restriction, rng,
                                                                         pending)))
    assert sorted(got, key=repr) == sorted(serial, key=repr)


def test_a_file_changed_after_indexing_is_an_error_row_not_wrong_indices(tmp_path):
    path = _write(_table(demo_rows(600, seed=9)), tmp_path / "f.parquet", 100)
    index = index_locally(PARQUET, path, os.path.getsize(path), 4096)
    block = next(k for k in range(1, index.blocks) if index.starts[k] < index.end(k))
    _write(_table(demo_rows(600, seed=9)), path, 50)  # rewritten with other row groups
    items = list(PARQUET.read_block(index, block, 100, ["id"], 1 << 20, {}))
    assert len(items) == 1 and items[0]["error_type"] == "unreadable_tail"
    assert "the file changed after it was indexed" in items[0]["message"]


@pytest.mark.slow
def test_two_workers_read_one_split_file_with_one_workers_results(many_groups, tmp_path,
                                                                  demo_model_base):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    run_job(demo_model_base, many_groups, one, "--split_bytes", "8192", "--key_field", "id",
            "--max_error_rate", "1")
    run_job(demo_model_base, many_groups, two, "--split_bytes", "8192", "--key_field", "id",
            "--max_error_rate", "1", "--direct_num_workers=2",
            "--direct_running_mode=multi_processing")
    for out in (one, two):
        assert [(e["index"], e["error_type"]) for e in errors(out)] == \
            [(1050, "unreadable_tail")]
    got, want = by_key(predictions(two)), by_key(predictions(one))
    assert len(got) == len(want) == 2850 and got.keys() == want.keys()
    for key, row in got.items():
        assert_close(row["score"], want[key]["score"])
    [shard] = [r for r in read_jsonl(os.path.join(two, "metrics", "shard_latency-*.jsonl"))]
    readers = shard["records_by_worker"]
    assert len(readers) == 2 and min(readers.values()) > 0, readers  # both workers read it


# --- gs:// ------------------------------------------------------------------------------------
def test_gs_parquet_is_scored_and_split_like_a_local_file(gcs, parquet_demo, many_groups,
                                                          demo_model_base, demo_model,
                                                          tmp_path):
    """Beam's GCS filesystem against the emulator on loopback: a job reads gs:// Parquet
    files, and a split gs:// file gives the blocks and records of the local one."""
    for path in parquet_demo["paths"]:
        gcs.upload_bytes(f"gs://bp-parquet/in/{os.path.basename(path)}",
                         open(path, "rb").read())
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, "gs://bp-parquet/in/*.parquet", out,
                      "--key_field", "id")
    assert (summary["records_in"], summary["predicted"]) == (1500, 1500)
    _check_against_oracle(out, parquet_demo["rows"], demo_model)

    remote = "gs://bp-parquet/groups.parquet"
    gcs.upload_bytes(remote, open(many_groups, "rb").read())
    size = os.path.getsize(many_groups)
    local = index_locally(PARQUET, many_groups, size, 8192)
    index = index_locally(PARQUET, remote, size, 8192)
    assert index.split and (index.starts, index.first_index) == \
        (local.starts, local.first_index)
    dofn = ReadBlocksDoFn("parquet", 97, ["id", "n0", "c1", "device"])
    dofn.setup()
    got = []
    for piece in index.slices(4):
        got += _records(dofn.process(piece, tracker=OffsetRestrictionTracker(
            OffsetRange(0, piece.blocks))))
    assert got == _serial(many_groups)


def test_parquet_is_a_registered_input_format():
    assert formats.infer_input_format(["gs://b/d/part-0.PARQUET"]).name == "parquet"
    assert formats.input_format("parquet") is PARQUET
