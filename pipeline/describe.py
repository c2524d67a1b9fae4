"""`python -m pipeline describe --model M [--signature S]`: what the pipeline sees in a model.

Prints JSON: the chosen version, every signature with its inputs/outputs (dtype, shape) and
call convention, the feature spec recovered for the chosen signature, and the size on disk.
"""
from __future__ import annotations

import argparse
import json
import sys

from transforms.feature_spec import FeatureSpecError
from transforms.introspect import signature_info
from transforms.model import ModelError, model_size_bytes, open_model


def describe(model_path: str, signature: str = "serving_default",
             cache_dir: str | None = None) -> dict:
    model = open_model(model_path, signature, None, cache_dir, warm_up=False)
    signatures = {}
    for name in sorted(model.loaded.signatures.keys()):
        try:
            signatures[name] = signature_info(name, model.loaded.signatures[name]).to_json()
        except FeatureSpecError as e:
            signatures[name] = {"error": str(e)}
    return {
        "model": model_path, "model_path": model.version.path,
        "version": model.version.version, "size_bytes": model_size_bytes(model.local_dir),
        "signatures": signatures, "chosen_signature": signature,
        "feature_spec_source": model.spec_source, "feature_spec": model.spec.to_json(),
    }


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
        return 2
    print(json.dumps(info["feature_spec"] if args.spec_only else info, indent=2))
    return 0
