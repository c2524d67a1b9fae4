"""Both CSV reader paths against a reference written here: Python's `csv` module and the
conversion rules spelled out in `reference_row`, compared with what TensorFlow's own
`parse_example` reads from the tf.Examples the reader and parser produce.

The pyarrow path (a block without quotes) and the csv-module path (a quote in the first data
row sends the whole file there) are each forced, and the test checks which one ran. Cells carry
leading and trailing spaces, non-ASCII text, empty cells, multi-valued cells and (on the
csv-module path) quotes, commas and newlines.
"""
import csv
import io

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.feature_spec import Feature, FeatureSpec
from transforms.parse import columns_to_examples
from transforms.read import ReadFilesDoFn
from transforms.records import CsvBatch

SPEC = FeatureSpec([
    Feature("s", "fixed", "string", (), ("dflt",)),
    Feature("f", "fixed", "float32", (), (-1.5,)),
    Feature("i", "fixed", "int64", (), (-7,)),
    Feature("v", "fixed", "float32", (2,), (0.25, 0.5)),
    Feature("tags", "varlen", "string"),
])
HEADER = ["id", "s", "ignored", "f", "i", "v", "tags"]


def reference_row(cells: dict) -> dict:
    """What the model must see for one CSV row, by the README's rules: an empty cell is an
    absent feature (its default); strings are the cell's exact text; numbers ignore the spaces
    around them; multi-valued cells split on '|' (numbers stripped, strings not)."""
    out = {}
    s = cells["s"]
    out["s"] = s.encode() if s else b"dflt"
    out["f"] = np.float32(float(cells["f"].strip())) if cells["f"] else np.float32(-1.5)
    out["i"] = int(cells["i"].strip()) if cells["i"] else -7
    out["v"] = ([np.float32(float(p.strip())) for p in cells["v"].split("|")] if cells["v"]
                else [np.float32(0.25), np.float32(0.5)])
    out["tags"] = [p.encode() for p in cells["tags"].split("|")] if cells["tags"] else []
    return out


_spaces = st.sampled_from(["", " ", "  ", "\t"])
_plain = st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                               blacklist_characters=',"|\u2028\u2029\x85'), max_size=8)
_quotable = st.text(st.characters(blacklist_categories=("Cs",),
                                  blacklist_characters='|\x00\r\x0b\x0c\x1c\x1d\x1e'
                                                       '\u2028\u2029\x85'),
                    max_size=8)


def _number(values):
    return st.one_of(st.just(""), st.builds(lambda a, v, b: f"{a}{v}{b}", _spaces, values,
                                            _spaces))


_float = _number(st.floats(width=32, allow_nan=False, allow_infinity=False).map(repr))
_int = _number(st.integers(-2**63, 2**63 - 1).map(str))
_vector = st.one_of(st.just(""), st.lists(st.floats(-2.0**20, 2.0**20, width=32).map(
    lambda x: f" {x!r}"), min_size=2, max_size=2).map("|".join))


def _rows(text_cells):
    tags = st.one_of(st.just(""), st.lists(text_cells.filter(bool), min_size=1, max_size=3)
                     .map("|".join))
    return st.lists(st.fixed_dictionaries({
        "s": st.builds(lambda a, t, b: f"{a}{t}{b}", _spaces, text_cells, _spaces),
        "ignored": text_cells, "f": _float, "i": _int, "v": _vector, "tags": tags}),
        min_size=1, max_size=30)


def _read_and_parse(path: str):
    """(paths taken, {id: what parse_example reads}, error rows) for one file."""
    reader = ReadFilesDoFn("csv", batch_size=7, columns=list(SPEC) + ["id"])
    reader.setup()
    paths, parsed, errors = set(), {}, []
    for out in reader.process_file(path):
        if getattr(out, "tag", None) is not None:
            errors += [out.value] if out.tag == "errors" else []
            continue
        assert isinstance(out, CsvBatch)
        paths.add("arrow" if out.table is not None else "csv module")
        records, errs = columns_to_examples(out, SPEC, "id")
        errors += errs
        if records is None:
            continue
        got = tf.io.parse_example(records.serialized, SPEC.to_tf())
        tags = [[] for _ in records.keys]
        for (row, _), value in zip(got["tags"].indices.numpy(), got["tags"].values.numpy()):
            tags[row].append(value)
        for k, key in enumerate(records.keys):
            key = key.decode() if isinstance(key, bytes) else key
            parsed[key] = {"s": got["s"].numpy()[k], "f": got["f"].numpy()[k],
                           "i": int(got["i"].numpy()[k]), "v": list(got["v"].numpy()[k]),
                           "tags": tags[k]}
    return paths, parsed, errors


def _check(tmp_path, rows, quote_first: bool):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoting = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(HEADER)
    for n, row in enumerate(rows):
        cells = [f"r{n}"] + [row[c] for c in HEADER[1:]]
        # a quoted first row sends the rest of the file to the csv module
        (quoting if quote_first and n == 0 else writer).writerow(cells)
    path = tmp_path / "data.csv"
    path.write_bytes(buf.getvalue().encode())
    # the reference: the csv module's rows, converted by the rules above
    parsed_rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    expected = {r["id"]: reference_row(r) for r in parsed_rows}
    paths, got, errors = _read_and_parse(str(path))
    assert errors == []
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        have = got[key]
        assert have["s"] == want["s"], key
        assert have["f"] == want["f"] and have["i"] == want["i"], key
        assert have["v"] == want["v"] and have["tags"] == want["tags"], key
    return paths


@settings(max_examples=60)
@given(rows=_rows(_plain))
def test_the_pyarrow_path_reads_what_the_csv_module_reads(tmp_path_factory, rows):
    paths = _check(tmp_path_factory.mktemp("arrow"), rows, quote_first=False)
    assert paths == {"arrow"}


@settings(max_examples=60)
@given(rows=_rows(_quotable))
def test_the_csv_module_path_reads_what_the_csv_module_reads(tmp_path_factory, rows):
    paths = _check(tmp_path_factory.mktemp("rows"), rows, quote_first=True)
    assert paths == {"csv module"}


@pytest.mark.parametrize("quote_first", [False, True])
def test_spaces_and_non_ascii_survive_both_paths(tmp_path, quote_first):
    rows = [{"s": "  padded  ", "ignored": "", "f": " 2.5 ", "i": "\t-3 ", "v": "1| 2",
             "tags": " a |b "},
            {"s": "Ünïcødé ✓", "ignored": "x", "f": "", "i": "", "v": "", "tags": ""}]
    paths = _check(tmp_path, rows, quote_first)
    assert paths == {"csv module" if quote_first else "arrow"}
