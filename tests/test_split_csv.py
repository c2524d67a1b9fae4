"""Splitting CSV files: the blocks that `CsvInput.index_file` makes from the range summaries,
each read alone by `read_block`, against the serial reader (`read_shard`) on the whole file.

When a file is split, every record comes out of exactly one block with the identity the
serial reader gives it: index, line number, cells, and for error rows their type, message and
payload. Files hold what makes a block's start uncertain (quoted fields with newlines, doubled
quotes, stray quotes, blank lines, lone carriage returns, rows over the record cap); whether
such a file is split or read whole is the format's call, but what it splits must be exact.
(SPLIT_EXAMPLES=5000 in the environment runs the property test longer.)
"""
import logging
import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from transforms.formats.csv_input import CSV, CsvInput, summarize
from transforms.records import CsvBatch

BIG_CAP = 1 << 20


def grid(size: int, split: int) -> list[tuple[int, int]]:
    return [(k * split, min((k + 1) * split, size)) for k in range(math.ceil(size / split))]


def records(items) -> list[tuple]:
    """Batches and error rows as one tuple per record, in order."""
    out = []
    for item in items:
        if isinstance(item, CsvBatch):
            if item.table is not None:
                cells = list(zip(*(item.table.column(c).to_pylist()
                                   for c in item.table.column_names)))
            else:
                cells = [tuple(row) for row in item.rows]
            assert len(cells) == len(item.indices) == len(item.lines)
            out += [("ok", int(i), int(line), tuple(c), tuple(item.header))
                    for i, line, c in zip(item.indices, item.lines, cells)]
        else:
            out.append(("error", item["index"], item.get("line"), item["error_type"],
                        item["message"], item["payload"]))
    return out


def by_index(rows: list[tuple]) -> list[tuple]:
    return sorted(rows, key=lambda r: (r[1] is None, r[1] or 0))


def serial(path: str, cap: int, batch_size: int = 3, reader: CsvInput = CSV) -> list[tuple]:
    return records(reader.read_shard(path, batch_size, None, cap, {}))


def index(path: str, split: int, cap: int, scan_bytes: int | None = None):
    """The file's index on the grid of `split`, its ranges summarized as the pipeline does,
    or `scan_bytes` at a time."""
    size = os.path.getsize(path)
    ranges = grid(size, split)
    if scan_bytes is None:
        summaries = [CSV.summarize_range(path, a, b, size, cap) for a, b in ranges]
    else:
        summaries = [summarize(path, a, b, size, scan_bytes) for a, b in ranges]
    return CSV.index_file(path, size, ranges, summaries, cap), ranges


def read_blocks(idx, cap: int, order, batch_size: int = 3, reader: CsvInput = CSV) -> dict:
    """{block: its records}, the blocks read in `order`; checks the stats of each."""
    out = {}
    for k in order:
        stats: dict = {}
        out[k] = records(reader.read_block(idx, k, batch_size, None, cap, stats))
        assert stats.pop("position", lambda: 0)() == stats["bytes"] == idx.block_bytes(k)
        assert stats == {"gzip": False, "bytes": idx.block_bytes(k)}
    return out


def line_offsets(blob: bytes) -> np.ndarray:
    """The byte offset where each line (1-based) starts: [unused, line 1, line 2, ...]."""
    nl = np.flatnonzero(np.frombuffer(blob, np.uint8) == 10) + 1
    return np.concatenate(([-1, 0], nl))


