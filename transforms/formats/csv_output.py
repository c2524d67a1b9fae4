"""CSV output (`--output_format csv`): a header line (the key, or `shard` and `index`, then the
model outputs in name order), then one row per prediction; numbers as pyarrow writes them,
vectors and matrices as JSON arrays in one cell, non-finite floats as NaN, Infinity,
-Infinity."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
import orjson

from transforms.formats.json_columns import decoded_list, json_fragments, row_columns
from transforms.formats.base import OutputFormat

if TYPE_CHECKING:
    from transforms.predict import PredictionBatch

__all__ = ["CsvOutput", "CSV", "csv_header", "to_csv"]


def csv_header(key_field: str | None, columns: list[str]) -> list[str]:
    """The header line's names: the key (or shard and index), then `columns`, the columns
    after it in row order (`json_columns.value_columns`)."""
    first = [key_field] if key_field is not None else ["shard", "index"]
    return first + list(columns)


def to_csv(batch: PredictionBatch, key_field: str | None) -> bytes:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    arrays, names, non_finite = [], [], {}
    for name, values in row_columns(batch, key_field):
        names.append(name)
        if values.dtype != object and values.ndim == 1 and values.dtype.kind in "fiub":
            if values.dtype == np.float16:  # written like JSON lines: as float32
                values = values.astype(np.float32)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                non_finite[len(arrays)] = values
            arrays.append(pa.array(values))
        elif values.ndim == 1:
            # a null (a passthrough field without a value) is an empty cell
            arrays.append(pa.array([v if isinstance(v, str) else "" if v is None else
                                    orjson.dumps(v).decode() for v in decoded_list(values)],
                                   pa.string()))
        else:
            arrays.append(pa.array([f.decode() for f in json_fragments(values)], pa.string()))
    if non_finite:
        return _csv_rows(arrays, non_finite)
    out = io.BytesIO()
    pacsv.write_csv(pa.table(arrays, names=names), out,
                    pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return out.getvalue().rstrip(b"\n")


def _csv_rows(arrays: list, non_finite: dict[int, np.ndarray]) -> bytes:
    """The CSV text pyarrow's writer gives (quoting_style="needed": every string quoted, its
    quotes doubled; numbers in pyarrow's own text, which its cast to string shares), with
    NaN, Infinity and -Infinity where pyarrow would write nan, inf and -inf. Only for batches
    holding such values."""
    import pyarrow as pa
    import pyarrow.compute as pc
    cells = []
    for i, array in enumerate(arrays):
        if pa.types.is_string(array.type):
            cells.append(pc.binary_join_element_wise(
                '"', pc.replace_substring(array, '"', '""'), '"', ""))
            continue
        text = pc.cast(array, pa.string())
        if i in non_finite:
            values = non_finite[i]
            text = text.to_numpy(zero_copy_only=False)
            text[np.isnan(values)] = "NaN"
            text[np.isposinf(values)] = "Infinity"
            text[np.isneginf(values)] = "-Infinity"
            text = pa.array(text, pa.string())
        cells.append(text)
    rows = pc.binary_join_element_wise(*cells, ",")
    return "\n".join(rows.to_pylist()).encode("utf-8")


class CsvOutput(OutputFormat):
    name = "csv"
    suffix = ".csv"

    def header(self, key_field: str | None, columns: list[str]) -> bytes | None:
        return ",".join(csv_header(key_field, columns)).encode("utf-8")

    def encode(self, batch: PredictionBatch, key_field: str | None) -> bytes:
        return to_csv(batch, key_field)


CSV = CsvOutput()
