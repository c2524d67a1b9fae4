"""Parquet input (`--input_format parquet`, `.parquet`): typed columns, local or gs://.

A Parquet file is read with pyarrow through the stream Beam's `FileSystems.open` gives (so
gs:// works wherever Beam's GCS filesystem does), only the columns the job reads (the spec's
features and the key), a row group at a time in record batches of at most `batch_size`
records. Column chunks are streamed, not read whole (pyarrow's buffered streams, no
pre-buffering of a row group): memory is a read buffer per column plus one batch, however
large the file and its row groups. Parquet compresses inside the file (per page), so there is
no gzip here: a gzip-compressed file is not a Parquet file.

The columns reach the parse step with their Arrow types (`ColumnBatch`): numbers, binary and
lists convert to the spec's dtypes without text (`transforms.examples.typed_feature_column`:
a double beyond float32's range is a `parse_error` row, as in CSV; int64 takes integral
floats; a null is an absent value), string columns follow the parse step's text rules. The
first input's schema is checked against the spec at start-up (`check_first_shard`): a column
whose type cannot hold its feature (text for a number, a list for a scalar, a single value for
a fixed shape of several) is an InputError, one line, before any worker starts. The key
column keeps its type (`key_dtype`).

Record indices count rows from the file's start, row group after row group. A row group that
cannot be read (a damaged page, a codec pyarrow lacks) is one `unreadable_tail` row at the
index of its first unread record, and reading goes on with the next row group: row groups are
independent, their places are in the footer. A file whose footer cannot be read is one
`unreadable_tail` row.

**Splitting** (see `transforms.formats.base`): the footer holds every row group's byte offset
and row count, so no range needs a look of its own (`summarize_range` is trivial) and
`index_file` reads the footer once: block k is the row groups whose first byte lies in grid
range k, and starts where the first of them does (an empty block starts where the next
non-empty one does, or at the end of the file); its first record index is the rows of the
row groups before it. `read_block` reads the footer again and exactly those row groups, as
`read_shard` reads them (same batches, indices and error rows).
"""
from __future__ import annotations

import bisect
import logging
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import InputError
from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES, InputFormat, SplitIndex
from transforms.records import ColumnBatch, error_row

__all__ = ["ParquetInput", "PARQUET"]

_LOG = logging.getLogger(__name__)

