"""Throughput benchmarks for batch-predict: `python -m benchmarks` (or `make bench`).

For each model size (small: 2x256 hidden, heavy: 3x2048 hidden) and input format (TFRecord,
CSV) it measures, in fresh subprocesses, repeated and interleaved so that ratios are computed
within one round:

  (a) TensorFlow alone     tf.data -> batch 4096 -> SavedModel signature (benchmarks.tf_alone)
  (b) this pipeline        pipeline.run.run() on the local FnApiRunner, per output format
                           (benchmarks.pipeline_child)
  (c) Beam RunInference    one example per element, a TF SavedModel ModelHandler
                           (benchmarks.runinference)

plus a scaling series (records vs us/record and peak RSS), start-up time on a 100-record input,
and single- vs multi-process DirectRunner on the heavy model. `benchmarks.profile` attributes
the pipeline's time to stages from a py-spy recording. Nothing here is imported by the
pipeline; results and the exact commands are kept in benchmarks/RESULTS.md.
"""
