"""--passthrough_fields: input fields copied into every prediction row, with their type.

The Estimator-style model (fixed [1] and [3] features with and without defaults, variable-length
string and int64 features) scores the same rows from TFRecord, CSV, Parquet and JSONL; every
row's passthrough values are checked against values computed here from the rows themselves
(a spec feature: what `parse_example` gives the model, defaults included; another field: as
the source holds it), in every output format. Start-up refusals and per-record type mismatches
are checked through the real CLI.
"""
import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run import main
from tests import model_zoo as zoo
from tests.helpers import by_key, errors, predictions, run_job

pytest_plugins = ["tests.model_zoo"]

FIELDS = ["age", "hours", "vec", "tags", "clicks", "region"]
DEFAULTS = {"hours": 40.0, "vec": [0.0, 0.0, 0.0]}  # the export's defaults, as the zoo writes them


def _rows(n=60, seed=7):
    rows = zoo.estimator_rows(n, seed=seed)
    for i, r in enumerate(rows):
        if i % 3:
            r["region"] = ["eu-west", "us-east", "ap-south"][i % 3]  # else absent
    return rows


def _expected(row: dict) -> dict:
    """What the row holds for each field: the parsed spec feature, or the source's value."""
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    return {"age": f32(row["age"]),
            "hours": f32(row.get("hours", DEFAULTS["hours"])),
            "vec": [f32(v) for v in row.get("vec", DEFAULTS["vec"])],
            "tags": list(row.get("tags", [])),
            "clicks": list(row.get("clicks", [])),
            "region": row.get("region")}


def _same(got: dict, want: dict, where: str):
    for name, exp in want.items():
        val = got[name]
        if isinstance(exp, float):
            assert isinstance(val, float) and np.float32(val) == np.float32(exp), (where, name)
        elif isinstance(exp, list) and exp and isinstance(exp[0], float):
            assert np.array_equal(np.float32(val), np.float32(exp)), (where, name, val, exp)
        else:
            assert val == exp, (where, name, val, exp)


def _dtypes():
    return {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES), "region": "string"}


def _write_inputs(rows, root) -> dict[str, str]:
    os.makedirs(root, exist_ok=True)
    paths = {"tfrecord": zoo.write_tfrecord(str(root / "in.tfrecord"), rows, _dtypes())}
    cols = list(_dtypes())
    paths["csv"] = zoo.write_csv(str(root / "in.csv"), rows, cols)
    table = pa.table({
        "id": pa.array([r["id"] for r in rows]),
        "age": pa.array([r["age"] for r in rows], pa.float64()),
        "hours": pa.array([r.get("hours") for r in rows], pa.float32()),
        "dept_id": pa.array([r.get("dept_id") for r in rows], pa.int64()),
        "country": pa.array([r.get("country") for r in rows]),
        "vec": pa.array([r.get("vec") for r in rows], pa.list_(pa.float32())),
        "tags": pa.array([r.get("tags") for r in rows], pa.list_(pa.string())),
        "clicks": pa.array([r.get("clicks") for r in rows], pa.list_(pa.int64())),
        "region": pa.array([r.get("region") for r in rows], pa.string())})
    paths["parquet"] = str(root / "in.parquet")
    pq.write_table(table, paths["parquet"], row_group_size=25)
    paths["jsonl"] = str(root / "in.jsonl")
    with open(paths["jsonl"], "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return paths


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    rows = _rows()
    return rows, _write_inputs(rows, tmp_path_factory.mktemp("passthrough_in"))


@pytest.mark.parametrize("fmt", ["tfrecord", "csv", "parquet", "jsonl"])
def test_every_input_format_copies_the_fields_with_their_parsed_values(fmt, inputs, tmp_path,
                                                                       estimator_v1):
    rows, paths = inputs
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], paths[fmt], out, "--signature", "predict",
                      "--key_field", "id", "--passthrough_fields", ",".join(FIELDS),
                      "--batch_size", "16")
    assert (summary["records_in"], summary["predicted"]) == (60, 60), errors(out)
    got = by_key(predictions(out))
    for row in rows:
        pred = got[row["id"]]
        # the key, the fields in the order named, then the model's outputs in name order
        names = list(pred)
        assert names[:1 + len(FIELDS)] == ["id"] + FIELDS, names
        assert names[1 + len(FIELDS):] == sorted(names[1 + len(FIELDS):])
        _same(pred, _expected(row), row["id"])


