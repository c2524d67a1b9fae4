"""--output_format parquet, tfrecord and tfrecord_gzip: the real pipeline's files, read back
by independent readers (pyarrow's Parquet reader; TensorFlow's `tf.data.TFRecordDataset` and
`tf.train.Example`), hold the same rows as the JSON lines run of the same input (keys, every
output, dtypes, vector shapes), and the model's own outputs; a run that scores nothing still
gets a valid empty file; finalize, --overwrite and gs:// outputs work with the new suffixes.
The writers alone are checked on every dtype and shape a signature can declare.
"""
import csv
import glob
import gzip
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.build import column_types
from pipeline.demo import demo_rows, write_csv, write_tfrecords
from pipeline.run import EXIT_OK, main
from tests import model_zoo as zoo
from tests.gcs_emulator import gcs  # noqa: F401  (fixture)
from tests.helpers import assert_close, by_key, expected_outputs, predictions, run_job
from transforms import output_dir as od
from transforms.errors import OutputError
from transforms.formats import OUTPUT_FORMATS
from transforms.formats import parquet_output
from transforms.formats.base import ColumnType
from transforms.formats.csv_output import to_csv
from transforms.introspect import TensorInfo
from transforms.predict import PredictionBatch

pytest_plugins = ["tests.model_zoo"]

SUFFIX = {"csv": ".csv", "parquet": ".parquet", "tfrecord": ".tfrecord",
          "tfrecord_gzip": ".tfrecord.gz"}
DEMO_OUTPUTS = ("bucket", "embedding", "label", "logits", "score")
DEMO_SCHEMA = {"bucket": pa.int64(), "embedding": pa.list_(pa.float32(), 4),
               "label": pa.string(), "logits": pa.list_(pa.float32(), 1),
               "score": pa.float32()}


# --- readers: nothing of the pipeline's own code ------------------------------------------------
def _files(out: str, fmt: str) -> list[str]:
    return sorted(glob.glob(os.path.join(out, "predictions-*-of-*" + SUFFIX[fmt])))


def _types(schema: pa.Schema) -> dict:
    """Field name -> type, with list element names left out (pyarrow's and Parquet's differ)."""
    def plain(t):
        if pa.types.is_fixed_size_list(t):
            return pa.list_(plain(t.value_type), t.list_size)
        if pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        return t
    return {f.name: plain(f.type) for f in schema}


def parquet_rows(paths) -> tuple[pa.Schema, list[dict]]:
    """Every file's rows; every file of a run has the same schema."""
    tables = [pq.read_table(p if isinstance(p, str) else io.BytesIO(p)) for p in paths]
    assert tables and all(t.schema.equals(tables[0].schema) for t in tables)
    return tables[0].schema, [row for t in tables for row in t.to_pylist()]


def tfrecord_examples(paths: list[str], gz: bool) -> list[dict]:
    """Each record as {feature: (kind, [values])}, read by TensorFlow."""
    import tensorflow as tf
    rows = []
    for record in tf.data.TFRecordDataset(paths, compression_type="GZIP" if gz else ""
                                          ).as_numpy_iterator():
        ex = tf.train.Example.FromString(record)
        rows.append({k: (v.WhichOneof("kind"), list(getattr(v, v.WhichOneof("kind")).value))
                     for k, v in ex.features.feature.items()})
    return rows


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _row_id(row: dict, key: bool):
    return row["id"] if key else (row["shard"], row["index"])


def assert_parquet_equals_jsonl(got: list[dict], want: list[dict], key: bool):
    """Same rows; floats equal as float32 (JSON holds float32's shortest text)."""
    got, want = {_row_id(r, key): r for r in got}, {_row_id(r, key): r for r in want}
    assert len(got) == len(want) and got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert g.keys() == w.keys(), k
        assert (g["label"], g["bucket"]) == (w["label"], w["bucket"]), k
        for name in ("score", "embedding", "logits"):
            np.testing.assert_array_equal(_f32(g[name]), _f32(w[name]), err_msg=f"{k} {name}")


