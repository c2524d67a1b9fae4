"""Throughput benchmarks for batch-predict: `python -m benchmarks` (or `make bench`).

For each model size (small: 2x256 hidden, heavy: 3x2048 hidden) and input format (TFRecord,
CSV) it measures, in fresh subprocesses, repeated and interleaved so that ratios are computed
within one round:

  (a) TensorFlow alone     tf.data -> batch 4096 -> SavedModel signature (benchmarks.tf_alone)
  (b) this pipeline        pipeline.run.run() on the local FnApiRunner, per output format
                           (benchmarks.pipeline_child)
  (c) Beam RunInference    one example per element, a TF SavedModel ModelHandler
                           (benchmarks.runinference)

plus a scaling series (records vs µs/record and peak RSS, against Beam's own smallest jobs:
benchmarks.beam_floor), start-up time on a 100-record input, single- vs multi-process
DirectRunner on the heavy model, and a --batch_size sweep. Tables: benchmarks.report. Nothing
here is imported by the pipeline; the current figures and the commands that produced them are
in benchmarks/RESULTS.md.
"""
