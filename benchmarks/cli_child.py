"""The job as a user or a scheduler runs it: `python -m pipeline ARGS`, timed from process spawn
to exit (`run_child`'s `process_wall_s`).

Unlike `pipeline_child`, nothing is imported ahead: TensorFlow is imported where the command
line imports it (while planning). `main_returned_s` is when the command's `main()` returned,
so `process_wall_s - main_returned_s` is the interpreter's exit.
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import sys  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--spawned", type=float, default=None)
    parser.add_argument("pipeline_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    spawned = args.spawned or T_START
    pargs = args.pipeline_args[1:] if args.pipeline_args[:1] == ["--"] else args.pipeline_args
    import pipeline.__main__ as cli
    sys.argv = ["pipeline"] + pargs
    code = cli.main()
    returned = time.time() - spawned
    from benchmarks.common import write_result
    write_result(args.result, {"kind": "cli", "argv": pargs, "exit_code": code,
                               "main_returned_s": round(returned, 3)})
    return code


if __name__ == "__main__":
    raise SystemExit(main())