def check_split(blob: bytes, path: str, split: int, cap: int, batch_size: int = 3,
                scan_bytes: int | None = None, reader: CsvInput = CSV):
    """The file's index for `split`; when it splits, its blocks against the serial reader
    (`reader`: how many bytes both read and parse at once)."""
    with open(path, "wb") as fh:
        fh.write(blob)
    want = serial(path, cap, batch_size, reader)
    idx, ranges = index(path, split, cap, scan_bytes)
    if idx is None:
        return None, want
    size = len(blob)
    assert idx.split and idx.blocks == len(ranges) and idx.size == size
    assert idx.starts[0] == 0 and list(idx.starts) == sorted(idx.starts)
    assert all(a <= s <= size for (a, _), s in zip(ranges, idx.starts))
    assert all(s == 0 or s == size or blob[s - 1:s] == b"\n" for s in idx.starts)
    blocks = read_blocks(idx, cap, range(idx.blocks), batch_size, reader)
    got = [r for k in range(idx.blocks) for r in blocks[k]]
    # records in index order (a reader hands an error row over before the batch of good
    # records read ahead of it), each once
    assert by_index(got) == by_index(want)
    assert len({r[1] for r in want}) == len(want)
    backwards = read_blocks(idx, cap, reversed(range(idx.blocks)), batch_size, reader)
    assert backwards == blocks
    # as the reading step gets them: slices of a few blocks, numbered from 0 in each
    sliced = [records(reader.read_block(part, k, batch_size, None, cap, {}))
              for part in idx.slices(2) for k in range(part.blocks)]
    assert sliced == [blocks[k] for k in range(idx.blocks)]
    # a block's records are those that start in it, and it starts at the first of the grid
    # range's rows: no record begins between the range's start and the block's
    starts = line_offsets(blob)
    for k in range(idx.blocks):
        lo, hi = idx.starts[k], idx.end(k)
        assert all(lo <= starts[r[2]] < hi for r in blocks[k] if r[2] is not None)
        assert not any(ranges[k][0] <= starts[r[2]] < idx.starts[k]
                       for r in want if r[2] is not None)
        if blocks[k]:  # (blank lines may come before a block's first record)
            first = by_index(blocks[k])[0]
            assert first[1] == idx.first_index[k] and first[2] >= idx.first_line[k]
    return idx, want


# --- files that stress every edge --------------------------------------------------------------
_PLAIN = [b"", b"1", b"abc", b"2.5", b" x ", b"\t", b" ", b"\xff", b"\xc3\xa9", b"a\x00b",
          b"\xc2\xa0", b"\x0b\x0c", b"\x1c", b"\x85", b"\xc2\x85", b"\xe2\x80\xa8",
          b"\xef\xbb\xbf", b"\x00"]
_QUOTED_PARTS = [b"a", b"\n", b"\r\n", b'""', b",", b" ", b"\xff", b"x,y\n1,2", b""]
_STRAY = [b'ab"c', b' "x"', b'"a" b', b'"a"b', b"a\rb", b'"', b"\r"]
_BLANK = [b"", b"  ", b'""', b'" \n "', b"\t", b'" "', b"\xc2\xa0", b"\x1f\x0b", b'"\r\n"',
          b"\xe3\x80\x80", b"\xc2\x85 ", b"\x85", b'"\xc2\xa0"']
_HEADERS = [b"a,b,c"] * 6 + [b"\xef\xbb\xbfa,b,c", b'a,"b",c', b"a", b"a,a,b", b"", b"  ",
                             b"a,b\x00,c", b"a,\xffb,c", b"a\rb,c"]


@st.composite
def quoted(draw):
    return b'"' + b"".join(draw(st.lists(st.sampled_from(_QUOTED_PARTS), max_size=4))) + b'"'


@st.composite
def field(draw, hostile: bool):
    kinds = ["plain", "quoted"] + (["stray"] if hostile else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "plain":
        return draw(st.sampled_from(_PLAIN))
    if kind == "quoted":
        return draw(quoted())
    return draw(st.sampled_from(_STRAY))


@st.composite
def row(draw, hostile: bool):
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(_BLANK))
    if hostile and draw(st.integers(0, 14)) == 0:
        return b"z" * draw(st.integers(20, 90))  # over a small cap
    n = draw(st.sampled_from([3, 3, 3, 3, 2, 4, 1]))  # the header has 3 names
    return b",".join(draw(field(hostile)) for _ in range(n))


