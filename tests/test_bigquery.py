"""BigQuery in and out, through the real pipeline, against bqemulator on loopback.

Input: a table (Storage Read API) or a query is scored like the same rows in a TFRecord file;
its columns are checked at start-up like a Parquet file's. Output: predictions land in a table
(or one day partition) through a staging table and one copy job at finalize; errors, metrics,
manifest.json and _SUCCESS still land in --output. The emulator and the test-side shims are in
tests/bq_emulator.py (its docstring lists the emulator's gaps and their workarounds).
"""
import datetime
import json
import logging
import os

import numpy as np
import pytest

from pipeline.demo import IDS, NUMERIC, demo_rows, write_tfrecords
from pipeline.options import check_argv
from pipeline.run import main, run
from tests.bq_emulator import bq, bq_emulator_process  # noqa: F401  (fixtures)
from tests.helpers import by_key, errors, predictions, read_jsonl, run_job
from transforms.errors import OptionsError

DEMO_SCHEMA = ([("id", "STRING", "NULLABLE")] + [(n, "FLOAT64", "NULLABLE") for n in NUMERIC]
               + [(n, "INT64", "NULLABLE") for n in IDS]
               + [("country", "STRING", "NULLABLE"), ("device", "STRING", "NULLABLE")])
OUTPUTS = ("bucket", "embedding", "label", "logits", "score")


def _json_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}


@pytest.fixture(scope="module")
def demo_table(bq):
    """300 demo rows in a BigQuery table (the same rows as `demo_file`)."""
    rows = demo_rows(300, seed=21)
    table = f"{bq.dataset('demo')}.rows"
    bq.create_table(table, DEMO_SCHEMA, [_json_row(r) for r in rows])
    return {"table": table, "rows": rows}


@pytest.fixture(scope="module")
def demo_file(demo_table, tmp_path_factory):
    return write_tfrecords(demo_table["rows"],
                           str(tmp_path_factory.mktemp("bq_ref") / "rows.tfrecord"))


def _load_args(bq) -> list[str]:
    return ["--temp_location", f"gs://{bq.load_bucket}/tmp"]


