"""The one feature spec: JSON and tf.io round trips, recovery from every kind of parse op, diff."""
import json
import math

import numpy as np
import pytest

from tests import model_zoo as zoo
from transforms.errors import FeatureSpecError
from transforms.feature_spec import Feature, FeatureSpec

pytest_plugins = ["tests.model_zoo"]
EST_SPEC_JSON = zoo.ESTIMATOR_SPEC_JSON

TF2_SPEC_JSON = {
    "hist": {"kind": "ragged", "dtype": "float32"},
    "ids": {"kind": "varlen", "dtype": "int64"},
    "n": {"kind": "fixed", "dtype": "int64", "shape": []},
    "word": {"kind": "fixed", "dtype": "string", "shape": [], "default": ["none"]},
    "x": {"kind": "fixed", "dtype": "float32", "shape": [3], "default": [0.0, 0.0, 0.0]},
}
KERAS_SPEC_JSON = {
    "age": {"kind": "fixed", "dtype": "float32", "shape": [1]},
    "bucket": {"kind": "fixed", "dtype": "int64", "shape": [1], "default": [0]},
    "income": {"kind": "fixed", "dtype": "float32", "shape": [1], "default": [0.0]},
}


def _spec(features: dict) -> FeatureSpec:
    return FeatureSpec.from_json({"features": features})


# --- JSON and tf.io round trips -----------------------------------------------------------------
ALL_KINDS = {**EST_SPEC_JSON, "hist": {"kind": "ragged", "dtype": "float32"},
             "grid": {"kind": "fixed", "dtype": "int64", "shape": [2, 2], "default": [7]},
             "name": {"kind": "fixed", "dtype": "string", "shape": [], "default": ["caf\u00e9"]}}


def test_json_round_trip(tmp_path):
    spec = _spec(ALL_KINDS)
    assert spec.to_json() == {"features": ALL_KINDS}
    assert FeatureSpec.from_json(json.loads(spec.dumps())) == spec
    path = tmp_path / "spec.json"
    path.write_text(spec.dumps())
    assert FeatureSpec.load(str(path)) == spec
    # a bare mapping is accepted, scalar defaults are wrapped, ints coerced for float features
    bare = FeatureSpec.from_json({"hours": {"dtype": "float32", "shape": [1], "default": 40}})
    assert bare["hours"] == Feature("hours", "fixed", "float32", (1,), (40.0,))
    assert isinstance(bare["hours"].default[0], float)


def test_tf_io_round_trip_matches_tensorflow_objects():
    import tensorflow as tf
    spec = _spec(ALL_KINDS)
    tf_spec = spec.to_tf()
    assert tf_spec["age"] == tf.io.FixedLenFeature([1], tf.float32)
    assert tf_spec["vec"] == tf.io.FixedLenFeature([3], tf.float32, [0.0, 0.0, 0.0])
    assert tf_spec["grid"] == tf.io.FixedLenFeature([2, 2], tf.int64, [7, 7, 7, 7])
    assert tf_spec["name"] == tf.io.FixedLenFeature([], tf.string, ["caf\u00e9".encode()])
    assert tf_spec["tags"] == tf.io.VarLenFeature(tf.string)
    assert tf_spec["hist"] == tf.io.RaggedFeature(tf.float32)
    back = FeatureSpec.from_tf(tf_spec)
    # from_tf gives the full default; it is the same feature as the one-value broadcast
    assert back["grid"].default == (7, 7, 7, 7)
    assert all(back[n].same_as(spec[n]) for n in spec) and set(back) == set(spec)
    assert FeatureSpec.from_tf(back.to_tf()) == back