@st.composite
def csv_files(draw):
    hostile = draw(st.booleans())
    header = draw(st.sampled_from(_HEADERS)) if hostile else b"a,b,c"
    rows = draw(st.lists(row(hostile), max_size=30))
    ends = [draw(st.sampled_from([b"\n", b"\n", b"\r\n"])) for _ in rows]
    blob = header + b"".join(e + r for e, r in zip(ends, rows))
    if draw(st.booleans()):
        blob += draw(st.sampled_from([b"\n", b"\r\n"]))
    return blob


@settings(max_examples=int(os.environ.get("SPLIT_EXAMPLES", 500)), deadline=None)
@given(csv_files(), st.lists(st.integers(1, 300), min_size=1, max_size=3),
       st.sampled_from([BIG_CAP, BIG_CAP, 24, 60]), st.integers(1, 5), st.integers(1, 40),
       st.sampled_from([CSV.block_bytes, 16, 64, 256]))
def test_blocks_give_what_the_serial_reader_gives(tmp_path_factory, blob, splits, cap,
                                                  batch_size, scan_bytes, block_bytes):
    path = str(tmp_path_factory.mktemp("split") / "f.csv")
    reader = CsvInput(block_bytes=block_bytes)  # small: pyarrow and the csv module mixed
    for split in splits + [len(blob) + 1]:  # ... and one range for the whole file
        idx, _ = check_split(blob, path, split, cap, batch_size, reader=reader)
        event("split" if idx is not None else "read whole")
    # ranges scanned a few bytes at a time: the same index (the summaries differ only where
    # a piece's end cuts a row of non-ASCII whitespace, which index_file then decodes)
    size = len(blob)
    ranges = grid(size, splits[0])
    whole = [summarize(path, a, b, size) for a, b in ranges]
    pieces = [summarize(path, a, b, size, scan_bytes) for a, b in ranges]
    if not any(c >= 128 for c in blob):
        assert pieces == whole
    idx, _ = check_split(blob, path, splits[0], cap, batch_size, scan_bytes, reader)
    assert idx == CSV.index_file(path, size, ranges, whole, cap)


# --- what is split ------------------------------------------------------------------------------
def test_clean_numeric_csv_is_split(tmp_path):
    rows = [b"%d,%d.25,%d" % (i, i * 3, -i) for i in range(200)]
    blob = b"id,x,y\n" + b"\n".join(rows) + b"\n"
    path = str(tmp_path / "f.csv")
    for split in (3, 7, 100, 1000, 4096):
        idx, want = check_split(blob, path, split, BIG_CAP, batch_size=64)
        assert idx is not None and len(want) == 200
    idx, _ = check_split(blob, path, 100, BIG_CAP)
    assert idx.blocks == math.ceil(len(blob) / 100) and idx.header == ("id", "x", "y")
    assert len(set(idx.starts)) == idx.blocks  # 100 bytes always hold a line start


def test_a_range_that_starts_inside_a_quoted_field_is_split_where_the_field_ends(tmp_path):
    """A quoted field holds lines that look like rows; the grid puts a range start on one of
    them. The block begins after the record that holds the field, and the look-alike rows are
    never read as records."""
    head = b"id,note,n\n1,plain,1\n"
    fake = b"9,9,9\n" * 5
    blob = head + b'2,"begin\n' + fake + b'end, ""quoted""\r\nmore",2\n3,after,3\n'
    path = str(tmp_path / "f.csv")
    inside = blob.index(fake) + 12  # the start of the third look-alike line
    assert blob[inside - 1:inside] == b"\n"
    idx, want = check_split(blob, path, inside, BIG_CAP)
    assert idx is not None
    assert idx.starts[1] == blob.index(b"3,after")  # past the whole quoted record
    assert (idx.first_index[1], idx.first_line[1]) == (2, 11)
    assert [r[3] for r in want] == [("1", "plain", "1"),
                                    ("2", "begin\n" + "9,9,9\n" * 5 + 'end, "quoted"\r\nmore',
                                     "2"),
                                    ("3", "after", "3")]
    # and on every other grid: always split, never a look-alike row
    for split in range(1, len(blob) + 1):
        idx, want = check_split(blob, path, split, BIG_CAP)
        assert idx is not None and len(want) == 3