def _refusal(capsys, argv: list[str]) -> str:
    """main()'s one `error:` line for a command line refused before the job starts."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


def _assert_same_predictions(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key, row in got.items():
        assert {k: row[k] for k in OUTPUTS} == {k: want[key][k] for k in OUTPUTS}, key


# --- input ------------------------------------------------------------------------------------
def test_a_table_is_scored_like_the_same_rows_in_a_tfrecord_file(bq, demo_table, demo_file,
                                                                 demo_model_base, tmp_path,
                                                                 caplog):
    out, ref = str(tmp_path / "bq"), str(tmp_path / "tfrecord")
    with caplog.at_level(logging.INFO, logger="batch_predict"):
        summary = run_job(demo_model_base, f"bq://{demo_table['table']}", out, "--key_field",
                          "id", "--batch_size", "300")
    # progress counts the table's rows (its metadata has them; no bytes are read from files)
    progress = [m for m in caplog.messages if m.startswith("progress: ")]
    assert progress[-1].startswith("progress: 300 records scored, 100% of 300 records done, ")
    assert summary["input_format"] == "bigquery"
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (300, 300, 0)
    run_job(demo_model_base, demo_file, ref, "--key_field", "id", "--batch_size", "300")
    # one batch of the same 300 records on both sides: the same model call, the same numbers
    _assert_same_predictions(by_key(predictions(out)), by_key(predictions(ref)))
    [shard] = read_jsonl(os.path.join(out, "metrics", "shard_latency-*.jsonl"))
    assert (shard["shard"], shard["records"]) == (f"bq://{demo_table['table']}", 300)


def test_a_query_is_scored_and_its_bad_rows_are_error_rows(bq, demo_table, demo_file,
                                                           demo_model_base, tmp_path):
    """A query's rows (here: an int key, a NULL required feature, a double beyond float32)
    are scored or rejected one by one; an error row holds the row as JSON."""
    out, ref = str(tmp_path / "query"), str(tmp_path / "ref")
    table = demo_table["table"]
    query = (f"SELECT CAST(SUBSTR(id, 2) AS INT64) AS id, {', '.join(NUMERIC[:-1])}, "
             f"IF(id = 'r7', 1e39, {NUMERIC[-1]}) AS {NUMERIC[-1]}, {', '.join(IDS)}, country, "
             f"IF(id = 'r3', NULL, device) AS device FROM `{table}` WHERE id != 'r0'")
    summary = _run_query(demo_model_base, query, out)
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (299, 297, 2)
    got = errors(out)
    assert sorted((e["shard"], e["error_type"], e["message"]) for e in got) == [
        ("query", "missing_feature", "required column 'device' is empty"),
        ("query", "parse_error", f"column '{NUMERIC[-1]}': 1e+39 is out of float32 range")]
    payload = json.loads(next(e["payload"] for e in got if e["error_type"] == "parse_error"))
    assert payload["id"] == 7 and payload[NUMERIC[-1]] == 1e39
    assert all(isinstance(r["id"], int) for r in predictions(out))  # the key keeps its type
    run_job(demo_model_base, demo_file, ref, "--key_field", "id", "--batch_size", "300")
    want = {int(k[1:]): v for k, v in by_key(predictions(ref)).items()}
    got_rows = by_key(predictions(out))
    assert set(got_rows) == set(want) - {0, 3, 7}
    for key, row in got_rows.items():
        assert row["label"] == want[key]["label"]
        np.testing.assert_allclose(row["score"], want[key]["score"], rtol=1e-5)


def _run_query(model, query, out):
    run(["--model", model, "--input_query", query, "--output", out, "--key_field", "id",
         "--batch_size", "300", "--max_error_rate", "1"])
    with open(os.path.join(out, "metrics", "summary.json")) as fh:
        return json.load(fh)


@pytest.mark.parametrize("column, kind, mode, words", [
    ("n0", "STRING", "NULLABLE", "column 'n0' (STRING) cannot hold feature 'n0' (float32): it "
                                 "needs a FLOAT64 or INT64 column"),
    ("n1", "NUMERIC", "NULLABLE", "column 'n1' (NUMERIC) cannot hold feature 'n1' (float32)"),
    ("n2", "TIMESTAMP", "NULLABLE", "column 'n2' (TIMESTAMP) cannot hold feature 'n2'"),
    ("c0", "INT64", "REPEATED", "column 'c0' (REPEATED INT64) is a REPEATED column; feature "
                                "'c0' is one int64 value per record"),
    ("device", None, None, "required feature 'device' is not a column"),
    ("id", None, None, "--key_field 'id' is not a column"),
])
def test_a_column_that_cannot_hold_its_feature_is_refused_at_start_up(
        bq, demo_model_base, tmp_path, capsys, column, kind, mode, words):
    schema = [(n, t, m) for n, t, m in DEMO_SCHEMA if n != column]
    if kind is not None:
        schema.append((column, kind, mode))
    table = f"{bq.dataset('types')}.t"
    bq.create_table(table, schema)
    line = _refusal(capsys, ["--model", demo_model_base, "--input", f"bq://{table}",
                             "--output", str(tmp_path / "out"), "--key_field", "id"])
    assert line.startswith(f"error: the columns of bq://{table} do not fit the model: ")
    assert words in line, line
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


def test_bigquery_input_needs_a_key_field(bq, demo_table, demo_model_base, tmp_path, capsys):
    line = _refusal(capsys, ["--model", demo_model_base, "--input",
                             f"bq://{demo_table['table']}", "--output", str(tmp_path / "o")])
    assert "BigQuery input needs --key_field: table rows have no stable order" in line
    line = _refusal(capsys, ["--model", demo_model_base, "--input", "bq://bp-test.nope.t",
                             "--output", str(tmp_path / "o"), "--key_field", "id"])
    assert line == "error: --input bq://bp-test.nope.t: no such table (or no access to it)"


# --- output -----------------------------------------------------------------------------------
def _score_into(bq, model, inputs, out, table, *extra):
    return run_job(model, inputs, out, "--key_field", "id", "--output_table", table,
                   *_load_args(bq), *extra)


def test_predictions_go_to_a_table_and_a_rerun_needs_overwrite(bq, demo_file, demo_model_base,
                                                               tmp_path, capsys):
    dataset = bq.dataset("out")
    table = f"{dataset}.scores"
    out = str(tmp_path / "out")
    summary = _score_into(bq, demo_model_base, demo_file, out, table.replace(".", ":", 1))
    assert summary["predicted"] == 300
    rows = by_key(bq.rows(table))
    ref = str(tmp_path / "ref")
    run_job(demo_model_base, demo_file, ref, "--key_field", "id")
    want = by_key(predictions(ref))
    assert rows.keys() == want.keys()
    for key, row in rows.items():  # FLOAT64 holds each float32 exactly
        assert np.float32(row["score"]) == np.float32(want[key]["score"])
        assert np.array_equal(np.float32(row["embedding"]), np.float32(want[key]["embedding"]))
        assert (row["label"], row["bucket"]) == (want[key]["label"], want[key]["bucket"])
    schema = {f.name: (f.field_type, f.mode) for f in bq.client().get_table(table).schema}
    assert schema == {"id": ("STRING", "NULLABLE"), "bucket": ("INT64", "NULLABLE"),
                      "embedding": ("FLOAT64", "REPEATED"), "label": ("STRING", "NULLABLE"),
                      "logits": ("FLOAT64", "REPEATED"), "score": ("FLOAT64", "NULLABLE")}
    # the rest is files in --output, as for a file output: no predictions file
    names = sorted(os.listdir(out))
    assert "_SUCCESS" in names and not any(n.startswith("predictions-") for n in names)
    with open(os.path.join(out, "manifest.json")) as fh:
        manifest = json.load(fh)
    assert manifest["output_table"]["table"] == table.replace(".", ":", 1)
    assert bq.tables(dataset) == ["scores"]  # no staging table left

    line = _refusal(capsys, ["--model", demo_model_base, "--input", demo_file, "--output",
                             str(tmp_path / "again"), "--key_field", "id", "--output_table",
                             table, *_load_args(bq)])
    assert f"holds 300 rows, written by batch-predict run {manifest['run_id'].lower()}" in line
    assert "pass --overwrite" in line

    fewer = str(tmp_path / "fewer.tfrecord")
    write_tfrecords(demo_rows(40, seed=5, start_id=9000), fewer)
    _score_into(bq, demo_model_base, fewer, str(tmp_path / "over"), table, "--overwrite")
    assert sorted(bq.rows(table), key=lambda r: r["id"])[0]["id"] == "r9000"
    assert len(bq.rows(table)) == 40 and bq.tables(dataset) == ["scores"]


def test_passthrough_fields_go_from_a_table_into_a_table_with_their_types(
        bq, demo_table, demo_model_base, tmp_path):
    """A column of the input table (STRING) and a spec feature (as parsed: float32) are copied
    into the output table after the key, in the order named, typed from the input."""
    dataset = bq.dataset("pass")
    table = f"{dataset}.scores"
    _score_into(bq, demo_model_base, f"bq://{demo_table['table']}", str(tmp_path / "out"),
                table, "--passthrough_fields", f"country,{NUMERIC[0]}", "--batch_size", "300")
    fields = [(f.name, f.field_type, f.mode) for f in bq.client().get_table(table).schema]
    assert fields[:3] == [("id", "STRING", "NULLABLE"), ("country", "STRING", "NULLABLE"),
                          (NUMERIC[0], "FLOAT64", "NULLABLE")]
    assert [f[0] for f in fields[3:]] == sorted(OUTPUTS)
    rows = by_key(bq.rows(table))
    assert rows.keys() == {r["id"] for r in demo_table["rows"]}
    for row in demo_table["rows"]:
        got = rows[row["id"]]
        assert got["country"] == row.get("country")
        assert got[NUMERIC[0]] == float(np.float32(row[NUMERIC[0]])), row["id"]  # as parsed


def test_a_partition_decorator_replaces_that_partition_only(bq, demo_model_base, tmp_path,
                                                            capsys):
    table = f"{bq.dataset('parts')}.daily"
    for day, seed in (("20261121", 1), ("20261122", 2)):
        data = write_tfrecords(demo_rows(30, seed=seed, start_id=seed * 100),
                               str(tmp_path / f"{day}.tfrecord"))
        _score_into(bq, demo_model_base, data, str(tmp_path / day), f"{table}${day}")
    assert bq.client().get_table(table).time_partitioning.type_ == "DAY"
    first = {r["id"] for r in bq.rows(f"{table}$20261121")}
    assert first == {f"r{100 + i}" for i in range(30)}
    # the second day again, other rows, --overwrite: the first day is intact
    data = write_tfrecords(demo_rows(10, seed=3, start_id=500), str(tmp_path / "again.tfrecord"))
    line = _refusal(capsys, ["--model", demo_model_base, "--input", data, "--output",
                             str(tmp_path / "again"), "--key_field", "id", "--output_table",
                             f"{table}$20261122", *_load_args(bq)])
    assert f"partition 20261122 of {table} holds 30 rows" in line
    _score_into(bq, demo_model_base, data, str(tmp_path / "again"), f"{table}$20261122",
                "--overwrite")
    assert {r["id"] for r in bq.rows(f"{table}$20261122")} == {f"r{500 + i}" for i in range(10)}
    assert {r["id"] for r in bq.rows(f"{table}$20261121")} == first


def test_a_run_over_its_error_budget_leaves_the_table_as_it_was(bq, demo_file, demo_model_base,
                                                                tmp_path, capsys):
    dataset = bq.dataset("budget")
    table = f"{dataset}.scores"
    _score_into(bq, demo_model_base, demo_file, str(tmp_path / "good"), table)
    before = sorted(r["id"] for r in bq.rows(table))
    bad = str(tmp_path / "bad.tfrecord")
    rows = demo_rows(20, seed=9, start_id=7000)
    for row in rows[:5]:
        row.pop("device")  # required: 5 of 20 records are missing_feature rows
    write_tfrecords(rows, bad)
    out = str(tmp_path / "bad")
    code = main(["--model", demo_model_base, "--input", bad, "--output", out, "--key_field",
                 "id", "--output_table", table, "--overwrite", *_load_args(bq)])
    assert code == 3
    assert "exceeds --max_error_rate" in capsys.readouterr().err
    assert sorted(r["id"] for r in bq.rows(table)) == before
    assert bq.tables(dataset) == ["scores"]  # the staging table is gone
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    assert len(errors(out)) == 5


def test_finalize_is_safe_to_run_again(bq, demo_file, demo_model_base, tmp_path):
    """After a successful run, and after a finalize that stopped between the copy and the
    staging table's deletion, finalize again changes nothing and does not fail."""
    from transforms.bigquery import sink as table_sink
    dataset = bq.dataset("twice")
    table = f"{dataset}.scores"
    out = str(tmp_path / "out")
    _, plan = run(["--model", demo_model_base, "--input", demo_file, "--output", out,
                   "--key_field", "id", "--output_table", table, *_load_args(bq)])
    run_id = plan.run_info["run_id"]
    stamp = os.path.getmtime(os.path.join(out, "_SUCCESS"))
    with open(os.path.join(out, "manifest.json")) as fh:
        manifest = json.load(fh)
    where = plan.sink.finalize(run_id, {}, True, False, lambda d, o: pytest.fail("rewritten"))
    assert where == out and os.path.getmtime(os.path.join(out, "_SUCCESS")) == stamp
    assert len(bq.rows(table)) == 300 and bq.tables(dataset) == ["scores"]
    with open(os.path.join(out, "manifest.json")) as fh:
        assert json.load(fh) == manifest

    # a finalize that stopped after its copy, before the staging table was deleted (a table
    # of its own: the emulator's WRITE_TRUNCATE copy keeps the destination's columns)
    dataset = bq.dataset("stopped")
    table = f"{dataset}.scores"
    sink = table_sink.output_sink(_Opts(table, str(tmp_path / "out2"), bq))
    sink.check(True, [])
    sink.describe_rows("id", ["score"], {"id": _ct("string"), "score": _ct("float32")})
    run_id = "20261122T000000-0000abcd"
    claim = sink.claim(run_id)
    staging = sink.staging(run_id).table_id
    assert bq.client().insert_rows_json(staging, [{"id": "k1", "score": 0.5}]) == []
    real_drop = table_sink.TableSink.drop_staging

    def stop(self, run_id):
        raise RuntimeError("stopped before the staging table was deleted")
    table_sink.TableSink.drop_staging = stop
    try:
        with pytest.raises(RuntimeError):
            sink.finalize(run_id, {}, True, True, _manifest)
    finally:
        table_sink.TableSink.drop_staging = real_drop
    assert bq.rows(table) == [{"id": "k1", "score": 0.5}]
    assert staging.split(".")[-1] in bq.tables(dataset)
    for _ in range(2):
        assert sink.finalize(run_id, {}, True, False, _manifest) == str(tmp_path / "out2")
        assert bq.rows(table) == [{"id": "k1", "score": 0.5}]
        assert bq.tables(dataset) == ["scores"]
    claim.release()
    assert os.path.exists(tmp_path / "out2" / "_SUCCESS")


