"""Beam's own fixed cost per job on this host: the floor under any job's start-up.

Two jobs, each built and run in this fresh process on the runner the pipeline uses locally:
the in-process FnApiRunner, built here as `pipeline.run.make_pipeline` builds it (importing
that module would register the pipeline's own required options, so this job could not run
bare). Each is timed like the pipeline's `run_s`, from building the Pipeline to
`wait_until_finish` returning, imports excluded:

    map_s    `Create([one element]) | Map`: no input, no output
    write_s  `Create([one element]) | Map(str) | WriteToText`: the smallest job that writes a
             file (Beam's file sink: temp file, then finalize)

`python -m benchmarks.beam_floor` prints both. Each is run once, the map job first: each is
the first of its kind in the process, as a scheduled job's run is. The scaling section
compares them with the largest fixed cost per job at which end-to-end µs/record could stay
within 15% over the series.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

__all__ = ["main"]


def _timed(build) -> float:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    t = time.perf_counter()
    p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build(p | beam.Create(["x"], reshuffle=False))
    p.run().wait_until_finish()
    return time.perf_counter() - t


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", help="write the figures to this JSON file too")
    parser.add_argument("--spawned", type=float, default=None)
    args = parser.parse_args(argv)
    t = time.time()
    import apache_beam as beam
    beam_import = time.time() - t
    with tempfile.TemporaryDirectory() as out:
        map_s = _timed(lambda pc: pc | beam.Map(len))
        write_s = _timed(lambda pc: pc | beam.Map(str)
                         | beam.io.WriteToText(os.path.join(out, "floor")))
        written = [f for f in os.listdir(out) if f.startswith("floor")]
        lines = [pathlib.Path(out, f).read_text() for f in written]
    if lines != ["x\n"]:
        raise SystemExit(f"the write job left {written!r} holding {lines!r}, expected one "
                         "file with the one element")
    result = {"kind": "beam_floor", "beam_import_s": round(beam_import, 3),
              "map_s": round(map_s, 3), "write_s": round(write_s, 3)}
    print(f"Beam's own fixed cost per job: Create | Map {map_s:.3f} s, "
          f"Create | Map | WriteToText {write_s:.3f} s (import apache_beam {beam_import:.2f} s)")
    if args.result:
        from benchmarks.common import write_result
        write_result(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