def test_nul_bytes_invalid_utf8_blank_lines_and_bad_rows_are_split(tmp_path):
    blob = (b"a,b,c\n1,x\x00y,2\n\n  \n\"\"\n2,\xff\xfe,3\r\n3,too,many,cells\n4,\"q,\"\"\",5\n"
            b"5,\"\n\",6")
    path = str(tmp_path / "f.csv")
    for split in range(1, len(blob) + 1):
        idx, want = check_split(blob, path, split, BIG_CAP)
        assert idx is not None
    assert [r[0] for r in by_index(want)] == ["ok", "ok", "error", "ok", "ok"]


def test_a_bom_that_starts_a_block_is_text_of_its_cell(tmp_path):
    """pyarrow drops a BOM at the start of what it parses: a block of the serial reader (or a
    split file's block) that begins with one is the csv module's, which keeps it, as it does
    anywhere but at the file's start."""
    blob = b"\xef\xbb\xbfa,b\n1,2\n\xef\xbb\xbfx,y\n3,4\n"
    path = str(tmp_path / "f.csv")
    for block_bytes in (4, 8, 64):
        reader = CsvInput(block_bytes=block_bytes)
        for split in range(1, len(blob) + 1):
            idx, want = check_split(blob, path, split, BIG_CAP, reader=reader)
            assert idx is not None
            assert [r[3] for r in by_index(want)] == [("1", "2"), ("\ufeffx", "y"), ("3", "4")]
            assert want[0][4] == ("a", "b")


# --- what is read whole, and why -----------------------------------------------------------------
@pytest.mark.parametrize("blob, why", [
    (b'a,b\n1,ab"c\n2,"x\n3,4\n', "a quote that neither opens nor closes"),
    (b'a,b\n1,"x" y\n2,"z\n3,4\n', "a quote that neither opens nor closes"),
    (b"a,b\n1,2\r3,4\n5,6\n", "carriage return"),
    (b"a,b\n1," + b"x" * 100 + b"\n5,6\n", "longer than --max_record_bytes"),
    (b'a,b\n1,"x\n' + b"y" * 30 + b"\n" + b"z" * 30 + b'"\n5,6\n', "longer than"),
    (b'a,"b"\n1,2\n3,4\n5,6\n', "not a header"),
    (b"a,a\n1,2\n3,4\n5,6\n", "not a header"),
    (b"a\n1\n3\n5\n", "not a header"),
    (b"\n1,2\n3,4\n5,6\n", "not a header"),
])
def test_files_the_model_cannot_vouch_for_are_read_whole(tmp_path, caplog, blob, why):
    path = str(tmp_path / "f.csv")
    caplog.set_level(logging.INFO, logger="transforms.formats.csv_input")
    idx, _ = check_split(blob, path, 4, 64)
    assert idx is None
    assert why in caplog.text and "whole" in caplog.text


def test_nul_bytes_are_read_whole_where_the_csv_module_refuses_them(tmp_path, monkeypatch):
    from transforms.formats import csv_input
    blob = b'a,b\n1,"x\x00\n2,3"\n4,5\n'
    path = str(tmp_path / "f.csv")
    assert check_split(blob, path, 8, BIG_CAP)[0] is not None
    monkeypatch.setattr(csv_input, "_CSV_TAKES_NUL", False)  # Python 3.10
    assert check_split(blob, path, 8, BIG_CAP)[0] is None


