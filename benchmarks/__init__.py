"""Throughput benchmarks for batch-predict: `python -m benchmarks` (or `make bench`).

TensorFlow alone (benchmarks.tf_alone) vs this pipeline (benchmarks.pipeline_child) vs Beam
RunInference (benchmarks.runinference) on the same data, plus start-up, scaling (against Beam's
own smallest jobs: benchmarks.beam_floor), multi-process, --batch_size and one-large-file
(--split_bytes) sections; each measurement in a fresh subprocess (benchmarks.common), tables in
benchmarks.report, sections and options in benchmarks.__main__. Nothing here is imported by the
pipeline. The current figures and the commands that produced them: benchmarks/RESULTS.md.
"""
