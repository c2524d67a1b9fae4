"""Planning (validate everything up front) and building the pipeline graph from transforms.

    read -> parse -> predict -> write predictions / errors / metrics -> finalize

`plan_job` does all checks that can fail before a worker starts (inputs match, the model loads
and answers a warm-up call, the spec matches, the output dir is usable) and raises a
`transforms.errors.UserError` with an actionable message. `build_pipeline` only wires named steps.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions, WorkerOptions
from apache_beam.utils import shared

from pipeline.options import DEFAULT_BATCH_SIZE, BatchPredictOptions
from transforms import metrics as m
from transforms.bigquery import TableSink, bigquery_input, output_sink
from transforms.feature_spec import FeatureSpec
from transforms.parse import ParseWithSpecDoFn
from transforms.passthrough import PassthroughReader, passthrough_plan
from transforms.formats.json_columns import value_columns
from transforms.predict import PredictDoFn, key_output_plan, output_columns
from transforms import formats
from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES, ColumnType, InputFormat
from transforms.graph_models import parse_tensor_map
from transforms.optimize import read_optimization
from transforms.read import DEFAULT_SPLIT_BYTES, ReadRecordBatches, match_inputs, read_units
from transforms.records import Batch
from transforms.savedmodel import ModelConfig, SavedModelHandler
from transforms.staging import default_cache_dir
from transforms.errors import InputError, OutputError
from transforms.output_dir import RUN_ID
from transforms.sink import Sink
from transforms.worker import ModelHolder
from transforms.write import (FinalizeDoFn, WriteJsonLines, WriteMetricsDoFn, WritePredictions,
                              build_reports)

__all__ = ["JobPlan", "plan_job", "build_pipeline", "read_step", "predictions_step",
           "expected_files", "column_types"]

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class JobPlan:
    files: list[tuple[str, int]]
    input_format: str
    model: ModelConfig
    output_names: list[str]
    sink: Sink            # where the outputs go (transforms.sink)
    output_dir: str       # the sink's location
    staging_dir: str
    output_format: str
    batch_size: int
    overwrite: bool
    max_error_rate: float
    list_separator: str
    run_info: dict
    # the launcher's loaded model, registered in a Shared handle that PredictDoFn carries:
    # an in-process runner reuses it instead of loading a second copy
    shared_model: object = None
    model_holder: object = None
    auto_batch: bool = False  # --batch_size auto: PredictDoFn tunes the call size
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # --max_record_bytes: the readers' cap
    # this run's hold on the output dir (lock + staging dir), kept by the launcher until the
    # job ends; None for a Dataflow job that is only built
    claim: object = None
    split_bytes: int = DEFAULT_SPLIT_BYTES  # --split_bytes: the read ranges of large files
    reshuffle: bool = False  # a Reshuffle of record batches between reading and the model
    # what becomes of a model output named like the key (transforms.predict.key_output_plan)
    key_output: tuple | None = None
    # what is known of each row column before the first row (dtype, shape of one value), for
    # output formats that declare a schema (transforms.formats.base.ColumnType)
    column_types: dict = dataclasses.field(default_factory=dict)
    # --passthrough_fields: input fields copied into the rows (transforms.passthrough.FieldType)
    passthrough: tuple = ()
    # a BigQuery table or query read instead of files (transforms.bigquery.BigQuerySource)
    source: object = None

    @property
    def value_columns(self) -> list[str]:
        """The row columns after the key (or shard and index), in row order."""
        return value_columns([f.name for f in self.passthrough], self.output_names)

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()


def _key_dtype(opts, spec: FeatureSpec, input_format: InputFormat, first_file: str) -> str:
    if opts.key_field is None:
        return "string"
    if opts.key_dtype != "auto":
        return opts.key_dtype
    if opts.key_field in spec:
        return spec[opts.key_field].dtype
    return input_format.key_dtype(first_file, opts.key_field, opts.max_record_bytes)


def column_types(key_field: str | None, key_dtype: str, outputs, key_output: tuple | None
                 ) -> dict[str, ColumnType]:
    """{row column: ColumnType}: the key (or shard and index), then every output column as the
    rows hold it (`key_output`: a forwarded key's output is not a column of its own, a renamed
    one keeps its type under the new name). `outputs` are the signature's declared outputs
    (name, dtype, shape with the batch dimension first, or None for an unknown rank)."""
    if key_field is None:
        types = {"shard": ColumnType("string"), "index": ColumnType("int64")}
    else:
        types = {key_field: ColumnType(key_dtype)}
    for t in outputs:
        name = t.name
        if key_output is not None and name == key_output[1]:
            if key_output[0] == "same":
                continue
            name = key_output[2]
        shape = tuple(t.shape[1:]) if t.shape else None  # () or None: the rank is not known
        types[name] = ColumnType(t.dtype, shape)
    return types


def _passthrough(opts, spec: FeatureSpec, outputs: list[str], reader: InputFormat,
                 first_file: str) -> list:
    """The --passthrough_fields with their types (transforms.passthrough); InputError for a
    field the job cannot copy."""
    if not opts.passthrough_fields:
        return []
    names = [n.strip() for n in opts.passthrough_fields.split(",")]

    def source_type(name):
        return reader.field_type(first_file, name, opts.max_record_bytes)
    try:
        fields = passthrough_plan(names, spec, opts.key_field, outputs, source_type,
                                  reader.keys_in_examples)
    except ValueError as e:
        raise InputError(str(e) if "first input" not in str(e)
                         else f"{e} ({first_file})") from None
    _LOG.info("plan: rows also hold %s", ", ".join(
        f"{f.name} ({f.column.dtype}{' list' if f.column.shape not in ((), None) else ''})"
        for f in fields))
    return fields


def _local_worker_processes(opts: BatchPredictOptions) -> bool:
    """True when the DirectRunner runs the DoFns in local worker subprocesses."""
    direct = opts.view_as(DirectOptions)
    return (direct.direct_running_mode == "multi_processing"
            and (direct.direct_num_workers or 1) > 1)


def _hint_local_workers(opts: BatchPredictOptions) -> None:
    """Local worker processes each import TensorFlow and load the model; on a machine with no
    more cores than workers they compete with one process that already keeps every core busy,
    so they cost seconds of start-up per job and catch up only on large inputs (measured in
    benchmarks/RESULTS.md, "Multi-process")."""
    if not _local_worker_processes(opts):
        return
    workers = opts.view_as(DirectOptions).direct_num_workers
    cores = os.cpu_count() or 1
    if workers >= cores:
        _LOG.info("plan: %d local worker processes on %d cores: each imports TensorFlow and "
                  "loads the model before scoring (seconds per job), and one process already "
                  "uses every core; drop --direct_running_mode=multi_processing unless the "
                  "input is large",
                  workers, cores)


def _local(opts: BatchPredictOptions) -> bool:
    return opts.view_as(StandardOptions).runner in (None, "DirectRunner", "direct")


def worker_processes(opts: BatchPredictOptions) -> int:
    """How many worker processes the job may score in at once, as far as its options say:
    local multi_processing workers; Dataflow's (max) workers times the vCPUs of their machine
    type (one SDK process per vCPU; 1 when the type is not given or not of the form
    family-kind-N); 1 for an in-process local run."""
    if _local(opts):
        return opts.view_as(DirectOptions).direct_num_workers or 1 \
            if _local_worker_processes(opts) else 1
    worker = opts.view_as(WorkerOptions)
    workers = worker.max_num_workers or worker.num_workers or 1
    vcpus = (worker.machine_type or "").rsplit("-", 1)[-1]
    return workers * (int(vcpus) if vcpus.isdigit() else 1)


def split_bytes(opts: BatchPredictOptions) -> int:
    """--split_bytes, `auto` resolved: ranges only where more than one process reads."""
    if opts.split_bytes != "auto":
        return opts.split_bytes
    return DEFAULT_SPLIT_BYTES if worker_processes(opts) > 1 else 0


def reshuffle(opts: BatchPredictOptions, units: int) -> bool:
    """Whether record batches are redistributed before the model step: asked for, or (auto)
    on a distributed runner when the reads alone cannot keep every worker process busy. Never
    by default on the local runner: its Reshuffle holds the whole input in the launcher's
    memory, and the local worker processes share one machine's cores anyway (measured in
    benchmarks/RESULTS.md, "One large file")."""
    if opts.reshuffle_batches != "auto":
        return opts.reshuffle_batches == "on"
    return not _local(opts) and units < worker_processes(opts)


def plan_job(opts: BatchPredictOptions, run_id: str | None = None,
             claim: bool = True) -> JobPlan:
    """Validate everything, then (with `claim`) lock the output dir and create the staging dir:
    the last step, so a run refused for any other reason leaves nothing behind."""
    start = time.time()
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise OutputError(f"run id {run_id!r} is not of the form YYYYMMDDTHHMMSS-xxxxxxxx")
    source = bigquery_input(opts)  # a table or a query: rows, not files
    # the options' own consistency first (a table sink and a file format), then the inputs
    sink = output_sink(opts, source.table if source is not None else None)
    patterns = opts.input_patterns() if source is None else [source.location]
    if not patterns:
        raise InputError("--input is empty")
    files = match_inputs(patterns) if source is None else source.files()
    reader = source or (formats.input_format(opts.input_format) if opts.input_format
                        else formats.infer_input_format([f for f, _ in files]))
    input_format = reader.name
    _LOG.info("plan: %d input files (%s), %.1f MB", len(files), input_format,
              sum(s for _, s in files) / 1e6)
    sink.check(opts.overwrite, [f for f, _ in files])
    given = FeatureSpec.load(opts.feature_spec) if opts.feature_spec else None
    # TensorFlow's own pools unless told otherwise: splitting the cores between local worker
    # processes or concurrent calls (1 intra-op thread each on 2 cores) measured 1.35-1.45x on
    # an AMD EPYC host and 0.65-0.75x on an Intel Xeon one (benchmarks/RESULTS.md, 2026-12-01).
    # Set before the first model load (the handler's load does): an in-process runner scores
    # with this process's runtime. A frozen graph's tensors were checked by the options' type.
    model_inputs, model_outputs = (parse_tensor_map(text) if text else None
                                   for text in (opts.model_inputs, opts.model_outputs))
    asked = SavedModelHandler(ModelConfig(
        path=opts.model, signature=opts.signature, spec=given, cache_dir=opts.model_cache_dir,
        model_inputs=model_inputs, model_outputs=model_outputs,
        intra_op_threads=opts.tf_intra_op_threads, inter_op_threads=opts.tf_inter_op_threads))
    loaded = asked.load()
    asked.warm_up(loaded)
    model = asked.describe(loaded)
    _LOG.info("plan: model %s (%s), signature %s (%s), spec from %s: %d features",
              model.path, model.kind, opts.signature, model.convention, model.spec_source,
              len(model.spec))
    max_record_bytes = opts.max_record_bytes
    # the format's start-up check of the first file (CSV: its header against the spec and key)
    reader.check_first_shard(files[0][0], model.spec, opts.key_field, max_record_bytes)
    key_dtype = _key_dtype(opts, model.spec, reader, files[0][0])
    # a model output named like the key: one column when the model forwards the key as it
    # is (the Estimator forward_features pattern), else the model's output under KEY_output
    forwarded = (opts.key_field in model.output_names
                 and asked.forwards_key(loaded, opts.key_field))
    key_output = key_output_plan(opts.key_field, list(model.output_names), forwarded)
    if key_output is not None:
        _LOG.info("plan: the model has an output named like --key_field %r: %s",
                  opts.key_field, "it forwards the key unchanged, so rows hold it once"
                  if forwarded else f"rows hold the key, and that output as {key_output[2]!r}")
    clash = sorted({"shard", "index"} & set(model.output_names))
    if opts.key_field is None and clash:
        raise InputError(f"the model has outputs named {clash}, which rows without a key use "
                         "for their source; pass --key_field to identify rows instead")
    # the key column as the rows hold it: the dtype it is read as from a tf.Example, else the
    # input format's column (CSV: text, whatever the spec says of the feature)
    key_type = (key_dtype if reader.keys_in_examples or opts.key_field is None
                else reader.key_dtype(files[0][0], opts.key_field, max_record_bytes))
    # the handler's description names the outputs; a SavedModel's signature also declares
    # their dtypes and shapes
    declared = getattr(getattr(loaded, "info", None), "outputs", ())
    types = column_types(opts.key_field, key_type, declared, key_output)
    outputs = output_columns(list(model.output_names), key_output)
    passthrough = _passthrough(opts, model.spec, outputs, reader, files[0][0])
    types.update({f.name: f.column for f in passthrough})
    # an output the format cannot hold (a complex number in Parquet) is refused here, before
    # the output dir is claimed: its file of no rows is what the format's writer checks first
    formats.output_format(opts.output_format).empty_file(
        opts.key_field, value_columns([f.name for f in passthrough], outputs), types)
    if isinstance(sink, TableSink):  # the table's schema, from the signature
        sink.describe_rows(opts.key_field, value_columns([f.name for f in passthrough], outputs),
                           types)
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime(start)) + "-" + \
        uuid.uuid4().hex[:8]
    _hint_local_workers(opts)
    split = split_bytes(opts)
    units = read_units(files, reader, split)
    spread = reshuffle(opts, units)
    _LOG.info("plan: %d independent reads (%s); %s", units,
              f"files, and ranges of {split} bytes of larger plain ones" if split
              else "one per file", "record batches are reshuffled before the model"
              if spread else "the model step runs where each read does")
    config = ModelConfig(
        path=model.path, signature=opts.signature, spec=model.spec,
        model_inputs=model_inputs, model_outputs=model_outputs,
        key_field=opts.key_field, key_dtype=key_dtype,
        keys_from_examples=opts.key_field is not None and reader.keys_in_examples,
        cache_dir=opts.model_cache_dir or default_cache_dir(),
        intra_op_threads=opts.tf_intra_op_threads, inter_op_threads=opts.tf_inter_op_threads,
        concurrent_calls=opts.concurrent_model_calls,
        fast_worker_exit=_local_worker_processes(opts), launcher_pid=os.getpid())
    run_info = {
        "run_id": run_id, "start_time": start,
        "model": opts.model, "model_path": model.path,
        "model_version": model.version, "model_kind": model.kind,
        # the optimize command's record (passes, quantization, measured deviation), if it
        # wrote this model
        "model_optimized": read_optimization(loaded.local_dir),
        "signature": opts.signature,
        "signature_convention": model.convention,
        "feature_spec_source": model.spec_source, "feature_spec": model.spec.to_json(),
        "input_format": input_format, "input_files": len(files),
        "input_bytes": sum(s for _, s in files), "batch_size": opts.batch_size,
        "split_bytes": split, "reshuffle_batches": spread,
        "output_format": opts.output_format, "key_field": opts.key_field,
        "passthrough_fields": [f.name for f in passthrough],
        "output_table": opts.output_table,
    }
    auto_batch = opts.batch_size == "auto"
    shared_model = shared.Shared()
    holder = shared_model.acquire(lambda: ModelHolder(loaded),
                                  tag=SavedModelHandler(config).shared_tag())
    held = None
    if claim:
        held = sink.claim(run_id)
        try:  # another run may have finished there while this one loaded its model
            sink.check(opts.overwrite, [f for f, _ in files])
        except OutputError:
            held.release()
            raise
    return JobPlan(files=files, input_format=input_format, model=config,
                   output_names=outputs, passthrough=tuple(passthrough), source=source,
                   key_output=key_output, sink=sink, output_dir=sink.location,
                   staging_dir=sink.staging_location(run_id), claim=held,
                   output_format=opts.output_format,
                   batch_size=DEFAULT_BATCH_SIZE if auto_batch else opts.batch_size,
                   auto_batch=auto_batch, overwrite=opts.overwrite,
                   max_error_rate=opts.max_error_rate, list_separator=opts.csv_list_separator,
                   run_info=run_info, shared_model=shared_model, model_holder=holder,
                   max_record_bytes=max_record_bytes, split_bytes=split,
                   reshuffle=spread, column_types=types)


def build_pipeline(p: beam.Pipeline, plan: JobPlan, clock=None,
                   predict_dofn: type[PredictDoFn] = PredictDoFn) -> None:
    """Wire the job; `clock` and `predict_dofn` are injection points for tests."""
    staging = plan.staging_dir
    key = plan.model.key_field
    csv_columns = list(plan.model.spec) + ([key] if key and key not in plan.model.spec else [])
    csv_columns += [f.name for f in plan.passthrough if f.name not in csv_columns]
    read = p | "Read" >> read_step(plan, csv_columns)
    batches = read.batches
    if plan.reshuffle:  # model compute on every worker, however few the reads
        batches = batches | "SpreadBatches" >> beam.Reshuffle()
    parsed = batches | "ParseWithSpec" >> beam.ParDo(
        ParseWithSpecDoFn(plan.model.spec, plan.model.key_field, plan.list_separator,
                          PassthroughReader(plan.passthrough) if plan.passthrough else None,
                          key_dtype=_key_column_dtype(plan))
    ).with_output_types(Batch).with_outputs("errors", main="records")
    predict_kwargs = {"shared_handle": plan.shared_model,
                      "concurrent_calls": plan.model.concurrent_calls}
    if plan.model.fast_worker_exit:
        predict_kwargs["launcher_pid"] = plan.model.launcher_pid
    if plan.auto_batch:
        predict_kwargs["auto_batch"] = True
    if plan.key_output is not None:
        predict_kwargs["key_output"] = plan.key_output
    if clock is not None:
        predict_kwargs["clock"] = clock
    scored = parsed.records | "Predict" >> beam.ParDo(
        predict_dofn(SavedModelHandler(plan.model), plan.batch_size, **predict_kwargs)
    ).with_output_types(Batch).with_outputs("errors", "latency", "model_loads", main="predictions")

    written = []
    written.append(scored.predictions | "WritePredictions" >> predictions_step(plan))
    errors = ((read.errors, parsed.errors, scored.errors)
              | "AllErrors" >> beam.Flatten())
    written.append(errors | "WriteErrors" >> WriteJsonLines(staging, "errors"))

    events = ((read.shard_stats | "StatsEvents" >> beam.FlatMap(m.stats_events)),
              (scored.latency | "CallEvents" >> beam.Map(m.call_event)),
              (scored.predictions | "PredictedEvents" >> beam.FlatMap(m.predicted_events)),
              (errors | "ErrorEvents" >> beam.FlatMap(m.error_events)))
    shard_rows = (events
                  | "AllEvents" >> beam.Flatten()
                  | "ShardMetrics" >> beam.CombineGlobally(m.JobMetricsFn()).without_defaults())
    summary = shard_rows | "Summarize" >> beam.Map(build_reports, plan.run_info,
                                                   plan.max_error_rate)
    written.append(summary | "WriteMetrics" >> beam.ParDo(
        WriteMetricsDoFn(staging), beam.pvalue.AsSingleton(shard_rows),
        beam.pvalue.AsList(scored.model_loads)))
    side = [beam.pvalue.AsList(w) for w in written]
    _ = summary | "Finalize" >> beam.ParDo(
        FinalizeDoFn(plan.sink, plan.run_info["run_id"], plan.overwrite, expected_files(plan)),
        *side)


def _key_column_dtype(plan: JobPlan) -> str | None:
    """The key column's dtype in the rows, which typed inputs' keys must fit when the output
    holds the key in a typed column (Parquet, tf.Example, a table); JSON and CSV text hold
    each key as its record has it (None)."""
    key = plan.model.key_field
    if key is None or (plan.output_format in ("jsonl", "csv")
                       and not isinstance(plan.sink, TableSink)):
        return None
    column = plan.column_types.get(key)
    return column.dtype if column is not None else None


def read_step(plan: JobPlan, columns: list[str]) -> beam.PTransform:
    """The plan's read: its files in record batches, or a BigQuery table or query in typed
    batches; either way batches, error rows and shard stats."""
    if plan.source is not None:
        return plan.source.read_step(plan.batch_size, columns)
    return ReadRecordBatches([f for f, _ in plan.files], plan.input_format, plan.batch_size,
                             columns=columns, max_record_bytes=plan.max_record_bytes,
                             split_bytes=plan.split_bytes, sizes=[s for _, s in plan.files])


def predictions_step(plan: JobPlan) -> beam.PTransform:
    """The plan's predictions writer: staged files in the output format, or rows loaded into
    the table sink's staging table; either way what Finalize waits for."""
    if isinstance(plan.sink, TableSink):
        return plan.sink.write_rows(plan.model.key_field, plan.run_info["run_id"])
    return WritePredictions(plan.staging_dir, plan.output_format, plan.model.key_field,
                            plan.value_columns, plan.column_types)


def expected_files(plan: JobPlan) -> dict[str, tuple[str, bytes]]:
    """The file families every run has: {family: (suffix, the content of its file when no
    row was written to it)}: a header line, a Parquet file with the schema and no row, or
    nothing at all. With a table sink the predictions are rows of the table, not files."""
    if isinstance(plan.sink, TableSink):
        return {"errors": (".jsonl", b"")}
    out = formats.output_format(plan.output_format)
    return {"predictions": (out.suffix, out.empty_file(plan.model.key_field, plan.value_columns,
                                                       plan.column_types)),
            "errors": (".jsonl", b"")}