def test_each_output_format_holds_the_fields_typed(inputs, tmp_path, estimator_v1):
    """Parquet: Arrow types from the spec and the source (a null stays null); CSV: a header in
    row order, lists as JSON, a null an empty cell; TFRecord: a feature per field, absent for
    a null."""
    import tensorflow as tf
    rows, paths = inputs
    want = {r["id"]: _expected(r) for r in rows}
    common = ["--signature", "predict", "--key_field", "id", "--passthrough_fields",
              ",".join(FIELDS)]

    out = str(tmp_path / "parquet")
    run_job(estimator_v1["base"], paths["parquet"], out, *common, "--output_format", "parquet")
    table = pq.read_table(os.path.join(out, "predictions-00000-of-00001.parquet"))
    schema = {f.name: str(f.type) for f in table.schema}
    assert table.schema.names[:1 + len(FIELDS)] == ["id"] + FIELDS
    assert {k: schema[k] for k in FIELDS} == {
        "age": "float", "hours": "float", "vec": "fixed_size_list<element: float>[3]",
        "tags": "list<element: string>", "clicks": "list<element: int64>", "region": "string"}
    for row in table.to_pylist():
        _same(row, want[row["id"]], row["id"])

    out = str(tmp_path / "csv")
    run_job(estimator_v1["base"], paths["tfrecord"], out, *common, "--output_format", "csv")
    with open(os.path.join(out, "predictions-00000-of-00001.csv"), newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        assert header[:1 + len(FIELDS)] == ["id"] + FIELDS
        for cells in reader:
            row = dict(zip(header, cells))
            exp = want[row["id"]]
            assert np.float32(row["age"]) == np.float32(exp["age"])
            assert json.loads(row["tags"]) == exp["tags"]
            assert json.loads(row["clicks"]) == exp["clicks"]
            assert np.array_equal(np.float32(json.loads(row["vec"])), np.float32(exp["vec"]))
            assert row["region"] == (exp["region"] or "")

    out = str(tmp_path / "tfrecord")
    run_job(estimator_v1["base"], paths["jsonl"], out, *common, "--output_format", "tfrecord")
    seen = 0
    for record in tf.data.TFRecordDataset(os.path.join(out,
                                                       "predictions-00000-of-00001.tfrecord")):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        exp = want[feature["id"].bytes_list.value[0].decode()]
        assert np.float32(feature["age"].float_list.value[0]) == np.float32(exp["age"])
        assert list(feature["vec"].float_list.value) == pytest.approx(exp["vec"], rel=1e-7)
        assert [t.decode() for t in feature["tags"].bytes_list.value] == exp["tags"]
        assert list(feature["clicks"].int64_list.value) == exp["clicks"]
        if exp["region"] is None:
            assert "region" not in feature
        else:
            assert feature["region"].bytes_list.value == [exp["region"].encode()]
        seen += 1
    assert seen == len(rows)


def test_fields_stay_with_their_records_when_records_fail(tmp_path, estimator_v1):
    """TFRecord records without the key (dropped in the model step) and a required feature
    missing (dropped by the model's parse) sit between good ones: every row keeps its own
    passthrough values. A record whose field has two values where the first record's has one
    is a type_mismatch row; so is a JSONL value of another type than the first record's."""
    rows = _rows(40, seed=11)
    for r in rows:
        r["region"] = r.get("region", "none")
    for i in (3, 17, 30):
        rows[i].pop("id")            # missing_key
    del rows[8]["age"]               # required: the model's parse fails for this one
    rows[21]["region"] = ["a", "b"]  # two values where the first record holds one
    dtypes = _dtypes()
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, dtypes)
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], path, out, "--signature", "predict",
                      "--key_field", "id", "--passthrough_fields", "region,dept_id,age",
                      "--max_error_rate", "1", "--batch_size", "8")
    errs = sorted((e["index"], e["error_type"]) for e in errors(out))
    assert [e for e in errs if e[0] == 21] == [(21, "type_mismatch")]
    assert {e[0] for e in errs} == {3, 8, 17, 21, 30}
    assert summary["predicted"] == 35
    got = by_key(predictions(out))
    for i, row in enumerate(rows):
        if i in (3, 8, 17, 21, 30):
            continue
        pred = got[row["id"]]
        assert pred["region"] == row["region"], i
        assert pred["dept_id"] == row.get("dept_id", -1), i
        assert np.float32(pred["age"]) == np.float32(row["age"]), i

    lines = [{"id": "a", "age": 30.0, "weight": 1}, {"id": "b", "age": 31.0, "weight": 2.0},
             {"id": "c", "age": 32.0, "weight": "heavy"}, {"id": "d", "age": 33.0}]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = str(tmp_path / "out_jsonl")
    run_job(estimator_v1["base"], str(path), out, "--signature", "predict", "--key_field", "id",
            "--passthrough_fields", "weight", "--max_error_rate", "1")
    [bad] = errors(out)
    assert (bad["index"], bad["line"], bad["error_type"]) == (2, 3, "type_mismatch")
    assert "weight" in bad["message"]
    got = by_key(predictions(out))
    assert {k: v["weight"] for k, v in got.items()} == {"a": 1, "b": 2, "d": None}


@pytest.mark.parametrize("fields, message", [
    ("region,nope", "--passthrough_fields 'nope' is neither a feature of the model's spec nor "
                    "a field of the first input"),
    ("id", "--passthrough_fields 'id' is the key column"),
    ("logistic", "--passthrough_fields 'logistic' is also a model output column"),
    ("age,age", "--passthrough_fields names 'age' twice"),
    ("age,,region", "names an empty field in 'age,,region'"),
])
def test_a_field_the_job_cannot_copy_is_refused_at_start_up(fields, message, inputs, tmp_path,
                                                            estimator_v1, capsys):
    _, paths = inputs
    for fmt in ("tfrecord", "csv"):
        out = tmp_path / f"out_{fmt}"
        code = main(["--model", estimator_v1["base"], "--input", paths[fmt], "--output",
                     str(out), "--signature", "predict", "--key_field", "id",
                     "--passthrough_fields", fields])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()


def test_rows_without_a_key_hold_the_fields_after_shard_and_index(inputs, tmp_path,
                                                                  estimator_v1, capsys):
    rows, paths = inputs
    out = str(tmp_path / "out")
    run_job(estimator_v1["base"], paths["csv"], out, "--signature", "predict",
            "--passthrough_fields", "region,tags", "--output_format", "csv")
    with open(os.path.join(out, "predictions-00000-of-00001.csv"), newline="") as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0])[:4] == ["shard", "index", "region", "tags"]
    for row in got:
        exp = _expected(rows[int(row["index"])])
        assert row["region"] == (exp["region"] or "") and json.loads(row["tags"]) == exp["tags"]
    code = main(["--model", estimator_v1["base"], "--input", paths["csv"], "--output",
                 str(tmp_path / "o2"), "--signature", "predict", "--passthrough_fields", "index"])
    assert code == 2 and "a column that rows without --key_field hold" in capsys.readouterr().err
