"""`python -m pipeline --model M --input GLOB --output DIR [options]`

Subcommands: `python -m pipeline describe --model M` prints the model's signatures and feature
spec; `python -m pipeline demo` builds the embedded demo model and data and scores them.
"""
import os
import sys


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    from pipeline.run import main as run_main
    return run_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
