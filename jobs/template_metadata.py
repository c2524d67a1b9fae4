"""flex_template/metadata.json, generated from the pipeline's own options.

The template's parameters must be exactly the options of `python -m pipeline` (pipeline/
options.py): same names, optional exactly when the option has a default, the option's help
as help text. Generating the file keeps them in step; a test fails when the committed file
differs from what this produces (`python -m jobs metadata > jobs/flex_template/metadata.json`).
"""
from __future__ import annotations

import argparse
import json

from jobs.spec import pipeline_option_actions

__all__ = ["TEMPLATE_NAME", "DESCRIPTION", "flex_template_metadata", "render_metadata"]

TEMPLATE_NAME = "batch-predict"
DESCRIPTION = ("Batch prediction with a TensorFlow SavedModel: TFRecord, CSV, Parquet or JSONL "
               "files or a BigQuery table or query in; predictions (files or a BigQuery "
               "table), error rows, metrics, manifest.json and _SUCCESS out")


def _label(dest: str) -> str:
    return dest.replace("_", " ").capitalize()


def _help(action: argparse.Action) -> str:
    text = " ".join((action.help or "").split())
    if action.choices:
        text += f" (one of: {', '.join(map(str, action.choices))})"
    if isinstance(action, argparse._StoreTrueAction):
        text += " (true or false)"
    return text


def flex_template_metadata() -> dict:
    parameters = []
    for action in pipeline_option_actions():
        param = {"name": action.dest, "label": _label(action.dest), "helpText": _help(action),
                 "isOptional": not action.required}
        if isinstance(action, argparse._StoreTrueAction):
            param["regexes"] = ["^(true|false)$"]
        parameters.append(param)
    return {"name": TEMPLATE_NAME, "description": DESCRIPTION, "parameters": parameters}


def render_metadata() -> str:
    return json.dumps(flex_template_metadata(), indent=2) + "\n"