def assert_examples_equal_jsonl(got: list[dict], want: list[dict], key: bool):
    first = {"id": "bytes_list"} if key else {"shard": "bytes_list", "index": "int64_list"}
    kinds = {**first, "bucket": "int64_list", "embedding": "float_list", "label": "bytes_list",
             "logits": "float_list", "score": "float_list"}
    lengths = {"embedding": 4, "logits": 1}
    by = {}
    for ex in got:
        assert {k: kind for k, (kind, _) in ex.items()} == kinds
        assert all(len(v) == lengths.get(k, 1) for k, (_, v) in ex.items()), ex
        ident = ex["id"][1][0].decode() if key else (ex["shard"][1][0].decode(),
                                                     ex["index"][1][0])
        by[ident] = ex
    want = {_row_id(r, key): r for r in want}
    assert len(by) == len(got) and by.keys() == want.keys()
    for k, w in want.items():
        ex = by[k]
        assert ex["label"][1] == [w["label"].encode()] and ex["bucket"][1] == [w["bucket"]]
        for name in ("score", "embedding", "logits"):
            np.testing.assert_array_equal(_f32(ex[name][1]), _f32(w[name]).reshape(-1))


# --- the demo model, every new format against the JSON lines run ---------------------------------
@pytest.mark.parametrize("key", [True, False], ids=["key_field", "shard_index"])
def test_each_format_holds_the_jsonl_rows_and_the_models_outputs(tmp_path, demo_model_base,
                                                                 demo_model, demo_data, key):
    inputs = ",".join(demo_data["tfrecord"])  # 3 shards, one gzip
    extra = ["--batch_size", "200"] + (["--key_field", "id"] if key else [])
    outs = {}
    for fmt in ("jsonl", "parquet", "tfrecord", "tfrecord_gzip"):
        outs[fmt] = str(tmp_path / fmt)
        summary = run_job(demo_model_base, inputs, outs[fmt], "--output_format", fmt, *extra)
        assert (summary["predicted"], summary["errors"]) == (1500, 0)
    want = predictions(outs["jsonl"])

    schema, rows = parquet_rows(_files(outs["parquet"], "parquet"))
    first = {"id": pa.string()} if key else {"shard": pa.string(), "index": pa.int64()}
    assert _types(schema) == {**first, **DEMO_SCHEMA}
    assert list(_types(schema)) == list(first) + list(DEMO_OUTPUTS)  # key first, names sorted
    assert_parquet_equals_jsonl(rows, want, key)
    if key:  # and the model's own outputs, called directly
        expected = expected_outputs(demo_model, demo_data["rows"])
        got = by_key(rows)
        for i, r in enumerate(demo_data["rows"]):
            assert_close(got[r["id"]]["embedding"], expected["embedding"][i])
            assert_close(got[r["id"]]["score"], expected["score"][i])
            assert got[r["id"]]["label"] == expected["label"][i].decode()
            assert got[r["id"]]["bucket"] == expected["bucket"][i]

    for fmt in ("tfrecord", "tfrecord_gzip"):
        files = _files(outs[fmt], fmt)
        assert files and all(os.path.getsize(f) for f in files)
        if fmt == "tfrecord_gzip":
            assert all(open(f, "rb").read(2) == b"\x1f\x8b" for f in files)
        assert_examples_equal_jsonl(tfrecord_examples(files, fmt == "tfrecord_gzip"), want,
                                    key)


