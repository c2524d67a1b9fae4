"""Parsing with the feature spec: column batches -> the serialized tf.Examples the model would
parse.

Batches of serialized tf.Examples (TFRecord) pass through untouched (a parsing signature gets
the bytes as they are; a raw signature parses them inside the model call with the same spec).
Column batches (`transforms.records.ColumnBatch`) are converted column by column with the
spec's dtypes, then serialized with `transforms.examples`, so that a row and the equivalent
tf.Example reach the model identically. A column converts by its Arrow type: string columns
(CSV's cells, a typed source's strings) and the csv module's rows are text and follow the text
rules below; numeric, binary and list columns (Parquet's, BigQuery's) convert directly, with no
text in between (`transforms.examples.typed_feature_column`). The text rules:

- an empty cell is an absent feature: the spec's default applies for fixed features with a
  default, a required feature becomes a `missing_feature` error row, a variable-length feature
  is empty;
- numbers are ASCII only, in decimal or scientific notation (`12`, `-0.5`, `.5`, `1e3`,
  `+7`), with surrounding ASCII spaces allowed: Unicode digits (`٣`, `３`), `1_000`, hex and
  anything else Python or Arrow would also read is a `parse_error`;
- float32 cells: `nan`, `inf` and `infinity`, with an optional sign and in any letter case,
  are NaN and ±infinity (a tf.Example's float_list holds them, so an explicit spelling is
  data); any other number whose magnitude is beyond float32's range (`1e39`, and `1e400`,
  which Python and Arrow round to infinity) is a `parse_error` "out of float32 range";
- int64 cells accept integral floats (`180.0` -> 180, `1e3` -> 1000), never NaN or
  infinity; beyond int64 is a `parse_error` "out of int64 range"; anything else
  unconvertible is a `parse_error` row naming the column;
- the vectorised path (Arrow's cast) and the cell-by-cell path follow these same rules;
- multi-valued cells (fixed shape with more than one value, variable-length features) hold
  values separated by `list_separator` (default `|`);
- columns not in the spec are ignored (except the key column); an empty key cell is a
  `missing_key` row, like a tf.Example without the key.

The header rule (`header_problem`) applies to a batch whose source has a header line (CSV),
and names the columns the job reads: the spec's features and the key column. A header is
unusable when
- a column the job reads appears more than once (which one holds the values is unclear);
- a feature (or the key) is absent but a column matches it in another letter case (`AGE` for
  `age`): the message names both spellings;
- it holds none of the spec's features (often: a file without a header line);
- a required feature (fixed, no default) is not a column.
The first CSV input is checked at start-up (the CSV format's `check_first_shard`: InputError,
exit 2); in any other file, every data row becomes a `csv_format` error row naming the problem,
so that the counts stay exact. A key column that is simply absent is not a header problem: each
row is a `missing_key` row.
"""
from __future__ import annotations

import decimal
import math
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.examples import FeatureColumn, encode_examples, typed_feature_column
from transforms.feature_spec import Feature, FeatureSpec
from transforms.metrics import JobCounters
from transforms.progress import PROGRESS
from transforms.records import ColumnBatch, RecordBatch, error_row, in_global_window

__all__ = ["convert_column", "header_problem", "columns_to_examples", "ParseWithSpecDoFn"]

_NP = {"float32": np.float32, "int64": np.int64}


class _LazyCells:
    """Python strings of an Arrow column, made only if a slow path asks for them."""

    def __init__(self, array: pa.Array):
        self._array = array
        self._cells = None

    def __getitem__(self, i):
        if self._cells is None:
            self._cells = self._array.to_pylist()
        return self._cells[i]


class _CellError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Numbers in CSV cells: ASCII only, decimal or scientific notation (what CSV writers emit).
# Python's float() and int() would also take "1_000", Unicode digits ("٣", "３") and Unicode
# spaces; Arrow's cast would also take "nan(123)". Both readers are held to this grammar.
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _to_int(cell: str) -> int:
    if not _DECIMAL.fullmatch(cell):
        raise ValueError(f"{cell!r} is not an integer")
    try:
        value = int(cell)
    except ValueError:
        # "180.0" is 180 and "1e3" is 1000, exactly (Decimal, not float: no rounding)
        number = decimal.Decimal(cell)
        if number.adjusted() > 19:  # "1e999999999": never build that integer
            raise OverflowError(f"{cell!r} is out of int64 range") from None
        if number != number.to_integral_value():
            raise ValueError(f"{cell!r} is not an integer") from None
        value = int(number)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"{cell!r} is out of int64 range")
    return value


