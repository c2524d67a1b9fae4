"""Entry point: parse options, plan, build and run the job; report and set the exit code.

Exit codes: 0 success; 2 a user error found before the job started (bad option, model, input,
output dir, a dir in use: one line, no stack trace); 3 the job ran but exceeded
--max_error_rate; 1 the job failed while running, or its counts do not add up (records lost);
130/143 stopped by SIGINT/SIGTERM.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  StandardOptions, TestOptions)

from pipeline.build import JobPlan, build_pipeline, plan_job
from pipeline.dataflow import builds_job_only, is_dataflow, prepare_dataflow_options
from pipeline.options import BatchPredictOptions
from pipeline.progress import (REMOTE_SECONDS, BeamMetricsProgress, ProgressReporter,
                               gzip_share, progress_interval)
from pipeline.provenance import run_provenance
from transforms.errors import OptionsError, UserError
from transforms.progress import PROGRESS_DIR_ENV, PublishedProgress
from transforms.worker import (QUIET_WORKERS_ENV, TENSORFLOW_START_UP_CHATTER,
                               inherited_by_workers, loading_phase, start_tensorflow_quietly)

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_ERROR_BUDGET", "LOCAL_RUNNERS",
           "make_pipeline", "read_summary", "run", "format_summary", "human_figure",
           "format_plan", "WORKER_LOGGER", "WorkerLogFilter", "configure_logging", "main",
           "execute", "Stopped", "StopRequest", "TENSORFLOW_START_UP_CHATTER",
           "start_tensorflow_quietly", "live_progress", "remote_progress"]

_LOG = logging.getLogger("batch_predict")
# the exit codes of every command of this package (pipeline, describe, demo, jobs)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR_BUDGET = 0, 1, 2, 3
# runners that run on this machine's FnApiRunner (None: no --runner given)
LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner")


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Pipeline on the requested runner; the local default never touches the network.

    Beam 2.77's DirectRunner first tries Prism, which downloads a binary. Locally we run the
    Python FnApiRunner directly (it honours --direct_num_workers/--direct_running_mode).
    """
    runner = options.view_as(StandardOptions).runner
    if runner in LOCAL_RUNNERS:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def read_summary(output_dir: str) -> dict | None:
    path = FileSystems.join(output_dir, "metrics", "summary.json")
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as fh:
        return json.loads(fh.read())


def run(argv: list[str] | None = None, **inject
        ) -> tuple[beam.runners.runner.PipelineResult | None, JobPlan]:
    """Plan, build and run the job; returns the (finished) result and the plan. With
    --plan_only the job is planned (every start-up check, the model loaded) and neither run
    nor given the output dir: the result is None.

    `inject` goes to build_pipeline (tests: clock, predict_dofn)."""
    BatchPredictOptions.check_argv(argv)  # unknown flags, bad values: refused before anything
    options = PipelineOptions(argv)
    prepare_dataflow_options(options)  # fail fast, before the model is staged
    if options.view_as(TestOptions).dry_run and not is_dataflow(options):
        # Beam's --dry_run is DataflowRunner's (build the job, submit nothing); the local
        # runner ignores it and would score and write everything
        raise OptionsError("--dry_run is Beam's option for DataflowRunner (build the job "
                           "without submitting it); the local runner would ignore it and run "
                           "the job: use --plan_only to see the plan without running")
    if options.view_as(BatchPredictOptions).plan_only:
        with loading_phase():
            return None, plan_job(options.view_as(BatchPredictOptions), claim=False)
    # a Dataflow job that is only built never runs: it must not claim the output dir
    claim = not (is_dataflow(options) and builds_job_only(options))
    with loading_phase():  # TensorFlow's import and the model load: no GC passes over them
        plan = plan_job(options.view_as(BatchPredictOptions), claim=claim)
    try:
        with loading_phase():
            plan.run_info.update(run_provenance(options, plan.files))
            p = make_pipeline(options)
            build_pipeline(p, plan, **inject)
        with live_progress(options, plan):
            result = p.run()
            with remote_progress(options, plan, result):
                result.wait_until_finish()
    finally:
        plan.release()  # whatever happened, the next run may use the output dir
    return result, plan


