"""`python -m pipeline report OUTPUT`: render OUTPUT/report.html again from the run's files.

Reads OUTPUT/metrics/*, manifest.json and the first error rows (local or gs://, through Beam's
FileSystems) and rewrites report.html next to manifest.json; the job writes the same page at
finalize. Useful after changing the report's code, or for a run whose report was deleted.
"""
from __future__ import annotations

import argparse
import sys

from apache_beam.io.filesystems import FileSystems

from pipeline.run import EXIT_OK, EXIT_USAGE
from transforms.report import render_output_dir

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline report", description=__doc__)
    parser.add_argument("output", help="a finished run's output dir (local or gs://)")
    args = parser.parse_args(argv)
    output = args.output.rstrip("/")
    for needed in ("manifest.json", "metrics/summary.json"):
        if not FileSystems.exists(f"{output}/{needed}"):
            print(f"error: {output}/{needed} not found: OUTPUT must be the output dir of a "
                  "finished run (the --output of the job)", file=sys.stderr)
            return EXIT_USAGE
    print(render_output_dir(output))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
