"""The format seam: the registry, typed columns in the parse step, and a new format end to end.

A new input or output format is one class and one registration: `NdjsonInput` and `TsvOutput`
below are written here, in the test, registered, and the real pipeline (read, parse, predict,
write, finalize) runs with them, `--input_format` inferred from their extension and
`--output_format tsv` accepted by the command line, with the same predictions as the same rows
as TFRecord. NDJSON is a typed source: its numbers reach the parse step as Arrow int64 and
double columns, which convert without a text round trip.
"""
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from pipeline.demo import demo_rows, demo_spec, write_csv, write_tfrecords
from tests.helpers import by_key, errors, predictions, run_job
from transforms import formats
from transforms.errors import InputError
from transforms.examples import encode_rows
from transforms.feature_spec import Feature, FeatureSpec
from transforms.formats.json_columns import json_fragments, row_columns
from transforms.formats.base import InputFormat, OutputFormat, shard_stream
from transforms.parse import columns_to_examples, convert_column
from transforms.records import ColumnBatch, error_row


# --- a new input format and a new output format, one class each ----------------------------------
class NdjsonInput(InputFormat):
    """JSON objects, one per line (a typed source: numbers stay numbers). A line that is not a
    JSON object is a parse_error row."""
    name = "ndjson"
    title = "NDJSON"
    extensions = (".ndjson",)

    def read_shard(self, path, batch_size, columns, max_record_bytes, stats):
        with shard_stream(path, stats) as stream:
            lines = stream.read().splitlines()
        rows, indices = [], []
        for index, line in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError as e:
                yield error_row(path, index, "parse_error", f"not JSON: {e}",
                                line.decode("utf-8", "replace"))
                continue
            rows.append({c: row.get(c) for c in columns or row})
            indices.append(index)
            if len(rows) == batch_size:
                yield ColumnBatch(path, pa.Table.from_pylist(rows), np.array(indices))
                rows, indices = [], []
        if rows:
            yield ColumnBatch(path, pa.Table.from_pylist(rows), np.array(indices))

    def key_dtype(self, path, key, max_record_bytes):
        return "string"


class TsvOutput(OutputFormat):
    """Tab-separated JSON values under a header line of column names."""
    name = "tsv"
    suffix = ".tsv"

    def header(self, key_field, output_names):
        first = [key_field] if key_field else ["shard", "index"]
        return "\t".join(first + sorted(output_names)).encode()

    def encode(self, batch, key_field):
        columns = [json_fragments(values) for _, values in row_columns(batch, key_field)]
        return b"\n".join(b"\t".join(cells) for cells in zip(*columns))


@pytest.fixture
def registered():
    """NdjsonInput and TsvOutput registered for one test (the built-ins alone afterwards, so
    that the command line and the flex template's parameters stay as committed)."""
    formats.register_input_format(NdjsonInput())
    formats.register_output_format(TsvOutput())
    yield
    del formats.INPUT_FORMATS["ndjson"], formats.OUTPUT_FORMATS["tsv"]


def _read_tsv(out: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(out)):
        if name.startswith("predictions-") and name.endswith(".tsv"):
            with open(os.path.join(out, name)) as fh:
                header = fh.readline().rstrip("\n").split("\t")
                rows += [dict(zip(header, map(json.loads, line.rstrip("\n").split("\t"))))
                         for line in fh if line.strip()]
    return rows


def test_a_registered_format_runs_the_real_pipeline_end_to_end(registered, tmp_path,
                                                               demo_model_base):
    rows = demo_rows(500, seed=31)
    tfrecord = write_tfrecords(rows, str(tmp_path / "rows.tfrecord"))
    ndjson = tmp_path / "rows.ndjson"
    ndjson.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")

    summary = run_job(demo_model_base, str(ndjson), str(tmp_path / "out_ndjson"),
                      "--key_field", "id", "--output_format", "tsv", "--batch_size", "200")
    run_job(demo_model_base, tfrecord, str(tmp_path / "out_tfrecord"), "--key_field", "id",
            "--batch_size", "200")

    assert summary["input_format"] == "ndjson"  # inferred from the registered extension
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (501, 500, 1)
    [bad] = errors(str(tmp_path / "out_ndjson"))
    assert (bad["index"], bad["error_type"], bad["payload"]) == (500, "parse_error", "{not json")
    got = _read_tsv(str(tmp_path / "out_ndjson"))
    want = predictions(str(tmp_path / "out_tfrecord"))
    assert len(got) == len(want) == 500
    assert by_key(got) == by_key(want)
    written = os.listdir(tmp_path / "out_ndjson")
    assert "predictions-00000-of-00001.tsv" in written and "_SUCCESS" in written


# --- the registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt", [
    ("a.tfrecord", "tfrecord"), ("a.tfrecords", "tfrecord"), ("a.tfrecord.gz", "tfrecord"),
    ("part-0.gz", "tfrecord"), ("A.TFRECORD", "tfrecord"), ("a.csv", "csv"),
    ("a.csv.gz", "csv"), ("gs://b/d/A.CSV", "csv")])