_MAGIC = b"PAR1"
_GZIP_MAGIC = b"\x1f\x8b"
# pyarrow's read buffer per column chunk (a smaller chunk is read whole). A local read costs
# the same wherever it lands; a remote one should be as large as what Beam's GCS reader
# fetches per request (16 MiB, gcsio.DEFAULT_READ_BUFFER_SIZE), so that reading the columns
# of a row group in turn never throws fetched bytes away.
_LOCAL_BUFFER = 1 << 20
_REMOTE_BUFFER = 16 << 20
_PAYLOAD_HEAD = 64  # bytes of an unreadable file shown in its error row
_READ_ERRORS = (OSError, EOFError, pa.ArrowException)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _one_line(e: BaseException) -> str:
    """An exception's message on one line of printable text (pyarrow's may hold control
    bytes from the file)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class _Source:
    """A seekable binary stream of one file from `FileSystems.open`, counting the bytes read
    (pyarrow reads it through Python's file protocol)."""

    def __init__(self, path: str):
        self._raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.read_bytes += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:
        self._raw.close()

    def head(self, n: int) -> bytes:
        self._raw.seek(0)
        return self._raw.read(n)


class _Unreadable(Exception):
    """A file (its footer) or a row group that cannot be read; the message says why."""


def _why_not_parquet(source: _Source, e: BaseException) -> str:
    """Why pyarrow could not open the file, from its first and last bytes where they tell."""
    try:
        size = source.seek(0, 2)
        head = source.head(4)
        source.seek(max(size - 4, 0))
        tail = source.read(4)
    except _READ_ERRORS:
        return f"its footer cannot be read ({_one_line(e)})"
    if size == 0:
        return "it is empty (0 bytes)"
    if head[:2] == _GZIP_MAGIC:
        return ("it is gzip-compressed; Parquet compresses inside its files, so decompress it "
                "first")
    if head != _MAGIC:
        return f"it does not start with Parquet's magic bytes PAR1 (it starts with {head!r})"
    if tail == b"PARE":
        return "its footer is encrypted, which this tool does not read"
    if tail != _MAGIC:
        return ("it does not end with Parquet's magic bytes PAR1: cut short (an incomplete "
                "copy or upload?)")
    return f"its footer cannot be read ({_one_line(e)})"


def _open(path: str) -> tuple[_Source, pq.ParquetFile]:
    """The file's stream and its ParquetFile (footer read); _Unreadable if it has none."""
    source = _Source(path)
    try:
        # page CRCs are checked where the writer wrote them (a damaged page is then an error
        # row, not wrong values)
        return source, pq.ParquetFile(
            source, pre_buffer=False, page_checksum_verification=True,
            buffer_size=_LOCAL_BUFFER if _is_local(path) else _REMOTE_BUFFER)
    except _READ_ERRORS as e:
        why = _why_not_parquet(source, e)
        source.close()
        raise _Unreadable(f"not a readable Parquet file: {why}") from None
    except BaseException:
        source.close()
        raise


def _schema(path: str) -> pa.Schema:
    """The file's Arrow schema (from its footer); InputError when it has none."""
    try:
        source, pf = _open(path)
    except _Unreadable as e:
        raise InputError(f"{path} is {e}") from None
    except _READ_ERRORS as e:
        raise InputError(f"cannot read {path}: {_one_line(e)}") from None
    try:
        return pf.schema_arrow
    finally:
        source.close()


# --- row groups ---------------------------------------------------------------------------------
class _GroupStarts:
    """The byte offset of each row group's first page (dictionary or data page, whichever
    comes first), computed when asked: a sequence for `bisect` (log G groups read, not all)."""

    def __init__(self, metadata: pq.FileMetaData):
        self._md = metadata

    def __len__(self) -> int:
        return self._md.num_row_groups

    def __getitem__(self, g: int) -> int:
        group = self._md.row_group(g)
        offsets = []
        for i in range(group.num_columns):
            column = group.column(i)
            offsets.append(column.data_page_offset)
            # an offset of 0 is a writer's "none" (the file's first 4 bytes are its magic)
            if column.has_dictionary_page and column.dictionary_page_offset:
                offsets.append(column.dictionary_page_offset)
        return min(offsets) if offsets else -1


def _rows_before(metadata: pq.FileMetaData, group: int) -> int:
    return sum(metadata.row_group(g).num_rows for g in range(group))


def _iter_groups(path: str, pf: pq.ParquetFile, groups: range, first_index: int,
                 batch_size: int, columns: list[str] | None) -> Iterator:
    """The records of row groups `groups` (consecutive), the first numbered `first_index`:
    ColumnBatches of at most `batch_size` records, each from one row group; a row group that
    cannot be read is one error row at its first unread record, and reading goes on."""
    names = pf.schema_arrow.names
    wanted = list(dict.fromkeys(columns)) if columns is not None else list(dict.fromkeys(names))
    present = [c for c in wanted if c in names]
    repeated = [c for c in present if names.count(c) > 1]
    index = first_index
    for g in groups:
        rows = pf.metadata.row_group(g).num_rows
        done = 0
        try:
            if repeated:
                raise _Unreadable(f"column {repeated[0]!r} appears {names.count(repeated[0])} "
                                  "times in the file's schema, so which one holds the values "
                                  "is unclear")
            for batch in pf.iter_batches(batch_size=batch_size, row_groups=[g],
                                         columns=present, use_threads=True):
                n = batch.num_rows
                if n:
                    yield ColumnBatch(path, pa.Table.from_batches([batch]),
                                      np.arange(index + done, index + done + n, dtype=np.int64))
                done += n
            if done < rows:
                raise _Unreadable(f"it holds {done} records, its footer says {rows}")
        except (_Unreadable, *_READ_ERRORS) as e:
            yield error_row(path, index + done, "unreadable_tail",
                            f"row group {g} (records {index}-{index + rows - 1}) cannot be read: "
                            f"{_one_line(e)}; {done} of its records were read before it and the "
                            "rest of the row group was not", None)
        index += rows


def _by_rows(items: Iterator, stats: dict, span: int, metadata: pq.FileMetaData,
             groups: range) -> Iterator:
    """`items` (the batches and error rows of row groups `groups`), with stats["position"]
    the share of the `span` bytes they come from that their records so far make: pyarrow
    reads a footer and then column chunks, not the file's bytes in order, so live progress
    goes by records."""
    rows = max(sum(metadata.row_group(g).num_rows for g in groups), 1)
    done = [0]
    stats["position"] = lambda: span * min(done[0], rows) // rows
    for item in items:
        done[0] += 1 if isinstance(item, dict) else len(item)
        yield item


# --- the start-up check -------------------------------------------------------------------------
def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _plain(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _value_kind(t: pa.DataType) -> str | None:
    """"number", "text" or "null" (no values) for what a column's values can be read as."""
    t = _plain(t)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return "number"
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return "text"
    if pa.types.is_null(t):
        return "null"
    return None


def _column_problem(t: pa.DataType, feature) -> str | None:
    """Why a column of Arrow type `t` cannot hold `feature`, or None."""
    t = _plain(t)
    name, dtype = feature.name, feature.dtype
    listed = _is_list(t)
    values = _plain(t.value_type) if listed else t
    what = f"column {name!r} ({t})"
    if listed and _is_list(values):
        return (f"{what} holds lists of lists; feature {name!r} needs its {dtype} values as "
                "one flat list per record")
    if dtype == "string":
        if _value_kind(values) not in ("text", "null"):
            return (f"{what} cannot hold feature {name!r} (string): it needs a string or binary "
                    "column")
    elif _value_kind(values) not in ("number", "null"):
        return (f"{what} cannot hold feature {name!r} ({dtype}): it needs a number column "
                "(float, double or an integer type)")
    if feature.kind != "fixed":
        return None  # varlen, ragged: a list per record, or a single value
    n = feature.num_values
    if n == 1 and listed:
        return (f"{what} is a list column; feature {name!r} is one {dtype} value per record: "
                "it needs a column of single values")
    if n != 1 and not listed:
        return (f"{what} holds one value per record; feature {name!r} has shape "
                f"{list(feature.shape)}: it needs a list column of {n} values")
    if n != 1 and pa.types.is_fixed_size_list(t) and t.list_size != n:
        return (f"{what} holds lists of {t.list_size} values; feature {name!r} has shape "
                f"{list(feature.shape)}, {n} values")
    return None


def _key_dtype(t: pa.DataType) -> str | None:
    t = _plain(t)
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "float32"
    if _value_kind(t) == "text":
        return "string"
    return None


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n[:80]) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def schema_problems(schema: pa.Schema, spec, key_field: str | None) -> list[str]:
    """What makes a file of this schema unusable with the spec and key: a column the job
    reads that appears twice or only in another letter case, a required feature or the key
    that is not a column, no feature at all, a column whose type cannot hold its feature or
    be a key."""
    names = schema.names
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    read = list(spec) + ([key_field] if key_field is not None and key_field not in spec else [])
    problems = [f"column {name!r} appears {counts[name]} times, so which one holds the values "
                "is unclear" for name in read if counts.get(name, 0) > 1]
    folded: dict[str, list[str]] = {}
    for name in names:
        folded.setdefault(name.casefold(), []).append(name)
    for name in read:
        if name not in counts and name.casefold() in folded:
            problems.append(f"column {_names(folded[name.casefold()])} matches "
                            f"{'the key' if name == key_field else 'feature'} {name!r} only in "
                            f"letter case; rename the column to {name!r}")
        elif name not in counts and name == key_field:
            problems.append(f"--key_field {name!r} is not a column")
        elif name not in counts and name in spec and spec[name].required:
            problems.append(f"required feature {name!r} is not a column")
    if spec and not any(name in counts for name in spec) and \
            not any(name.casefold() in folded for name in spec):
        problems.append(f"it has none of the model's features ({_names(list(spec))}); its "
                        f"columns are {_names(names) or 'none'}")
    for name in read:
        if counts.get(name) != 1:
            continue
        t = schema.field(name).type
        if name in spec:
            problem = _column_problem(t, spec[name])
        elif _key_dtype(t) is None:
            problem = (f"--key_field {name!r} is a {t} column; a key must be a string, binary, "
                       "integer or floating-point column")
        else:
            problem = None
        if problem:
            problems.append(problem)
    return problems


# --- the format ---------------------------------------------------------------------------------
class ParquetInput(InputFormat):
    """Parquet files: typed columns read with pyarrow, split by row groups."""
    name = "parquet"
    title = "Parquet"
    extensions = (".parquet",)
    splittable = True

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        stats["gzip"], stats["bytes"] = False, 0
        try:
            source, pf = _open(path)
        except (_Unreadable, *_READ_ERRORS) as e:
            yield error_row(path, 0, "unreadable_tail", f"{_one_line(e)}; no record of the file "
                            "was read", _head(path))
            return
        try:
            groups = range(pf.metadata.num_row_groups)
            yield from _by_rows(_iter_groups(path, pf, groups, 0, batch_size, columns), stats,
                                source.seek(0, 2), pf.metadata, groups)
        finally:
            stats["bytes"] = source.read_bytes
            source.close()

    def key_dtype(self, path: str, key: str,
                  max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> str:
        """The dtype of the key column's Arrow type: int64 for integers, float32 for floats,
        string for strings and binary."""
        schema = _schema(path)
        if key not in schema.names:
            raise InputError(f"--key_field {key!r} is not a column of {path} (it has: "
                             f"{_names(schema.names) or 'nothing'})")
        t = schema.field(key).type
        dtype = _key_dtype(t)
        if dtype is None:
            raise InputError(f"--key_field {key!r} is a {t} column in {path}; a key must be a "
                             "string, binary, integer or floating-point column")
        return dtype

    def field_type(self, path: str, name: str,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        """The passthrough type of the column's Arrow type (None: no such column)."""
        from transforms.passthrough import arrow_field_type
        schema = _schema(path)
        if name not in schema.names:
            return None
        return arrow_field_type(name, schema.field(name).type)

    def check_first_shard(self, path: str, spec, key_field: str | None,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        """The first input's footer and schema: InputError when it is not a readable Parquet
        file or its columns cannot hold the spec's features and the key (`schema_problems`)."""
        problems = schema_problems(_schema(path), spec, key_field)
        if problems:
            more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
            raise InputError(f"the columns of {path} do not fit the model: "
                             f"{'; '.join(problems[:4])}{more}")

    # --- splitting (see the module docstring) ---------------------------------------------------
    def summarize_range(self, path: str, start: int, stop: int, size: int,
                        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        return None  # the footer says where every row group is

    def index_file(self, path: str, size: int, ranges: list[tuple[int, int]], summaries: list,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> SplitIndex | None:
        """Block k: the row groups whose first byte is in ranges[k]. None (read whole) when
        the footer cannot be read, its row groups are not in file order within the file, or
        they all start in the first range."""
        try:
            source, pf = _open(path)
        except (_Unreadable, *_READ_ERRORS) as e:
            _LOG.info("read %s whole, not split: %s", path, _one_line(e))
            return None
        try:
            md, starts = pf.metadata, _GroupStarts(pf.metadata)
            groups = [starts[g] for g in range(len(starts))]
            rows = [md.row_group(g).num_rows for g in range(len(starts))]
        finally:
            source.close()
        if any(not len(_MAGIC) <= s < size for s in groups) or \
                any(a >= b for a, b in zip(groups, groups[1:])):
            _LOG.info("read %s whole, not split: its row groups' offsets are not in file "
                      "order within the file", path)
            return None
        if len(groups) < 2 or groups[-1] < ranges[0][1]:
            _LOG.info("read %s whole, not split: all its %d row groups start in its first %d "
                      "bytes", path, len(groups), ranges[0][1])
            return None
        before = np.concatenate([[0], np.cumsum(rows, dtype=np.int64)]).tolist()
        starts, first_index = [], []
        for a, _ in ranges:
            g = bisect.bisect_left(groups, a)
            starts.append(groups[g] if g < len(groups) else size)
            first_index.append(before[g])
        starts[0] = 0
        return SplitIndex(path, size, split=True, starts=tuple(starts),
                          first_index=tuple(first_index), first_line=(0,) * len(starts))

    def read_block(self, index: SplitIndex, block: int, batch_size: int,
                   columns: list[str] | None, max_record_bytes: int,
                   stats: dict) -> Iterator:
        """The row groups that start in the block's bytes, read as `read_shard` reads them."""
        if not index.split:
            yield from self.read_shard(index.path, batch_size, columns, max_record_bytes,
                                       stats)
            return
        stats["gzip"], stats["bytes"] = False, 0
        start, stop = index.starts[block], index.end(block)
        if start >= stop:
            return
        path = index.path
        try:
            source, pf = _open(path)
        except (_Unreadable, *_READ_ERRORS) as e:
            yield error_row(path, index.first_index[block], "unreadable_tail",
                            f"{_one_line(e)}; the file changed after it was indexed, and no "
                            "record of this block was read", None)
            return
        try:
            starts = _GroupStarts(pf.metadata)
            lo, hi = bisect.bisect_left(starts, start), bisect.bisect_left(starts, stop)
            size = source.seek(0, 2)
            if size != index.size or (lo < hi and _rows_before(pf.metadata, lo)
                                      != index.first_index[block]):
                yield error_row(path, index.first_index[block], "unreadable_tail",
                                f"the file changed after it was indexed ({size} bytes, "
                                f"{index.size} when indexed, row groups from byte {start} on "
                                "not where they were); no record of this block was read", None)
                return
            yield from _by_rows(_iter_groups(path, pf, range(lo, hi), index.first_index[block],
                                             batch_size, columns),
                                stats, stop - start, pf.metadata, range(lo, hi))
        finally:
            stats["bytes"] = source.read_bytes
            source.close()


def _head(path: str) -> bytes | None:
    """The first bytes of a file, for the error row of a file that is not Parquet."""
    try:
        source = _Source(path)
    except _READ_ERRORS:
        return None
    try:
        return source.head(_PAYLOAD_HEAD)
    except _READ_ERRORS:
        return None
    finally:
        source.close()


PARQUET = ParquetInput()
