"""`python -m pipeline describe --model M [--signature S]`: what the pipeline sees in a model.

Prints JSON: the kind of model and how it was loaded, the chosen version, every signature with
its inputs/outputs (dtype, shape) and call convention, the feature spec recovered for the
chosen signature, and the size on disk.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.run import EXIT_OK, EXIT_USAGE
from transforms.errors import FeatureSpecError, ModelError
from transforms.introspect import signature_info
from transforms.graph_models import parse_tensor_map
from transforms.model import load_signature, model_size_bytes, settle_spec

__all__ = ["describe", "main"]


def describe(model_path: str, signature: str = "serving_default",
             cache_dir: str | None = None, model_inputs: tuple | None = None,
             model_outputs: tuple | None = None) -> dict:
    """What the pipeline sees in a model. A spec that cannot be settled for the chosen
    signature is reported (`feature_spec_error`) instead of failing: describe is how a user
    finds out what to put in --feature_spec."""
    raw = load_signature(model_path, signature, cache_dir, model_inputs, model_outputs)
    signatures = {}
    for name in sorted(raw.loaded.signatures.keys()):
        info = raw.info if name == signature else signature_info(
            name, raw.loaded.signatures[name])
        signatures[name] = info.to_json()
    out = {
        "model": model_path, "model_path": raw.version.path,
        "version": raw.version.version, "model_kind": raw.kind,
        "size_bytes": model_size_bytes(raw.local_dir),
        "signatures": signatures, "chosen_signature": signature,
        "convention": raw.info.convention,
    }
    if raw.load_note is not None:
        out["model_load_note"] = raw.load_note
    try:
        spec, source = settle_spec(raw.info, None)
    except ModelError as e:
        out["feature_spec_error"] = str(e)
    else:
        out["feature_spec_source"] = source
        out["feature_spec"] = spec.to_json()
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline describe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="SavedModel dir, export base dir, or frozen graph file (.pb)")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--model_cache_dir", default=None)
    parser.add_argument("--model_inputs", default=None,
                        help="a frozen graph's inputs, NAME:TENSOR,... (else its .json sidecar)")
    parser.add_argument("--model_outputs", default=None,
                        help="a frozen graph's outputs, NAME:TENSOR,... (else its sidecar)")
    parser.add_argument("--spec_only", action="store_true",
                        help="print only the feature spec (usable as --feature_spec)")
    args = parser.parse_args(argv)
    tensors = []
    for option, text in (("--model_inputs", args.model_inputs),
                         ("--model_outputs", args.model_outputs)):
        try:
            tensors.append(parse_tensor_map(text) if text is not None else None)
        except ValueError as e:
            print(f"error: {option}: {e}", file=sys.stderr)
            return EXIT_USAGE
    try:
        info = describe(args.model, args.signature, args.model_cache_dir, *tensors)
    except (ModelError, FeatureSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.spec_only:
        if "feature_spec" not in info:
            print(f"error: {info['feature_spec_error']}", file=sys.stderr)
            return EXIT_USAGE
        print(json.dumps(info["feature_spec"], indent=2))
        return EXIT_OK
    print(json.dumps(info, indent=2))
    return EXIT_OK
