"""The numpy tf.Example encoder against TensorFlow's own protobuf serialisation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.examples import FeatureColumn, encode_examples

_VALUES = {
    "float32": st.floats(width=32, allow_nan=False),
    "int64": st.integers(-2**63, 2**63 - 1),
    "string": st.binary(max_size=300),
}


@st.composite
def columns(draw):
    n = draw(st.integers(1, 12))
    cols = []
    for j in range(draw(st.integers(0, 5))):
        dtype = draw(st.sampled_from(sorted(_VALUES)))
        fixed = draw(st.integers(0, 3)) if draw(st.booleans()) else None
        rows, present = [], []
        for _ in range(n):
            present.append(draw(st.booleans()) or fixed is not None and draw(st.booleans()))
            size = fixed if fixed is not None else draw(st.integers(0, 4))
            rows.append(draw(st.lists(_VALUES[dtype], min_size=size, max_size=size)))
        m = max([len(r) for r in rows] + [1])
        fill = b"" if dtype == "string" else 0
        values = np.array([r + [fill] * (m - len(r)) for r in rows],
                          dtype={"float32": np.float32, "int64": np.int64,
                                 "string": object}[dtype]).reshape(n, m)
        name = draw(st.sampled_from(["a", "feature_" + "x" * 130, "ü", f"f{j}"]))
        if any(c.name == name for c in cols):
            continue
        cols.append(FeatureColumn(name, dtype, values, np.array([len(r) for r in rows]),
                                  np.array(present)))
    return cols, n


def _reference(cols, n):
    """What TensorFlow's tf.train.Example would hold for the same columns."""
    import tensorflow as tf
    out = []
    for i in range(n):
        feats = {}
        for c in cols:
            if not c.present[i]:
                continue
            vals = c.values[i, :c.sizes[i]].tolist()
            kind = {"float32": "float_list", "int64": "int64_list", "string": "bytes_list"}
            cls = {"float32": tf.train.FloatList, "int64": tf.train.Int64List,
                   "string": tf.train.BytesList}[c.dtype]
            feats[c.name] = tf.train.Feature(**{kind[c.dtype]: cls(value=vals)})
        out.append(tf.train.Example(features=tf.train.Features(feature=feats)))
    return out


@settings(max_examples=150, deadline=None)
@given(columns())
def test_encoding_parses_to_the_same_example_as_tensorflows(data):
    import tensorflow as tf
    cols, n = data
    encoded = encode_examples(cols, n)
    assert len(encoded) == n
    for got, want in zip(encoded, _reference(cols, n)):
        assert tf.train.Example.FromString(got) == want


def test_long_and_short_strings_together():
    """Rows are not padded to the longest value: a 5 MB string beside short ones is fine."""
    import tensorflow as tf
    values = np.array([[b"x" * (5 << 20), b"a"], [b"short", b""], [b"", b""]], dtype=object)
    cols = [FeatureColumn("s", "string", values, np.array([2, 1, 0]),
                          np.array([True, True, False])),
            FeatureColumn("f", "float32", np.array([[1.5], [2.5], [0.0]], np.float32),
                          np.array([1, 1, 0]), np.array([True, True, False]))]
    got = [tf.train.Example.FromString(e) for e in encode_examples(cols, 3)]
    assert got == _reference(cols, 3)


def test_parse_example_reads_the_encoding():
    """The encoded bytes feed tf.io.parse_example exactly like TensorFlow's own protos."""
    import tensorflow as tf
    cols = [FeatureColumn("x", "float32", np.array([[1.5, 2.0], [3.0, 0.0]], np.float32),
                          np.array([2, 1]), np.array([True, True])),
            FeatureColumn("id", "int64", np.array([[-5], [300]]), np.array([1, 1]),
                          np.array([True, False]))]
    parsed = tf.io.parse_example(encode_examples(cols, 2), {
        "x": tf.io.VarLenFeature(tf.float32),
        "id": tf.io.FixedLenFeature([], tf.int64, default_value=7)})
    assert tf.sparse.to_dense(parsed["x"]).numpy().tolist() == [[1.5, 2.0], [3.0, 0.0]]
    assert parsed["id"].numpy().tolist() == [-5, 7]


@pytest.mark.parametrize("n", [0, 1])
def test_degenerate_sizes(n):
    assert len(encode_examples([], n)) == n


@settings(max_examples=100, deadline=None)
@given(columns())
def test_key_parser_takes_each_records_first_key_value(data):
    """The SavedModel handler's key reader (TFRecord input, --key_field) against the protos
    themselves: the first value of the key feature, or no key when it is absent or empty."""
    from transforms.savedmodel import ModelConfig, SavedModelHandler
    cols, n = data
    if not cols:
        return
    key = cols[0]
    handler = SavedModelHandler(ModelConfig(path="unused", signature="serving_default",
                                            spec=None, key_field=key.name, key_dtype=key.dtype,
                                            keys_from_examples=True))
    keys, has_key = handler.key_reader().read(np.array(encode_examples(cols, n), dtype=object))
    for i, example in enumerate(_reference(cols, n)):
        feature = example.features.feature.get(key.name)
        values = [] if feature is None else \
            list(getattr(feature, feature.WhichOneof("kind") or "bytes_list").value)
        assert bool(has_key[i]) == bool(values)
        if values:
            want = values[0]
            assert keys[i] == (np.float32(want) if key.dtype == "float32" else want)
