"""`python -m pipeline --model M --input GLOB --output DIR [options]` (also `batch-predict ...`).

Subcommands: `python -m pipeline describe --model M` prints the model's signatures and feature
spec; `python -m pipeline demo` builds the embedded demo model and data and scores them;
`python -m pipeline optimize --model M --output DIR` writes an inference-optimized copy of a
model after checking it against the original (`pipeline.optimize`).
Anything else is a scoring job (`pipeline.run.main`).
"""
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["describe"]:
        from pipeline.describe import main as describe_main
        return describe_main(argv[1:])
    if argv[:1] == ["optimize"]:
        from pipeline.optimize import main as optimize_main
        return optimize_main(argv[1:])
    if argv[:1] == ["demo"]:
        from pipeline.demo_job import main as demo_main
        return demo_main(argv[1:])
    from pipeline.run import main as run_main
    return run_main(argv)


if __name__ == "__main__":
    sys.exit(main())
