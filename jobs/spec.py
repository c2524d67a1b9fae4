"""The job spec: one YAML file describes a scheduled scoring job.

Why a spec: the nightly job, its backfills, its flex-template launch, its Cloud Scheduler entry
and its Airflow DAG must all run the same pipeline with the same options. Each is generated from
this one file, so they cannot drift. Paths may contain run-date templates, rendered per run:

    {date}            the run date, 2026-11-20
    {date-1d}         one day before (any +Nd / -Nd)
    {date-1d:%Y/%m/%d} with a strftime format

The spec is checked when loaded; every problem is reported in one message naming the key.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import zoneinfo

import yaml
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.dataflow import DATAFLOW_RUNNER, check_dataflow_options
from pipeline.options import (DEFAULT_BATCH_SIZE, DEFAULT_MAX_ERROR_RATE, BatchPredictOptions,
                              check_argv)
from pipeline.run import LOCAL_RUNNERS
from transforms.errors import OptionsError

__all__ = ["LOCAL", "RUNNERS", "TOP_KEYS", "SpecError", "Schedule", "FlexTemplate", "JobSpec",
           "render", "parse_date", "pipeline_option_actions", "pipeline_option_names",
           "from_dict", "load_spec", "pipeline_parameters", "run_labels", "pipeline_argv",
           "dataflow_job_name"]

_DATE_TOKEN = re.compile(r"\{date(?P<offset>[+-]\d+d)?(?::(?P<format>[^{}]+))?\}")
_ANY_DATE_TOKEN = re.compile(r"\{date[^{}]*\}")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
LOCAL = "local"  # a spec's name for this machine's runner: no --runner at all
RUNNERS = (LOCAL,) + tuple(r for r in LOCAL_RUNNERS if r) + (DATAFLOW_RUNNER,)
TOP_KEYS = {"name", "description", "model", "input", "output", "batch_size", "error_budget",
            "options", "runner", "schedule", "flex_template"}
# set by the spec's own keys, or by the job runner: not allowed under `options`
_MANAGED = {"model", "input", "output", "batch_size", "max_error_rate", "overwrite"}


class SpecError(ValueError):
    """The job spec cannot be used; the message names the key and says what to change."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    cron: str
    time_zone: str = "UTC"


@dataclasses.dataclass(frozen=True)
class FlexTemplate:
    spec_path: str          # gs:// template file from `gcloud dataflow flex-template build`
    image: str | None       # the template's image, also the workers' SDK container image


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    model: str
    input: str | None  # None: options.input_query names the input
    output: str
    batch_size: int | str = DEFAULT_BATCH_SIZE
    error_budget: float = DEFAULT_MAX_ERROR_RATE
    options: dict = dataclasses.field(default_factory=dict)
    runner: str = LOCAL
    runner_options: dict = dataclasses.field(default_factory=dict)
    schedule: Schedule | None = None
    flex_template: FlexTemplate | None = None
    description: str = ""
    source: str | None = None  # the YAML file it was loaded from

    @property
    def is_dataflow(self) -> bool:
        return self.runner == DATAFLOW_RUNNER

    def runner_option(self, key: str, default=None):
        return self.runner_options.get(key, default)


def render(template: str, run_date: dt.date) -> str:
    """Replace the {date...} tokens of a path template with the run date."""
    def one(match: re.Match) -> str:
        day = run_date
        if match.group("offset"):
            day = run_date + dt.timedelta(days=int(match.group("offset")[:-1]))
        return day.strftime(match.group("format") or "%Y-%m-%d")
    return _DATE_TOKEN.sub(one, template)


def _check_tokens(key: str, template: str) -> None:
    for token in _ANY_DATE_TOKEN.findall(template):
        if not _DATE_TOKEN.fullmatch(token):
            raise SpecError(f"{key}: cannot read the date template {token!r}; use {{date}}, "
                            "{date-1d}, {date+2d} or {date-1d:%Y/%m/%d}")


