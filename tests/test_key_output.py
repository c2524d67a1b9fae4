"""--key_field naming a field the model also outputs (the Estimator `forward_features` pattern).

The rows then hold one `id` column when the model forwards the key unchanged (checked at
start-up on synthetic records, and again on every record: where the output differs, the
record is a key_mismatch error row), and otherwise the key as `id` beside the model's own
output as `id_output`. The models are built here; the expected rows are computed here from the
inputs (the key, 2 * x, the upper-cased key), not by the pipeline.
"""
import csv
import os

import numpy as np
import pytest

from tests.helpers import errors, predictions, run_job

IDS = [f"r{i}" for i in range(12)] + ["evil", "\u00fcber"]


def _build(export_dir: str, key: str, dtype: str, forward) -> str:
    import tensorflow as tf
    tf_dtype = {"string": tf.string, "int64": tf.int64}[dtype]
    spec = {key: tf.io.FixedLenFeature([], tf_dtype), "x": tf.io.FixedLenFeature([], tf.float32)}

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve(self, examples):
            f = tf.io.parse_example(examples, spec)
            return {key: forward(f[key]), "score": f["x"] * 2.0}

    m = M()
    tf.saved_model.save(m, export_dir, signatures={"serving_default": m.serve})
    return export_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import tensorflow as tf
    root = tmp_path_factory.mktemp("key_models")
    return {
        "forward": _build(str(root / "forward"), "id", "string", tf.identity),
        "upper": _build(str(root / "upper"), "id", "string", tf.strings.upper),
        # forwards the key, except one value: a model that rewrites some keys
        "almost": _build(str(root / "almost"), "id", "string",
                         lambda k: tf.where(tf.equal(k, "evil"), tf.constant("EVIL"), k)),
        "int_forward": _build(str(root / "int_forward"), "uid", "int64", tf.identity),
    }


def _inputs(root, key="id", ids=IDS):
    """The same rows as TFRecord and CSV; x = position."""
    import tensorflow as tf
    rows = [(k, float(i)) for i, k in enumerate(ids)]
    tfr = str(root / "in.tfrecord")
    with tf.io.TFRecordWriter(tfr) as w:
        for k, x in rows:
            feat = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
            feat[key] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[k]))
                         if isinstance(k, int) else
                         tf.train.Feature(bytes_list=tf.train.BytesList(value=[k.encode()])))
            w.write(tf.train.Example(features=tf.train.Features(feature=feat))
                    .SerializeToString())
    csv_path = str(root / "in.csv")
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([key, "x"])
        w.writerows(rows)
    return {"tfrecord": tfr, "csv": csv_path}


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_a_forwarded_key_is_one_column(fmt, models, tmp_path):
    out = str(tmp_path / "out")
    run_job(models["forward"], _inputs(tmp_path)[fmt], out, "--key_field", "id")
    rows = predictions(out)
    assert sorted(r["id"] for r in rows) == sorted(IDS)
    assert all(set(r) == {"id", "score"} for r in rows)
    for r in rows:
        assert r["score"] == pytest.approx(2.0 * IDS.index(r["id"]))
    assert errors(out) == []


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_a_key_the_model_changes_keeps_both_columns(fmt, models, tmp_path):
    out = str(tmp_path / "out")
    run_job(models["upper"], _inputs(tmp_path)[fmt], out, "--key_field", "id",
            "--output_format", "csv")
    with open(os.path.join(out, "predictions-00000-of-00001.csv"), newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "id_output", "score"]
    got = {r[0]: (r[1], float(r[2])) for r in table[1:]}
    ascii_upper = "".join(map(chr, range(97, 123))), "".join(map(chr, range(65, 91)))
    upper = str.maketrans(*ascii_upper)  # tf.strings.upper changes ASCII letters only
    assert got == {k: (k.translate(upper), 2.0 * i) for i, k in enumerate(IDS)}


def test_a_forwarded_key_that_differs_for_a_record_is_an_error_row(models, tmp_path):
    out = str(tmp_path / "out")
    summary = run_job(models["almost"], _inputs(tmp_path)["tfrecord"], out, "--key_field", "id",
                      "--max_error_rate", "1")
    rows = predictions(out)
    assert sorted(r["id"] for r in rows) == sorted(k for k in IDS if k != "evil")
    assert all(set(r) == {"id", "score"} for r in rows)
    [err] = errors(out)
    assert (err["index"], err["error_type"]) == (IDS.index("evil"), "key_mismatch")
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == \
        (len(IDS), len(IDS) - 1, 1)


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_an_int64_key_forwarded_from_text_or_examples(fmt, models, tmp_path):
    """CSV keys are text ("12"), the model forwards int64 12: the same key."""
    ids = [12, -5, 2 ** 40, 0]
    out = str(tmp_path / "out")
    run_job(models["int_forward"], _inputs(tmp_path, "uid", ids)[fmt], out, "--key_field",
            "uid")
    rows = predictions(out)
    assert sorted(int(r["uid"]) for r in rows) == sorted(ids)
    assert all(set(r) == {"uid", "score"} for r in rows) and errors(out) == []


def test_key_output_names_never_clash():
    from transforms.predict import key_output_plan, output_columns
    names = ["id", "id_output", "score"]
    plan = key_output_plan("id", names, forwarded=False)
    assert plan == ("rename", "id", "id__output")
    assert output_columns(names, plan) == ["id__output", "id_output", "score"]
    assert output_columns(names, key_output_plan("id", names, forwarded=True)) == \
        ["id_output", "score"]
    assert key_output_plan("key", names, forwarded=False) is None
    assert np.array_equal(output_columns(names, None), names)
