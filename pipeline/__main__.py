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

# subcommands that import TensorFlow as they start (a scoring job does once its options pass)
_TENSORFLOW_SUBCOMMANDS = ("describe", "optimize", "demo")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # TensorFlow's start-up lines are hidden unless asked for (--verbose) or the user chose
    # TensorFlow's log level; the level is read when TensorFlow is imported
    args = argv[:argv.index("--")] if "--" in argv else argv
    quiet = "--verbose" not in args and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if argv[:1] and argv[0] in _TENSORFLOW_SUBCOMMANDS and "-h" not in args \
                and "--help" not in args:
            from pipeline.run import start_tensorflow_quietly
            start_tensorflow_quietly()
    if argv[:1] == ["describe"]:
        from pipeline.describe import main as describe_main
        return describe_main(argv[1:])
    if argv[:1] == ["optimize"]:
        from pipeline.optimize import main as optimize_main
        return optimize_main(argv[1:])
    if argv[:1] == ["report"]:
        from pipeline.report import main as report_main
        return report_main(argv[1:])
    if argv[:1] == ["demo"]:
        from pipeline.demo_job import main as demo_main
        return demo_main(argv[1:])
    from pipeline.run import main as run_main
    return run_main(argv, quiet_tensorflow=quiet)


if __name__ == "__main__":
    sys.exit(main())