class _Opts:
    """What output_sink reads of the options."""

    def __init__(self, table, output, bq):
        self.output_table, self.output, self.output_format = table, output, "jsonl"
        self._temp = f"gs://{bq.load_bucket}/tmp"

    def view_as(self, cls):
        import types
        return types.SimpleNamespace(project=None, temp_location=self._temp)


def _ct(dtype):
    from transforms.formats.base import ColumnType
    return ColumnType(dtype, ())


def _manifest(directory, outputs):
    return {"run_id": "20261122T000000-0000abcd", "outputs": outputs}


# --- options ------------------------------------------------------------------------------------
BASE = ["--model", "m", "--input", "in.tfrecord", "--output", "out"]


@pytest.mark.parametrize("value, words", [
    ("p:d.t*", "names tables by a wildcard; name one table"),
    ("p:d.t$2026112", "the partition decorator $2026112 is not a date; give $YYYYMMDD"),
    ("p:d.t$20261332", "the partition decorator $20261332 is not a date"),
    ("p:d.t$__UNPARTITIONED__", "is not a date"),
    ("p:d.t@1700000000", "is not a BigQuery table name"),
    ("d.t", "is not a BigQuery table name; give project:dataset.table"),
    ("Project:d.t", "is not a BigQuery table name"),
    ("p:d-x.t", "is not a BigQuery table name"),
    ("p:d.t\nx", "is not a BigQuery table name"),
    ("", "is not a BigQuery table name"),
])
def test_hostile_output_tables_are_refused_in_one_line(value, words):
    with pytest.raises(OptionsError) as e:
        check_argv(BASE + ["--output_table", value])
    assert str(e.value).startswith("--output_table: ") and words in str(e.value)
    assert "\n" not in str(e.value).replace(repr(value), "")