@contextlib.contextmanager
def live_progress(options: PipelineOptions, plan: JobPlan):
    """Progress on stderr while a local run runs (yields its ProgressReporter; None for a
    remote runner). In-process, the reporter reads this process's counters; local worker
    subprocesses (multi_processing) publish theirs to a temp dir they inherit the name of.
    BigQuery input counts no bytes read: a table's % is of its rows, a query has none."""
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        yield None
        return
    sizes = _input_sizes(plan)
    if options.view_as(DirectOptions).direct_running_mode != "multi_processing":
        with ProgressReporter(**sizes) as reporter:
            yield reporter
        return
    with tempfile.TemporaryDirectory(prefix="batch-predict-progress-") as published, \
            inherited_by_workers(PROGRESS_DIR_ENV, published), \
            ProgressReporter(counters=PublishedProgress(published), **sizes) as reporter:
        yield reporter


def _input_sizes(plan: JobPlan, gzip: bool = True) -> dict:
    """What progress knows of the input's size up front: the files' bytes (and of those, the
    gzip files' and their compression, when the counters tell gzip bytes apart), or a
    BigQuery table's rows (a query's: nothing)."""
    if plan.source is not None:
        return {"total_bytes": None, "total_records": getattr(plan.source, "rows", None)}
    if not gzip:
        return {"total_bytes": sum(size for _, size in plan.files)}
    gzip_bytes, gzip_ratio = gzip_share(plan.files)
    return {"total_bytes": sum(size for _, size in plan.files), "gzip_bytes": gzip_bytes,
            "gzip_ratio": gzip_ratio}


def remote_progress(options: PipelineOptions, plan: JobPlan, result):
    """Progress of a Dataflow job while this process waits for it, from the job's Beam metrics
    (at most one query every REMOTE_SECONDS; they do not tell gzip bytes apart); nothing for
    local runs (`live_progress`) or a job that is only built (template, --dry_run)."""
    if options.view_as(StandardOptions).runner in LOCAL_RUNNERS or builds_job_only(options):
        return contextlib.nullcontext()
    every = max(REMOTE_SECONDS, progress_interval(sys.stderr.isatty()))
    return ProgressReporter(counters=BeamMetricsProgress(result), interval=every,
                            sample_seconds=every, **_input_sizes(plan, gzip=False))


def human_figure(value: float | None) -> str:
    """A measured figure for a person: 3 significant digits, thousands separated (20.73725 ->
    '20.7', 123456.7 -> '123,000'); counts are printed whole instead, and summary.json keeps
    every figure at full precision."""
    if value is None:
        return "-"
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = 2 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    if rounded and math.floor(math.log10(abs(rounded))) > math.floor(math.log10(abs(value))):
        decimals -= 1  # 99.96 rounds to 100.0: still 3 digits, '100'
    return f"{rounded:,.0f}" if decimals <= 0 else f"{rounded:,.{decimals}f}"


def format_summary(s: dict, output_dir: str) -> str:
    lat = s.get("latency_ms") or {}
    ms = "  ".join(f"{p} {human_figure(lat.get(p))} ms" for p in ("p50", "p95", "p99", "max"))
    lines = [
        f"outputs:      {output_dir}",
        f"model:        {s['model_path']} (version {s['model_version'] or '-'}, "
        f"signature {s['signature']}, {s['signature_convention']})",
        f"feature spec: {s['feature_spec_source']}",
        f"records in:   {s['records_in']:,}  predicted: {s['predicted']:,}  "
        f"errors: {s['errors']:,}  ({'accounted' if s['accounted'] else 'NOT ACCOUNTED'}"
        f"{'' if s['counts_exact'] else ', some file tails unreadable'})",
        f"throughput:   {human_figure(s['examples_per_second'])} examples/s over "
        f"{human_figure(s['wall_seconds'])} s wall; {s['model_calls']:,} model calls",
        f"model call:   {ms}",
    ]
    if s["errors"]:
        lines.append(f"errors:       {s['errors_by_type']}")
    return "\n".join(lines)


def sample_lines(plan: JobPlan, records: int) -> list[str]:
    """--plan_sample: what a sample of the job's records costs here, and the run's estimate."""
    from pipeline.estimate import format_sample, sample_cost
    if plan.source is not None:
        return ["sample:       none: --plan_sample reads input files, not a BigQuery source"]
    return format_sample(sample_cost(plan, records))