def _to_float32(cell: str) -> float:
    if _NON_FINITE.fullmatch(cell):
        return float(cell)  # an explicit NaN or infinity is data: float_list holds them
    if not _DECIMAL.fullmatch(cell):
        raise ValueError(f"{cell!r} is not a number")
    value = float(cell)  # 1e400 is inf here: out of range like 1e39
    with np.errstate(over="ignore"):
        as_float32 = float(np.float32(value))
    if not math.isfinite(as_float32):
        raise OverflowError(f"{cell!r} is out of float32 range")
    return value


def _convert_scalar(cell: str, dtype: str):
    if dtype == "float32":
        return _to_float32(cell)
    if dtype == "int64":
        return _to_int(cell)
    return cell.encode("utf-8")


def _bad_value(feature: Feature, cell: str, e: Exception) -> str:
    if isinstance(e, OverflowError):
        return f"column {feature.name!r}: {cell[:80]!r} is out of {feature.dtype} range"
    return f"column {feature.name!r}: {cell[:80]!r} is not a valid {feature.dtype}"


def _convert_cell(cell: str, feature: Feature, sep: str) -> list:
    parts = cell.split(sep) if (feature.kind != "fixed" or feature.num_values != 1) else [cell]
    try:
        values = [_convert_scalar(p.strip(_ASCII_SPACE) if feature.dtype != "string" else p,
                                  feature.dtype) for p in parts]
    except (ValueError, OverflowError) as e:
        raise _CellError("parse_error", _bad_value(feature, cell, e)) from None
    except UnicodeEncodeError:
        raise _CellError("parse_error", f"column {feature.name!r} is not valid UTF-8") from None
    if feature.kind == "fixed" and len(values) != feature.num_values:
        raise _CellError("shape_mismatch", f"column {feature.name!r} has {len(values)} values, "
                                           f"shape {list(feature.shape)} needs "
                                           f"{feature.num_values}")
    return values


def _text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def convert_column(cells, feature: Feature, sep: str = "|"
                   ) -> tuple[FeatureColumn, dict[int, _CellError]]:
    """Convert one column: a list of str (the csv module's cells) or a pyarrow array; returns
    the column and {row: error} for cells that fail. Text (str, string arrays) follows the
    text rules; other Arrow types convert directly (`typed_feature_column`)."""
    if isinstance(cells, pa.Array):
        if pa.types.is_dictionary(cells.type) and _text_type(cells.type.value_type):
            cells = cells.dictionary_decode()
        if not _text_type(cells.type):
            column, problems = typed_feature_column(cells, feature)
            return column, {i: _CellError(*problem) for i, problem in problems.items()}
        if pa.types.is_large_string(cells.type):
            cells = cells.cast(pa.string())
        if cells.null_count:  # a typed source's null string is an empty cell
            cells = cells.fill_null("")
        text = cells
        cells = _LazyCells(text)
    else:
        try:
            text = pa.array(cells, pa.string())
        except UnicodeEncodeError:  # undecodable input (surrogates): reported cell by cell
            text = pa.array([c.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                             for c in cells], pa.string())
    n = len(text)
    present = pc.not_equal(text, "").to_numpy(zero_copy_only=False)
    errors: dict[int, _CellError] = {}
    scalar = feature.kind == "fixed" and feature.num_values == 1
    if scalar and feature.dtype == "string":
        if isinstance(cells, _LazyCells):  # already checked UTF-8 by the Arrow reader
            values = text.cast(pa.binary()).to_numpy(zero_copy_only=False)
            return FeatureColumn(feature.name, feature.dtype, values, present.astype(np.int32),
                                 present), errors
        try:  # str.encode over the list runs in C; surrogates (undecodable input) fail it
            values = np.array(list(map(str.encode, cells)) + [None], dtype=object)[:-1]
        except UnicodeEncodeError:
            values = np.array([b""] * n + [None], dtype=object)[:-1]
            for i in np.flatnonzero(present):
                try:
                    values[i] = cells[i].encode("utf-8")
                except UnicodeEncodeError:
                    errors[i] = _CellError("parse_error", f"column {feature.name!r} is not "
                                                          "valid UTF-8")
        return FeatureColumn(feature.name, feature.dtype, values, present.astype(np.int32),
                             present), errors
    if scalar:
        wide = np.float64 if feature.dtype == "float32" else np.int64
        values = np.zeros(n, dtype=wide)
        try:  # vectorised fast path (Arrow's C++ parsers); falls back cell by cell
            if feature.dtype == "int64" and pc.any(pc.match_substring(
                    text, "x", ignore_case=True)).as_py():
                raise ValueError("Arrow reads hexadecimal integers; Python and CSV do not")
            parsed = pc.cast(pc.if_else(present, text, "0"),
                             pa.float64() if feature.dtype == "float32" else pa.int64())
            values[:] = parsed.to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, ValueError, OverflowError):
            for i in np.flatnonzero(present):
                try:
                    values[i] = _convert_scalar(cells[i].strip(_ASCII_SPACE), feature.dtype)
                except (ValueError, OverflowError) as e:
                    errors[i] = _CellError("parse_error", _bad_value(feature, cells[i], e))
        if feature.dtype == "float32":
            # finite text beyond float32's range is an error, and so is text Arrow read as
            # NaN or an infinity that is not one of their spellings ("1e400", "nan(1)")
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(values.astype(np.float32)) & present
            for i in np.flatnonzero(bad):
                if i in errors:
                    continue
                try:
                    _to_float32(cells[i].strip(_ASCII_SPACE))
                    bad[i] = False
                except (ValueError, OverflowError) as e:
                    errors[i] = _CellError("parse_error", _bad_value(feature, cells[i], e))
            values = np.where(bad, 0.0, values).astype(np.float32)
        sizes = present.astype(np.int32)
        return FeatureColumn(feature.name, feature.dtype, values, sizes, present), errors
    lists: list[list] = [[] for _ in range(n)]
    for i in np.flatnonzero(present):
        try:
            lists[i] = _convert_cell(cells[i], feature, sep)
        except _CellError as e:
            errors[i] = e
    width = max([len(v) for v in lists] + [1])
    fill = b"" if feature.dtype == "string" else 0
    values = np.array([v + [fill] * (width - len(v)) for v in lists],
                      dtype=object if feature.dtype == "string" else _NP[feature.dtype])
    sizes = np.array([len(v) for v in lists], dtype=np.int32)
    return FeatureColumn(feature.name, feature.dtype, values.reshape(n, width), sizes,
                         present), errors


