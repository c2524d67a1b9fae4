"""The elements that flow through the pipeline, and the dead-letter row format.

From the reader on, an element is a *batch* of records from one shard (`RecordBatch`, or a
`ColumnBatch` of named columns until the parse step), never a single record: Beam costs tens
of microseconds per element, TensorFlow a fraction of that per example, so per-element work is
paid once per batch.

Error rows (`errors-*.jsonl`) have these fields:
  shard        the input file
  index        0-based record index in the shard (TFRecord record / CSV data row), or null
  line         1-based line number where the row starts (CSV and other text sources only)
  error_type   one of ERROR_TYPES
  message      what is wrong, in words
  payload      the raw record: text for CSV (a JSON object for typed columns), base64 for
               TFRecord bytes (first MAX_PAYLOAD_BYTES bytes); payload_truncated says if it
               was cut
"""
from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import operator
import pickle

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

from transforms.errors import ERROR_TYPES

__all__ = ["MAX_PAYLOAD_BYTES", "Batch", "BatchCoder", "RecordBatch", "ColumnBatch", "CsvBatch",
           "csv_text", "payload_field", "error_row", "in_global_window"]

MAX_PAYLOAD_BYTES = 64 * 1024


class Batch:
    """Base of the batch elements (RecordBatch, ColumnBatch, PredictionBatch): coded by
    `BatchCoder`, whose size estimate does not serialize the batch.

    Beam samples the size of the first elements of every PCollection (and a few later ones)
    through the coder; with the default (pickle) coder that pickles a multi-MB batch each
    time, which measured 5-10% of a small model's run.
    """

    def estimated_bytes(self) -> int:
        raise NotImplementedError


class BatchCoder(beam.coders.Coder):
    """Pickle, with a cheap `estimate_size` (the batch's own estimate)."""

    def encode(self, value):
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded):
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value) -> int:
        return value.estimated_bytes()

    def to_type_hint(self):
        return Batch


beam.coders.registry.register_coder(Batch, BatchCoder)


def _object_bytes(values: np.ndarray | None) -> int:
    return 0 if values is None else int(sum(map(len, values)))


@dataclasses.dataclass
class RecordBatch(Batch):
    """Serialized tf.Examples from one shard, with where each came from."""
    shard: str
    serialized: np.ndarray          # object array of bytes
    indices: np.ndarray             # int64 record index within the shard
    keys: np.ndarray | None = None  # key column when the reader has it (CSV)
    lines: np.ndarray | None = None  # CSV start line numbers
    # --passthrough_fields: field -> one value per record (transforms.passthrough)
    passthrough: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.serialized)

    def estimated_bytes(self) -> int:
        return _object_bytes(self.serialized) + self.indices.nbytes


@dataclasses.dataclass
class ColumnBatch(Batch):
    """Records from one shard as named columns, before conversion with the feature spec: what a
    column-oriented source hands to the parse step.

    `table` is an Arrow table whose column types decide the conversion (`transforms.parse`):
    string columns are text, CSV's cells, and follow the text rules; numeric, binary and list
    columns, what a typed source (Parquet, BigQuery) gives, convert without a text round trip.
    `indices` are the records' 0-based indices in the shard, `lines` their 1-based start lines
    in a text file (None for other sources).

    A text source may set more: `header`, every name of the file's header line in order (the
    header rule of `transforms.parse` applies to it); `text`, the raw lines of the table's rows
    (for error payloads); and `rows` instead of `table`, the cells (str) of each row in header
    order, as Python's csv module reads them.
    """
    shard: str
    table: object                       # pyarrow.Table, or None when `rows` holds the cells
    indices: np.ndarray                 # int64 record index within the shard
    lines: np.ndarray | None = None     # start line numbers (text sources)
    header: list[str] | None = None     # the header line's names (text sources)
    rows: list[list[str]] | None = None
    text: bytes | None = None           # the table's raw lines, for error payloads

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.rows)

    def estimated_bytes(self) -> int:
        if self.table is not None:
            return self.table.nbytes + len(self.text or b"")
        return sum(map(len, map(",".join, self.rows)))

    def has_column(self, name: str) -> bool:
        if self.table is not None:
            return name in self.table.column_names
        return name in self.header

    def column(self, name: str):
        """The values of one column: a pyarrow Array, or a list of str (csv-module rows)."""
        if self.table is not None:
            return self.table.column(name).combine_chunks()
        i = len(self.header) - 1 - self.header[::-1].index(name)  # the last one wins
        return list(map(operator.itemgetter(i), self.rows))

    def row_text(self, i: int) -> str:
        """Row i as text, for an error row's payload: its line for a text source, else the
        row's values as a JSON object."""
        if self.text is not None:
            # split once per batch: every row of a batch may be an error row
            lines = self.__dict__.get("_text_lines")
            if lines is None:
                lines = self._text_lines = self.text.split(b"\n")
            return lines[i].rstrip(b"\r").decode("utf-8", "replace")
        if self.rows is not None:
            return csv_text(self.rows[i])
        return json.dumps(self.table.slice(i, 1).to_pylist()[0], ensure_ascii=False,
                          default=str)


class CsvBatch(ColumnBatch):
    """CSV records from one shard: text columns and the file's header. Either `rows` (lists of
    cells, from the csv module) or `table` (string columns parsed by pyarrow, one line per
    row, with `text` the raw lines they came from) is set."""

    def __init__(self, shard: str, header: list[str], rows: list[list[str]] | None,
                 indices: np.ndarray, lines: np.ndarray, table=None, text: bytes | None = None):
        super().__init__(shard, table, indices, lines, header=header, rows=rows, text=text)


def csv_text(row: list[str]) -> str:
    """Cells as one CSV line (no line end), for an error row's payload; undecodable bytes (kept
    as surrogates by the reader) become U+FFFD."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue().encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def payload_field(payload: bytes | str | None) -> dict:
    if payload is None:
        return {"payload": None, "payload_truncated": False}
    truncated = len(payload) > MAX_PAYLOAD_BYTES
    payload = payload[:MAX_PAYLOAD_BYTES]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        payload = base64.b64encode(bytes(payload)).decode("ascii")
    return {"payload": payload, "payload_truncated": truncated}


def error_row(shard: str, index: int | None, error_type: str, message: str,
              payload: bytes | str | None = None, line: int | None = None) -> dict:
    assert error_type in ERROR_TYPES, error_type
    row = {"shard": shard, "index": None if index is None else int(index)}
    if line is not None:
        row["line"] = int(line)
    row.update({"error_type": error_type, "message": message})
    row.update(payload_field(payload))
    return row


def in_global_window(outputs):
    """A DoFn's outputs from finish_bundle, which must carry their window: each main output and
    each TaggedOutput's value in the global window."""
    for out in outputs:
        if isinstance(out, beam.pvalue.TaggedOutput):
            yield beam.pvalue.TaggedOutput(out.tag, GlobalWindows.windowed_value(out.value))
        else:
            yield GlobalWindows.windowed_value(out)
