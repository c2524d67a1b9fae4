"""CSV input (`--input_format csv`): a header line, then one record per row; plain or gzip.

CSV is text columns plus conversion: the reader (`transforms.formats.csv_reader`) hands the
parse step `CsvBatch`es of string columns (pyarrow's, for clean blocks) or of csv-module rows,
with the header, the line numbers and the raw text for error payloads; the parse step converts
the cells with the spec's types and checks the header (`transforms.parse.header_problem`).
The first input's header is checked at start-up (`check_first_shard`); the key is a column of
text, so its dtype is always string.
"""
from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Iterator

import numpy as np

from transforms.errors import InputError
from transforms.formats.base import (DEFAULT_MAX_RECORD_BYTES, READ_CHUNK, InputFormat,
                                     ReadAhead, open_shard, shard_stream)
from transforms.formats.csv_reader import NOT_READ, iter_csv_blocks
from transforms.parse import header_problem
from transforms.records import CsvBatch, error_row

__all__ = ["CsvInput", "CSV"]


def _grouped(items: Iterator[tuple], size: int = 1024) -> Iterator[list]:
    """The csv module's per-row items in lists of up to `size` (a table alone), so that the
    read-ahead queue hands over one list instead of one row at a time: a thread handoff per
    row cost more than reading the row. Items read before an exception are handed over
    before it."""
    group: list = []
    try:
        for item in items:
            if item[0] == "table":
                if group:
                    yield group
                    group = []
                yield [item]
            else:
                group.append(item)
                if len(group) >= size:
                    yield group
                    group = []
    except GeneratorExit:  # closed by its consumer: nothing more to hand over
        raise
    except BaseException:
        if group:
            yield group
        raise
    if group:
        yield group


@dataclasses.dataclass(frozen=True)
class CsvInput(InputFormat):
    """CSV with a header line; `block_bytes` is how much is read (and parsed by pyarrow) at
    once."""
    block_bytes: int = READ_CHUNK
    name = "csv"
    title = "CSV"
    extensions = (".csv", ".csv.gz")

    def read_shard(self, path: str, batch_size: int, columns: list[str] | None,
                   max_record_bytes: int, stats: dict) -> Iterator:
        with shard_stream(path, stats) as stream:
            yield from self.read_stream(path, stream, batch_size, columns, max_record_bytes)

    def read_stream(self, path: str, stream, batch_size: int, columns: list[str] | None = None,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator:
        """`read_shard` on an open stream of the shard's content. Reading runs a block ahead
        in a helper thread (`ReadAhead`): decompression and pyarrow's parser release the GIL."""
        header, rows, indices, lines = None, [], [], []
        size = batch_size
        items = ReadAhead(_grouped(iter_csv_blocks(stream, columns, self.block_bytes,
                                                   max_record_bytes)))
        try:
            for item in itertools.chain.from_iterable(items):
                kind = item[0]
                if kind == "header":
                    header = item[1]
                elif kind == "table":
                    _, table, text, first_index, first_line = item
                    n = table.num_rows
                    ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 10) + 1
                    for s in range(0, n, size):
                        e = min(s + size, n)
                        lo = int(ends[s - 1]) if s else 0
                        hi = int(ends[e - 1]) if e - 1 < len(ends) else len(text)
                        yield CsvBatch(path, header, None, np.arange(s, e) + first_index,
                                       np.arange(s, e) + first_line, table=table.slice(s, e - s),
                                       text=text[lo:hi])
                elif kind == "ok":
                    rows.append(item[3])
                    indices.append(item[1])
                    lines.append(item[2])
                    if len(rows) >= size:
                        yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))
                        rows, indices, lines = [], [], []
                else:
                    _, index, line, etype, message, text = item
                    yield error_row(path, index, etype, message, text, line=line)
        except (OSError, EOFError, zlib.error) as e:  # a broken gzip stream under the csv module
            yield error_row(path, None, "unreadable_tail", f"cannot decompress the file ({e}); "
                            "the remainder of the file was not read", None)
        finally:
            items.close()
        if rows:
            yield CsvBatch(path, header, rows, np.array(indices), np.array(lines))

    def key_dtype(self, path: str, key: str, max_record_bytes: int) -> str:
        return "string"  # a column of text

    def check_first_shard(self, path: str, spec, key_field: str | None,
                          max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        """The header of the job's first input: raises InputError when it is unreadable or
        when `transforms.parse.header_problem` finds fault with it."""
        stream, _ = open_shard(path)
        try:
            items = iter_csv_blocks(stream, [], block_bytes=64 << 10,
                                    max_record_bytes=max_record_bytes)
            first = next(items, None)
            items.close()
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"cannot read the CSV header of {path}: {e}") from None
        finally:
            stream.close()
        if first is None or first[0] == "ok":
            return
        if first[0] == "error":
            raise InputError(f"{path}: {first[4].removesuffix(NOT_READ)}")
        if first[0] == "header":
            problem = header_problem(first[1], spec, key_field)
            if problem is not None:
                raise InputError(f"the CSV header of {path} does not fit the model: {problem}")


CSV = CsvInput()