@pytest.mark.parametrize("argv, words", [
    (["--input", "bq://p.d.t$20261122"], "has a decorator; read one partition with "
                                          "--input_query"),
    (["--input", "bq://p.d.*"], "names tables by a wildcard"),
    (["--input", "bq://p.d"], "is not a BigQuery table name; give bq://project.dataset.table"),
    (["--input_query", "SELECT 1", "--input", "a.csv"], "--input and --input_query both name "
                                                        "the input; give one of them"),
])
def test_hostile_bigquery_inputs_are_refused_in_one_line(argv, words):
    with pytest.raises(OptionsError) as e:
        check_argv(["--model", "m", "--output", "out", *argv])
    assert words in str(e.value)


def test_a_query_needs_a_project_and_a_table_output_only_the_default_format(
        bq, demo_model_base, tmp_path, capsys):
    check_argv(["--model", "m", "--output", "o", "--input_query", "SELECT 1"])  # no --input
    line = _refusal(capsys, ["--model", demo_model_base, "--output", str(tmp_path / "o"),
                             "--input_query", "SELECT 1 AS id", "--key_field", "id"])
    assert line == ("error: --input_query needs a project to run in: pass --project (Beam's "
                    "option), or name its tables as `project.dataset.table`")
    line = _refusal(capsys, ["--model", demo_model_base, "--input", "x.tfrecord", "--output",
                             str(tmp_path / "o"), "--output_table", "bp-test:d.t",
                             "--output_format", "csv"])
    assert line == ("error: --output_format csv: predictions go to --output_table bp-test:d.t "
                    "as table rows; leave --output_format out")


