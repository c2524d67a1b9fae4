"""Every kind of SavedModel users bring, scored by the real pipeline and compared with the model.

Each model comes from `tests.model_zoo` (TF1 Estimator-style graphs, a TF2 `tf.Module`, Keras 3
exports). The pipeline runs in-process on real TFRecord/CSV files; the reference is the same
signature called directly on `tf.train.Example` protos (or tensors) built by TensorFlow itself.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import model_zoo as zoo
from tests.helpers import by_key, errors, predictions, run_job

pytest_plugins = ["tests.model_zoo"]

EST_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}
TF2_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.TF2_FEATURES)}
EST_PREDICT_OUTPUTS = {"logits", "logistic", "probabilities", "class_ids", "classes",
                       "all_class_ids", "all_classes", "country_hash", "logit64"}


def _est_files(tmp_path, rows):
    columns = ["id", *zoo.ESTIMATOR_FEATURES, "unused_column"]  # an extra column: ignored
    return (zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, EST_DTYPES),
            zoo.write_csv(str(tmp_path / "in.csv"), rows, columns))


@pytest.fixture(scope="module")
def est_rows():
    return zoo.estimator_rows(150, seed=4)


@pytest.fixture(scope="module")
def est_predict_expected(estimator_v1, est_rows, load):
    return zoo.call_parsing_signature(load(estimator_v1["newest"]), "predict", est_rows,
                                      EST_DTYPES)


# --- TF1 Estimator-style exports ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_estimator_v1_predict_signature_every_output(tmp_path, estimator_v1, est_rows,
                                                     est_predict_expected, fmt):
    """ParseExample v1, sparse features, vocabulary in assets/, the newest timestamped version;
    TFRecord and CSV give the model's own predictions for every output, dtypes honoured."""
    tfrecord, csv_path = _est_files(tmp_path, est_rows)
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], tfrecord if fmt == "tfrecord" else csv_path, out,
                      "--signature", "predict", "--key_field", "id", "--batch_size", "64")
    assert summary["model_version"] == zoo.ESTIMATOR_VERSIONS[-1].__str__()
    assert summary["model_path"].endswith(os.path.join("exporter", estimator_v1["version"]))
    assert summary["signature"] == "predict"
    assert summary["signature_convention"] == "serialized"
    assert summary["records_in"] == summary["predicted"] == len(est_rows)
    assert errors(out) == []
    rows = by_key(predictions(out))
    assert set(est_predict_expected) == EST_PREDICT_OUTPUTS
    # this graph scores each example independently of its batch: every value is exact
    zoo.assert_rows_match(rows, [r["id"] for r in est_rows], est_predict_expected, rtol=0)
    # int64 ids beyond 2**53 stay exact; float64 keeps its precision beyond float32
    first = rows[est_rows[0]["id"]]
    assert first["country_hash"] == int(est_predict_expected["country_hash"][0])
    assert first["country_hash"] > 2 ** 53 or est_rows[0].get("country") is None
    assert first["logit64"] == float(est_predict_expected["logit64"][0])


def test_estimator_serving_default_is_the_classification_signature(tmp_path, estimator_v2,
                                                                   est_rows, load):
    """ParseExampleV2 graph; `serving_default` (inputs: `inputs`) yields classes + scores."""
    tfrecord, _ = _est_files(tmp_path, est_rows)
    out = str(tmp_path / "out")
    summary = run_job(estimator_v2["base"], tfrecord, out, "--key_field", "id")
    assert summary["model_version"] == estimator_v2["version"]
    assert summary["signature"] == "serving_default"
    expected = zoo.call_parsing_signature(load(estimator_v2["newest"]), "serving_default",
                                          est_rows, EST_DTYPES)
    assert set(expected) == {"classes", "scores"}
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in est_rows], expected)


def test_estimator_older_version_would_score_differently(estimator_v1, est_rows, load):
    """The version choice matters: the older export's weights give other scores."""
    newest = zoo.call_parsing_signature(load(estimator_v1["newest"]), "regression", est_rows,
                                        EST_DTYPES)["outputs"]
    oldest = zoo.call_parsing_signature(load(estimator_v1["oldest"]), "regression", est_rows,
                                        EST_DTYPES)["outputs"]
    assert not np.allclose(newest, oldest)


