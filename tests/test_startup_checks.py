"""Start-up checks: every unusable model or input fails before any worker starts, with one
clear sentence (exit code 2, no stack trace). Two cases run `python -m pipeline` for real; the
rest call the launcher in-process."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.run import EXIT_USAGE, main, run
from tests import model_zoo as zoo
from tests.helpers import one_error_line
from transforms.errors import InputError, ModelError
from transforms.model import open_model

pytest_plugins = ["tests.model_zoo"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny TFRecord and CSV of Estimator rows."""
    root = tmp_path_factory.mktemp("startup_inputs")
    rows = zoo.estimator_rows(5)
    dtypes = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}
    return {"tfrecord": zoo.write_tfrecord(str(root / "in.tfrecord"), rows, dtypes),
            "csv": zoo.write_csv(str(root / "in.csv"), rows, list(dtypes))}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def _run_fails(tmp_path, exc, model, inputs, *extra):
    out = tmp_path / "out"
    with pytest.raises(exc) as info:
        run(["--model", model, "--input", inputs, "--output", str(out), *extra])
    assert not out.exists()  # failed before anything ran or was written
    return str(info.value)


# --- through the real command line ----------------------------------------------------------
def test_cli_missing_model_path_exits_2_without_traceback(tmp_path, inputs):
    proc = _cli("--model", str(tmp_path / "no_such_model"), "--input", inputs["tfrecord"],
                "--output", str(tmp_path / "out"))
    assert proc.returncode == EXIT_USAGE == 2
    one_error_line(proc.stderr, "no_such_model", "does not exist")
    assert not (tmp_path / "out").exists()


def test_cli_model_failing_its_first_call_exits_2_without_traceback(tmp_path, inputs,
                                                                     missing_kernel_model):
    """Loads fine, then TensorFlow itself fails the warm-up call: no kernel for the op."""
    proc = _cli("--model", missing_kernel_model, "--input", inputs["tfrecord"],
                "--output", str(tmp_path / "out"))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr, "first call fails", "BoostedTreesBucketize",
                                  "no kernel")
    assert "Graph execution error" not in line


def test_cli_describe_signature_not_found(missing_kernel_model):
    proc = _cli("describe", "--model", missing_kernel_model, "--signature", "predict")
    assert proc.returncode == 2 and proc.stdout == ""
    one_error_line(proc.stderr, "signature 'predict' not found",
                           "available: serving_default")


# --- in-process -------------------------------------------------------------------------------
def test_missing_kernel_model_really_loads(missing_kernel_model, load):
    """The failure is TensorFlow's, at call time: loading works, calling raises."""
    import tensorflow as tf
    fn = load(missing_kernel_model).signatures["serving_default"]
    with pytest.raises(tf.errors.OpError, match="No OpKernel .*BoostedTreesBucketize"):
        fn(examples=tf.constant(zoo.example_bytes([{"x": 0.5}], {"x": "float32"})))
    model = open_model(missing_kernel_model, warm_up=False)  # loads and settles the spec
    assert model.info.convention == "serialized"


def test_not_a_saved_model(tmp_path, inputs):
    model = tmp_path / "junk"
    model.mkdir()
    (model / "weights.h5").write_bytes(b"\x89HDF")
    msg = _run_fails(tmp_path, ModelError, str(model), inputs["tfrecord"])
    assert msg == (f"{model} is neither a SavedModel (no saved_model.pb) nor an export base "
                   "dir with numeric version subdirectories holding one")


def test_corrupt_saved_model(tmp_path, inputs):
    model = tmp_path / "corrupt"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"this is not a protobuf")
    msg = _run_fails(tmp_path, ModelError, str(model), inputs["tfrecord"])
    assert msg.startswith(f"cannot load SavedModel {model}: ")
    assert "\n" not in msg


def test_export_base_with_no_finished_version(tmp_path, inputs):
    base = tmp_path / "export" / "exporter"
    (base / "temp-1600000000").mkdir(parents=True)
    (base / "temp-1600000000" / "saved_model.pb").write_bytes(b"")  # unfinished: ignored
    (base / "latest").mkdir()
    msg = _run_fails(tmp_path, ModelError, str(base), inputs["tfrecord"])
    assert "neither a SavedModel" in msg and "numeric version" in msg


