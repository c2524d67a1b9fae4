"""Dataflow launch defaults and checks, applied before anything slow happens.

Why: a Dataflow submission that lacks a project, region or gs:// temp location fails only after
the launcher has staged the model and built the job, with a message from deep inside Beam.
We check those first and say which flag to add. Workers need this repository's code: unless a
custom worker image already contains it (`--sdk_container_image`, as the flex template does),
`--setup_file` defaults to this checkout's setup.py, which builds the sdist the workers install.
"""
from __future__ import annotations

import os

from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  SetupOptions, StandardOptions, TestOptions,
                                                  WorkerOptions)

from transforms.errors import OptionsError

__all__ = ["DATAFLOW_RUNNER", "is_dataflow", "repo_setup_file", "builds_job_only",
           "check_dataflow_options", "prepare_dataflow_options"]

DATAFLOW_RUNNER = "DataflowRunner"


def is_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    return runner.rsplit(".", 1)[-1] == DATAFLOW_RUNNER


def repo_setup_file() -> str | None:
    """This checkout's setup.py, when the code runs from a source tree (not from a wheel)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "setup.py")
    return path if os.path.isfile(path) else None


def builds_job_only(options: PipelineOptions) -> bool:
    """A template file or a dry run: the job is built, nothing runs, no summary follows."""
    return bool(options.view_as(GoogleCloudOptions).template_location
                or options.view_as(TestOptions).dry_run)


def check_dataflow_options(options: PipelineOptions) -> None:
    """Refuse a Dataflow job without a project, region or gs:// temp location (raises
    OptionsError naming the flag). Job specs are checked with it when they are loaded."""
    gcp = options.view_as(GoogleCloudOptions)
    missing = [flag for flag, value in (("--project", gcp.project), ("--region", gcp.region),
                                        ("--temp_location", gcp.temp_location)) if not value]
    if missing:
        raise OptionsError(
            f"--runner DataflowRunner needs {' and '.join(missing)} (e.g. --project my-project "
            "--region europe-west1 --temp_location gs://my-bucket/tmp)")
    for flag, value in (("--temp_location", gcp.temp_location),
                        ("--staging_location", gcp.staging_location)):
        if value and not value.startswith("gs://"):
            raise OptionsError(f"{flag} {value} must be a gs:// path for DataflowRunner")


def prepare_dataflow_options(options: PipelineOptions) -> None:
    """Fail fast on missing Dataflow flags; default --setup_file. No-op for other runners."""
    if not is_dataflow(options):
        return
    check_dataflow_options(options)
    setup = options.view_as(SetupOptions)
    image = options.view_as(WorkerOptions).sdk_container_image
    if setup.setup_file:
        if not os.path.isfile(setup.setup_file):
            raise OptionsError(f"--setup_file {setup.setup_file} does not exist")
    elif not image:
        setup.setup_file = repo_setup_file()
        if setup.setup_file is None:
            raise OptionsError(
                "Dataflow workers need this package: pass --setup_file path/to/setup.py (from "
                "a checkout of batch-predict) or --sdk_container_image with the package "
                "installed (see jobs/flex_template/Dockerfile)")