def format_plan(plan: JobPlan, options: PipelineOptions, most_files: int = 20,
                sampled: list[str] | tuple = ()) -> str:
    """What --plan_only prints: what the job would read, with which model, and where it would
    write, on which runner; then the `sampled` lines (--plan_sample)."""
    info = plan.run_info
    total = sum(size for _, size in plan.files)
    runner = options.view_as(StandardOptions).runner
    if runner in LOCAL_RUNNERS:
        workers = options.view_as(DirectOptions).direct_num_workers or 1
        runner = (f"{runner or 'DirectRunner'}, run here on Beam's Python FnApiRunner "
                  f"({workers} worker{'s' if workers != 1 else ''}, "
                  f"{options.view_as(DirectOptions).direct_running_mode})")
    lines = [f"inputs:       {len(plan.files):,} file{'s' if len(plan.files) != 1 else ''}, "
             f"{total:,} bytes, format {plan.input_format}"]
    lines += [f"  {size:>15,}  {path}" for path, size in plan.files[:most_files]]
    if len(plan.files) > most_files:
        lines.append(f"  ... and {len(plan.files) - most_files:,} more")
    outputs = plan.output_dir + (f" (predictions in BigQuery {info['output_table']})"
                                 if info.get("output_table") else
                                 f" (predictions as {plan.output_format})")
    lines += [
        f"model:        {info['model_path']} (version {info['model_version'] or '-'}, "
        f"{info['model_kind']})",
        f"signature:    {info['signature']} ({info['signature_convention']}), outputs "
        f"{', '.join(plan.output_names)}",
        f"feature spec: {info['feature_spec_source']}, {len(plan.model.spec)} features",
        f"outputs:      {outputs}",
        f"runner:       {runner}",
        f"batch size:   {'auto' if plan.auto_batch else f'{plan.batch_size:,}'}; "
        f"max error rate {plan.max_error_rate}",
        *sampled,
        "plan only: nothing was written and the output dir was not touched",
    ]
    return "\n".join(lines)


# Local multi_processing workers send their log lines to the launcher, which logs each one on
# this logger as 'Worker: <the LogEntry proto as text>'.
WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
_OWN_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_DIRS = tuple(os.path.join(_OWN_ROOT, d) + os.sep for d in ("pipeline", "transforms", "jobs"))


class WorkerLogFilter(logging.Filter):
    """Shows what local worker processes log about the job, like the single process does.

    This package's own lines (model loads, reads, progress, finalize) keep their level and
    module and read `worker: <message>`; Beam's own worker lines (channels, harness start) are
    dropped below WARNING, as Beam's launcher lines are. So is the warning every local worker
    gives that it has no main session to load (it has no semi_persistent_directory): this job
    pickles no main session and registers no schemas, so it says nothing to the operator."""
    _ENTRY = re.compile(r'message: "((?:[^"\\]|\\.)*)".*?log_location: "([^":]*)', re.S)
    _NO_MAIN_SESSION = 'message: "No semi_persistent_directory found:'

    def filter(self, record: logging.LogRecord) -> bool:
        entry = record.getMessage() if str(record.msg).startswith("Worker:") else ""
        if self._NO_MAIN_SESSION in entry:
            return False
        match = self._ENTRY.search(entry)
        if match is None or not match.group(2).startswith(_OWN_DIRS):
            return record.levelno >= logging.WARNING
        text = codecs.escape_decode(match.group(1).encode("utf-8"))[0].decode("utf-8", "replace")
        module = os.path.splitext(os.path.relpath(match.group(2), _OWN_ROOT))[0]
        record.name, record.msg, record.args = module.replace(os.sep, "."), "worker: %s", (text,)
        return True


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workers = logging.getLogger(WORKER_LOGGER)
    workers.setLevel(logging.INFO)
    if not any(isinstance(f, WorkerLogFilter) for f in workers.filters):
        workers.addFilter(WorkerLogFilter())


def main(argv: list[str] | None = None, quiet_tensorflow: bool = False) -> int:
    """One scoring job from a command line; returns its exit code. (`python -m pipeline` and
    `batch-predict` come through pipeline/__main__.py, which also dispatches subcommands, and
    asks for `quiet_tensorflow` unless --verbose or TF_CPP_MIN_LOG_LEVEL is set.)"""
    return execute(list(sys.argv[1:] if argv is None else argv), quiet_tensorflow)[0]


