"""`python -m pipeline demo`: build the demo model and data, score both formats, summarize.

Everything lands under --workdir (default ./demo_output): model/, data/, and one output dir per
input format. Extra flags are passed to both jobs (e.g. --direct_num_workers=2).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from pipeline import demo
from pipeline.run import EXIT_OK, configure_logging, format_summary, read_summary, run

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline demo", description=__doc__)
    parser.add_argument("--workdir", default="demo_output")
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=4)
    args, extra = parser.parse_known_args(argv)
    configure_logging()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    model_dir = os.path.join(work, "model", "1700000000")  # an export base dir, as users have
    demo.build_demo_model(model_dir)
    files = demo.write_demo_data(os.path.join(work, "data"), rows=args.rows, shards=args.shards)
    print(f"demo model: {model_dir}\ndemo data:  {len(files['tfrecord'])} TFRecord shards "
          f"(half gzip) and {len(files['csv'])} CSV shards, {args.rows} rows each format")
    for fmt, pattern in (("tfrecord", "part-*.tfrecord*"), ("csv", "part-*.csv")):
        out = os.path.join(work, f"predictions_{fmt}")
        run(["--model", os.path.join(work, "model"),
             "--input", os.path.join(work, "data", pattern), "--output", out,
             "--key_field", "id"] + extra)
        print(f"\n== {fmt} input ==")
        print(format_summary(read_summary(out), out))
        print(f"run report:   {os.path.join(out, 'report.html')}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