@pytest.mark.parametrize("signature", ["regression", "classification"])
def test_estimator_other_signatures_in_process(estimator_v1, est_rows, load, signature):
    """The engine's own call (open_model + predict on serialized examples) for the remaining
    signatures, compared with the signature called directly."""
    from transforms.model import open_model
    model = open_model(estimator_v1["base"], signature)
    assert model.version.version == estimator_v1["version"]
    serialized = np.array(zoo.example_bytes(est_rows, EST_DTYPES), dtype=object)
    got = model.predict(serialized)
    expected = zoo.call_parsing_signature(load(estimator_v1["newest"]), signature, est_rows,
                                          EST_DTYPES)
    assert set(got) == set(expected)
    for name in expected:
        if expected[name].dtype == object:
            assert (got[name] == expected[name]).all()
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6)


def test_estimator_vocabulary_asset_is_used(estimator_v1, load):
    """The country lookup reads the vocabulary from assets/ (the original file is gone): a
    known country scores differently from an out-of-vocabulary one, and two OOV values alike."""
    assert os.listdir(os.path.join(estimator_v1["newest"], "assets")) == ["country_vocab.txt"]
    base = {"age": 40.0}
    rows = [dict(base, country="fr"), dict(base, country="jp"), dict(base, country="xx"),
            dict(base, country="zz")]
    scores = zoo.call_parsing_signature(load(estimator_v1["newest"]), "regression", rows,
                                        EST_DTYPES)["outputs"][:, 0]
    assert scores[0] != scores[1] and scores[0] != scores[2]
    assert scores[2] == scores[3]


def test_estimator_raw_placeholders_with_given_spec(tmp_path, estimator_raw, load):
    """A TF1 raw-placeholder signature (one input of unknown rank, one int32) is fed by name
    from a given spec; int64 CSV cells are cast to the int32 input."""
    spec = {"features": {"age": {"kind": "fixed", "dtype": "float32", "shape": [1]},
                         "country": {"kind": "fixed", "dtype": "string", "shape": [],
                                     "default": ["de"]},
                         "n_items": {"kind": "fixed", "dtype": "int64", "shape": []},
                         "extra": {"kind": "fixed", "dtype": "float32", "shape": [],
                                   "default": [0.5]}}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    rng = np.random.default_rng(2)
    rows = [{"id": f"x{i}", "age": float(np.float32(rng.uniform(20, 70))),
             "country": None if i % 4 == 0 else str(rng.choice(["de", "fr", "us"])),
             "n_items": int(rng.integers(0, 50)),
             "extra": None if i % 3 == 0 else float(np.float32(rng.normal()))}
            for i in range(60)]
    csv_path = zoo.write_csv(str(tmp_path / "in.csv"), rows, ["id", "age", "country",
                                                              "n_items", "extra"])
    out = str(tmp_path / "out")
    summary = run_job(estimator_raw, csv_path, out, "--feature_spec", str(spec_path),
                      "--key_field", "id")
    assert summary["signature_convention"] == "tensors"
    assert summary["feature_spec_source"] == "given"
    expected = zoo.call_signature(
        load(estimator_raw), "serving_default",
        age=np.array([[r["age"]] for r in rows], np.float32),
        country=np.array([(r["country"] or "de").encode() for r in rows], dtype=object),
        n_items=np.array([r["n_items"] for r in rows], np.int32),
        extra=np.array([0.5 if r["extra"] is None else r["extra"] for r in rows], np.float32))
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


# --- TF2 tf.Module ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tf2_rows():
    return zoo.tf2_rows(120, seed=8)


def test_tf2_parsing_signature_mixed_outputs(tmp_path, tf2_module, tf2_rows, load):
    """Ragged + var-len + fixed [3] features; outputs bool, int32, int64 > 2**53, float64
    [None,1], strings [None] (some not UTF-8: base64) and [None,2]."""
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), tf2_rows, TF2_DTYPES)
    out = str(tmp_path / "out")
    summary = run_job(tf2_module, path, out, "--key_field", "id", "--batch_size", "50")
    assert summary["predicted"] == len(tf2_rows) and summary["errors"] == 0
    expected = zoo.call_parsing_signature(load(tf2_module), "serving_default", tf2_rows,
                                          TF2_DTYPES)
    rows = by_key(predictions(out))
    zoo.assert_rows_match(rows, [r["id"] for r in tf2_rows], expected)
    tags = [rows[r["id"]]["tag"] for r in tf2_rows]
    assert any(isinstance(t, dict) and "b64" in t for t in tags)   # invalid UTF-8 -> base64
    assert any(isinstance(t, str) and not t.isascii() for t in tags)  # valid UTF-8 kept
    big = [rows[r["id"]]["top_id"] for r in tf2_rows]
    assert all(abs(v) > 2 ** 53 for v in big)
    assert big == [int(v) for v in expected["top_id"]]


