"""Facts about a run that its outputs should carry (manifest.json): which code, which inputs,
which labels (e.g. the run date of a scheduled job).

They are gathered by the launcher into the plan's run_info, which the summary and the
manifest are built from, so the workers never need to know them.
"""
from __future__ import annotations

import json
import os
import subprocess

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

CODE_VERSION_ENV = "BATCH_PREDICT_CODE_VERSION"  # set by the flex template image build


def code_version() -> str:
    """`0.1.0+g<commit>[.dirty]` from a checkout, the image's build arg, or the version."""
    from importlib import metadata
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        version = metadata.version("batch-predict")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, ".git")):
        try:
            commit = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty",
                                     "--abbrev=12", "--match=NO_TAGS"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return version
        commit = commit.replace("-dirty", ".dirty")
        return f"{version}+g{commit}" if commit else version
    return version


def parse_labels(options: PipelineOptions) -> dict[str, str]:
    """Beam's --labels (repeated key=value, or one JSON object) as a dict."""
    labels = {}
    for item in options.view_as(GoogleCloudOptions).labels or []:
        item = item.strip()
        if item.startswith("{"):
            labels.update({str(k): str(v) for k, v in json.loads(item).items()})
        elif "=" in item:
            key, value = item.split("=", 1)
            labels[key] = value
    return labels


def run_provenance(options: PipelineOptions, files: list[tuple[str, int]]) -> dict:
    return {
        "code_version": code_version(),
        "labels": parse_labels(options),
        "input_file_list": [{"path": path, "bytes": size} for path, size in files],
    }
