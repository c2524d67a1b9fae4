"""The columnar JSON lines writer against json.loads, row by row (hypothesis)."""
import base64
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.formats.jsonl_output import to_jsonl
from transforms.predict import PredictionBatch

_key_values = st.one_of(
    st.lists(st.text(max_size=6), min_size=1, max_size=8),
    st.lists(st.binary(max_size=6), min_size=1, max_size=8),
    st.lists(st.text(alphabet="abcXYZ019-_", max_size=6), min_size=1, max_size=8))


def _expected(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return value


@settings(max_examples=200, deadline=None)
@given(keys=_key_values, seed=st.integers(0, 2**32 - 1))
def test_every_line_parses_back_to_the_row(keys, seed):
    n = len(keys)
    rng = np.random.default_rng(seed)
    outputs = {"score": rng.normal(size=n).astype(np.float32),
               "ids": rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64),
               "vec": rng.normal(size=(n, 3)).astype(np.float32),
               "label": np.array(list(reversed(keys)) + [None], dtype=object)[:-1]}
    batch = PredictionBatch(np.array(["s"] * n, dtype=object), np.arange(n),
                            np.array(keys + [None], dtype=object)[:-1], outputs)
    lines = to_jsonl(batch, "key").split(b"\n")
    assert len(lines) == n
    for i, line in enumerate(lines):
        row = json.loads(line)
        assert list(row) == ["key", "ids", "label", "score", "vec"]
        assert row["key"] == _expected(keys[i])
        assert row["label"] == _expected(keys[n - 1 - i])
        assert row["ids"] == int(outputs["ids"][i])  # int64 exact
        assert np.float32(row["score"]) == outputs["score"][i]  # float32 round-trips
        assert np.array_equal(np.float32(row["vec"]), outputs["vec"][i])