def parse_date(text: str, time_zone: str = "UTC") -> dt.date:
    """YYYY-MM-DD, or today/yesterday in the schedule's time zone."""
    if text in ("today", "yesterday"):
        today = dt.datetime.now(zoneinfo.ZoneInfo(time_zone)).date()
        return today if text == "today" else today - dt.timedelta(days=1)
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SpecError(f"date {text!r} is not YYYY-MM-DD (or today/yesterday)") from None


def pipeline_option_actions() -> list[argparse.Action]:
    """The pipeline's own options (pipeline/options.py, not Beam's), in their order: what a
    spec's `options` may set, and the flex template's parameters."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    BatchPredictOptions._add_argparse_args(parser)
    return list(parser._actions)


def pipeline_option_names() -> set[str]:
    """The dests of the pipeline's own options."""
    return {a.dest for a in pipeline_option_actions()}


def _require(doc: dict, key: str, kind, where: str = ""):
    value = doc.get(key)
    if value is None or value == "":
        raise SpecError(f"{where}{key} is required")
    if not isinstance(value, kind):
        raise SpecError(f"{where}{key} must be a {kind.__name__}, got {value!r}")
    return value


def from_dict(doc: dict, source: str | None = None) -> JobSpec:
    if not isinstance(doc, dict):
        raise SpecError("a job spec is a YAML mapping (name, model, input, output, ...)")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(unknown)}; allowed: "
                        f"{', '.join(sorted(TOP_KEYS))}")
    name = _require(doc, "name", str)
    if not _NAME.match(name):
        raise SpecError(f"name {name!r} must be 2-40 lowercase letters, digits or '-', "
                        "starting with a letter (it becomes part of Dataflow job names)")
    # the input is files (input) or a BigQuery query (options.input_query), not both
    queried = isinstance(doc.get("options"), dict) and \
        doc["options"].get("input_query") is not None
    if queried and doc.get("input") is not None:
        raise SpecError("input and options.input_query both name the input; give one of them")
    for key in ("model", "output") if queried else ("model", "input", "output"):
        _check_tokens(key, _require(doc, key, str))
    batch_size = doc.get("batch_size", DEFAULT_BATCH_SIZE)
    if batch_size != "auto" and (not isinstance(batch_size, int) or
                                 isinstance(batch_size, bool) or batch_size <= 0):
        raise SpecError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    budget = doc.get("error_budget", DEFAULT_MAX_ERROR_RATE)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget <= 1:
        raise SpecError(f"error_budget must be a fraction of records between 0 and 1 (e.g. "
                        f"0.01), got {budget!r}")
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise SpecError("options must be a mapping of pipeline options (e.g. key_field: id)")
    known = pipeline_option_names()
    bad = sorted(set(options) - known)
    if bad:
        raise SpecError(f"options: unknown pipeline option(s) {', '.join(bad)}; known: "
                        f"{', '.join(sorted(known - _MANAGED))}")
    managed = sorted(set(options) & _MANAGED)
    if managed:
        raise SpecError(f"options: {', '.join(managed)} are set by the spec's own keys "
                        "(model, input, output, batch_size, error_budget) or by the job runner")
    runner_doc = doc.get("runner") or {"name": LOCAL}
    if isinstance(runner_doc, str):
        runner_doc = {"name": runner_doc}
    runner = runner_doc.get("name", LOCAL)
    if runner not in RUNNERS:
        raise SpecError(f"runner.name {runner!r} is not one of {', '.join(RUNNERS)}")
    runner_options = runner_doc.get("options") or {}
    if not isinstance(runner_options, dict):
        raise SpecError("runner.options must be a mapping of Beam options")
    schedule = None
    if doc.get("schedule") is not None:
        sched = doc["schedule"]
        if isinstance(sched, str):
            sched = {"cron": sched}
        cron = _require(sched, "cron", str, "schedule.")
        if len(cron.split()) != 5:
            raise SpecError(f"schedule.cron {cron!r} must have 5 fields (minute hour "
                            "day-of-month month day-of-week), e.g. '30 2 * * *'")
        tz = sched.get("time_zone", "UTC")
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SpecError(f"schedule.time_zone {tz!r} is not an IANA time zone "
                            "(e.g. Europe/Berlin)") from None
        schedule = Schedule(cron, tz)
    flex = None
    if doc.get("flex_template") is not None:
        ft = doc["flex_template"]
        spec_path = _require(ft, "spec", str, "flex_template.")
        if not spec_path.startswith("gs://"):
            raise SpecError("flex_template.spec must be the gs:// path of the template file")
        flex = FlexTemplate(spec_path, ft.get("image"))
    spec = JobSpec(name=name, model=doc["model"], input=doc.get("input"), output=doc["output"],
                   batch_size=batch_size, error_budget=float(budget), options=dict(options),
                   runner=runner, runner_options=dict(runner_options), schedule=schedule,
                   flex_template=flex, description=doc.get("description", ""), source=source)
    _check_command_line(spec)
    return spec