def test_every_dtype_of_a_tf2_model_and_strings_that_are_not_utf8(tmp_path, tf2_module, load):
    """bool, int32, int64 beyond 2**53, float64 [None,1], strings [None] (some not UTF-8) and
    [None,2]: Parquet keeps each dtype (a non-UTF-8 string as the b64 text a CSV cell holds),
    TFRecord holds the bytes as they are and every number in its tf.Example list."""
    rows = zoo.tf2_rows(120, seed=8)
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.TF2_FEATURES)}
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, dtypes)
    expected = zoo.call_parsing_signature(load(tf2_module), "serving_default", rows, dtypes)
    outs = {fmt: str(tmp_path / fmt) for fmt in ("parquet", "tfrecord", "csv")}
    for fmt, out in outs.items():
        run_job(tf2_module, path, out, "--key_field", "id", "--output_format", fmt)

    schema, got = parquet_rows(_files(outs["parquet"], "parquet"))
    assert _types(schema) == {
        "id": pa.string(), "count": pa.int32(), "flag": pa.bool_(), "label": pa.string(),
        "labels_top2": pa.list_(pa.string(), 2), "probs": pa.list_(pa.float32(), 3),
        "score": pa.float32(), "score64": pa.list_(pa.float64(), 1), "tag": pa.string(),
        "top_id": pa.int64()}
    as_json = [{k: json.loads(v) if isinstance(v, str) and v.startswith('{"b64"') else v
                for k, v in r.items()} for r in got]
    zoo.assert_rows_match(by_key(as_json), [r["id"] for r in rows], expected)
    tags = [r["tag"] for r in got]
    assert any(t.startswith('{"b64":') for t in tags) and any(not t.isascii() for t in tags)
    with open(_files(outs["csv"], "csv")[0], newline="", encoding="utf-8") as fh:
        cells = {r["id"]: r["tag"] for r in csv.DictReader(fh)}
    assert {r["id"]: r["tag"] for r in got} == cells  # the same text as the CSV cells

    examples = {ex["id"][1][0].decode(): ex
                for ex in tfrecord_examples(_files(outs["tfrecord"], "tfrecord"), False)}
    kinds = {"float32": "float_list", "float64": "float_list", "int32": "int64_list",
             "int64": "int64_list", "bool": "int64_list", "object": "bytes_list"}
    for i, r in enumerate(rows):
        ex = examples[r["id"]]
        for name, values in expected.items():
            kind, got_values = ex[name]
            assert kind == kinds[values.dtype.name], name
            want = np.asarray(values[i]).reshape(-1)
            if kind == "float_list":  # tf.Example holds float32
                np.testing.assert_allclose(_f32(got_values), want.astype(np.float32),
                                           rtol=zoo.CHUNKING_RTOL)
            elif kind == "int64_list":
                assert got_values == [int(v) for v in want], name
            else:  # the bytes as they are, UTF-8 or not
                assert got_values == [bytes(v) for v in want], name
    assert any(b"\xff" in examples[r["id"]]["tag"][1][0] for r in rows)


def test_keys_are_written_as_in_csv_and_json(tmp_path, demo_model_base):
    """A CSV key that is not UTF-8: the text {"b64": ...} in Parquet, as in the CSV output;
    its original bytes in TFRecord."""
    rows = demo_rows(6, seed=3)
    path = write_csv(rows, str(tmp_path / "in.csv"))
    raw = open(path, "rb").read()
    raw = raw.replace(b"\nr1,", b"\nk\xff\xfe,").replace(b"\nr2,", "\n\u00fcber,".encode())
    with open(path, "wb") as fh:
        fh.write(raw)
    outs = {fmt: str(tmp_path / fmt) for fmt in ("csv", "parquet", "tfrecord")}
    for fmt, out in outs.items():
        run_job(demo_model_base, path, out, "--key_field", "id", "--output_format", fmt)
    with open(_files(outs["csv"], "csv")[0], newline="", encoding="utf-8") as fh:
        csv_keys = sorted(r["id"] for r in csv.DictReader(fh))
    _, got = parquet_rows(_files(outs["parquet"], "parquet"))
    assert sorted(r["id"] for r in got) == csv_keys
    assert '{"b64":"a//+"}' in csv_keys and "\u00fcber" in csv_keys
    examples = tfrecord_examples(_files(outs["tfrecord"], "tfrecord"), False)
    assert sorted(ex["id"][1][0] for ex in examples) == sorted(
        [b"k\xff\xfe", "\u00fcber".encode(), b"r0", b"r3", b"r4", b"r5"])


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord", "tfrecord_gzip"])
def test_a_run_that_scores_nothing_writes_a_valid_empty_file(tmp_path, demo_model_base, fmt):
    rows = demo_rows(20, seed=5)
    for r in rows:
        del r["device"]  # required: every record is a missing_feature error row
    path = write_tfrecords(rows, str(tmp_path / "bad.tfrecord"))
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, path, out, "--key_field", "id", "--output_format", fmt,
                      "--max_error_rate", "1")
    assert (summary["predicted"], summary["errors"]) == (0, 20)
    [name] = [n for n in os.listdir(out) if n.startswith("predictions-")]
    assert name == "predictions-00000-of-00001" + SUFFIX[fmt]
    assert name in json.load(open(os.path.join(out, "manifest.json")))["outputs"]
    if fmt == "parquet":
        schema, rows = parquet_rows([os.path.join(out, name)])
        assert rows == [] and _types(schema) == {"id": pa.string(), **DEMO_SCHEMA}
    else:
        assert tfrecord_examples([os.path.join(out, name)], fmt == "tfrecord_gzip") == []
        assert (os.path.getsize(os.path.join(out, name)) == 0) == (fmt == "tfrecord")