def test_export_parent_dir_points_at_the_base_dirs(tmp_path, inputs, estimator_v1):
    """`--model .../export` (one level too high) names the export base dir below it."""
    parent = os.path.dirname(estimator_v1["base"])
    msg = _run_fails(tmp_path, ModelError, parent, inputs["tfrecord"])
    assert msg.endswith(f"export base dirs found below it: {estimator_v1['base']}")


def test_signature_not_found_lists_available(tmp_path, inputs, estimator_v1):
    msg = _run_fails(tmp_path, ModelError, estimator_v1["base"], inputs["tfrecord"],
                     "--signature", "serve")
    assert msg == (f"signature 'serve' not found in {estimator_v1['newest']}; available: "
                   "classification, predict, regression, serving_default")


def test_input_glob_matching_nothing(tmp_path, estimator_v1):
    msg = _run_fails(tmp_path, InputError, estimator_v1["base"], str(tmp_path / "*.tfrecord"))
    assert msg == f"input pattern {tmp_path / '*.tfrecord'} matches no files"


def test_given_spec_mismatch_lists_each_feature(tmp_path, inputs, estimator_v1):
    spec = json.loads(json.dumps(zoo.ESTIMATOR_FEATURES))  # (kind, dtype, shape, default)
    features = {n: {"kind": k, "dtype": d, **({"shape": s} if k == "fixed" else {}),
                    **({"default": v} if v is not None else {})}
                for n, (k, d, s, v) in spec.items()}
    features["hours"]["dtype"] = "int64"
    features["hours"]["default"] = [40]
    features["tags"]["kind"] = "ragged"
    del features["clicks"]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"features": features}))
    msg = _run_fails(tmp_path, ModelError, estimator_v1["base"], inputs["csv"],
                     "--feature_spec", str(path))
    assert "3 feature(s) differ" in msg
    assert "hours: given fixed int64[1] default=[40], model parses fixed float32[1]" in msg
    assert "tags: given ragged string, model parses varlen string" in msg
    assert "clicks: parsed by the model (varlen int64) but missing from the given spec" in msg


def test_given_spec_matching_with_broadcast_default_is_accepted(tmp_path, estimator_v1):
    from transforms.feature_spec import FeatureSpec
    model_spec = open_model(estimator_v1["base"], warm_up=False).spec
    obj = model_spec.to_json()
    obj["features"]["vec"]["default"] = [0.0]  # one value for shape [3]
    model = open_model(estimator_v1["base"], feature_spec=FeatureSpec.from_json(obj))
    assert model.spec_source == "given (matches the model's parse op)"


@pytest.mark.parametrize("change, words", [
    (lambda f: f.pop("n_items"), "input 'n_items' (int32[None]) has no feature of that name"),
    (lambda f: f.update(age={"kind": "fixed", "dtype": "string", "shape": [1]}),
     "input 'age' is float32 but feature 'age' is string"),
    (lambda f: f.update(age={"kind": "fixed", "dtype": "float32", "shape": [2]}),
     "input 'age' takes 1 value(s) per example (float32[None,1]); feature 'age' has 2"),
    (lambda f: f.update(country={"kind": "varlen", "dtype": "string"}),
     "input 'country' (string[None]) cannot take the varlen feature 'country'"),
    (lambda f: f.update(n_items={"kind": "fixed", "dtype": "float32", "shape": []}),
     "input 'n_items' is int32 but feature 'n_items' is float32"),
])
def test_raw_inputs_the_spec_cannot_satisfy(tmp_path, inputs, estimator_raw, change, words):
    features = {"age": {"kind": "fixed", "dtype": "float32", "shape": [1]},
                "country": {"kind": "fixed", "dtype": "string", "shape": []},
                "n_items": {"kind": "fixed", "dtype": "int64", "shape": []},
                "extra": {"kind": "fixed", "dtype": "float32", "shape": []}}
    change(features)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"features": features}))
    msg = _run_fails(tmp_path, ModelError, estimator_raw, inputs["csv"],
                     "--feature_spec", str(path))
    assert msg.startswith("signature 'serving_default' takes named tensors that the given "
                          "feature spec cannot feed: ")
    assert words in msg


