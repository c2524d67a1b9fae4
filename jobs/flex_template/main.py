"""The flex template's entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): `python -m pipeline`.

The Dataflow template launcher passes every parameter as `--name=value`. The pipeline's
on/off options are flags (`--overwrite`), which argparse refuses with a value, so
`--flag=true` becomes `--flag` and `--flag=false` is dropped; everything else passes through.
"""
import argparse
import sys


__all__ = ["normalize_flags"]


def normalize_flags(argv: list[str]) -> list[str]:
    from jobs.spec import pipeline_option_actions
    flags = {opt for a in pipeline_option_actions() if isinstance(a, argparse._StoreTrueAction)
             for opt in a.option_strings}
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if sep and name in flags:
            if value.strip().lower() in ("true", "1", "yes"):
                out.append(name)
            elif value.strip().lower() not in ("false", "0", "no", ""):
                out.append(arg)  # let the pipeline's parser say what is wrong
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    from pipeline.__main__ import main  # as `python -m pipeline`: quiet TensorFlow start too
    sys.exit(main(normalize_flags(sys.argv[1:])))