def test_rows_of_non_ascii_whitespace_are_decoded(tmp_path):
    """A comma-less row of non-ASCII bytes is blank if they are whitespace (U+00A0 here), a
    record otherwise: the scan decodes it when it holds the row whole; when a range's end cuts
    the row, index_file reads it again."""
    path = str(tmp_path / "f.csv")
    for row, kind in ((b"\xc2\xa0", None), (b"\xc3\xa9", "error"), (b'"\xc2\xa0\n"', None),
                      (b"\xe2\x80\x83\xe2\x80\x83", None)):
        for end in (b"\n5,6\n", b""):  # ... or the file's last row
            blob = b"a,b\n1,2\n" + row + end
            for split in range(1, len(blob) + 1):
                idx, want = check_split(blob, path, split, BIG_CAP)
                assert idx is not None
                assert [r[0] for r in by_index(want)] == (
                    ["ok"] + [kind] * (kind is not None) + ["ok"] * bool(end))


def test_summaries_are_small_plain_values_and_must_cover_the_file(tmp_path):
    path = str(tmp_path / "f.csv")
    blob = b"a,b\n" + b'1,"x\n\xc2\xa0"\n' * 20
    with open(path, "wb") as fh:
        fh.write(blob)
    size = len(blob)
    ranges = grid(size, 16)
    summaries = [CSV.summarize_range(path, a, b, size, BIG_CAP) for a, b in ranges]

    def plain(v):  # no numpy scalars: what the pipeline carries between steps
        if isinstance(v, tuple):
            return all(plain(x) for x in v)
        return v is None or type(v) in (bool, int)
    assert all(plain(s) for s in summaries)
    assert all(pickle.loads(pickle.dumps(s)) == s and len(pickle.dumps(s)) < 600
               for s in summaries)
    assert CSV.index_file(path, size, ranges, summaries, BIG_CAP) is not None
    assert CSV.index_file(path, size + 1, ranges, summaries, BIG_CAP) is None
    assert CSV.index_file(path, size, ranges, summaries[::-1], BIG_CAP) is None
    # a file shorter than its listed size (it changed): no summary, and no split
    assert CSV.summarize_range(path, size - 16, size + 16, size + 16, BIG_CAP) is None
    summaries[-1] = None
    assert CSV.index_file(path, size, ranges, summaries, BIG_CAP) is None


# --- a large file --------------------------------------------------------------------------------
def test_a_large_clean_csv_splits_at_every_range_with_exact_bases(tmp_path):
    """50 MB of numeric rows: one summary of the whole file counts every row, and ranges of
    16 MiB give blocks whose record index and line number are the lines before them.
    (The benchmarks measure the speed: `python -m benchmarks --only split`.)"""
    rng = np.random.default_rng(0)
    n = 20_000
    lines = [b"%d,%.6f,%.6f,%d,%.3f" % (i, a, b, c, d) for i, a, b, c, d in
             zip(range(n), rng.normal(size=n), rng.random(n), rng.integers(0, 10**6, n),
                 rng.normal(size=n) * 100)]
    chunk = b"\n".join(lines) + b"\n"
    copies = math.ceil((50 << 20) / len(chunk))
    path = str(tmp_path / "big.csv")
    with open(path, "wb") as fh:
        fh.write(b"id,a,b,c,d\n")
        for _ in range(copies):
            fh.write(chunk)
    size = os.path.getsize(path)
    whole = CSV.summarize_range(path, 0, size, size, BIG_CAP)
    ranges = grid(size, 16 << 20)
    summaries = [CSV.summarize_range(path, a, b, size, BIG_CAP) for a, b in ranges]
    idx = CSV.index_file(path, size, ranges, summaries, BIG_CAP)
    assert whole.sides[0].records == copies * n + 1  # and the header
    assert idx is not None and idx.blocks == len(ranges)
    for k in range(1, idx.blocks):  # every line after the header is a record
        copy, within = divmod(idx.starts[k] - len(b"id,a,b,c,d\n"), len(chunk))
        lines_before = copy * n + chunk[:within].count(b"\n")
        assert (idx.first_index[k], idx.first_line[k]) == (lines_before, lines_before + 2)