def test_tf2_csv_output_format_keeps_dtypes(tmp_path, tf2_module, tf2_rows, load):
    """CSV input and CSV output: scalars as plain cells, vectors/strings as JSON in one cell."""
    columns = ["id", *zoo.TF2_FEATURES]
    path = zoo.write_csv(str(tmp_path / "in.csv"), tf2_rows, columns)
    out = str(tmp_path / "out")
    run_job(tf2_module, path, out, "--key_field", "id", "--output_format", "csv")
    expected = zoo.call_parsing_signature(load(tf2_module), "serving_default", tf2_rows,
                                          TF2_DTYPES)
    files = sorted(p for p in os.listdir(out) if p.startswith("predictions-"))
    got = {}
    for name in files:
        with open(os.path.join(out, name), newline="") as fh:
            for row in csv.DictReader(fh):
                got[row["id"]] = row
    assert len(got) == len(tf2_rows)
    parsers = {"b": lambda c: {"true": True, "false": False}[c], "i": int, "f": float}
    for i, r in enumerate(tf2_rows):
        row = got[r["id"]]
        for name, values in expected.items():
            cell = row[name]
            kind = values.dtype.kind
            if values.ndim > 1 or (kind == "O" and cell.startswith("{")):
                value = json.loads(cell)
            elif kind == "O":
                value = cell
            else:
                value = parsers[kind](cell)
            zoo.assert_value_matches(value, values[i], values.dtype, f"{r['id']}.{name}")


def test_tf2_raw_tensor_signature_fed_by_name(tmp_path, tf2_module, load):
    """Several named inputs, no parsing in the model (float64 and int32 inputs among them):
    the pipeline parses CSV with the spec derived from the signature and feeds by name."""
    rows = zoo.tf2_raw_rows(80, seed=3)
    columns = ["id", "ids_count", "word", "x", "hist_sum", "n"]
    path = zoo.write_csv(str(tmp_path / "in.csv"), rows, columns)
    out = str(tmp_path / "out")
    summary = run_job(tf2_module, path, out, "--signature", "raw", "--key_field", "id")
    assert summary["signature_convention"] == "tensors"
    assert summary["feature_spec"]["features"]["x"] == {"kind": "fixed", "dtype": "float32",
                                                        "shape": [3]}
    expected = zoo.call_signature(
        load(tf2_module), "raw",
        x=np.array([r["x"] for r in rows], np.float32),
        n=np.array([r["n"] for r in rows], np.int64),
        word=np.array([r["word"].encode() for r in rows], dtype=object),
        hist_sum=np.array([r["hist_sum"] for r in rows], np.float64),
        ids_count=np.array([r["ids_count"] for r in rows], np.int32))
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


# --- Keras 3 ------------------------------------------------------------------------------------
def test_keras_export_raw_signature(tmp_path, keras_export, load):
    """`model.export()`: named [None,1] inputs (float32 and int64) fed from a TFRecord."""
    rows = zoo.keras_rows(90, seed=5)
    for r in rows:  # the raw signature has no defaults: every input present
        r.setdefault("income", 100.0)
        r.setdefault("bucket", 3)
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.KERAS_FEATURES)}
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, dtypes)
    out = str(tmp_path / "out")
    summary = run_job(keras_export, path, out, "--key_field", "id")
    assert summary["signature_convention"] == "tensors"
    expected = zoo.call_signature(
        load(keras_export), "serving_default",
        age=np.array([[r["age"]] for r in rows], np.float32),
        income=np.array([[r["income"]] for r in rows], np.float32),
        bucket=np.array([[r["bucket"]] for r in rows], np.int64))
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


def test_keras_saved_with_parsing_signature(tmp_path, keras_parsing, load):
    """`tf.saved_model.save(model, signatures=...)` with a parsing signature whose input is
    named `tf_example`; CSV with empty cells takes the parse op's defaults."""
    rows = zoo.keras_rows(90, seed=6)
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.KERAS_FEATURES)}
    path = zoo.write_csv(str(tmp_path / "in.csv"), rows, list(dtypes))
    out = str(tmp_path / "out")
    summary = run_job(keras_parsing, path, out, "--key_field", "id")
    assert summary["signature_convention"] == "serialized"
    assert summary["feature_spec_source"] == "model (serving_default parse op)"
    expected = zoo.call_parsing_signature(load(keras_parsing), "serving_default", rows, dtypes)
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


