"""Fuzzing the readers and parsers: no input raises; every record is scored or an error row.

Each generated file goes through the pipeline's own DoFns (read -> parse -> predict) in
process, the way a runner calls them, so hundreds of inputs take seconds, not minutes.
"""
import csv
import io
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.demo import demo_dtypes
from transforms.model import open_model
from transforms.parse import ParseWithSpecDoFn
from transforms.predict import PredictDoFn, PredictionBatch
from transforms.read import ReadFilesDoFn
from transforms.savedmodel import ModelConfig, SavedModelHandler
from transforms.errors import ERROR_TYPES

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def dofns(demo_model_base):
    model = open_model(demo_model_base)
    predict = PredictDoFn(SavedModelHandler(ModelConfig(
        path=model.version.path, signature="serving_default", spec=model.spec, key_field="id",
        keys_from_examples=True)), batch_size=16)
    predict.setup()
    predict_csv = PredictDoFn(SavedModelHandler(ModelConfig(
        path=model.version.path, signature="serving_default", spec=model.spec,
        key_field="id")), batch_size=16)
    predict_csv.setup()
    return {"spec": model.spec, "predict": predict, "predict_csv": predict_csv}


def score_file(path: str, fmt: str, dofns) -> tuple[int, int, list[dict]]:
    """(records read, records predicted, error rows) for one file."""
    reader = ReadFilesDoFn(fmt, batch_size=7)
    reader.setup()
    parse = ParseWithSpecDoFn(dofns["spec"], "id")
    parse.setup()
    predict = dofns["predict" if fmt == "tfrecord" else "predict_csv"]
    predict.start_bundle()
    errors, predicted, records = [], 0, None
    outputs = []
    for out in reader.process_file(path):
        outputs.append(out)
    staged = []
    parse.start_bundle()
    for out in outputs:
        if getattr(out, "tag", None) == "errors":
            errors.append(out.value)
        elif getattr(out, "tag", None) == "shard_stats":
            records = out.value[1]["records"]
        else:
            staged.extend(parse.process(out))
    staged.extend(parse.finish_bundle())
    scored = []
    for out in staged:
        value = getattr(out, "value", out)  # finish_bundle's outputs are windowed
        if getattr(out, "tag", None) == "errors":
            errors.append(getattr(value, "value", value))
        else:
            scored.extend(predict.process(value))
    scored.extend(wv.value if not hasattr(wv, "tag") else wv for wv in predict.finish_bundle())
    for out in scored:
        value = getattr(out, "value", out)
        if isinstance(out, PredictionBatch):
            predicted += len(out)
        elif getattr(out, "tag", None) == "errors":
            errors.append(value.value if hasattr(value, "windows") else value)
    for e in errors:
        assert e["error_type"] in ERROR_TYPES and e["message"]
    return records, predicted, errors


_cells = st.one_of(
    st.just(""), st.integers(-10**20, 10**20).map(str), st.floats(allow_nan=True).map(repr),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from(["de", "phone", "180.0", "1e3", " 7 ", "nan", "inf", "\"", ",", "\n"]))


@FUZZ
@given(rows=st.lists(st.lists(_cells, min_size=10, max_size=17), max_size=25),
       raw_tail=st.binary(max_size=40), bom=st.booleans(), crlf=st.booleans())
def test_csv_fuzz_every_row_accounted(dofns, rows, raw_tail, bom, crlf):
    header = list(demo_dtypes())
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n" if crlf else "\n").writerows([header] + rows)
    data = ("\ufeff" if bom else "").encode() + buf.getvalue().encode() + raw_tail
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=False) as fh:
        fh.write(data)
    try:
        records, predicted, errors = score_file(fh.name, "csv", dofns)
    finally:
        os.unlink(fh.name)
    assert records == predicted + len(errors)
    if not raw_tail:  # as many records as the csv module reads back (the writer leaves a
        # lone \r in a cell unquoted, which splits that row in two), none of them blank
        text = data.decode("utf-8-sig")
        assert records == sum(1 for row in csv.reader(io.StringIO(text, newline="")) if row) - 1


def _example(draw_values):
    import tensorflow as tf
    feats = {}
    for name, kind, values in draw_values:
        if kind == "float":
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
        elif kind == "int":
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


_names = st.sampled_from(list(demo_dtypes()) + ["extra"])
_feature = st.one_of(
    st.tuples(_names, st.just("float"), st.lists(st.floats(width=32), max_size=3)),
    st.tuples(_names, st.just("int"), st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)),
    st.tuples(_names, st.just("bytes"), st.lists(st.binary(max_size=8), max_size=3)))
_record = st.one_of(st.lists(_feature, max_size=16).map(_example), st.binary(max_size=60))


@FUZZ
@given(records=st.lists(_record, max_size=30), damage=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=2),
    cut=st.integers(0, 30))
def test_tfrecord_fuzz_every_record_accounted(dofns, records, damage, cut):
    import tensorflow as tf
    with tempfile.NamedTemporaryFile(suffix=".tfrecord", delete=False) as fh:
        name = fh.name
    with tf.io.TFRecordWriter(name) as w:
        for r in records:
            w.write(r)
    blob = bytearray(open(name, "rb").read())
    for pos, xor in damage:  # flip bits anywhere: headers, CRCs or payloads
        if blob:
            blob[pos % len(blob)] ^= xor
    if cut and blob:
        blob = blob[:-cut]
    open(name, "wb").write(bytes(blob))
    try:
        read, predicted, errors = score_file(name, "tfrecord", dofns)
    finally:
        os.unlink(name)
    assert read == predicted + len(errors)
    if not damage and not cut:
        assert read == len(records)


def test_csv_numbers_out_of_range_are_errors_not_infinities():
    from transforms.feature_spec import Feature
    from transforms.parse import convert_column
    col, errors = convert_column(["1.5", "1e300", "", "-3e38", "inf"],
                                 Feature("x", "fixed", "float32", ()))
    assert sorted(errors) == [1] and "float32 range" in str(errors[1])
    assert col.values[[0, 3]].tolist() == [1.5, float(__import__("numpy").float32(-3e38))]
    assert col.values[4] == float("inf")  # an explicit infinity is a float32 value
    assert col.present.tolist() == [True, True, False, True, True]
    col, errors = convert_column(["180.0", "7", "1e20", "2.5"],
                                 Feature("c", "fixed", "int64", ()))
    assert sorted(errors) == [2, 3] and col.values[:2].tolist() == [180, 7]