# --- the output dir's contract with the new suffixes --------------------------------------------
def test_overwrite_replaces_another_formats_files_and_only_those(tmp_path, demo_model_base,
                                                                 demo_data):
    out = tmp_path / "out"
    two = ",".join(demo_data["tfrecord"][:2])
    base = ["--model", demo_model_base, "--output", str(out), "--key_field", "id"]
    assert main(base + ["--input", two, "--output_format", "parquet",
                        "--direct_running_mode", "multi_processing",
                        "--direct_num_workers", "2"]) == EXIT_OK
    first = sorted(n for n in os.listdir(out) if n.startswith("predictions-"))
    assert first and all(od.own_name(n) and n.endswith(".parquet") for n in first)
    foreign = {"predictions-final.parquet": b"mine", "notes.tfrecord": b"mine too",
               "predictions-00000-of-00001.tfrecord.gz.bak": b"x",
               "predictions-00000-of-00001.parquet.orig": b"y"}
    for name, data in foreign.items():
        (out / name).write_bytes(data)
    assert main(base + ["--input", demo_data["tfrecord"][2], "--output_format",
                        "tfrecord_gzip", "--overwrite"]) == EXIT_OK
    names = sorted(os.listdir(out))
    # the parquet run's files are gone, replaced by this run's one file
    assert [n for n in names if od.own_name(n) and n.startswith("predictions-")] == [
        "predictions-00000-of-00001.tfrecord.gz"]
    for name, data in foreign.items():
        assert (out / name).read_bytes() == data, name
    manifest = json.load(open(out / "manifest.json"))
    assert "predictions-00000-of-00001.tfrecord.gz" in manifest["outputs"]
    examples = tfrecord_examples([str(out / "predictions-00000-of-00001.tfrecord.gz")], True)
    assert len(examples) == 500


@pytest.mark.parametrize("name, own", [
    ("predictions-00000-of-00002.parquet", True), ("predictions-00001-of-00002.tfrecord", True),
    ("predictions-00000-of-00001.tfrecord.gz", True), ("predictions-final.parquet", False),
    ("predictions-00000-of-00001.parquet.tmp", False), ("predictions-00000-of-00001.gz", False)])
def test_the_new_suffixes_are_own_names(name, own):
    assert od.own_name(name) is own


def test_gs_output_in_each_binary_format(gcs, tmp_path, demo_model_base, demo_data):
    gcs.create_bucket("bp-fmt")
    inputs = ",".join(demo_data["tfrecord"])
    run_job(demo_model_base, inputs, str(tmp_path / "jsonl"), "--key_field", "id")
    want = predictions(str(tmp_path / "jsonl"))
    for fmt in ("parquet", "tfrecord_gzip"):
        out = f"gs://bp-fmt/{fmt}"
        run_job(demo_model_base, inputs, out, "--key_field", "id", "--output_format", fmt)
        names = gcs.list(out)
        files = [n for n in names if n.startswith("predictions-")]
        assert files and all(n.endswith(SUFFIX[fmt]) for n in files)
        assert "_SUCCESS" in names and not [n for n in names if n.startswith(".tmp-")]
        blobs = [gcs.read_bytes(f"{out}/{n}") for n in files]
        if fmt == "parquet":
            assert_parquet_equals_jsonl(parquet_rows(blobs)[1], want, True)
        else:
            local = []
            for i, blob in enumerate(blobs):
                local.append(str(tmp_path / f"{i}.tfrecord.gz"))
                with open(local[-1], "wb") as fh:
                    fh.write(blob)
            assert_examples_equal_jsonl(tfrecord_examples(local, True), want, True)