def test_raw_input_of_unknown_shape_needs_a_spec(tmp_path, inputs, estimator_raw):
    msg = _run_fails(tmp_path, ModelError, estimator_raw, inputs["csv"])
    assert msg == ("signature 'serving_default': input 'extra' has an unknown shape, so its "
                   "feature cannot be derived from the signature; pass --feature_spec")


def test_raw_input_tf_example_cannot_carry(tmp_path):
    """A bool input cannot be derived from tf.Example; a given int64 feature feeds it."""
    import tensorflow as tf
    from transforms.feature_spec import FeatureSpec

    class BoolIn(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.bool, name="flag"),
                                      tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, flag, x):
            return {"y": tf.where(flag, x[:, 0], x[:, 1])}

    module = BoolIn()
    path = str(tmp_path / "bool_model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    with pytest.raises(ModelError, match="input 'flag' has dtype bool, which tf.Example "
                                         "cannot carry; pass --feature_spec"):
        open_model(path)
    spec = FeatureSpec.from_json({"flag": {"dtype": "int64", "shape": []},
                                  "x": {"dtype": "float32", "shape": [2]}})
    model = open_model(path, feature_spec=spec)
    rows = [{"flag": 1, "x": [1.0, 2.0]}, {"flag": 0, "x": [3.0, 4.0]}]
    got = model.predict(zoo.example_bytes(rows, {"flag": "int64", "x": "float32"}))
    assert got["y"].tolist() == [1.0, 4.0]


def test_in_process_main_returns_2_with_one_line(tmp_path, inputs, missing_kernel_model,
                                                 capsys):
    code = main(["--model", missing_kernel_model, "--input", inputs["csv"],
                 "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    one_error_line(err, "BoostedTreesBucketize")
    assert not (tmp_path / "out").exists()


def test_a_model_copied_without_its_variables(tmp_path, inputs, keras_parsing):
    """A SavedModel dir copied without variables/ fails at load, in one sentence."""
    broken = tmp_path / "no_vars"
    shutil.copytree(keras_parsing, broken)
    shutil.rmtree(broken / "variables")
    msg = _run_fails(tmp_path, ModelError, str(broken), inputs["tfrecord"])
    assert msg.startswith(f"cannot load SavedModel {broken}: ") and "\n" not in msg


def test_error_summary_keeps_the_reason_of_real_tensorflow_errors():
    """TF errors from graphs built in this process start with "Graph execution error:" and a
    Python traceback of where the node was defined; the summary is the reason alone."""
    import tensorflow as tf
    from transforms.model import error_summary

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(serialized):
        return tf.io.parse_example(serialized, {"a": tf.io.FixedLenFeature([], tf.float32)})

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        parse(tf.constant(zoo.example_bytes([{}], {"a": "float32"})))
    assert "Detected at node" in info.value.message and "File \"" in info.value.message
    assert error_summary(info.value) == ("Name: <unknown>, Feature: a (data type: float) is "
                                         "required but could not be found.")


def test_output_named_like_the_source_columns_needs_a_key(tmp_path):
    """Rows without --key_field carry `shard` and `index`; a model output may not shadow them."""
    import tensorflow as tf

    from transforms.examples import encode_rows
    from transforms.export import export_parsing_model
    from transforms.feature_spec import Feature, FeatureSpec
    spec = FeatureSpec([Feature("x", "fixed", "float32", ()), Feature("id", "fixed", "string",
                                                                        (), ("",))])

    class IndexOut(tf.Module):
        def __call__(self, f):
            return {"index": f["x"] * 2.0}
    module = IndexOut()
    export_parsing_model(module, spec, str(tmp_path / "model"), module=module)
    data = str(tmp_path / "in.tfrecord")
    with tf.io.TFRecordWriter(data) as w:
        w.write(encode_rows([{"id": "a", "x": 1.0}], {"id": "string", "x": "float32"})[0])
    msg = _run_fails(tmp_path, InputError, str(tmp_path / "model"), data)
    assert "['index']" in msg and "--key_field" in msg
    out = tmp_path / "keyed"
    run(["--model", str(tmp_path / "model"), "--input", data, "--output", str(out),
         "--key_field", "id"])
    [row] = [json.loads(line) for line in open(next(out.glob("predictions-*.jsonl")))]
    assert row == {"id": "a", "index": 2.0}
