"""`python -m jobs run SPEC --date D` and `--backfill FROM TO`: run the spec's pipeline per date.

Each date is one ordinary pipeline run (`pipeline.run.execute`) on the spec's runner: in-process
locally, or submitted to Dataflow (waiting for the job, as the pipeline's launcher does). The
pipeline writes manifest.json and then _SUCCESS as its very last step; this module reads the
manifest back to report the run. Reruns are idempotent: `--overwrite` replaces a date's
output only when the new run finalizes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from jobs.spec import JobSpec, SpecError, pipeline_argv, render
from pipeline.run import EXIT_FAILED, EXIT_OK, execute
from transforms.output_dir import read_own_manifest

__all__ = ["RunOutcome", "run_date", "date_range", "backfill", "format_outcomes"]

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class RunOutcome:
    run_date: dt.date
    exit_code: int
    output: str
    manifest: dict | None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == EXIT_OK


def run_date(spec: JobSpec, day: dt.date, extra_argv: list[str] | None = None,
             quiet_tensorflow: bool = False) -> RunOutcome:
    """Run the job for one date; returns the pipeline's exit code and the manifest.
    `quiet_tensorflow`: TensorFlow starts as in `python -m pipeline` (pipeline.run.execute)."""
    argv = pipeline_argv(spec, day) + list(extra_argv or [])
    output = render(spec.output, day).rstrip("/")
    _LOG.info("job %s, run date %s: output %s", spec.name, day, output)
    try:
        code, where = execute(argv, quiet_tensorflow)
    except Exception:  # the job failed while running (e.g. a Dataflow job failed): record it,
        # with its traceback, so the other dates of a backfill still run
        _LOG.exception("job %s, run date %s failed", spec.name, day)
        return RunOutcome(day, EXIT_FAILED, output, None)
    # over its error budget after a good run, a rerun's outputs wait in its staging dir
    return RunOutcome(day, code, where or output, read_own_manifest(where) if where else None)


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise SpecError(f"backfill range ends ({last}) before it starts ({first})")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def backfill(spec: JobSpec, first: dt.date, last: dt.date,
             extra_argv: list[str] | None = None,
             quiet_tensorflow: bool = False) -> list[RunOutcome]:
    """Run every date from first to last (inclusive), oldest first; a failed date does not
    stop the others (each is independent and can be rerun alone)."""
    return [run_date(spec, day, extra_argv, quiet_tensorflow)
            for day in date_range(first, last)]


def format_outcomes(outcomes: list[RunOutcome]) -> str:
    lines = []
    for o in outcomes:
        m = o.manifest or {}
        counts = m.get("counts", {})
        state = "ok" if o.succeeded else f"FAILED (exit {o.exit_code})"
        lines.append(f"{o.run_date}  {state:<18} records {counts.get('records_in', '-')}  "
                     f"errors {counts.get('errors', '-')}  -> {o.output}")
    return "\n".join(lines)
