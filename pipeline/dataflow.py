"""Dataflow launch defaults and checks, applied before anything slow happens.

Why: a Dataflow submission that lacks a project, region or gs:// temp location fails only after
the launcher has staged the model and built the job, with a message from deep inside Beam.
We check those first and say which flag to add. Workers need this package's code: unless a
custom worker image already contains it (`--sdk_container_image`, as the flex template does),
`--setup_file` defaults to this checkout's setup.py, which builds the sdist the workers install.
An installed copy (pip install, no checkout) has no setup.py: it writes one for its own
installed files and requirements in a temp dir, so Beam's stager builds and stages the same
sdist (workflow.tar.gz) from exactly the code that runs here.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import weakref
from importlib import metadata
from pathlib import Path, PurePosixPath

from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  SetupOptions, StandardOptions, TestOptions,
                                                  WorkerOptions)
from packaging.requirements import Requirement

from transforms.errors import OptionsError

__all__ = ["DATAFLOW_RUNNER", "DISTRIBUTION", "is_dataflow", "repo_setup_file",
           "installed_distribution", "write_installed_setup", "builds_job_only",
           "check_dataflow_options", "prepare_dataflow_options"]

_LOG = logging.getLogger(__name__)

DATAFLOW_RUNNER = "DataflowRunner"
DISTRIBUTION = "batch-predict"  # the name setup.py gives this package


def is_dataflow(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner or ""
    return runner.rsplit(".", 1)[-1] == DATAFLOW_RUNNER


def repo_setup_file() -> str | None:
    """This checkout's setup.py, when the code runs from a source tree (not from a wheel)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "setup.py")
    return path if os.path.isfile(path) else None


def installed_distribution() -> metadata.Distribution | None:
    """The installed distribution this very code was imported from, or None (a checkout, or a
    bare copy of the packages). Another installed batch-predict (an editable install elsewhere,
    an older copy further down sys.path) is not this code: its files list must hold this file."""
    here = Path(__file__).resolve()
    for dist in metadata.distributions(name=DISTRIBUTION):
        for file in dist.files or ():
            if file.name == here.name and Path(dist.locate_file(file)).resolve() == here:
                return dist
    return None


def _package_files(dist: metadata.Distribution) -> tuple[list[PurePosixPath], set[str]]:
    """The installed files of the distribution's packages (no bytecode, no metadata, no
    scripts) and the packages (dirs with an __init__.py, dotted)."""
    files = [PurePosixPath(f.as_posix()) for f in dist.files or ()]
    packages = {".".join(f.parent.parts) for f in files
                if f.name == "__init__.py" and ".." not in f.parts}
    top = {name for name in packages if "." not in name}
    kept = [f for f in files if f.parts[0] in top and "__pycache__" not in f.parts
            and f.suffix not in (".pyc", ".pyo")]
    return sorted(kept), packages


def _install_requires(dist: metadata.Distribution) -> list[str]:
    """The distribution's requirements, less those of its extras (`; extra == "test"`)."""
    return [req for req in dist.requires or ()
            if "extra" not in str(Requirement(req).marker or "")]


def write_installed_setup(dist: metadata.Distribution, into: str) -> tuple[str, int]:
    """Copy the distribution's installed package files into `into` and write a setup.py there
    that declares them (modules and package data) with the distribution's name, version,
    Python range and requirements; returns the setup.py's path and the number of files."""
    files, packages = _package_files(dist)
    package_data: dict[str, list[str]] = {}
    for file in files:
        target = os.path.join(into, *file.parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(dist.locate_file(file), target)
        owner = file.parent
        if ".".join(owner.parts) in packages and file.suffix == ".py":
            continue  # a module: setuptools finds it from `packages`
        while ".".join(owner.parts) not in packages:  # data: belongs to the nearest package
            owner = owner.parent
        package_data.setdefault(".".join(owner.parts), []).append(
            file.relative_to(owner).as_posix())
    meta = dist.metadata
    arguments = {"name": meta["Name"], "version": meta["Version"],
                 "python_requires": meta["Requires-Python"], "packages": sorted(packages),
                 "package_data": package_data, "install_requires": _install_requires(dist)}
    setup_py = os.path.join(into, "setup.py")
    with open(setup_py, "w") as fh:
        fh.write(f"# {meta['Name']} {meta['Version']} as installed here, for Dataflow workers "
                 "(written by pipeline/dataflow.py)\nfrom setuptools import setup\n\nsetup(\n"
                 + "".join(f"    {key}={value!r},\n" for key, value in arguments.items()
                           if value is not None)
                 + ")\n")
    return setup_py, len(files)


def _names_this_package(path: str) -> bool:
    """An sdist or wheel of this package (batch_predict-0.1.0.tar.gz, ...-py3-none-any.whl)."""
    normal = re.sub(r"[-_.]+", "_", os.path.basename(path).lower())
    return re.match(re.sub(r"[-_.]+", "_", DISTRIBUTION) + r"_\d", normal) is not None


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
    """Fail fast on missing Dataflow flags; default --setup_file. No-op for other runners.

    --setup_file: this checkout's setup.py; from an installed copy, one written for it in a
    temp dir that lives as long as `options` (see write_installed_setup). Neither with
    --sdk_container_image, nor when --extra_package already stages this package."""
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
        if setup.setup_file is None and not any(
                _names_this_package(path) for path in setup.extra_packages or ()):
            setup.setup_file = _stage_installed_copy(options)


def _stage_installed_copy(options: PipelineOptions) -> str:
    dist = installed_distribution()
    if dist is None:
        raise OptionsError(
            "Dataflow workers need this package, and this copy of it is neither a checkout "
            f"(no setup.py beside it) nor an installed {DISTRIBUTION}: pass --setup_file "
            "path/to/setup.py, --extra_package with its sdist or wheel, or "
            "--sdk_container_image with the package installed (see "
            "jobs/flex_template/Dockerfile)")
    into = tempfile.mkdtemp(prefix="batch-predict-sdist-")
    # Beam's stager builds the sdist while the job is built: keep the dir as long as the options
    weakref.finalize(options, shutil.rmtree, into, True)
    setup_py, count = write_installed_setup(dist, into)
    _LOG.info("Dataflow workers get %s %s as installed in %s: %d files staged through %s",
              dist.metadata["Name"], dist.metadata["Version"], dist.locate_file(""), count,
              setup_py)
    return setup_py