def test_the_input_format_is_inferred_from_the_longest_registered_extension(name, fmt):
    assert formats.infer_input_format([name]).name == fmt


def test_unknown_and_mixed_extensions_are_refused_with_the_same_messages():
    with pytest.raises(InputError) as e:
        formats.infer_input_format(["a.tfrecord", "b.avro"])
    assert str(e.value) == ("cannot infer the input format of b.avro from its extension; "
                            "pass --input_format tfrecord|csv|jsonl|parquet")
    with pytest.raises(InputError) as e:
        formats.infer_input_format(["a.tfrecord", "b.csv.gz", "c.gz"])
    assert str(e.value) == ("the inputs mix CSV and TFRecord files; score them in separate "
                            "jobs or pass --input_format")
    with pytest.raises(InputError, match=r"one of \('tfrecord', 'csv', 'jsonl', 'parquet'\), "
                       r"got 'avro'"):
        formats.input_format("avro")


def test_a_registered_format_is_everywhere_the_formats_are_listed(registered):
    from pipeline.options import all_options_parser
    parser, _ = all_options_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.dest.endswith("_format")}
    assert choices == {"input_format": ["tfrecord", "csv", "jsonl", "parquet", "ndjson"],
                       "output_format": ["jsonl", "csv", "parquet", "tfrecord", "tfrecord_gzip",
                                         "tsv"]}
    assert formats.infer_input_format(["x/a.ndjson"]).name == "ndjson"
    with pytest.raises(InputError, match="mix NDJSON and TFRecord files"):
        formats.infer_input_format(["a.ndjson", "b.tfrecord"])


def test_a_name_or_an_extension_is_registered_once():
    class Clash(NdjsonInput):
        name = "clash"
        extensions = (".ndjson", ".csv.gz")
    with pytest.raises(ValueError, match=r"extension \.csv\.gz belongs to input format 'csv'"):
        formats.register_input_format(Clash())
    with pytest.raises(ValueError, match="named 'jsonl' is registered already"):
        formats.register_output_format(type("Again", (TsvOutput,), {"name": "jsonl"})())
    assert list(formats.INPUT_FORMATS) == ["tfrecord", "csv", "jsonl", "parquet"]
    assert list(formats.OUTPUT_FORMATS) == ["jsonl", "csv", "parquet", "tfrecord",
                                            "tfrecord_gzip"]


def test_the_output_dirs_own_names_follow_the_output_formats(monkeypatch):
    from transforms import output_dir
    assert output_dir.own_name("predictions-00000-of-00001.csv")
    assert output_dir.own_name("predictions-00000-of-00001.jsonl")
    assert not output_dir.own_name("predictions-00000-of-00001.tsv")
    monkeypatch.setitem(formats.OUTPUT_FORMATS, "tsv", TsvOutput())  # registered after import
    assert output_dir.own_name("predictions-00000-of-00001.tsv")
    assert not output_dir.own_name("predictions-00000-of-00001xtsv")  # the dot is a dot


# --- typed columns in the parse step --------------------------------------------------------------
SPEC = FeatureSpec([
    Feature("x", "fixed", "float32", (), (0.0,)),
    Feature("n", "fixed", "int64", ()),
    Feature("pair", "fixed", "float32", (2,), (0.0,)),
    Feature("tags", "varlen", "string"),
    Feature("ids", "varlen", "int64"),
    Feature("s", "fixed", "string", (), (b"?",)),
])


def _typed_batch(table: pa.Table) -> ColumnBatch:
    return ColumnBatch("t.parquet", table, np.arange(table.num_rows))


def test_typed_columns_give_the_examples_of_the_same_values():
    """Numbers, lists and binary values become the tf.Examples that encode_rows gives for the
    same rows; a null is an absent feature (default applies), an empty list an empty one."""
    table = pa.table({
        "id": pa.array(["a", "b", "c"]),
        "x": pa.array([1.5, None, -2.0], pa.float64()),
        "n": pa.array([3, 4, 5], pa.int32()),
        "pair": pa.array([[1.0, 2.0], None, [5.0, 6.0]], pa.list_(pa.float32())),
        "tags": pa.array([[b"p", b"q"], [], None], pa.list_(pa.binary())),
        "ids": pa.array([[1], None, [7, 8, 9]], pa.large_list(pa.int64())),
        "s": pa.array([b"\xff", b"", None]),
    })
    records, errs = columns_to_examples(_typed_batch(table), SPEC, "id")
    assert errs == []
    dtypes = {f.name: f.dtype for f in SPEC.values()}
    want = encode_rows([
        {"x": 1.5, "n": 3, "pair": [1.0, 2.0], "tags": [b"p", b"q"], "ids": [1], "s": b"\xff"},
        {"n": 4, "tags": [], "s": b""},
        {"x": -2.0, "n": 5, "pair": [5.0, 6.0], "ids": [7, 8, 9]}], dtypes)
    assert records.serialized.tolist() == want.tolist()
    assert records.keys.tolist() == ["a", "b", "c"]


