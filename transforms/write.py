"""Writing predictions, error rows and metrics, and finalizing the output dir atomically.

Everything is first written under a staging dir `OUTPUT/.tmp-RUN_ID/`, one file per bundle
(`WritePredictionFilesDoFn` in the output format, `WriteStagedFilesDoFn` for lines of text,
each fused with the steps before it). The last step, `Finalize`, runs once all writes are done
(their file lists are its side inputs) and hands them to the sink (`transforms.sink`; for files
`transforms.output_dir.commit`), which replaces a previous run's outputs (only this tool's own
names), renames the staged files into place, then writes manifest.json and, if the error budget
holds, `_SUCCESS`. A run that dies before that leaves only its `.tmp-*` dir, which nothing
mistakes for output and the next successful run removes.

Final layout:
    predictions-SSSSS-of-NNNNN.SUFFIX            errors-SSSSS-of-NNNNN.jsonl
    (SUFFIX: the output format's, e.g. jsonl, csv, parquet, tfrecord, tfrecord.gz)
    metrics/shard_latency-SSSSS-of-NNNNN.jsonl  metrics/model_loads-SSSSS-of-NNNNN.jsonl
    metrics/summary.json  metrics/errors_by_type.json  metrics/run_profile.json
    report.html  manifest.json  _SUCCESS

report.html (`transforms.report`) is rendered at finalize from the staged metrics and error
files, before anything is moved, so it is one of the run's outputs like any other.
"""
from __future__ import annotations

import logging
import re
import time
import uuid

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms import formats
from transforms.formats.base import ColumnType
from transforms.metrics import ALL, empty_profile, percentiles_ms
from transforms.report import REPORT, staged_report
from transforms.sink import Sink

__all__ = ["WriteStagedFilesDoFn", "WritePredictionFilesDoFn", "WritePredictions",
           "WriteJsonLines", "final_names", "WriteMetricsDoFn", "build_reports",
           "errors_by_type_report", "model_load_stats", "build_manifest", "FinalizeDoFn"]

_LOG = logging.getLogger(__name__)


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _dumps_line(row) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)


_STAGED_NAME = re.compile(r"^(?P<family>.+)-[0-9a-f]{32}(?P<suffix>\.[^/]+)$")


