"""What an input or an output format is, and what the formats share: opening a shard (gzip
detected from its first bytes, not its name), the record cap, and reading ahead in a thread.

An **input format** turns one shard into batches and error rows, in record order:
- `RecordBatch`es of serialized tf.Examples (TFRecord), which the parse step passes on as they
  are, or `ColumnBatch`es of named columns (CSV's text columns; a typed source's numbers and
  lists), which the parse step converts with the feature spec;
- error rows (`transforms.records.error_row` dicts) for what it cannot read: a damaged record,
  a line longer than the cap, the unreadable rest of a file.
The generic reading step (`transforms.read`) counts records, error rows and unreadable tails
from what the format yields, so a format only adds the facts it alone knows to the shard's
stats: the bytes it read as stored (`bytes`) and whether the shard was gzip (`gzip`).

An **output format** turns one prediction batch into the text of its rows, and names the
suffix and the first line of its files.
"""
from __future__ import annotations

import abc
import contextlib
import gzip
import queue
import threading
from typing import TYPE_CHECKING, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.records import MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from transforms.feature_spec import FeatureSpec
    from transforms.records import Batch

__all__ = ["DEFAULT_MAX_RECORD_BYTES", "READ_CHUNK", "PAYLOAD_KEEP", "InputFormat",
           "OutputFormat", "open_shard", "shard_stream", "ReadAhead"]

# The largest record (TFRecord frame or CSV line) read into memory; a larger one is an error
# row, so that a corrupt length field or a file with no line ends cannot exhaust memory.
DEFAULT_MAX_RECORD_BYTES = 128 << 20
READ_CHUNK = 4 << 20  # bytes asked of a shard's stream at once
_GZIP_MAGIC = b"\x1f\x8b"
# one byte beyond what an error row keeps, so that the row says its payload was cut
PAYLOAD_KEEP = MAX_PAYLOAD_BYTES + 1


class InputFormat(abc.ABC):
    """One kind of input file: what `--input_format NAME` reads.

    `name` is the option's value; `title` is how messages name the files ("CSV");
    `extensions` are the lower-case file name endings that mean this format when
    `--input_format` is not given (the longest matching ending of any format wins, so `.csv.gz`
    beats `.gz`). An instance is carried to the workers inside the reading step: it must be
    picklable and small.
    """
    name: str
    title: str
    extensions: tuple[str, ...]
    # True when batches are serialized tf.Examples that hold the key (the model step reads it
    # from them); False when the parse step takes the key from a column
    keys_in_examples: bool = False

    @abc.abstractmethod
    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator[Batch | dict]:
        """Yield the shard's records in order, as batches of at most `batch_size` records
        (each from this shard only) and error rows (dicts), one per record that cannot be
        read, or one for an unreadable rest of the file. `columns` names the columns the job
        reads (the spec's features and the key): a column-oriented source may leave out the
        others. No record longer than `max_record_bytes` may be held in memory: it is an
        error row. Record what only the format knows in `stats`: "bytes", the bytes read as
        stored, and "gzip" (`shard_stream` sets both)."""

    @abc.abstractmethod
    def key_dtype(self, path: str, key: str, max_record_bytes: int) -> str:
        """The dtype ("string", "int64" or "float32") of the key column `key` when it is not a
        feature of the spec and --key_dtype is auto; `path` is the job's first input."""

    def check_first_shard(self, path: str, spec: FeatureSpec, key_field: str | None,
                          max_record_bytes: int) -> None:
        """A start-up check of the job's first input, before any worker starts: raises
        transforms.errors.InputError for a file the job could not use. Nothing by default."""


class OutputFormat(abc.ABC):
    """One kind of predictions file: what `--output_format NAME` writes.

    Files are `predictions-SSSSS-of-NNNNN` + `suffix` (".jsonl"); `header` is the first line
    of every file, or None; `encode` gives one batch's rows as lines joined by "\\n" (no
    newline at the end). The key column comes first (or `shard`, `index` without a key), then
    every model output in name order (`transforms.formats.json_columns.row_columns`).
    """
    name: str
    suffix: str

    def header(self, key_field: str | None, output_names: list[str]) -> bytes | None:
        return None

    @abc.abstractmethod
    def encode(self, batch, key_field: str | None) -> bytes:
        """The rows of a `PredictionBatch` as text."""


def open_shard(path: str):
    """(binary stream of the shard's content, whether it was gzip): gunzipped when it starts
    with gzip magic, whatever its name."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    head = raw.read(2)
    if head == _GZIP_MAGIC:
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), True
    raw.seek(0)
    return raw, False


@contextlib.contextmanager
def shard_stream(path: str, stats: dict):
    """`open_shard` for a format's `read_shard`: sets stats["gzip"], and stats["bytes"] (as
    stored: compressed bytes for a gzip file) once the shard was read to its end."""
    stream, gz = open_shard(path)
    stats["gzip"] = gz
    raw = stream.fileobj if gz else stream  # the file itself, under the gunzipping
    try:
        yield stream
        stats["bytes"] = raw.tell()
    finally:
        stream.close()


class ReadAhead:
    """Runs a reading iterator in a helper thread, up to `depth` items ahead of its consumer.

    For readers whose work mostly releases the GIL (decompression, pyarrow's CSV parser): the
    next block is read while the bundle thread converts, predicts and writes the previous one.
    (Not for TFRecord: its framing loop is Python per record and would only contend for the
    GIL.) Items and the iterator's exception (re-raised in the consumer) keep their order.
    `close()` stops the thread and waits for it: call it before closing the stream the
    iterator reads."""

    def __init__(self, items: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True,
                                        name="read-ahead")
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator):
        try:
            for item in items:
                if not self._put((True, item)):
                    return
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer as it is
            self._put((False, e))
            return
        self._put((False, None))

    def __iter__(self):
        while True:
            ok, value = self._queue.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value

    def close(self):
        self._stop.set()
        self._thread.join()