# --- describe -------------------------------------------------------------------------------
def test_describe_command_on_estimator_export_base(estimator_v1):
    """`python -m pipeline describe`: chosen version, size, every signature with its
    inputs/outputs, and the feature spec read from the ParseExample node."""
    proc = subprocess.run([sys.executable, "-m", "pipeline", "describe", "--model",
                           estimator_v1["base"], "--signature", "predict"],
                          capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["version"] == estimator_v1["version"]
    assert info["model_path"] == estimator_v1["newest"]
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, fs in os.walk(estimator_v1["newest"]) for f in fs)
    assert info["size_bytes"] == size
    assert sorted(info["signatures"]) == ["classification", "predict", "regression",
                                          "serving_default"]
    sd = info["signatures"]["serving_default"]
    assert sd["inputs"] == {"inputs": "string[None]"}
    assert sd["outputs"] == {"classes": "string[None,2]", "scores": "float32[None,2]"}
    predict = info["signatures"]["predict"]
    assert predict["inputs"] == {"examples": "string[None]"}
    assert predict["outputs"] == {
        "all_class_ids": "int32[None,2]", "all_classes": "string[None,2]",
        "class_ids": "int64[None,1]", "classes": "string[None,1]",
        "country_hash": "int64[None]", "logistic": "float32[None,1]",
        "logit64": "float64[None]", "logits": "float32[None,1]",
        "probabilities": "float32[None,2]"}
    assert info["chosen_signature"] == "predict" and info["convention"] == "serialized"
    assert info["feature_spec"] == {"features": zoo.ESTIMATOR_SPEC_JSON}


def test_describe_raw_signature_needing_a_spec_says_so(estimator_raw, keras_export):
    """describe still describes a signature whose spec cannot be derived, and says why."""
    from pipeline.describe import describe
    info = describe(estimator_raw)
    assert "feature_spec" not in info
    assert "'extra'" in info["feature_spec_error"] and "unknown shape" in \
        info["feature_spec_error"]
    assert info["signatures"]["serving_default"]["inputs"] == {
        "age": "float32[None,1]", "country": "string[None]", "extra": "float32?",
        "n_items": "int32[None]"}
    keras = describe(keras_export)
    assert keras["convention"] == "tensors"
    assert keras["feature_spec"]["features"]["bucket"] == {"kind": "fixed", "dtype": "int64",
                                                           "shape": [1]}


def test_raw_signature_bad_records_are_classified_error_rows(tmp_path, keras_export, load):
    """Per-record failures inside the named-tensor path become error rows with the reason
    (not a traceback) and the right type; the other records are scored as the model does."""
    import tensorflow as tf
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.KERAS_FEATURES)}
    good = [{"id": f"g{i}", "age": 20.0 + i, "income": 10.0 * i, "bucket": i % 10}
            for i in range(30)]
    records = zoo.example_bytes(good, dtypes)
    bad = {
        "missing": zoo.example_bytes([{"id": "missing", "age": 1.0, "bucket": 1}], dtypes),
        "shape": zoo.example_bytes([{"id": "shape", "age": 1.0, "income": [1.0, 2.0],
                                     "bucket": 1}], dtypes),
        "type": zoo.example_bytes([{"id": "type", "age": 1.0, "income": 1.0, "bucket": 1.5}],
                                  {**dtypes, "bucket": "float32"}),
    }
    for i, key in enumerate(bad):  # spread through the file
        records.insert(7 * i + 3, bad[key][0])
    path = str(tmp_path / "in.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    out = str(tmp_path / "out")
    summary = run_job(keras_export, path, out, "--key_field", "id", "--max_error_rate", "0.5")
    assert summary["predicted"] == len(good) and summary["errors"] == 3
    errs = {e["index"]: e for e in errors(out)}
    types = {e["error_type"]: e["message"] for e in errs.values()}
    assert set(types) == {"missing_feature", "shape_mismatch", "type_mismatch"}
    assert "income" in types["missing_feature"] and "required" in types["missing_feature"]
    assert "income" in types["shape_mismatch"] and "bucket" in types["type_mismatch"]
    assert all("Traceback" not in m and "File \"" not in m for m in types.values())
    expected = zoo.call_signature(
        load(keras_export), "serving_default",
        age=np.array([[r["age"]] for r in good], np.float32),
        income=np.array([[r["income"]] for r in good], np.float32),
        bucket=np.array([[r["bucket"]] for r in good], np.int64))
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in good], expected)