def _names(names, limit: int = 8) -> str:
    shown = ", ".join(repr(n[:80]) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def header_problem(header: list[str], spec: FeatureSpec, key_field: str | None) -> str | None:
    """What makes a CSV header unusable with this spec and key, or None. The one rule for the
    start-up check of the first file (the CSV format's `check_first_shard`) and for every
    file's rows (`columns_to_examples`); see the module docstring."""
    read = list(spec) + ([key_field] if key_field is not None and key_field not in spec
                         else [])
    counts: dict[str, int] = {}
    for column in header:
        counts[column] = counts.get(column, 0) + 1
    problems = []
    repeated = [c for c in read if counts.get(c, 0) > 1]
    if repeated:
        problems.append(f"column {_names(repeated)} appears more than once "
                        f"({', '.join(str(counts[c]) for c in repeated[:8])} times), so which "
                        "one holds the values is unclear")
    wanted = set(read)
    folded: dict[str, list[str]] = {}
    for column in header:
        if column not in wanted:
            folded.setdefault(column.casefold(), []).append(column)
    case_only = {}
    for name in read:
        if name not in counts and name.casefold() in folded:
            case_only[name] = folded[name.casefold()]
            what = "the key column" if name == key_field and name not in spec else "feature"
            problems.append(f"column {_names(case_only[name])} matches {what} {name!r} only "
                            f"in letter case; rename the column to {name!r}")
    if spec and not case_only and not any(name in counts for name in spec):
        problems.append(f"it has none of the model's features ({_names(list(spec))}); is "
                        f"the first line a header? It reads {_names(header, 5)}")
    missing = [f.name for f in spec.values()
               if f.required and f.name not in counts and f.name not in case_only]
    if missing and any(name in counts for name in spec):
        problems.append(f"required feature {_names(missing)} is not a column")
    return "; ".join(problems) or None


def _key_values(cells, key_field: str, dtype: str | None = None
                ) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """The key column's values, and the rows without a usable key: an empty cell (text) or a
    null (typed: numbers or bytes), like a tf.Example without the key; a typed key that the
    job's key dtype (`dtype`, fixed at start-up from the first input) cannot hold."""
    if not isinstance(cells, pa.Array):  # the csv module's cells
        keys = np.array(cells + [None], dtype=object)[:-1]
        empty = keys == ""
    else:
        if pa.types.is_dictionary(cells.type):
            cells = cells.dictionary_decode()
        if _text_type(cells.type):
            cells = cells.fill_null("") if cells.null_count else cells
            keys = cells.to_numpy(zero_copy_only=False)
            empty = pc.equal(cells, "").to_numpy(zero_copy_only=False)
        else:
            t = cells.type
            empty = cells.is_null().to_numpy(zero_copy_only=False)
            wrong, why = _unfit_keys(cells, dtype)
            wrong &= ~empty
            if wrong.any():  # out of the key column, as if absent; error rows of their own
                cells = pc.if_else(pa.array(wrong), pa.nulls(len(cells), t), cells)
            if pa.types.is_nested(t):
                keys = np.full(len(cells), "", dtype=object)
            else:
                if dtype == "int64" and pa.types.is_floating(t):  # integral: checked above
                    cells = pc.cast(cells.fill_null(0), pa.int64())
                if cells.null_count and (pa.types.is_integer(t) or pa.types.is_floating(t)):
                    cells = cells.fill_null(0)  # not NaN: the kept rows' keys stay integers
                keys = cells.to_numpy(zero_copy_only=False)
            rows = {int(i): ("missing_key", f"key column {key_field!r} is empty")
                    for i in np.flatnonzero(empty)}
            rows.update({int(i): ("type_mismatch", f"key column {key_field!r} {why}")
                         for i in np.flatnonzero(wrong)})
            return keys, rows
    return keys, {int(i): ("missing_key", f"key column {key_field!r} is empty")
                  for i in np.flatnonzero(empty)}


def _unfit_keys(cells: pa.Array, dtype: str | None) -> tuple[np.ndarray, str]:
    """Which typed keys cannot be a key of this job, and why: a list or an object never; with
    `dtype` (the key column's type in the rows, from the first input) text or a fraction for
    an int64 key, a number for a string key. Without it such a record would reach a writer
    whose key column cannot hold it."""
    t = cells.type
    n = len(cells)
    if pa.types.is_nested(t):
        return np.ones(n, dtype=bool), f"holds a {t} value; a key is one string or number"
    why = f"holds a {t} value; this job's keys are {dtype} (its first input's)"
    number = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    if dtype is not None and number == (dtype == "string"):  # text for a number, or back
        return np.ones(n, dtype=bool), why
    if dtype == "int64" and pa.types.is_floating(t):
        values = cells.fill_null(0).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            return ~((np.floor(values) == values) & (np.abs(values) < 2.0 ** 63)), why
    return np.zeros(n, dtype=bool), why


def _source_values(batch: ColumnBatch, name: str, ctype) -> list:
    """One Python value per row of a column batch's column (None where null or absent, or an
    empty CSV cell): text for a column typed as text (a timestamp as its ISO text), else as
    the source types it."""
    if not batch.has_column(name):
        return [None] * len(batch)
    cells = batch.column(name)
    if batch.header is not None:  # CSV text: an empty cell is an absent value
        values = cells.to_pylist() if isinstance(cells, pa.Array) else list(cells)
        return [v if v != "" else None for v in values]
    if pa.types.is_dictionary(cells.type):
        cells = cells.dictionary_decode()
    t = cells.type
    if ctype.dtype == "string" and ctype.shape == () and not (
            _text_type(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        cells = cells.cast(pa.string())
    return cells.to_pylist()


def columns_to_examples(batch: ColumnBatch, spec: FeatureSpec, key_field: str | None,
                        sep: str = "|", passthrough=None, key_dtype: str | None = None
                        ) -> tuple[RecordBatch | None, list[dict]]:
    """Convert a column batch; returns the good rows as a RecordBatch and error rows.
    `passthrough`: a `transforms.passthrough.PassthroughReader` for --passthrough_fields;
    `key_dtype`: the key column's dtype in the rows (a typed key it cannot hold is an error)."""
    n = len(batch)
    problem = (header_problem(batch.header, spec, key_field) if batch.header is not None
               else None)
    where = "the CSV header" if batch.header is not None else "the input's columns"
    if problem is not None:  # every row of the file, so that the counts stay exact
        return None, [error_row(batch.shard, batch.indices[i], "csv_format",
                                f"CSV header: {problem}", batch.row_text(i),
                                line=batch.lines[i]) for i in range(n)]
    bad: dict[int, tuple[str, str]] = {}
    columns = []
    for feature in spec.values():
        if not batch.has_column(feature.name):
            if feature.required:
                for i in range(n):
                    bad.setdefault(i, ("missing_feature", f"required column {feature.name!r} is "
                                                          f"not in {where}"))
            continue
        column, errors = convert_column(batch.column(feature.name), feature, sep)
        if feature.required:
            for i in np.flatnonzero(~column.present):
                errors.setdefault(i, _CellError("missing_feature", f"required column "
                                                f"{feature.name!r} is empty"))
        for i, e in errors.items():
            bad.setdefault(int(i), (e.error_type, str(e)))
        columns.append(column)
    keys = None
    if key_field is not None:
        if not batch.has_column(key_field):
            for i in range(n):
                bad.setdefault(i, ("missing_key", f"key column {key_field!r} is not in "
                                                  f"{where}"))
        else:
            keys, missing = _key_values(batch.column(key_field), key_field, key_dtype)
            for i, why in missing.items():
                bad.setdefault(i, why)
    lines = batch.lines if batch.lines is not None else [None] * n
    errors = [error_row(batch.shard, batch.indices[i], etype, msg, batch.row_text(i),
                        line=lines[i]) for i, (etype, msg) in sorted(bad.items())]
    if bad:
        keep = np.ones(n, dtype=bool)
        keep[list(bad)] = False
        columns = [FeatureColumn(c.name, c.dtype, c.values[keep], c.sizes[keep],
                                 c.present[keep]) for c in columns]
        indices = batch.indices[keep]
        lines = batch.lines[keep] if batch.lines is not None else None
        keys = keys[keep] if keys is not None else None
        n = int(keep.sum())
    else:
        indices, lines = batch.indices, batch.lines
    if n == 0:
        return None, errors
    serialized = encode_examples(columns, n)
    records = RecordBatch(batch.shard, serialized, indices, keys=keys, lines=lines)
    if passthrough is None:
        return records, errors
    rows = np.flatnonzero(keep) if bad else np.arange(n)
    source = {}
    for f in passthrough.fields:
        if f.feature is None and not f.in_examples:
            values = _source_values(batch, f.name, f.column)
            source[f.name] = [values[i] for i in rows]
    records, more = passthrough.attach(records, source,
                                       payload=lambda i: batch.row_text(int(rows[i])))
    return records, sorted(errors + more, key=lambda e: e["index"])


class ParseWithSpecDoFn(beam.DoFn):
    """ColumnBatch -> RecordBatch of serialized tf.Examples (+ 'errors'); RecordBatch as is.

    Column batches are converted in a helper thread, one batch ahead: most of a conversion runs
    in Arrow and numpy, which release the GIL, so batch k is converted while this thread
    formats and writes the predictions of batch k-1. Outputs keep their order."""

    def __init__(self, spec: FeatureSpec, key_field: str | None, list_separator: str = "|",
                 passthrough=None, key_dtype: str | None = None):
        self._spec = spec
        self._key_field = key_field
        self._key_dtype = key_dtype  # the key column's dtype in the rows (typed input)
        self._sep = list_separator
        self._passthrough = passthrough  # transforms.passthrough.PassthroughReader, or None

    def setup(self):
        from concurrent.futures import ThreadPoolExecutor
        self._metrics = JobCounters()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csv-parse")

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)

    def start_bundle(self):
        self._pending = None  # the future of the column batch being converted

    def process(self, batch):
        if isinstance(batch, RecordBatch):
            yield from self._flush()  # keep the order when formats are mixed
            if self._passthrough is None:
                yield batch
                return
            batch, errors = self._passthrough.attach(batch)
            self._metrics.parse_errors.inc(len(errors))
            PROGRESS.add_scored(0, failed=len(errors))
            for row in errors:
                yield beam.pvalue.TaggedOutput("errors", row)
            if batch is not None:
                yield batch
            return
        previous = self._flush()
        self._pending = self._pool.submit(columns_to_examples, batch, self._spec,
                                          self._key_field, self._sep, self._passthrough,
                                          self._key_dtype)
        yield from previous

    def finish_bundle(self):
        outputs = list(self._flush())
        PROGRESS.publish()  # a worker process's last counts reach the launcher (no-op else)
        yield from in_global_window(outputs)

    def _flush(self):
        """The outputs of the pending column batch (none if there is none); it is no longer
        pending once this returns, before the outputs are iterated."""
        pending, self._pending = self._pending, None
        return self._outputs(pending) if pending is not None else iter(())

    def _outputs(self, future):
        records, errors = future.result()
        self._metrics.parse_errors.inc(len(errors))
        PROGRESS.add_scored(0, failed=len(errors))
        for row in errors:
            yield beam.pvalue.TaggedOutput("errors", row)
        if records is not None:
            yield records
