"""Test helpers: run the real pipeline on the local runner and read what it wrote."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from pipeline.run import read_summary, run


def run_job(model: str, inputs: str, output: str, *extra: str, **inject) -> dict:
    """Run the pipeline in-process (FnApiRunner); returns the summary it wrote."""
    run(["--model", model, "--input", inputs, "--output", output, *extra], **inject)
    return read_summary(output)


def read_jsonl(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as fh:
            rows += [json.loads(line) for line in fh if line.strip()]
    return rows


def predictions(output: str, ext: str = "jsonl") -> list[dict]:
    return read_jsonl(os.path.join(output, f"predictions-*.{ext}"))


def errors(output: str) -> list[dict]:
    return read_jsonl(os.path.join(output, "errors-*.jsonl"))


def expected_outputs(loaded_model, rows: list[dict], signature: str = "serving_default"):
    """Call the SavedModel directly on tf.Examples serialized with TensorFlow's own protos."""
    import tensorflow as tf
    examples = []
    for row in rows:
        feats = {}
        for name, v in row.items():
            if v is None:
                continue
            vals = v if isinstance(v, list) else [v]
            if isinstance(vals[0], str):
                feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[x.encode() for x in vals]))
            elif isinstance(vals[0], int):
                feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
            else:
                feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
        examples.append(tf.train.Example(features=tf.train.Features(feature=feats))
                        .SerializeToString())
    fn = loaded_model.signatures[signature]
    arg = list(fn.structured_input_signature[1])[0]
    out = fn(**{arg: tf.constant(examples)})
    return {k: v.numpy() for k, v in out.items()}


def by_key(rows: list[dict], key: str = "id") -> dict:
    return {r[key]: r for r in rows}


def assert_close(actual, expected, rtol=1e-5):
    """float32 model outputs vary in the last bits with the batch size (oneDNN kernels)."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=rtol, atol=1e-6)


def one_error_line(stderr: str, *words: str) -> str:
    """The one `error: ` line of a refused command (no traceback), holding every word."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