# --- the writers alone ----------------------------------------------------------------------------
def _batch() -> tuple[PredictionBatch, dict]:
    """Three rows of every dtype and shape; keys as the CSV reader gives them (str, an
    undecodable byte kept as a lone surrogate)."""
    outputs = {
        "f": np.array([1.5, np.nan, -np.inf], np.float32),
        "h": np.array([1.5, 2, np.inf], np.float16),
        "u": np.array([2 ** 64 - 1, 0, 5], np.uint64),
        "b": np.array([True, False, True]),
        "var": np.arange(6, dtype=np.int64).reshape(3, 2),
        "mat": np.arange(18, dtype=np.float64).reshape(3, 2, 3),
        "unk": np.arange(6, dtype=np.int32).reshape(3, 2),
        "none": np.zeros((3, 0), np.float32),
        "s": np.array([b"ok", b"\xff\xfe", "\u00fc".encode()], object),
        "s2": np.array([[b"a", b"\xff"], [b"c", b"d"], [b"e", b"f"]], object),
    }
    declared = [TensorInfo("f", "float32", (None,)), TensorInfo("h", "float16", (None,)),
                TensorInfo("u", "uint64", (None,)), TensorInfo("b", "bool", (None,)),
                TensorInfo("var", "int64", (None, None)),
                TensorInfo("mat", "float64", (None, 2, 3)), TensorInfo("unk", "int32", None),
                TensorInfo("none", "float32", (None, 0)), TensorInfo("s", "string", (None,)),
                TensorInfo("s2", "string", (None, 2))]
    keys = np.array(["k0", "k\udcff", "\u00fc"], object)
    batch = PredictionBatch(np.array(["a"] * 3, object), np.arange(3), keys, outputs)
    return batch, column_types("id", "string", declared, None)


def test_parquet_writer_keeps_every_dtype_and_shape():
    batch, types = _batch()
    buf = io.BytesIO()
    writer = OUTPUT_FORMATS["parquet"].open_writer(buf, "id", sorted(batch.outputs), types)
    writer.write(batch)
    writer.close()
    schema, rows = parquet_rows([buf.getvalue()])
    assert _types(schema) == {
        "id": pa.string(), "b": pa.bool_(), "f": pa.float32(), "h": pa.float32(),
        "mat": pa.list_(pa.list_(pa.float64(), 3), 2), "none": pa.list_(pa.float32()),
        "s": pa.string(), "s2": pa.list_(pa.string(), 2), "u": pa.uint64(),
        "unk": pa.list_(pa.int32()), "var": pa.list_(pa.int64())}
    f = [r["f"] for r in rows]
    assert f[0] == 1.5 and np.isnan(f[1]) and f[2] == -np.inf  # IEEE values, not text
    assert [r["h"] for r in rows] == [1.5, 2.0, np.inf]
    assert [r["u"] for r in rows] == [2 ** 64 - 1, 0, 5]
    assert rows[1]["mat"] == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
    assert [r["var"] for r in rows] == [[0, 1], [2, 3], [4, 5]]
    assert [r["unk"] for r in rows] == [[0, 1], [2, 3], [4, 5]]
    assert [r["none"] for r in rows] == [[], [], []]
    # strings and keys: UTF-8 text, else the {"b64"} text the CSV cell holds
    assert [r["s"] for r in rows] == ["ok", '{"b64":"//4="}', "\u00fc"]
    assert rows[0]["s2"] == ["a", '{"b64":"/w=="}']
    assert [r["id"] for r in rows] == ["k0", '{"b64":"a/8="}', "\u00fc"]
    csv_cells = to_csv(batch, "id").decode().splitlines()
    assert [c.split(",")[0] for c in csv_cells] == ['"k0"', '"{""b64"":""a/8=""}"', '"\u00fc"']
    # a file without rows: the same schema
    empty = OUTPUT_FORMATS["parquet"].empty_file("id", sorted(batch.outputs), types)
    assert parquet_rows([empty])[0].equals(schema)


