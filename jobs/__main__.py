"""`python -m jobs COMMAND SPEC ...`: scheduled batch scoring from a job spec (jobs/*.yaml).

    run SPEC --date YYYY-MM-DD        run one date on the spec's runner (local or Dataflow)
    run SPEC --backfill FROM TO       run every date from FROM to TO (inclusive)
    launch SPEC --date YYYY-MM-DD     start the flex template through the Dataflow API
    schedule SPEC                     the Cloud Scheduler (+ Cloud Run launcher) definition
    airflow-dag SPEC...               an Airflow DAG file for the specs (Airflow optional)
    metadata                          the flex template's metadata.json

Dates may also be `today` or `yesterday` (in the schedule's time zone). Exit codes are the
pipeline's (pipeline/run.py): 0 ok, 2 bad spec or option, 3 error budget exceeded, 1 failed.
`run` hides TensorFlow's start-up lines as `python -m pipeline` does, unless the spec sets
options.verbose or TF_CPP_MIN_LOG_LEVEL is set in the environment.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipeline.run import EXIT_OK, EXIT_USAGE, configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the job for a date or a range of dates")
    run.add_argument("spec")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="run date, YYYY-MM-DD (or today/yesterday)")
    when.add_argument("--backfill", nargs=2, metavar=("FROM", "TO"),
                      help="run every date from FROM to TO, inclusive, oldest first")
    launch = sub.add_parser("launch", help="launch the flex template for a date")
    launch.add_argument("spec")
    launch.add_argument("--date", required=True, help="run date, YYYY-MM-DD (or today)")
    launch.add_argument("--api_endpoint", default=None,
                        help="Dataflow API endpoint (default: the public one)")
    launch.add_argument("--validate_only", action="store_true",
                        help="ask Dataflow to validate the launch without starting a job")
    launch.add_argument("--print_request", action="store_true",
                        help="print the request instead of sending it")
    schedule = sub.add_parser("schedule", help="print the Cloud Scheduler definition")
    schedule.add_argument("spec")
    schedule.add_argument("--service_account", default=None,
                          help="service account the scheduler and launcher run as")
    dag = sub.add_parser("airflow-dag", help="print an Airflow DAG for the specs")
    dag.add_argument("specs", nargs="+")
    dag.add_argument("--spec_dir", default=None,
                     help="where the specs are on the Airflow workers (default: as given)")
    sub.add_parser("metadata", help="print the flex template's metadata.json")
    return parser


def _time_zone(spec) -> str:
    return spec.schedule.time_zone if spec.schedule else "UTC"


def _quiet_tensorflow(spec) -> bool:
    """As `python -m pipeline` decides it: TensorFlow's start-up lines are hidden unless the
    spec asks for them (options.verbose) or the user chose TensorFlow's log level. When hidden,
    the level is set here, before TensorFlow is imported (it reads the level then)."""
    if spec.options.get("verbose") is True or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return True


def _run(args, spec) -> int:
    from jobs.runner import backfill, format_outcomes, run_date
    from jobs.spec import parse_date
    configure_logging()
    # each run checks its command line, then imports TensorFlow (pipeline.run.execute): a bad
    # date or backfill range is refused before that
    quiet = _quiet_tensorflow(spec)
    if args.date:
        outcomes = [run_date(spec, parse_date(args.date, _time_zone(spec)),
                             quiet_tensorflow=quiet)]
    else:
        first, last = (parse_date(d, _time_zone(spec)) for d in args.backfill)
        outcomes = backfill(spec, first, last, quiet_tensorflow=quiet)
    print(format_outcomes(outcomes))
    failed = [o for o in outcomes if not o.succeeded]
    return failed[0].exit_code if failed else EXIT_OK


def _launch(args, spec) -> int:
    from jobs.launch import launch, launch_request
    from jobs.spec import parse_date
    day = parse_date(args.date, _time_zone(spec))
    if args.print_request:
        print(json.dumps(launch_request(spec, day), indent=2))
        return EXIT_OK
    job = launch(spec, day, api_endpoint=args.api_endpoint, validate_only=args.validate_only)
    print(json.dumps({"id": job.get("id"), "name": job.get("name"),
                      "project_id": job.get("project_id"), "location": job.get("location")}))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    from jobs.spec import SpecError, load_spec
    args = _parser().parse_args(argv)
    try:
        if args.command == "metadata":
            from jobs.template_metadata import render_metadata
            sys.stdout.write(render_metadata())
            return EXIT_OK
        if args.command == "airflow-dag":
            from jobs.airflow_dag import dag_source
            specs = [(load_spec(p), os.path.join(args.spec_dir, os.path.basename(p))
                      if args.spec_dir else p) for p in args.specs]
            sys.stdout.write(dag_source(specs))
            return EXIT_OK
        spec = load_spec(args.spec)
        if args.command == "schedule":
            from jobs.scheduler import format_definition, scheduler_definition
            print(format_definition(scheduler_definition(spec, args.service_account)))
            return EXIT_OK
        if args.command == "launch":
            return _launch(args, spec)
        return _run(args, spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