@pytest.mark.parametrize("bad, words", [
    ({"a": {"kind": "sparse", "dtype": "float32"}}, "kind must be one of"),
    ({"a": {"kind": "fixed", "dtype": "float64", "shape": []}}, "dtype must be one of"),
    ({"a": {"kind": "fixed", "dtype": "int64", "shape": [3], "default": [1, 2]}},
     "default has 2 values"),
    ({"a": {"kind": "fixed", "dtype": "int64", "shape": [], "default": ["x"]}},
     "is not a int64"),
    ({"a": {"kind": "fixed", "dtype": "int64", "shape": [], "default": [1.5]}},
     "is not a int64"),
    ({"a": {"kind": "varlen", "dtype": "int64", "default": [1]}}, "only fixed features"),
    ({"a": {"kind": "fixed", "dtype": "int64", "shape": [-1]}}, "non-negative"),
    ({"a": {"kind": "fixed", "dtype": "int64", "shap": [1]}}, "unknown keys"),
    ({}, "at least one feature"),
])
def test_malformed_specs_are_rejected(bad, words):
    with pytest.raises(FeatureSpecError, match=words):
        FeatureSpec.from_json({"features": bad})


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(FeatureSpecError, match="cannot read feature spec"):
        FeatureSpec.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FeatureSpecError, match="not valid JSON"):
        FeatureSpec.load(str(tmp_path / "bad.json"))


# --- recovery from parse ops ------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["estimator_v1", "estimator_v2"])
def test_recovered_from_tf1_parse_ops_for_every_signature(request, variant, load):
    """ParseExample (v1: key constants, reshaped defaults, empty required defaults) and
    ParseExampleV2 in TF1 graphs give the same spec, for each of the four signatures."""
    from transforms.introspect import signature_info
    export = request.getfixturevalue(variant)
    loaded = load(export["newest"])
    assert sorted(loaded.signatures) == ["classification", "predict", "regression",
                                         "serving_default"]
    for name in loaded.signatures:
        info = signature_info(name, loaded.signatures[name])
        assert info.convention == "serialized", name
        assert info.parsed_spec == _spec(EST_SPEC_JSON), name
    graph_ops = {n.op for n in loaded.signatures["predict"].graph.as_graph_def().node}
    assert ("ParseExample" if variant == "estimator_v1" else "ParseExampleV2") in graph_ops


def test_recovered_from_tf2_function_with_ragged_and_varlen(tf2_module, load):
    from transforms.introspect import signature_info
    loaded = load(tf2_module)
    info = signature_info("serving_default", loaded.signatures["serving_default"])
    assert info.parsed_spec == _spec(TF2_SPEC_JSON)
    raw = signature_info("raw", loaded.signatures["raw"])
    assert raw.convention == "tensors" and raw.parsed_spec is None


def test_recovered_from_keras_parsing_signature(keras_parsing, load):
    from transforms.introspect import signature_info
    loaded = load(keras_parsing)
    info = signature_info("serving_default", loaded.signatures["serving_default"])
    assert info.inputs[0].name == "tf_example" and info.convention == "serialized"
    assert info.parsed_spec == _spec(KERAS_SPEC_JSON)


def test_recovered_spec_parses_exactly_like_the_models_own(tf2_module, load):
    """Proof by use: parsing real examples with the recovered spec yields the same tensors as
    the tf.io features the model was built with (dense, defaults, sparse and ragged)."""
    import tensorflow as tf
    from transforms.introspect import recover_spec
    spec = recover_spec(load(tf2_module).signatures["serving_default"])
    rows = zoo.tf2_rows(40, seed=12)
    serialized = tf.constant(zoo.example_bytes(rows, zoo.feature_dtypes(zoo.TF2_FEATURES)))
    ours = tf.io.parse_example(serialized, spec.to_tf())
    theirs = tf.io.parse_example(serialized, zoo._tf_features(zoo.TF2_FEATURES))
    assert set(ours) == set(theirs)
    for name in theirs:
        a, b = ours[name], theirs[name]
        assert type(a) is type(b), name
        if isinstance(b, tf.SparseTensor):
            a, b = tf.sparse.to_dense(a), tf.sparse.to_dense(b)
        elif isinstance(b, tf.RaggedTensor):
            assert a.row_splits.numpy().tolist() == b.row_splits.numpy().tolist()
            a, b = a.flat_values, b.flat_values
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