def test_typed_and_text_columns_of_the_same_rows_give_the_same_examples(tmp_path):
    """The demo rows as CSV text (text rules) and as typed columns (no text) are the same
    tf.Examples, byte for byte."""
    from transforms.formats.csv_input import CSV
    rows = demo_rows(300, seed=32)
    path = write_csv(rows, str(tmp_path / "rows.csv"))
    spec = demo_spec()
    stats = {}
    [text_batch] = list(CSV.read_shard(path, 1000, list(spec) + ["id"], 1 << 20, stats))
    from_text, _ = columns_to_examples(text_batch, spec, "id")
    from_typed, _ = columns_to_examples(_typed_batch(pa.Table.from_pylist(rows)), spec, "id")
    assert from_typed.serialized.tolist() == from_text.serialized.tolist()
    assert from_typed.keys.tolist() == from_text.keys.tolist() == [r["id"] for r in rows]


@pytest.mark.parametrize("array, feature, problem", [
    (pa.array([1e39, 2.0]), Feature("f", "fixed", "float32", ()),
     ("parse_error", "column 'f': 1e+39 is out of float32 range")),
    (pa.array([1.5, 2.0]), Feature("i", "fixed", "int64", ()),
     ("parse_error", "column 'i': 1.5 is not a valid int64")),
    (pa.array([float("nan"), 2.0]), Feature("i", "fixed", "int64", ()),
     ("parse_error", "column 'i': nan is not a valid int64")),
    (pa.array([1e19, 2.0]), Feature("i", "fixed", "int64", ()),
     ("parse_error", "column 'i': 1e+19 is out of int64 range")),
    (pa.array([2 ** 63, 2], pa.uint64()), Feature("i", "fixed", "int64", ()),
     ("parse_error", "column 'i': 9223372036854775808 is out of int64 range")),
    (pa.array([[1.0], [2.0, 3.0]]), Feature("p", "fixed", "float32", (2,)),
     ("shape_mismatch", "column 'p' has 1 values, shape [2] needs 2")),
    (pa.array([[1, None], [2]]), Feature("v", "varlen", "int64"),
     ("parse_error", "column 'v': a list holds a null value")),
    (pa.array([7, None]), Feature("s", "fixed", "string", ()),
     ("type_mismatch", "column 's' holds int64 values, feature 's' is string")),
    (pa.array([b"7", None]), Feature("n", "fixed", "int64", ()),
     ("type_mismatch", "column 'n' holds binary values, feature 'n' is int64")),
])
def test_typed_values_that_cannot_be_the_feature_are_that_rows_error(array, feature, problem):
    column, errs = convert_column(array, feature)
    assert {i: (e.error_type, str(e)) for i, e in errs.items()} == {0: problem}


def test_typed_float_columns_keep_nan_and_infinities_and_int64_takes_integral_floats():
    column, errs = convert_column(pa.array([float("nan"), float("-inf"), 2.5]),
                                  Feature("f", "fixed", "float32", ()))
    assert errs == {}
    assert np.isnan(column.values[0, 0]) and column.values[1, 0] == -np.inf
    column, errs = convert_column(pa.array([180.0, -3.0]), Feature("i", "fixed", "int64", ()))
    assert errs == {} and column.values[:, 0].tolist() == [180, -3]
    column, errs = convert_column(pa.array([True, False]), Feature("i", "fixed", "int64", ()))
    assert errs == {} and column.values[:, 0].tolist() == [1, 0]


def test_string_columns_from_a_typed_source_follow_the_text_rules():
    """A string column is text, wherever it comes from: numbers in it are read with the CSV
    rules, an empty string or a null is an absent value; dictionary-encoded alike."""
    cells = pa.array([" 12 ", "", None, "1e3", "x"]).dictionary_encode()
    column, errs = convert_column(cells, Feature("n", "fixed", "int64", (), (0,)))
    assert column.values.tolist() == [12, 0, 0, 1000, 0]
    assert column.present.tolist() == [True, False, False, True, True]
    assert {i: e.error_type for i, e in errs.items()} == {4: "parse_error"}


def test_typed_keys_and_missing_columns():
    table = pa.table({"id": pa.array([7, None, 9]), "x": pa.array([1.0, 2.0, 3.0]),
                      "n": pa.array([1, 2, 3])})
    spec = FeatureSpec([SPEC["x"], SPEC["n"], Feature("need", "fixed", "int64", ())])
    records, errs = columns_to_examples(_typed_batch(table), spec, "id")
    assert records is None
    assert [(e["index"], e["error_type"], e["message"]) for e in errs] == [
        (i, "missing_feature", "required column 'need' is not in the input's columns")
        for i in range(3)]
    records, errs = columns_to_examples(_typed_batch(table), FeatureSpec([SPEC["x"]]), "id")
    assert records.keys.tolist() == [7, 9] and records.indices.tolist() == [0, 2]
    assert [(e["index"], e["error_type"]) for e in errs] == [(1, "missing_key")]
    assert json.loads(errs[0]["payload"]) == {"id": None, "x": 2.0, "n": 2}