# --- output fidelity of the writers -----------------------------------------------------------
def test_jsonl_and_csv_keep_every_dtype_exactly():
    """float32 as its shortest repr (reads back to the same float32), float64 in full, int64
    extremes exact, bool as true/false, UTF-8 text, other bytes as {"b64"}, [n,k] and [n,k,m]
    shapes as nested arrays; CSV cells hold the same values."""
    import base64
    import io

    from transforms.formats.csv_output import to_csv
    from transforms.formats.jsonl_output import to_jsonl
    from transforms.predict import PredictionBatch
    rng = np.random.default_rng(0)
    n = 6
    f32 = np.concatenate([[np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -0.0,
                           0.1, 1 / 3], rng.normal(0, 1e6, n)]).astype(np.float32)[:n]
    outputs = {
        "f32": f32,
        "f32_k": rng.normal(0, 1, (n, 3)).astype(np.float32),
        "f64": np.array([0.1, 1 / 3, 1e300, -2 ** -1074, 2 ** 53 + 1.0, np.pi]),
        "i64": np.array([2 ** 63 - 1, -2 ** 63, 2 ** 53 + 1, 0, -1, 12345678901234567]),
        "i32_k": rng.integers(-2 ** 31, 2 ** 31, (n, 2)).astype(np.int32),
        "flag": np.array([True, False] * 3),
        "text": np.array(["caf\u00e9".encode(), b"", b"\xff\xfe", b"a,b\"c", b"\n", b"x"],
                         dtype=object),
        "text_k": np.array([[b"a", b"\x80"]] * n, dtype=object),
        "grid": rng.normal(0, 1, (n, 2, 2)).astype(np.float32),
    }
    batch = PredictionBatch(np.array(["s"] * n, dtype=object), np.arange(n), None, outputs)
    rows = [json.loads(line) for line in to_jsonl(batch, None).decode().split("\n")]
    with io.StringIO(to_csv(batch, None).decode()) as fh:
        cells = list(csv.reader(fh))
    names = ["shard", "index", *sorted(outputs)]
    for i in range(n):
        row = rows[i]
        assert list(row) == names and dict(zip(names, cells[i]))["index"] == str(i)
        cell = dict(zip(names, cells[i]))
        assert np.float32(row["f32"]).tobytes() == f32[i].tobytes()  # -0.0 stays -0.0
        assert np.float32(float(cell["f32"])).tobytes() == f32[i].tobytes()
        assert len(repr(row["f32"])) <= len(repr(float(f32[i])))   # shortest, not float64
        assert np.array(row["f32_k"], np.float32).tobytes() == outputs["f32_k"][i].tobytes()
        assert row["f64"] == outputs["f64"][i] and float(cell["f64"]) == outputs["f64"][i]
        assert row["i64"] == int(outputs["i64"][i]) and int(cell["i64"]) == row["i64"]
        assert row["i32_k"] == outputs["i32_k"][i].tolist() == json.loads(cell["i32_k"])
        assert row["flag"] is bool(outputs["flag"][i])
        raw = outputs["text"][i]
        try:
            assert row["text"] == raw.decode("utf-8") == cell["text"]
        except UnicodeDecodeError:
            assert row["text"] == {"b64": base64.b64encode(raw).decode()}
            assert json.loads(cell["text"]) == row["text"]
        assert row["text_k"] == ["a", {"b64": "gA=="}] == json.loads(cell["text_k"])
        assert np.array(row["grid"], np.float32).tobytes() == outputs["grid"][i].tobytes()
    assert rows[0]["f32"] == 3.4028235e38 and rows[4]["f32"] == 0.1


def test_variable_length_raw_input_padded_per_chunk(tmp_path, load):
    """A [None, None] input is a var-len feature fed zero-padded; the warm-up example carries
    one value, so a model that reads the first element (fails on an empty row) still starts."""
    import tensorflow as tf
    from transforms.model import open_model

    class FirstToken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="tokens"),
                                      tf.TensorSpec([None], tf.float32, name="w")])
        def serve(self, tokens, w):
            return {"first": tokens[:, 0] * 2,
                    "total": tf.cast(tf.reduce_sum(tokens, axis=1), tf.float32) * w}

    module = FirstToken()
    path = str(tmp_path / "model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    model = open_model(path)  # warm-up included
    assert model.spec.to_json()["features"]["tokens"] == {"kind": "varlen", "dtype": "int64"}
    rows = [{"tokens": [5, 1, 2], "w": 0.5}, {"tokens": [7], "w": 2.0},
            {"tokens": [2 ** 40, 3], "w": 1.0}]
    got = model.predict(zoo.example_bytes(rows, {"tokens": "int64", "w": "float32"}))
    expected = zoo.call_signature(load(path), "serving_default",
                                  tokens=np.array([[5, 1, 2], [7, 0, 0], [2 ** 40, 3, 0]]),
                                  w=np.array([0.5, 2.0, 1.0], np.float32))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert got["first"].tolist() == [10, 14, 2 ** 41]