def _check_command_line(spec: JobSpec) -> None:
    """A run's command line as `python -m pipeline` checks it, so that a mistyped option
    (`max_num_worker`) or a bad value in `options` or `runner.options` fails when the spec is
    loaded, not on the first night it runs; on Dataflow, its project, region and gs:// temp
    location too (pipeline/dataflow.py)."""
    argv = pipeline_argv(spec, dt.date.today())
    if "-h" in argv or "--help" in argv:
        raise SpecError("options and runner.options may not hold -h or --help: the pipeline "
                        "would print its help instead of running")
    try:
        check_argv(argv)
        if spec.is_dataflow:
            check_dataflow_options(PipelineOptions(argv))
    except OptionsError as e:
        named = re.search(r"--(\w+)", str(e))
        where = "options" if named and named[1] in spec.options else "runner.options"
        raise SpecError(f"{where}: {e}") from None


def load_spec(path: str) -> JobSpec:
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
    except OSError as e:
        raise SpecError(f"cannot read job spec {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"job spec {path} is not valid YAML: {e}") from None
    try:
        return from_dict(doc, source=path)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def _flag(key: str, value) -> list[str]:
    if value is True:
        return [f"--{key}"]
    if value is False or value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [arg for item in value for arg in (f"--{key}", str(item))]
    if isinstance(value, dict):
        return [f"--{key}", json.dumps(value, sort_keys=True)]
    return [f"--{key}", str(value)]


def pipeline_parameters(spec: JobSpec, run_date: dt.date) -> dict[str, object]:
    """The pipeline's own options for one run date (what the flex template takes)."""
    params = {"model": render(spec.model, run_date),
              "input": None if spec.input is None else render(spec.input, run_date),
              "output": render(spec.output, run_date), "batch_size": spec.batch_size,
              "max_error_rate": spec.error_budget, "overwrite": True}
    params.update({k: render(v, run_date) if isinstance(v, str) else v
                   for k, v in spec.options.items()})
    return params


def run_labels(spec: JobSpec, run_date: dt.date) -> dict[str, str]:
    return {"job": spec.name, "run_date": run_date.isoformat()}


def pipeline_argv(spec: JobSpec, run_date: dt.date) -> list[str]:
    """Command-line arguments of `python -m pipeline` for one run date.

    `--overwrite` makes runs idempotent: a rerun replaces the date's output, and only when it
    finalizes (the previous output stays until then)."""
    argv = []
    for key, value in pipeline_parameters(spec, run_date).items():
        argv += _flag(key, value)
    if spec.runner != LOCAL:
        argv += ["--runner", spec.runner]
    for key, value in spec.runner_options.items():
        argv += _flag(key, render(value, run_date) if isinstance(value, str) else value)
    argv += ["--labels", json.dumps(run_labels(spec, run_date), sort_keys=True)]
    if spec.is_dataflow and "job_name" not in spec.runner_options:
        argv += ["--job_name", dataflow_job_name(spec, run_date)]
    return argv


def dataflow_job_name(spec: JobSpec, run_date: dt.date) -> str:
    return f"{spec.name}-{run_date:%Y%m%d}"
