"""Facts about a run that its outputs should carry (manifest.json): which code, which inputs,
which labels (e.g. the run date of a scheduled job).

They are gathered by the launcher into the plan's run_info, which the summary and the
manifest are built from, so the workers never need to know them.
"""
from __future__ import annotations

import json
import math
import os
import subprocess

from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.dataflow import DISTRIBUTION
from transforms.errors import OptionsError

__all__ = ["CODE_VERSION_ENV", "code_version", "parse_label_values", "parse_labels",
           "run_provenance"]

CODE_VERSION_ENV = "BATCH_PREDICT_CODE_VERSION"  # set by the flex template image build


def code_version() -> str:
    """`0.1.0+g<commit>[.dirty]` from a checkout, the image's build arg, or the version."""
    from importlib import metadata
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        version = metadata.version(DISTRIBUTION)
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


def parse_label_values(values: list[str] | None) -> dict[str, str]:
    """Beam's --labels values (the option repeats) as one dict; later keys win.

    Each value is either `key=value` (split at the first '='; the value may be empty, the key
    may not) or one JSON object of string or number values (`{"job": "nightly", "n": 3}`). A
    value containing '{' is always read as a JSON object: the Dataflow runner reads any such
    label as a Python literal dict, so `a={b}` or JSON's true/false/null would only fail there,
    after the model was staged. A value with no '=' (`--labels team`) is refused rather than
    read as an empty label: it is more often a mistyped `team=x` or `team:x`.
    Raises OptionsError (one line, exit 2) for anything else.
    """
    labels: dict[str, str] = {}
    for raw in values or []:
        item = raw.strip()
        if "{" in item or item.startswith("["):
            labels.update(_json_labels(raw))
        elif "=" in item:
            key, value = item.split("=", 1)
            if not key.strip():
                raise OptionsError(f"--labels {_shown(raw)}: the label has no key; give "
                                   "key=value")
            labels[key.strip()] = value
        else:
            raise OptionsError(f"--labels {_shown(raw)}: a label is key=value (e.g. --labels "
                               "team=ml) or a JSON object (--labels '{\"team\": \"ml\"}')")
    return labels


def _shown(raw: str) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:76] + "...'"


def _json_labels(raw: str) -> dict[str, str]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        reason = e.args[0] if isinstance(e, ValueError) else "nested too deeply"
        raise OptionsError(f"--labels {_shown(raw)} is not a JSON object: {reason}"
                           ) from None
    if not isinstance(obj, dict):
        raise OptionsError(f"--labels {_shown(raw)} must be a JSON object of labels, got a "
                           f"{type(obj).__name__}")
    labels = {}
    for key, value in obj.items():
        if not key.strip():
            raise OptionsError(f"--labels {_shown(raw)}: a label has an empty key")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or \
                (isinstance(value, float) and not math.isfinite(value)):
            raise OptionsError(f"--labels {_shown(raw)}: label {key!r} must be a string or a "
                               f"number, got {json.dumps(value)[:40]}")
        labels[key] = str(value)
    return labels


def parse_labels(options: PipelineOptions) -> dict[str, str]:
    """Beam's --labels (repeated key=value, or one JSON object) as a dict."""
    return parse_label_values(options.view_as(GoogleCloudOptions).labels)


def run_provenance(options: PipelineOptions, files: list[tuple[str, int]]) -> dict:
    return {
        "code_version": code_version(),
        "labels": parse_labels(options),
        "input_file_list": [{"path": path, "bytes": size} for path, size in files],
    }