def test_a_job_spec_renders_its_output_table_per_run_date():
    from jobs.spec import SpecError, from_dict, pipeline_argv
    spec = from_dict({"name": "nightly", "model": "gs://b/model", "input": "gs://b/in/{date}/*",
                      "output": "gs://b/out/{date}",
                      "options": {"key_field": "id",
                                  "output_table": "my-project:scores.daily${date:%Y%m%d}"}})
    for day in (datetime.date(2026, 11, 21), datetime.date(2026, 12, 1)):
        argv = pipeline_argv(spec, day)
        assert argv[argv.index("--output_table") + 1] == \
            f"my-project:scores.daily${day:%Y%m%d}"
    # a nightly query over the run date's partition: no `input`, the query templated
    spec = from_dict({"name": "nightly", "model": "gs://b/model", "output": "gs://b/out/{date}",
                      "options": {"key_field": "id", "input_query":
                                  "SELECT * FROM `p.d.events` WHERE dt = '{date-1d}'"}})
    argv = pipeline_argv(spec, datetime.date(2026, 12, 1))
    assert "--input" not in argv
    assert argv[argv.index("--input_query") + 1] == \
        "SELECT * FROM `p.d.events` WHERE dt = '2026-11-30'"
    with pytest.raises(SpecError, match="input and options.input_query both name the input"):
        from_dict({"name": "nightly", "model": "m", "input": "a.csv", "output": "o",
                   "options": {"key_field": "id", "input_query": "SELECT 1"}})


def test_the_jobs_readme_bigquery_example_is_a_valid_spec():
    """jobs/README.md's nightly BigQuery spec loads, and a run date gives the day before's
    query and partition."""
    import yaml
    from jobs.spec import from_dict, pipeline_argv
    with open(os.path.join(os.path.dirname(__file__), "..", "jobs", "README.md")) as fh:
        text = fh.read()
    block = text.split("one day partition a night")[1].split("```yaml")[1].split("```")[0]
    argv = pipeline_argv(from_dict(dict(yaml.safe_load(block), name="nightly")),
                         datetime.date(2026, 3, 1))
    assert "--input" not in argv
    assert argv[argv.index("--input_query") + 1].endswith("WHERE dt = '2026-02-28'")
    assert argv[argv.index("--output_table") + 1] == "my-project:scores.ctr$20260228"
