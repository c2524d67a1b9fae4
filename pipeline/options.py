"""Command-line options of the batch prediction job (a PipelineOptions subclass).

Unknown flags are Beam's own (`--runner`, `--direct_num_workers`, `--project`, ...) and pass
through untouched.
"""
from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

DEFAULT_BATCH_SIZE = 8192  # from `python -m benchmarks --only batch` (benchmarks/RESULTS.md)
DEFAULT_MAX_ERROR_RATE = 0.01


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(text)
    return value


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    return _positive_int(text)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


class BatchPredictOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--model", required=True,
            help="SavedModel dir, or an export base dir of numeric timestamped versions (the "
                 "newest wins; temp-* dirs are ignored); local path or gs://")
        parser.add_argument(
            "--input", required=True,
            help="comma-separated file patterns (globs), local or gs://")
        parser.add_argument(
            "--output", required=True,
            help="output dir for predictions-*, errors-*, metrics/ and _SUCCESS")
        parser.add_argument(
            "--input_format", choices=["tfrecord", "csv"], default=None,
            help="input format; inferred from the extension when omitted (.tfrecord, "
                 ".tfrecord.gz, .gz -> tfrecord; .csv -> csv). gzip is detected from content")
        parser.add_argument(
            "--feature_spec", default=None,
            help="feature spec JSON file; by default the spec is read from the model's parse "
                 "op (or its input signature for raw-tensor signatures). A given spec is "
                 "checked against the model's")
        parser.add_argument(
            "--signature", default="serving_default", help="signature to call")
        parser.add_argument(
            "--key_field", default=None,
            help="feature/column copied into every prediction row to join on; without it rows "
                 "carry their source shard and record index")
        parser.add_argument(
            "--key_dtype", choices=["auto", "string", "int64", "float32"], default="auto",
            help="dtype of --key_field in tf.Examples: auto = the spec's dtype if the key is a "
                 "model feature, else read from the first record of the first input")
        parser.add_argument(
            "--batch_size", type=_batch_size, default=DEFAULT_BATCH_SIZE,
            help="maximum records per model call (and per element read); 'auto': start at "
                 f"{DEFAULT_BATCH_SIZE} and double (up to 32768) while the model's records/s "
                 "improves by a tenth or more, backing off on out-of-memory, per worker process")
        parser.add_argument(
            "--output_format", choices=["jsonl", "csv"], default="jsonl",
            help="format of predictions-* files")
        parser.add_argument(
            "--csv_list_separator", default="|",
            help="separator of values inside one CSV cell, for multi-valued features")
        parser.add_argument(
            "--max_error_rate", type=_rate, default=DEFAULT_MAX_ERROR_RATE,
            help="error rows / records above which the run fails (non-zero exit, no _SUCCESS); "
                 "1.0 disables the check")
        parser.add_argument(
            "--overwrite", action="store_true", default=False,
            help="replace the outputs of a previous run in --output (only once this run "
                 "finishes); without it a non-empty output dir is refused")
        parser.add_argument(
            "--model_cache_dir", default=None,
            help="local dir where gs:// models are staged on each worker (default: a dir "
                 "under the system temp dir)")
        parser.add_argument(
            "--concurrent_model_calls", type=_positive_int, default=1,
            help="model calls in flight at once per worker process, sharing its TensorFlow "
                 "thread pools. 2 can help compute-bound models (several dense layers of 2048 "
                 "on 2 cores: 1.02-1.11x end to end on an AMD EPYC host, 0.98-1.12x on an "
                 "Intel Xeon one); whether it does depends on the CPU and the run, so "
                 "measure. Light models, bound by reading and formatting, gain little or "
                 "lose (about even on the AMD host, 0.91-0.98x on the Intel one)")
        parser.add_argument(
            "--tf_intra_op_threads", type=int, default=0,
            help="TensorFlow intra-op threads per worker process (0 = TensorFlow's default, "
                 "one per core, also with local multi_processing workers or "
                 "--concurrent_model_calls)")
        parser.add_argument(
            "--tf_inter_op_threads", type=int, default=0,
            help="TensorFlow inter-op threads per worker process (0 = TensorFlow's default)")

    def input_patterns(self) -> list[str]:
        return [p.strip() for p in self.input.split(",") if p.strip()]
