"""`python -m pipeline optimize`: the optimized model parses the same spec, predicts what the
ORIGINAL model predicts (the original called directly on tf.Examples serialized with
TensorFlow's own protos), scores through the real pipeline, and refusals write nothing."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipeline import demo
from pipeline.optimize import (NOISE_FLOOR_MS, TOLERANCES, Figures, compare_outputs, main,
                               optimize, verdict)
from tests import model_zoo as zoo
from tests.helpers import by_key, errors, predictions, run_job
from transforms.optimize import RECORD_FILE, read_optimization

pytest_plugins = ["tests.model_zoo"]

LOSSLESS = TOLERANCES["none"]  # rtol 1e-5, atol 1e-6 for floats; everything else exact
EST_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}
TF2_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.TF2_FEATURES)}
KERAS_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.KERAS_FEATURES)}
MLP_HIDDEN = (256, 256, 256)  # the demo model, deeper: weights large enough to quantize


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    base = tmp_path_factory.mktemp("mlp")
    return demo.build_demo_model(str(base / "1700000000"), hidden=MLP_HIDDEN)


@pytest.fixture(scope="module")
def models(estimator_v1, tf2_module, keras_parsing, mlp):
    """name -> (what --model is given, the SavedModel dir it resolves to, rows, dtypes)."""
    return {
        "estimator_v1": (estimator_v1["base"], estimator_v1["newest"],
                         zoo.estimator_rows(120, seed=21), EST_DTYPES),
        "tf2_module": (tf2_module, tf2_module, zoo.tf2_rows(120, seed=22), TF2_DTYPES),
        "keras_parsing": (keras_parsing, keras_parsing, zoo.keras_rows(120, seed=23),
                          KERAS_DTYPES),
        "mlp": (os.path.dirname(mlp), mlp, demo.demo_rows(120, seed=24), demo.demo_dtypes()),
    }


@pytest.fixture(scope="module")
def optimized(models, tmp_path_factory):
    """name -> (optimized dir, record returned, stage lines printed); each optimized once."""
    out = {}
    for name, (given, _, _, _) in models.items():
        path = str(tmp_path_factory.mktemp("opt") / name)
        lines = []
        record = optimize(given, path, batch=256, calls=5, say=lines.append)
        out[name] = (path, record, lines)
    return out


MODEL_NAMES = ["estimator_v1", "tf2_module", "keras_parsing", "mlp"]


def assert_outputs_match(original: dict, got: dict, rtol: float, atol: float, where: str):
    assert sorted(got) == sorted(original), where
    for key, want in original.items():
        have = got[key]
        assert have.dtype == want.dtype and have.shape == want.shape, (where, key)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(have, want, rtol=rtol, atol=atol, err_msg=f"{where}.{key}")
        else:
            np.testing.assert_array_equal(have, want, err_msg=f"{where}.{key}")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stages_and_record(name, models, optimized):
    path, record, lines = optimized[name]
    given, resolved, _, _ = models[name]
    stages = [line.split(":")[0] for line in lines[:-1]]
    assert stages == ["load", "freeze", "optimize", "check", "write"]
    assert "| model call, batch 256 (median of " in lines[-1]  # the table comes last
    saved = read_optimization(path)
    assert saved == json.loads(json.dumps(record))
    assert saved["source"]["path"] == resolved and saved["source"]["model"] == given
    assert saved["quantize"] == "none" and saved["tolerance"]["rtol"] == 1e-5
    assert "freeze" in saved["passes"] and "grappler:constant_folding" in saved["passes"]
    lat = saved["figures"]["latency_ms"]
    assert len(lat) == 2 and all(v > 0 for v in lat)
    assert os.path.exists(os.path.join(path, RECORD_FILE))
    assert read_optimization(resolved) is None  # the original carries no record
    # the MLP's 256x256 weights go back into variables (fast to load); small ones stay
    # constants
    assert (saved["weights_as_variables"] >= 2) == (name == "mlp")
    if name == "estimator_v1":
        assert saved["source"]["version"] == str(zoo.ESTIMATOR_VERSIONS[-1])
        assert sorted(saved["signatures"]) == ["classification", "predict", "regression",
                                               "serving_default"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_unchanged(name, models, optimized, load):
    from pipeline.describe import describe
    from transforms.introspect import recover_spec
    path = optimized[name][0]
    original, opt = load(models[name][1]), load(path)
    assert set(opt.signatures.keys()) == set(original.signatures.keys())
    for sig in original.signatures.keys():
        assert recover_spec(opt.signatures[sig]) == recover_spec(original.signatures[sig]), sig
    before, after = describe(models[name][0]), describe(path)
    assert after["feature_spec"] == before["feature_spec"]
    if name == "estimator_v1":
        assert after["feature_spec"]["features"] == zoo.ESTIMATOR_SPEC_JSON


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_predictions_match_the_original(name, models, optimized, load):
    """Every parsing signature, called directly on both models with the same tf.Examples."""
    _, resolved, rows, dtypes = models[name]
    original, opt = load(resolved), load(optimized[name][0])
    compared = 0
    for sig in original.signatures.keys():
        specs = list(original.signatures[sig].structured_input_signature[1].values())
        if len(specs) != 1 or specs[0].dtype.name != "string":
            continue  # a named-tensor signature: test_raw_tensor_signatures_match_the_original
        want = zoo.call_parsing_signature(original, sig, rows, dtypes)
        got = zoo.call_parsing_signature(opt, sig, rows, dtypes)
        assert_outputs_match(want, got, LOSSLESS.rtol, LOSSLESS.atol, f"{name}/{sig}")
        compared += 1
    assert compared == (4 if name == "estimator_v1" else 1)


def test_raw_tensor_signatures_match_the_original(models, optimized, load):
    """The named-tensor signatures carried over take the same inputs by name."""
    rows = zoo.tf2_raw_rows(50, seed=3)
    inputs = dict(x=np.array([r["x"] for r in rows], np.float32),
                  n=np.array([r["n"] for r in rows], np.int64),
                  word=np.array([r["word"].encode() for r in rows], object),
                  hist_sum=np.array([r["hist_sum"] for r in rows], np.float64),
                  ids_count=np.array([r["ids_count"] for r in rows], np.int32))
    want = zoo.call_signature(load(models["tf2_module"][1]), "raw", **inputs)
    got = zoo.call_signature(load(optimized["tf2_module"][0]), "raw", **inputs)
    assert_outputs_match(want, got, LOSSLESS.rtol, LOSSLESS.atol, "tf2/raw")

    rows = demo.demo_rows(40, seed=5)
    spec = demo.demo_spec()
    raw = {f.name: np.array([r[f.name].encode() if f.dtype == "string" else r[f.name]
                             for r in rows], object if f.dtype == "string" else f.dtype)
           for f in spec.values()}
    want = zoo.call_signature(load(models["mlp"][1]), "predict_raw", **raw)
    got = zoo.call_signature(load(optimized["mlp"][0]), "predict_raw", **raw)
    assert_outputs_match(want, got, LOSSLESS.rtol, LOSSLESS.atol, "mlp/predict_raw")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_scores_through_the_pipeline(name, models, optimized, load, tmp_path):
    _, resolved, rows, dtypes = models[name]
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, dtypes)
    out = str(tmp_path / "out")
    sig = "predict" if name == "estimator_v1" else "serving_default"
    summary = run_job(optimized[name][0], path, out, "--key_field", "id", "--signature", sig)
    assert summary["records_in"] == summary["predicted"] == len(rows)
    assert errors(out) == []
    expected = zoo.call_parsing_signature(load(resolved), sig, rows, dtypes)
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected,
                          rtol=LOSSLESS.rtol)
    with open(os.path.join(out, "manifest.json")) as fh:
        assert json.load(fh)["model"]["optimized"]["quantize"] == "none"


def test_float16_reports_deviation_and_still_scores(mlp, load, tmp_path):
    target = str(tmp_path / "mlp16")
    lines = []
    record = optimize(mlp, target, quantize="float16", batch=256, calls=5, force=True,
                      say=lines.append)
    assert record["quantize"] == "float16" and record["quantized_tensors"] >= 3
    assert record["tolerance"] == {"rtol": 1e-2, "atol": 1e-2, "max_changed": 0.01}
    floats = [d for d in record["outputs"]["serving_default"] if d["max_abs"] is not None]
    assert floats and max(d["max_abs"] for d in floats) > 0  # it is lossy, and says by how much
    assert record["figures"]["size_bytes"][1] < 0.7 * record["figures"]["size_bytes"][0]
    rows = demo.demo_rows(80, seed=31)
    path = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, demo.demo_dtypes())
    out = str(tmp_path / "out")
    summary = run_job(target, path, out, "--key_field", "id")
    assert summary["predicted"] == len(rows)
    with open(os.path.join(out, "manifest.json")) as fh:  # which model ran, and how it was made
        optimized = json.load(fh)["model"]["optimized"]
    assert optimized["quantize"] == "float16" and optimized["source"] == record["source"]
    expected = zoo.call_parsing_signature(load(mlp), "serving_default", rows,
                                          demo.demo_dtypes())
    got = by_key(predictions(out))
    score = np.array([got[r["id"]]["score"] for r in rows])
    np.testing.assert_allclose(score, expected["score"], rtol=1e-2, atol=1e-2)


def _build_tf2_table_model(export_dir: str, vocab_dir: str) -> str:
    """A tf.Module whose parsing signature looks a string up in a StaticHashTable filled from a
    vocabulary file; the file then lives only in the SavedModel's assets/."""
    import tensorflow as tf
    vocab = os.path.join(vocab_dir, "words.txt")
    with open(vocab, "w") as fh:
        fh.write("\n".join(zoo.COUNTRIES) + "\n")

    class Lookup(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
                vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
            self.w = tf.Variable(np.linspace(-1, 1, 5, dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, {
                "country": tf.io.FixedLenFeature([], tf.string, default_value="")})
            idx = self.table.lookup(f["country"])
            return {"idx": idx, "weight": tf.gather(self.w, tf.where(
                idx < 0, tf.constant(len(zoo.COUNTRIES), tf.int64), idx))}

    module = Lookup()
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    os.remove(vocab)
    return export_dir


def test_tf2_lookup_table_and_its_vocabulary_are_carried_over(tmp_path, load):
    """A TF2 StaticHashTable is rebuilt as a graph table filled at load from the vocabulary
    the optimized model ships; the model still works after it is moved elsewhere."""
    import shutil
    source = _build_tf2_table_model(str(tmp_path / "src"), str(tmp_path))
    target = str(tmp_path / "opt")
    optimize(source, target, batch=64, calls=3, say=lambda _: None)
    assert os.listdir(os.path.join(target, "assets")) == ["words.txt"]
    moved = str(tmp_path / "moved")
    shutil.move(target, moved)
    rows = [{"country": c} for c in zoo.COUNTRIES + ["xx"]] + [{}]
    want = zoo.call_parsing_signature(load(source), "serving_default", rows,
                                      {"country": "string"})
    got = zoo.call_parsing_signature(load(moved), "serving_default", rows,
                                     {"country": "string"})
    assert want["idx"].tolist() == [0, 1, 2, 3, -1, -1]  # the vocabulary is really used
    assert_outputs_match(want, got, LOSSLESS.rtol, LOSSLESS.atol, "tf2 table")


# --- refusals: exit 2, one line, nothing at --output ----------------------------------------
def _run_cli(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(list(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def _leftovers(parent) -> list[str]:
    return [n for n in os.listdir(parent) if ".optimize-" in n]


def test_refuses_outside_tolerance_unless_forced(mlp, tmp_path, capsys):
    target = tmp_path / "strict"
    rc, err = _run_cli(capsys, "--model", mlp, "--output", str(target), "--quantize",
                       "float16", "--rtol", "0", "--atol", "0", "--batch_size", "128",
                       "--calls", "3")
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: not written: output ")
    assert "--force" in err[0]
    assert not target.exists() and _leftovers(tmp_path) == []
    rc, err = _run_cli(capsys, "--model", mlp, "--output", str(target), "--quantize",
                       "float16", "--rtol", "0", "--atol", "0", "--batch_size", "128",
                       "--calls", "3", "--force")
    assert rc == 0, err
    assert read_optimization(str(target))["forced"]


def test_refuses_existing_non_empty_output(mlp, tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    rc, err = _run_cli(capsys, "--model", mlp, "--output", str(target))
    assert rc == 2 and len(err) == 1 and "exists and is not an empty directory" in err[0]
    assert os.listdir(target) == ["keep.txt"] and _leftovers(tmp_path) == []


@pytest.mark.parametrize("argv, says", [
    (["--model", "{tmp}/no-such-model"], "does not exist"),
    (["--quantize", "int8"], "--quantize must be one of none, float16, bfloat16"),
    (["--rtol", "-1"], "--rtol and --atol must be non-negative"),
    (["--sample", "{tmp}/none-*.tfrecord"], "matches no files"),
])
def test_user_mistakes_are_one_line(argv, says, mlp, tmp_path, capsys):
    target = tmp_path / "out"
    full = ["--model", mlp, "--output", str(target)]
    for i in range(0, len(argv), 2):
        if argv[i] in full:
            full[full.index(argv[i]) + 1] = argv[i + 1].format(tmp=tmp_path)
        else:
            full += [argv[i], argv[i + 1].format(tmp=tmp_path)]
    rc, err = _run_cli(capsys, *full)
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not target.exists() and _leftovers(tmp_path) == []


def test_command_line_dispatch(keras_parsing, tmp_path):
    """`python -m pipeline optimize`: stage lines, then the table, on stdout; exit 0."""
    import subprocess
    import sys
    target = str(tmp_path / "k")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "optimize", "--model",
                           keras_parsing, "--output", target, "--batch_size", "64", "--calls",
                           "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:5]] == ["load", "freeze", "optimize",
                                                          "check", "write"]
    assert "| figure | original | optimized | ratio |" in lines
    assert read_optimization(target)["source"]["path"] == keras_parsing


def test_sample_records_are_used(mlp, tmp_path):
    rows = demo.demo_rows(50, seed=8)
    sample = zoo.write_tfrecord(str(tmp_path / "s.tfrecord"), rows, demo.demo_dtypes())
    record = optimize(mlp, str(tmp_path / "o"), sample=str(tmp_path / "*.tfrecord"),
                      batch=64, calls=3, say=lambda _: None)
    assert record["sample"].endswith("*.tfrecord") and record["figures"]["batch"] == 50
    assert os.path.exists(sample)


# --- the verdict, on given figures ------------------------------------------------------------
def _figures(before_ms, after_ms):
    return Figures(batch=1024, calls=9, latency_ms=(before_ms, after_ms), load_s=(1.0, 1.0),
                   size_bytes=(10, 10))


def test_verdict_slower_beyond_five_percent_and_noise():
    same = compare_outputs({"p": np.ones(4, np.float32)}, {"p": np.ones(4, np.float32)},
                           LOSSLESS)
    assert verdict(same, _figures(20.0, 20.9), LOSSLESS) == []           # +4.5%
    (reason,) = verdict(same, _figures(20.0, 21.2), LOSSLESS)           # +6%
    assert reason.startswith("it is slower")
    # +50% of a 0.4 ms call is under the noise floor: not a verdict
    assert verdict(same, _figures(0.4, 0.4 + NOISE_FLOOR_MS * 0.4), LOSSLESS) == []


def test_compare_outputs_tolerances():
    a = {"f": np.array([1.0, 100.0, 0.0], np.float32), "i": np.array([1, 2, 3]),
         "s": np.array([b"x", b"y", b"z"], object)}
    b = {"f": np.array([1.0 + 5e-6, 100.0 * (1 + 9e-6), 5e-7], np.float32),
         "i": np.array([1, 2, 3]), "s": np.array([b"x", b"y", b"z"], object)}
    diffs = {d.name: d for d in compare_outputs(a, b, LOSSLESS)}
    assert all(d.within for d in diffs.values())
    assert diffs["f"].max_abs == pytest.approx(9e-4, rel=0.05)
    b["f"][0] = 1.001
    b["i"] = np.array([1, 2, 4])
    diffs = {d.name: d for d in compare_outputs(a, b, LOSSLESS)}
    assert not diffs["f"].within and diffs["f"].changed == pytest.approx(1 / 3)
    assert not diffs["i"].within and diffs["s"].within
    reasons = verdict(list(diffs.values()), _figures(1.0, 1.0), LOSSLESS)
    assert len(reasons) == 2 and "'f'" in reasons[0] and "'i'" in reasons[1]
    loose = TOLERANCES["float16"]
    many = compare_outputs({"c": np.arange(200)}, {"c": np.r_[np.arange(199), [7]]}, loose)
    assert many[0].within  # 0.5% of records changed: allowed when quantized
    missing = compare_outputs({"p": np.ones(2)}, {}, loose)
    assert not missing[0].within