def test_tfrecord_writer_frames_examples_that_tensorflow_reads(tmp_path):
    batch, types = _batch()
    plain = {}
    for fmt in ("tfrecord", "tfrecord_gzip"):
        path = str(tmp_path / ("p" + SUFFIX[fmt]))
        with open(path, "wb") as fh:
            writer = OUTPUT_FORMATS[fmt].open_writer(fh, "id", sorted(batch.outputs), types)
            writer.write(batch)
            writer.write(batch)
            writer.close()
        rows = tfrecord_examples([path], fmt == "tfrecord_gzip")
        assert len(rows) == 6
        r = rows[1]
        assert r["id"] == ("bytes_list", [b"k\xff"])  # the key's original bytes
        assert r["s"] == ("bytes_list", [b"\xff\xfe"]) and r["s2"] == ("bytes_list", [b"c", b"d"])
        assert r["f"][0] == "float_list" and np.isnan(r["f"][1][0])
        assert rows[2]["f"] == ("float_list", [-np.inf]) and rows[2]["h"][1] == [np.inf]
        assert r["u"] == ("int64_list", [0]) and rows[0]["u"] == ("int64_list", [-1])
        assert r["b"] == ("int64_list", [0]) and rows[0]["b"] == ("int64_list", [1])
        assert r["mat"] == ("float_list", [6.0, 7.0, 8.0, 9.0, 10.0, 11.0])  # row-major
        assert r["var"] == ("int64_list", [2, 3]) and r["none"] == ("float_list", [])
        empty = str(tmp_path / ("empty" + SUFFIX[fmt]))
        with open(empty, "wb") as fh:
            fh.write(OUTPUT_FORMATS[fmt].empty_file("id", sorted(batch.outputs), types))
        assert tfrecord_examples([empty], fmt == "tfrecord_gzip") == []
        for name in (path, empty):  # a complete gzip stream (trailer included) of the same
            data = open(name, "rb").read()  # bytes as the plain file
            if fmt == "tfrecord":
                plain[os.path.basename(name).split(".")[0]] = data
            else:
                assert gzip.decompress(data) == plain[os.path.basename(name).split(".")[0]]


def test_parquet_row_groups_are_bounded(monkeypatch):
    monkeypatch.setattr(parquet_output, "ROW_GROUP_ROWS", 100)
    n = 60
    batch = PredictionBatch(np.array(["s"] * n, object), np.arange(n), None,
                            {"score": np.linspace(0, 1, n, dtype=np.float32)})
    buf = io.BytesIO()
    writer = OUTPUT_FORMATS["parquet"].open_writer(buf, None, ["score"], {})
    for _ in range(5):
        writer.write(batch)
    writer.close()
    meta = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [120, 120, 60]


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_an_output_dtype_the_format_cannot_hold_is_refused_before_any_row(fmt):
    types = {"id": ColumnType("string"), "z": ColumnType("complex64")}
    with pytest.raises(OutputError, match="'z' has dtype complex64"):
        OUTPUT_FORMATS[fmt].empty_file("id", ["z"], types)


def test_text_formats_write_their_header_and_lines_through_the_default_writer():
    batch, types = _batch()
    names = list(batch.outputs)
    for fmt in ("jsonl", "csv"):
        out = OUTPUT_FORMATS[fmt]
        header = out.header("id", names)
        buf = io.BytesIO()
        writer = out.open_writer(buf, "id", names, types)
        writer.write(batch)
        writer.close()
        block = out.encode(batch, "id") + b"\n"
        assert buf.getvalue() == (header + b"\n" if header else b"") + block
        assert out.empty_file("id", names, types) == (header + b"\n" if header else b"")