def execute(argv: list[str], quiet_tensorflow: bool = False) -> tuple[int, str | None]:
    """Run one scoring job and report it; returns the exit code and the dir holding this run's
    outputs (the output dir, or the run's staging dir when it was over its error budget and a
    previous good run was kept; None when it wrote none). `quiet_tensorflow`: import
    TensorFlow through start_tensorflow_quietly once the command line has passed its check."""
    configure_logging()
    stop = StopRequest()
    try:
        with stop.handled():
            if quiet_tensorflow:
                # a mistyped option is refused before TensorFlow's import (seconds)
                BatchPredictOptions.check_argv(argv)
                start_tensorflow_quietly()
            with (inherited_by_workers(QUIET_WORKERS_ENV, "1") if quiet_tensorflow
                  else contextlib.nullcontext()):
                result, plan = run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE, None
    except (Stopped, Exception) as e:
        if stop.signum is None:
            # not the operator's mistake: the traceback is for a bug report, the last line
            # says what it means for the output
            _LOG.error("the job failed while running", exc_info=True)
            print(f"error: the job failed while running ({_first_line(e)}); nothing final was "
                  "written, the previous outputs are unchanged; a re-run of the same command "
                  "starts over", file=sys.stderr)
            return EXIT_FAILED, None
        # the signal may surface inside a DoFn, where Beam wraps it in a RuntimeError
        logging.disable(logging.NOTSET)
        print(f"error: stopped by {signal.Signals(stop.signum).name} before the job finished; "
              "nothing final was written (a re-run of the same command starts over)",
              file=sys.stderr)
        return 128 + stop.signum, None
    options = PipelineOptions(argv)
    if result is None:
        sample = options.view_as(BatchPredictOptions).plan_sample
        print(format_plan(plan, options, sampled=sample_lines(plan, sample) if sample else ()))
        return EXIT_OK, None
    if is_dataflow(options) and builds_job_only(options):
        print(f"Dataflow job built, not run (template file or dry run); outputs would go to "
              f"{plan.output_dir}")
        return EXIT_OK, None
    where = plan.sink.outputs_of(plan.run_info["run_id"])
    summary = read_summary(where) if where else None
    if summary is None:
        print(f"error: the job finished but wrote no summary in {plan.output_dir}",
              file=sys.stderr)
        return EXIT_FAILED, None
    print(format_summary(summary, where))
    if not summary["accounted"]:
        lost = summary["records_in"] - summary["predicted"] - summary["errors"]
        print(f"error: {summary['records_in']} records read but {summary['predicted']} "
              f"predicted + {summary['errors']} error rows ({lost:+d} unaccounted): records "
              f"were lost or duplicated inside the job; no _SUCCESS written (see {where})",
              file=sys.stderr)
        return EXIT_FAILED, where
    if not summary["within_error_budget"]:
        kept = (f"; the previous run's outputs in {plan.output_dir} are kept"
                if where != plan.output_dir else "")
        print(f"error: error rate {summary['error_rate']:.4f} exceeds --max_error_rate "
              f"{summary['max_error_rate']}: {summary['errors']} of {summary['records_in']} "
              f"records rejected (see {where}/errors-*.jsonl); no _SUCCESS written{kept}",
              file=sys.stderr)
        return EXIT_ERROR_BUDGET, where
    return EXIT_OK, where


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived while the job ran (a BaseException, like KeyboardInterrupt,
    so that no `except Exception` on the way swallows it)."""


class StopRequest:
    """Turns SIGINT/SIGTERM into `Stopped` in the main thread, and remembers the signal: the
    launcher unwinds, releases the output dir and exits 130/143 with one line instead of a
    traceback."""

    def __init__(self):
        self.signum: int | None = None

    def _stop(self, signum, frame):
        self.signum = signum
        # Beam logs an exception raised in a DoFn with its traceback before re-raising it;
        # the operator asked to stop and gets one line instead
        logging.disable(logging.CRITICAL)
        raise Stopped(signum)

    @contextlib.contextmanager
    def handled(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._stop)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
