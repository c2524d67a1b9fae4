"""(c) The honest peer: Beam `RunInference` with a TensorFlow model handler, one example per
element, on the same runner (the in-process FnApiRunner that DirectRunner falls back to).

Beam's own `TFModelHandlerTensor`/`TFModelHandlerNumpy` load the model with Keras'
`load_model`, which Keras 3 (TF 2.21) refuses for a plain SavedModel, and they only feed one
stacked tensor. So this is a small `ModelHandler` written the way a user would write it for
TF 2.21, giving the peer its best shot:

  TFRecord: `ReadFromTFRecord` (one serialized tf.Example per element, gzip by extension) ->
            `RunInference(SavedModelExampleHandler)`: per batch, one `serving_default` call on
            the stacked serialized examples, and the key parsed from the same batch with one
            `tf.io.parse_example` (no per-element proto parsing in Python);
  CSV:      `ReadFromText(skip_header_lines=1)` (one line per element) -> per batch,
            `tf.io.decode_csv` + the raw-tensor signature `predict_raw`;
  then one output row per element (`PredictionResult` -> JSON line or CSV line) ->
  `WriteToText`. Batching: Beam's `BatchElements` with max_batch_size 4096 (the same as TF
  alone); `get_num_bytes` is cheap (sum of lengths) instead of the default pickling.
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402

from apache_beam.ml.inference.base import ModelHandler, PredictionResult  # noqa: E402

__all__ = ["SavedModelExampleHandler", "build", "main"]

_FIRST = {"t": None, "n": 0, "lock": threading.Lock()}  # the first model call on real data


class SavedModelExampleHandler(ModelHandler):
    """Batches of serialized tf.Examples (or CSV lines) -> one PredictionResult per element,
    whose inference is {"key": ..., output name: value}."""

    def __init__(self, model_dir: str, input_format: str, key_field: str = "id",
                 csv_header: list[str] | None = None, max_batch_size: int = 4096):
        from benchmarks.data import resolve_model
        super().__init__(max_batch_size=max_batch_size)
        self._model_dir = resolve_model(model_dir)
        self._format = input_format
        self._key = key_field
        self._header = csv_header

    def load_model(self):
        import tensorflow as tf
        return tf.saved_model.load(self._model_dir)

    def get_num_bytes(self, batch) -> int:
        return sum(len(x) for x in batch)

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf
        x = tf.constant(batch)
        if self._format == "csv":
            if not hasattr(self, "_defaults"):
                from benchmarks.data import csv_column_defaults
                self._defaults = csv_column_defaults(self._header)
            cols = dict(zip(self._header, tf.io.decode_csv(x, self._defaults)))
            keys = cols.pop(self._key).numpy()
            out = model.signatures["predict_raw"](**cols)
        else:
            out = model.signatures["serving_default"](examples=x)
            keys = tf.io.parse_example(
                x, {self._key: tf.io.FixedLenFeature([], tf.string)})[self._key].numpy()
        out = {k: v.numpy() for k, v in out.items()}
        if _FIRST["t"] is None:
            with _FIRST["lock"]:
                if _FIRST["t"] is None:
                    _FIRST["t"], _FIRST["n"] = time.time(), len(batch)
        names = sorted(out)
        columns = [out[n] for n in names]
        return [PredictionResult(example, dict(zip(["key"] + names, values)))
                for example, *values in zip(batch, keys, *columns)]


def _py(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


def to_jsonl(result: PredictionResult) -> str:
    return json.dumps({k: _py(v) for k, v in result.inference.items()})


def to_csv(result: PredictionResult) -> str:
    cells = []
    for v in result.inference.values():
        v = _py(v)
        cells.append(json.dumps(v) if isinstance(v, list) else str(v))
    return ",".join(cells)


def build(p, model_dir: str, pattern: str, input_format: str, output: str, output_format: str,
          key_field: str, max_batch_size: int):
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    header = None
    if input_format == "csv":
        import glob
        with open(sorted(glob.glob(pattern))[0]) as fh:
            header = fh.readline().strip().split(",")
        records = p | "Read" >> beam.io.ReadFromText(pattern, skip_header_lines=1)
    else:
        records = p | "Read" >> beam.io.ReadFromTFRecord(pattern)
    handler = SavedModelExampleHandler(model_dir, input_format, key_field, header,
                                       max_batch_size)
    fmt = to_csv if output_format == "csv" else to_jsonl
    return (records
            | "RunInference" >> RunInference(handler)
            | "Format" >> beam.Map(fmt)
            | "Write" >> beam.io.WriteToText(os.path.join(output, "predictions"),
                                             file_name_suffix="." + output_format))


def main(argv=None) -> int:
    from benchmarks.common import child_args, cpu_seconds, write_result
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runinference")
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--input_format", choices=["tfrecord", "csv"], required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--output_format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--key_field", default="id")
    parser.add_argument("--max_batch_size", type=int, default=4096)
    args = child_args(parser, argv)
    spawned = args.spawned or T_START
    t = time.time()
    import tensorflow  # noqa: F401
    tf_import = time.time() - t
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    cpu0 = cpu_seconds()
    t_run = time.time()
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build(p, args.model, args.input, args.input_format, args.output, args.output_format,
          args.key_field, args.max_batch_size)
    p.run().wait_until_finish()
    t_end = time.time()
    cpu = cpu_seconds() - cpu0
    records = 0
    for name in os.listdir(args.output):
        if name.startswith("predictions"):
            with open(os.path.join(args.output, name), "rb") as fh:
                records += sum(1 for _ in fh)
    run_s = t_end - t_run
    out = {"kind": "runinference", "records": records, "run_s": round(run_s, 3),
           "cpu_s": round(cpu, 3), "cpu_us_per_record": cpu / records * 1e6 if records else None,
           "tf_import_s": round(tf_import, 3),
           "e2e_eps": records / run_s if run_s else None}
    if _FIRST["t"] is not None:
        out["first_pred_s"] = round(_FIRST["t"] - spawned, 3)
        out["steady_eps"] = (records - _FIRST["n"]) / (t_end - _FIRST["t"])
    write_result(args.result, out)
    return 0


if __name__ == "__main__":
    # run the importable module's main, not this __main__ copy: dill pickles __main__ classes
    # by value, and the handler's copy would not share _FIRST with this process
    from benchmarks.runinference import main as module_main
    raise SystemExit(module_main())
