"""What a job would cost, from a sample of its records (`--plan_only --plan_sample N`).

The first N records of the first input file are read with the job's input format, parsed
with its feature spec and scored in batches of the job's batch size by the model the plan
loaded, all in this process: the read + parse time, each batch's model call (one warm-up
call first, not counted), and the records per input byte (of the whole blocks the reader
took: a plain file is read 4 MiB at a time). The whole run is estimated from those: records
~ input bytes x records per byte (rough when gzip and plain files are mixed: the sample's
file speaks for all), and the work ~ records x (read + parse + model) per record, one after
the other in one process here (a run overlaps them; writing, Beam's own steps and start-up
are not included; a runner with more workers divides it).
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from pipeline.build import JobPlan

__all__ = ["SampleCost", "sample_cost", "format_sample"]


@dataclasses.dataclass(frozen=True)
class SampleCost:
    path: str               # the file the sample was read from
    records: int            # records read (error rows included)
    scored: int             # records parsed and scored
    spanned: int            # records in the blocks the sample was read from
    sample_bytes: int       # bytes of those blocks, as stored
    read_parse_s: float     # reading and parsing the sample
    batch_ms: list          # model call per batch, in order (the warm-up call not included)
    batch_size: int
    total_bytes: int        # the job's input

    @property
    def records_per_byte(self) -> float:
        return self.spanned / self.sample_bytes if self.sample_bytes else 0.0

    @property
    def estimated_records(self) -> int:
        return round(self.total_bytes * self.records_per_byte)

    @property
    def seconds_per_record(self) -> float:
        model_s = sum(self.batch_ms) / 1000.0
        return (self.read_parse_s + model_s * self.records / max(self.scored, 1)) / \
            max(self.records, 1)

    @property
    def estimated_seconds(self) -> float:
        return self.estimated_records * self.seconds_per_record


def sample_cost(plan: JobPlan, records: int) -> SampleCost:
    """Read, parse and score the first `records` records (at least; whole batches) of the
    plan's first input file, in this process."""
    import apache_beam as beam

    from transforms import formats
    from transforms.parse import columns_to_examples
    from transforms.progress import PROGRESS
    from transforms.read import ReadFilesDoFn
    from transforms.records import ColumnBatch
    from transforms.savedmodel import SavedModelHandler

    path, _ = plan.files[0]
    spec, key = plan.model.spec, plan.model.key_field
    columns = list(spec) + ([key] if key and key not in spec else [])
    reader = ReadFilesDoFn(formats.input_format(plan.input_format), plan.batch_size, columns,
                           plan.max_record_bytes)
    reader.setup()
    batches, read = [], 0
    before = PROGRESS.snapshot().bytes_read  # the reader counts how far into the file it came
    start = time.perf_counter()
    items = reader.process_file(path)
    for item in items:
        read += _records(item)
        if not isinstance(item, beam.pvalue.TaggedOutput):
            if isinstance(item, ColumnBatch):
                item, _ = columns_to_examples(item, spec, key, plan.list_separator,
                                              key_dtype=plan.model.key_dtype)
            if item is not None and len(item):
                batches.append(np.asarray(item.serialized, dtype=object))
        if read >= records:
            break
    read_parse_s = time.perf_counter() - start
    # a reader's position moves a block at a time (4 MiB of a plain file): the records per
    # byte are those of the whole blocks read, so the rest of the last block is counted too
    sample_bytes = PROGRESS.snapshot().bytes_read - before
    spanned = read
    for item in items:
        if PROGRESS.snapshot().bytes_read - before > sample_bytes:
            break  # the next block's first item
        spanned += _records(item)
    else:
        sample_bytes = PROGRESS.snapshot().bytes_read - before  # the whole file
    items.close()
    handler, model = SavedModelHandler(plan.model), plan.model_holder.model
    serialized = np.concatenate(batches) if batches else np.array([], dtype=object)
    chunks = [serialized[i:i + plan.batch_size]
              for i in range(0, len(serialized), plan.batch_size)]
    if chunks:
        handler.run_batch(model, chunks[0])  # warm-up: the first call of a size traces
    timings = []
    for chunk in chunks:
        t = time.perf_counter()
        handler.run_batch(model, chunk)
        timings.append((time.perf_counter() - t) * 1000.0)
    return SampleCost(path=path, records=read, scored=len(serialized), spanned=spanned,
                      sample_bytes=sample_bytes,
                      read_parse_s=read_parse_s, batch_ms=timings, batch_size=plan.batch_size,
                      total_bytes=sum(size for _, size in plan.files))


def _records(item) -> int:
    """The records a reading output stands for: a batch's, 1 for an error row, 0 for the
    shard's stats."""
    import apache_beam as beam
    if isinstance(item, beam.pvalue.TaggedOutput):
        return int(item.tag == "errors")
    return len(item)


def format_sample(cost: SampleCost) -> list[str]:
    from pipeline.run import human_figure
    if not cost.batch_ms:
        return [f"sample:       {cost.records:,} records of {cost.path}: none could be "
                "scored (see the error rows a run would write); no estimate"]
    median = statistics.median(cost.batch_ms)
    return [
        f"sample:       {cost.records:,} records of {cost.path} ({cost.spanned:,} records in "
        f"its first {cost.sample_bytes:,} bytes): "
        f"read and parsed in {human_figure(cost.read_parse_s * 1000)} ms; "
        f"{len(cost.batch_ms):,} model call{'s' if len(cost.batch_ms) != 1 else ''} of up to "
        f"{cost.batch_size:,} records, median {human_figure(median)} ms per call",
        f"estimate:     ~{cost.estimated_records:,} records in all; ~"
        f"{_duration(cost.estimated_seconds)} of reading, parsing and scoring one after the "
        "other in one process here (a run overlaps them; writing and start-up not included)",
    ]


def _duration(seconds: float) -> str:
    from pipeline.progress import duration_text
    return duration_text(seconds) if seconds >= 1 else f"{seconds * 1000:.0f} ms"
