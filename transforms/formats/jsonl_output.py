"""JSON lines output (`--output_format jsonl`): one JSON object per prediction row, the key
(or `shard` and `index`) first, then every model output; no header line."""
from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING

import numpy as np
import orjson

from transforms.formats.json_columns import json_fragments, row_columns
from transforms.formats.base import OutputFormat

if TYPE_CHECKING:
    from transforms.predict import PredictionBatch

__all__ = ["JsonlOutput", "JSONL", "to_jsonl"]

_NEEDS_ESCAPE = re.compile(rb'[^\x20-\x7e]|["\\]')


def _plain_ascii(values: np.ndarray) -> list | None:
    """The column's values as they are, when every one is bytes that JSON can quote verbatim
    (printable ASCII without quote or backslash): ids, labels, country codes..."""
    if values.dtype != object or values.ndim != 1 or not len(values):
        return None
    vals = values.tolist()
    if all(type(v) is bytes for v in vals):
        return None if _NEEDS_ESCAPE.search(b"".join(vals)) else vals
    if all(type(v) is str for v in vals):  # e.g. CSV keys
        joined = "\n".join(vals)
        if joined.count("\n") != len(vals) - 1 or _NEEDS_ESCAPE.search(
                joined.replace("\n", " ").encode("utf-8", "surrogatepass")):
            return None
        return joined.encode("ascii").split(b"\n")
    return None


def to_jsonl(batch: PredictionBatch, key_field: str | None) -> bytes:
    """One JSON object per row, assembled column-wise: per column a stream of per-row fragments
    and the constant text before it; rows are then one join over the zipped streams."""
    streams, pending = [], b"{"
    for name, values in row_columns(batch, key_field):
        pending += orjson.dumps(name) + b":"
        plain = _plain_ascii(values)
        if plain is not None:  # the quotes go into the constant pieces
            streams += [itertools.repeat(pending + b'"'), plain]
            pending = b'",'
        else:
            streams += [itertools.repeat(pending), json_fragments(values)]
            pending = b","
    streams.append(itertools.repeat(pending[:-1] + b"}\n"))
    return b"".join(itertools.chain.from_iterable(zip(*streams)))[:-1]


class JsonlOutput(OutputFormat):
    name = "jsonl"
    suffix = ".jsonl"

    def encode(self, batch: PredictionBatch, key_field: str | None) -> bytes:
        return to_jsonl(batch, key_field)


JSONL = JsonlOutput()
