"""`python -m pipeline describe --model M [--signature S]`: what the pipeline sees in a model.

Prints JSON: the chosen version, every signature with its inputs/outputs (dtype, shape) and
call convention, the feature spec recovered for the chosen signature, and the size on disk.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipeline.run import EXIT_OK, EXIT_USAGE
from transforms.errors import FeatureSpecError, ModelError
from transforms.introspect import signature_info
from transforms.model import load_signature, model_size_bytes, settle_spec

__all__ = ["describe", "main"]


def describe(model_path: str, signature: str = "serving_default",
             cache_dir: str | None = None) -> dict:
    """What the pipeline sees in a model. A spec that cannot be settled for the chosen
    signature is reported (`feature_spec_error`) instead of failing: describe is how a user
    finds out what to put in --feature_spec."""
    raw = load_signature(model_path, signature, cache_dir)
    signatures = {}
    for name in sorted(raw.loaded.signatures.keys()):
        info = raw.info if name == signature else signature_info(
            name, raw.loaded.signatures[name])
        signatures[name] = info.to_json()
    out = {
        "model": model_path, "model_path": raw.version.path,
        "version": raw.version.version, "size_bytes": model_size_bytes(raw.local_dir),
        "signatures": signatures, "chosen_signature": signature,
        "convention": raw.info.convention,
    }
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
    parser.add_argument("--model", required=True, help="SavedModel dir or export base dir")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--model_cache_dir", default=None)
    parser.add_argument("--spec_only", action="store_true",
                        help="print only the feature spec (usable as --feature_spec)")
    args = parser.parse_args(argv)
    try:
        info = describe(args.model, args.signature, args.model_cache_dir)
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