@pytest.fixture(scope="module")
def sequence_model(tmp_path_factory):
    """A parsing signature with a FixedLenSequenceFeature: its shape has an unknown dim."""
    import tensorflow as tf
    features = {"seq": tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True),
                "w": tf.io.FixedLenFeature([], tf.float32, default_value=1.0)}

    class Seq(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, features)
            return {"total": tf.reduce_sum(f["seq"], axis=1) * f["w"]}

    module = Seq()
    path = str(tmp_path_factory.mktemp("seq") / "model")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_unreadable_parse_op_needs_a_spec_and_uses_a_given_one(sequence_model, load):
    from transforms.errors import ModelError
    from transforms.model import open_model
    with pytest.raises(ModelError, match="unknown dimension.*pass --feature_spec"):
        open_model(sequence_model)
    given = _spec({"seq": {"kind": "varlen", "dtype": "float32"},
                   "w": {"kind": "fixed", "dtype": "float32", "shape": [], "default": [1.0]}})
    model = open_model(sequence_model, feature_spec=given)
    assert model.info.convention == "serialized"
    assert model.spec_source.startswith("given (the model's parse op could not be read")
    rows = [{"seq": [1.0, 2.5], "w": 2.0}, {"seq": [4.0]}, {}]
    dtypes = {"seq": "float32", "w": "float32"}
    got = model.predict(np.array(zoo.example_bytes(rows, dtypes), dtype=object))
    expected = zoo.call_parsing_signature(load(sequence_model), "serving_default", rows, dtypes)
    np.testing.assert_array_equal(got["total"], expected["total"])
    assert expected["total"].tolist() == [7.0, 4.0, 0.0]


# --- diff -------------------------------------------------------------------------------------
def test_diff_lists_each_differing_feature():
    model = _spec(EST_SPEC_JSON)
    given = dict(EST_SPEC_JSON)
    given["age"] = {"kind": "fixed", "dtype": "float32", "shape": []}             # shape
    given["dept_id"] = {"kind": "fixed", "dtype": "float32", "shape": [1]}        # dtype+dflt
    given["tags"] = {"kind": "ragged", "dtype": "string"}                         # kind
    given["hours"] = {"kind": "fixed", "dtype": "float32", "shape": [1], "default": [8.0]}
    del given["clicks"]                                                            # missing
    given["bonus"] = {"kind": "varlen", "dtype": "float32"}                       # extra
    diffs = _spec(given).diff(model)
    assert len(diffs) == 6
    by_name = {d.split(":")[0]: d for d in diffs}
    assert set(by_name) == {"age", "dept_id", "tags", "hours", "clicks", "bonus"}
    assert by_name["age"] == ("age: given fixed float32[] required, model parses fixed "
                              "float32[1] required")
    assert "model parses fixed int64[1] default=[-1]" in by_name["dept_id"]
    assert "given ragged string, model parses varlen string" in by_name["tags"]
    assert "default=[8.0]" in by_name["hours"] and "default=[40.0]" in by_name["hours"]
    assert "missing from the given spec" in by_name["clicks"]
    assert "not parsed by the model" in by_name["bonus"]


def test_diff_accepts_broadcast_defaults_and_nan():
    """The parse op stores a default for every value; a one-value default means the same."""
    model = _spec(EST_SPEC_JSON)
    given = dict(EST_SPEC_JSON, vec={"kind": "fixed", "dtype": "float32", "shape": [3],
                                     "default": [0.0]})
    assert _spec(given).diff(model) == []
    a = Feature("f", "fixed", "float32", (2,), (math.nan,))
    b = Feature("f", "fixed", "float32", (2,), (math.nan, math.nan))
    assert a.same_as(b) and not a.same_as(Feature("f", "fixed", "float32", (2,), (0.0,)))
    assert not a.same_as(Feature("f", "fixed", "float32", (2,)))  # default vs required