class WriteStagedFilesDoFn(beam.DoFn):
    """Blocks of text lines -> one staged file per bundle, `FAMILY-<uuid>.SUFFIX` under the
    staging dir; emits the file's path when the bundle ends.

    The whole sink is this one step, fused with the steps before it: no shuffle, no Beam
    temp-dir-and-rename (the Finalize step numbers the files and moves them into place).
    A retried bundle writes a new file; only the paths of bundles that committed reach
    Finalize, so a failed attempt's file stays in staging and is deleted with it.
    """

    def __init__(self, staging: str, family: str, suffix: str, header: bytes | None = None):
        self._staging = staging
        self._family = family
        self._suffix = suffix
        self._header = header

    def start_bundle(self):
        self._fh = None
        self._path = None

    def process(self, block: bytes):
        if not block:
            return
        if self._fh is None:
            self._path = _join(self._staging, f"{self._family}-{uuid.uuid4().hex}{self._suffix}")
            self._fh = FileSystems.create(self._path,
                                          compression_type=CompressionTypes.UNCOMPRESSED)
            if self._header is not None:
                self._fh.write(self._header + b"\n")
        self._fh.write(block)
        self._fh.write(b"\n")

    def finish_bundle(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            yield GlobalWindows.windowed_value(self._path)


class WritePredictionFilesDoFn(beam.DoFn):
    """Prediction batches -> one staged file per bundle in an output format,
    `predictions-<uuid>.SUFFIX` under the staging dir, written through the format's
    `open_writer`; emits the file's path when the bundle ends. What `WriteStagedFilesDoFn`
    guarantees holds here too: a retried bundle writes a new file, and only the paths of
    bundles that committed reach Finalize."""

    def __init__(self, staging: str, family: str, output_format, key_field: str | None,
                 output_names: list[str], column_types: dict[str, ColumnType]):
        self._staging = staging
        self._family = family
        self._format = output_format
        self._key_field = key_field
        self._output_names = output_names
        self._column_types = column_types

    def start_bundle(self):
        self._fh = None
        self._writer = None
        self._path = None

    def process(self, batch):
        if not len(batch):
            return
        if self._writer is None:
            self._path = _join(self._staging,
                               f"{self._family}-{uuid.uuid4().hex}{self._format.suffix}")
            self._fh = FileSystems.create(self._path,
                                          compression_type=CompressionTypes.UNCOMPRESSED)
            self._writer = self._format.open_writer(self._fh, self._key_field,
                                                    self._output_names, self._column_types)
        self._writer.write(batch)

    def finish_bundle(self):
        if self._writer is not None:
            self._writer.close()
            self._fh.close()
            self._writer = self._fh = None
            yield GlobalWindows.windowed_value(self._path)


class WritePredictions(beam.PTransform):
    """Prediction batches -> staged `predictions-<uuid>` files in an output format (a
    registered format's name, looked up here: the step carries the format itself).
    `column_types`: what is known of each column before the first row (`ColumnType`), for
    formats that declare a schema."""

    def __init__(self, staging: str, output_format: str, key_field: str | None,
                 output_names: list[str], column_types: dict[str, ColumnType] | None = None):
        super().__init__()
        self._staging = staging
        self._format = formats.output_format(output_format)
        self._key_field = key_field
        self._output_names = output_names
        self._column_types = dict(column_types or {})

    def expand(self, batches):
        return batches | "WriteFiles" >> beam.ParDo(WritePredictionFilesDoFn(
            self._staging, "predictions", self._format, self._key_field, self._output_names,
            self._column_types))


class WriteJsonLines(beam.PTransform):
    """Rows (dicts) -> staged `prefix-<uuid>.jsonl` files (one per bundle)."""

    def __init__(self, staging: str, prefix: str):
        super().__init__()
        self._staging = staging
        self._prefix = prefix

    def expand(self, rows):
        return (rows
                | "ToJson" >> beam.Map(_dumps_line)
                | "WriteFiles" >> beam.ParDo(WriteStagedFilesDoFn(self._staging, self._prefix,
                                                                  ".jsonl")))


def final_names(staged_relative: list[str]) -> dict[str, str]:
    """{staged relative path: final relative path}: files of one family numbered in order,
    `family-SSSSS-of-NNNNN.suffix`; other files keep their names."""
    families: dict[tuple[str, str], list[str]] = {}
    out = {}
    for rel in sorted(staged_relative):
        m = _STAGED_NAME.match(rel)
        if m:
            families.setdefault((m["family"], m["suffix"]), []).append(rel)
        else:
            out[rel] = rel
    for (family, suffix), files in families.items():
        for i, rel in enumerate(files):
            out[rel] = f"{family}-{i:05d}-of-{len(files):05d}{suffix}"
    return out


class WriteMetricsDoFn(beam.DoFn):
    """The summary element (+ shard rows and model loads as side inputs) -> the metrics/ files.

    Metrics are small (one row per shard), so they are written directly in one step rather
    than through sharded sinks; rewriting them on a retried bundle gives the same files.
    """

    def __init__(self, staging: str):
        self._staging = staging

    def _write(self, relative: str, data: bytes) -> str:
        path = _join(self._staging, relative)
        with FileSystems.create(path) as fh:
            fh.write(data)
        return path

    def process(self, summary: dict, shard_rows: list[dict], model_loads: list[dict]):
        rows = sorted((r for r in shard_rows if r["shard"] != ALL), key=lambda r: r["shard"])
        loads = sorted(model_loads, key=lambda r: (r["host"], r["pid"]))
        yield self._write("metrics/shard_latency-00000-of-00001.jsonl",
                          b"".join(_dumps_line(r) + b"\n" for r in rows))
        yield self._write("metrics/model_loads-00000-of-00001.jsonl",
                          b"".join(_dumps_line(r) + b"\n" for r in loads))
        yield self._write("metrics/errors_by_type.json", orjson.dumps(
            errors_by_type_report(shard_rows), option=orjson.OPT_INDENT_2))
        total = next((r for r in shard_rows if r["shard"] == ALL), {})
        yield self._write("metrics/run_profile.json", orjson.dumps(
            total.get("profile") or empty_profile(), option=orjson.OPT_INDENT_2))
        yield self._write("metrics/summary.json", orjson.dumps(summary,
                                                                option=orjson.OPT_INDENT_2))


def build_reports(shard_rows: list[dict], run_info: dict, max_error_rate: float,
                  clock=time.time) -> dict:
    """The job summary (metrics/summary.json) from the per-shard rows and the run's facts."""
    total = next((r for r in shard_rows if r["shard"] == ALL), None) or {
        "records": 0, "predicted": 0, "errors": 0, "errors_by_type": {}, "batches": 0,
        "latency_ms": percentiles_ms([]), "mean_us_per_example": None,
        "unreadable_tail": False}
    end = clock()
    wall = max(end - run_info["start_time"], 1e-9)
    records_in = total["records"]
    errors = total["errors"]
    # reader errors are records too (one row each), so records_in counts them once
    error_rate = errors / records_in if records_in else 0.0
    summary = dict(run_info)
    summary.update({
        "end_time": end, "wall_seconds": round(wall, 3),
        "records_in": records_in, "predicted": total["predicted"], "errors": errors,
        "accounted": records_in == total["predicted"] + errors,
        "counts_exact": not total.get("unreadable_tail", False),
        "error_rate": round(error_rate, 6), "max_error_rate": max_error_rate,
        "within_error_budget": error_rate <= max_error_rate,
        "examples_per_second": round(total["predicted"] / wall, 1),
        "model_calls": total["batches"], "latency_ms": total["latency_ms"],
        "mean_us_per_example": total["mean_us_per_example"],
        "errors_by_type": total["errors_by_type"],
    })
    if not summary["counts_exact"]:
        summary["note"] = ("some files had unreadable tails: records after the damage could "
                           "not be counted; each such file has one unreadable_tail error row")
    return summary


def errors_by_type_report(shard_rows: list[dict]) -> dict:
    total = next((r for r in shard_rows if r["shard"] == ALL), {"errors_by_type": {}})
    return {"total": total["errors_by_type"],
            "by_shard": {r["shard"]: r["errors_by_type"] for r in shard_rows
                         if r["shard"] != ALL and r["errors_by_type"]}}


def model_load_stats(paths: list[str]) -> dict:
    """How many worker processes staged and loaded the model, and how long that took (the
    rows of metrics/model_loads-*.jsonl, summarised for the manifest)."""
    rows = []
    for path in paths:
        with FileSystems.open(path) as fh:
            rows += [orjson.loads(line) for line in fh.read().splitlines() if line.strip()]
    stage = [r["stage_seconds"] for r in rows]
    load = [r["load_seconds"] for r in rows]
    return {"processes": len(rows),
            "stage_seconds_max": max(stage, default=None),
            "stage_seconds_total": round(sum(stage), 3),
            "load_seconds_max": max(load, default=None)}


def build_manifest(summary: dict, outputs: list[str], model_loads: dict | None = None) -> dict:
    """manifest.json: what a consumer of the output needs to trust it, from the summary.

    Written after every other file and just before _SUCCESS. Provenance beyond the summary's
    own facts (input file list, code version, run labels such as the run date) is present when
    the launcher put it in run_info.
    """
    labels = summary.get("labels") or {}
    return {
        "run_id": summary["run_id"], "run_date": labels.get("run_date"),
        "job": labels.get("job"), "labels": labels,
        "code_version": summary.get("code_version"),
        "model": {"path": summary["model"], "version_path": summary["model_path"],
                  "version": summary["model_version"], "signature": summary["signature"],
                  "kind": summary.get("model_kind"),
                  "optimized": summary.get("model_optimized"), "loads": model_loads},
        "inputs": summary.get("input_file_list") or [],
        "input_files": summary["input_files"], "input_bytes": summary["input_bytes"],
        "counts": {"records_in": summary["records_in"], "predicted": summary["predicted"],
                   "errors": summary["errors"], "accounted": summary["accounted"],
                   "exact": summary["counts_exact"]},
        "errors": {"rate": summary["error_rate"], "max_rate": summary["max_error_rate"],
                   "within_budget": summary["within_error_budget"],
                   "by_type": summary["errors_by_type"]},
        "latency_ms": summary["latency_ms"], "model_calls": summary["model_calls"],
        "examples_per_second": summary["examples_per_second"],
        "start_time": summary["start_time"], "end_time": summary["end_time"],
        "wall_seconds": summary["wall_seconds"],
        "outputs": sorted(outputs),
    }


class FinalizeDoFn(beam.DoFn):
    """Hands the staged files to the sink, which moves them into place, then writes
    manifest.json and (within the error budget) _SUCCESS, in that order: a consumer that sees
    _SUCCESS finds everything else in place. Safe to run twice (a retried step on Dataflow):
    see `transforms.sink`."""

    def __init__(self, sink: Sink, run_id: str, overwrite: bool,
                 expected: dict[str, tuple[str, bytes]] | None = None):
        self._sink = sink
        self._run_id = run_id
        self._staging = sink.staging_location(run_id)
        self._overwrite = overwrite
        # family -> (suffix, content): the file of no rows (a header line, a Parquet schema,
        # nothing) that the family gets when no bundle wrote one
        self._expected = expected or {}

    def _with_empty_families(self, staged: list[str]) -> list[str]:
        root = self._staging.rstrip("/") + "/"
        families = {m["family"] for m in (_STAGED_NAME.match(f[len(root):]) for f in staged)
                    if m}
        for family, (suffix, content) in self._expected.items():
            if family not in families:
                path = _join(self._staging, f"{family}-{'0' * 32}{suffix}")
                if not FileSystems.exists(path):  # a retry finds it written, or moved
                    with FileSystems.create(
                            path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
                        fh.write(content)
                staged.append(path)
        return staged

    def _report(self, summary: dict, renames: dict[str, str]) -> str:
        """report.html, rendered into staging from the staged files before any is moved. A
        retried finalize that finds some already moved renders nothing: the first attempt's
        report is then staged or already in place."""
        sources = {rel: path for path, rel in renames.items()}

        def manifest() -> dict:
            loads = model_load_stats([p for rel, p in sources.items()
                                      if rel.startswith("metrics/model_loads-")])
            return build_manifest(summary, sorted(sources) + [REPORT], loads)
        return staged_report(self._staging, sources, summary, manifest)

    def process(self, summary, *written_lists):
        staged = self._with_empty_families(sorted({f for files in written_lists
                                                   for f in files}))
        root = self._staging.rstrip("/") + "/"
        names = final_names([f[len(root):] for f in staged])
        renames = {f: names[f[len(root):]] for f in staged}
        renames[self._report(summary, renames)] = REPORT

        def manifest_for(directory: str, outputs: list[str]) -> dict:
            loads = model_load_stats([_join(directory, r) for r in outputs
                                      if r.startswith("metrics/model_loads-")])
            return build_manifest(summary, outputs, loads)

        # a run that lost records (not accounted) is never marked done, whatever its budget
        within = summary["within_error_budget"] and summary["accounted"]
        where = self._sink.finalize(self._run_id, renames, within, self._overwrite,
                                    manifest_for)
        _LOG.info("finalize: %d files in %s%s", len(renames), where,
                  ", _SUCCESS written" if within else
                  " (records not accounted for: no _SUCCESS)" if not summary["accounted"] else
                  " (error budget exceeded: no _SUCCESS)")
        yield len(renames)
