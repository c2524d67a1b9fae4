"""The CSV block reader (pyarrow fast path + csv-module fallback) against the csv module alone.

`iter_csv_blocks` parses clean blocks with pyarrow and hands everything else (quotes, blank
lines, wrong column counts, invalid UTF-8, lone carriage returns) to `iter_csv`. Whatever the
mix and wherever the block boundaries fall, every record must come out exactly as the plain
csv-module reader gives it: the same index, line number, serialized tf.Example and key for each
prediction input, the same error type, message and payload for each error row.
"""
import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.feature_spec import FeatureSpec
from transforms.formats.base import DEFAULT_MAX_RECORD_BYTES
from transforms.formats.csv_input import CsvInput
from transforms.formats.csv_reader import iter_csv, iter_csv_blocks
from transforms.parse import columns_to_examples
from transforms.read import tally
from transforms.records import CsvBatch

SPEC = FeatureSpec.from_json({
    "x": {"dtype": "float32"},
    "n": {"dtype": "int64", "default": [7]},
    "s": {"dtype": "string", "default": ["?"]},
    "v": {"kind": "varlen", "dtype": "float32"},
})
HEADER = b"id,x,n,s,v,extra"

LINES = {  # (kind, text): clean rows the fast path takes, and every kind that must fall back
    "ok": st.builds(lambda i, x, n: f"r{i},{x},{n},abc,1.5|2,e".encode(),
                    st.integers(0, 999), st.floats(-1e6, 1e6, width=32), st.integers(-99, 99)),
    "defaults": st.just(b"rd,0.25,,,,"),
    "bad_number": st.just(b"rb,zz,1,a,,e"),
    "missing_required": st.just(b"rm,,1,a,,e"),
    "short_row": st.just(b"rs,1.0,2"),
    "blank": st.sampled_from([b"", b"  "]),
    "utf8": st.just(b"ru,1.0,2,\xff\xfe,,e"),
    "unicode": st.just("rü,1.0,2,ünï,,é".encode()),
    "quoted": st.just(b'rq,1.0,2,"a,b",,e'),
    "quoted_newline": st.just(b'rn,1.0,2,"line\nbreak",,e'),
    "crlf": st.just(b"rc,2.0,3,c,,e\r"),
    "nul": st.just(b"r0,1.0,2,a\x00b,,e"),
}


@st.composite
def csv_files(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(LINES)), min_size=1, max_size=40))
    # mostly clean files (the fast path), sometimes anything
    if draw(st.booleans()):
        kinds = [k if k in ("ok", "defaults") else "ok" for k in kinds] + kinds[:2]
    lines = [draw(LINES[k]) for k in kinds]
    blob = b"\n".join([HEADER] + lines) + draw(st.sampled_from([b"", b"\n"]))
    if draw(st.booleans()):
        blob = b"\xef\xbb\xbf" + blob
    return blob, draw(st.integers(16, 400))


def _reference(blob):
    """The csv module alone: every record in one CsvBatch of rows."""
    rows, indices, lines, errors, header = [], [], [], [], None
    for item in iter_csv(io.BytesIO(blob)):
        if item[0] == "header":
            header = item[1]
        elif item[0] == "ok":
            rows.append(item[3])
            indices.append(item[1])
            lines.append(item[2])
        else:
            errors.append((item[1], item[2], item[3], item[4], item[5]))
    return header, CsvBatch("f.csv", header, rows, np.array(indices, np.int64),
                            np.array(lines, np.int64)), errors


def _outcome(batches, read_errors):
    """{index: what became of the record} over all batches."""
    out = {}
    for index, line, etype, message, payload in read_errors:
        out[index] = ("error", line, etype, message, payload)
    for batch in batches:
        if not len(batch):
            continue
        records, errors = columns_to_examples(batch, SPEC, "id")
        for e in errors:
            out[e["index"]] = ("error", e["line"], e["error_type"], e["message"], e["payload"])
        if records is not None:
            for i, line, ser, key in zip(records.indices, records.lines, records.serialized,
                                         records.keys):
                out[int(i)] = ("ok", int(line), bytes(ser), str(key))
    return out


def _blocks(blob, block_bytes, batch_size=3, stream=None):
    """The reader's own batching (the CSV format's read_stream, counted as the reading step
    counts) over iter_csv_blocks."""
    reader = CsvInput(block_bytes=block_bytes)
    stats = {"records": 0, "read_errors": 0, "unreadable_tail": False}
    batches, errors = [], []
    items = reader.read_stream("f.csv", stream or io.BytesIO(blob), batch_size, ["id", *SPEC],
                               DEFAULT_MAX_RECORD_BYTES)
    for item in tally(items, stats):
        if isinstance(item, CsvBatch):
            batches.append(item)
        else:
            row = item.value
            errors.append((row["index"], row.get("line"), row["error_type"], row["message"],
                           row["payload"]))
    return batches, errors, stats


@settings(max_examples=150, deadline=None)
@given(csv_files())
def test_block_reader_gives_what_the_csv_module_gives(case):
    blob, block_bytes = case
    header, ref_batch, ref_errors = _reference(blob)
    batches, errors, stats = _blocks(blob, block_bytes)
    want = _outcome([ref_batch], ref_errors)
    got = _outcome(batches, errors)
    assert got == want
    assert stats["records"] == len(want)
    assert all(b.header == header for b in batches)


def test_clean_file_is_read_by_pyarrow_in_blocks():
    rows = [f"r{i},{i / 4},{i},s{i % 3},{i}|{i + 1},e".encode() for i in range(1000)]
    blob = b"\n".join([HEADER] + rows) + b"\n"
    items = list(iter_csv_blocks(io.BytesIO(blob), ["id", "x", "n", "s", "v"],
                                 block_bytes=4096))
    assert items[0] == ("header", ["id", "x", "n", "s", "v", "extra"])
    tables = items[1:]
    assert len(tables) > 5 and all(t[0] == "table" for t in tables)
    assert [t[3] for t in tables] == list(np.cumsum([0] + [t[1].num_rows
                                                           for t in tables[:-1]]))
    assert sum(t[1].num_rows for t in tables) == 1000
    assert tables[0][1].column_names == ["id", "x", "n", "s", "v"]  # 'extra' never parsed
    assert tables[-1][4] == 2 + sum(t[1].num_rows for t in tables[:-1])  # line numbers
    _, ref, _ = _reference(blob)
    assert _outcome(_blocks(blob, 4096, batch_size=128)[0], []) == _outcome([ref], [])


def test_quote_hands_the_rest_of_the_file_to_the_csv_module():
    rows = [f"r{i},1,2,a,,e".encode() for i in range(50)]
    rows[20] = b'r20,1,2,"multi\nline",,e'
    blob = b"\n".join([HEADER] + rows)
    items = list(iter_csv_blocks(io.BytesIO(blob), None, block_bytes=64))
    kinds = [it[0] for it in items]
    first_ok = kinds.index("ok")
    assert "table" in kinds[:first_ok] and "table" not in kinds[first_ok:]
    multi = [it for it in items if it[0] == "ok" and it[3][0] == "r20"]
    assert multi[0][1:3] == (20, 22) and multi[0][3][3] == "multi\nline"
    last = items[-1]
    assert last[:3] == ("ok", 49, 52)  # the quoted newline moved later lines by one


def test_cut_gzip_keeps_the_rows_before_the_damage():
    import gzip
    rows = [f"r{i},{i},1,a,,e".encode() for i in range(20000)]
    blob = gzip.compress(b"\n".join([HEADER] + rows) + b"\n")
    cut = blob[: len(blob) // 2]
    batches, errors, stats = _blocks(None, 1 << 16, batch_size=4096,
                                     stream=gzip.GzipFile(fileobj=io.BytesIO(cut)))
    n = sum(len(b) for b in batches)
    assert 0 < n < 20000
    got = np.concatenate([b.indices for b in batches])
    assert np.array_equal(np.sort(got), np.arange(n))
    kinds = [e[2] for e in errors]
    assert kinds[-1] == "unreadable_tail" and set(kinds[:-1]) <= {"csv_format"}
    assert stats["records"] == n + len(errors)


def test_blank_lines_inside_clean_blocks_keep_line_numbers():
    rows = [f"r{i},{i},1,a,,e".encode() for i in range(40)]
    rows[5:5] = [b""]
    rows[20:20] = [b"", b""]
    blob = b"\n".join([HEADER] + rows) + b"\n"
    for block in (64, 256, 4096):
        _, ref, ref_errors = _reference(blob)
        batches, errors, _ = _blocks(blob, block, batch_size=7)
        got = _outcome(batches, errors)
        assert got == _outcome([ref], ref_errors)
        assert got[39][1] == 2 + 39 + 3  # after three blank lines


def test_parse_dofn_converts_one_batch_ahead_and_keeps_the_order():
    """ParseWithSpecDoFn converts CSV batch k in its helper thread while batch k-1's outputs
    go downstream: the outputs (records and error rows) come out in input order, the last
    batch at finish_bundle, and a TFRecord batch never overtakes a pending CSV one."""
    from apache_beam.pvalue import TaggedOutput
    from transforms.parse import ParseWithSpecDoFn
    from transforms.records import RecordBatch
    rows = [f"r{i},{i / 4},{i},s{i % 3},{i}|{i + 1},e".encode() for i in range(60)]
    rows[7] = b"r7,zz,1,a,,e"       # parse_error
    rows[33] = b"r33,,1,a,,e"       # missing_feature (x is required)
    blob = b"\n".join([HEADER] + rows) + b"\n"
    batches, read_errors, _ = _blocks(blob, 256, batch_size=9)
    assert len(batches) > 4 and not read_errors
    tfrecord = RecordBatch("t.tfrecord", np.array([b"raw"], dtype=object),
                           np.array([0], np.int64))
    inputs = batches[:3] + [tfrecord] + batches[3:]

    expected = []  # columns_to_examples on each batch, synchronously, in input order
    for b in inputs:
        if b is tfrecord:
            expected.append(("records", "t.tfrecord", [0]))
            continue
        records, errors = columns_to_examples(b, SPEC, "id")
        expected += [("error", e["index"], e["error_type"]) for e in errors]
        if records is not None:
            expected.append(("records", records.shard, records.indices.tolist(),
                             [bytes(s) for s in records.serialized]))

    dofn = ParseWithSpecDoFn(SPEC, "id")
    dofn.setup()
    dofn.start_bundle()
    outputs, after_each = [], []
    for b in inputs:
        outputs += list(dofn.process(b))
        after_each.append(len(outputs))
    outputs += [o if isinstance(o, TaggedOutput) else o.value  # windowed at bundle end
                for o in dofn.finish_bundle()]
    dofn.teardown()
    got = []
    for o in outputs:
        if getattr(o, "tag", None) == "errors":
            row = getattr(o.value, "value", o.value)
            got.append(("error", row["index"], row["error_type"]))
        elif o.shard == "t.tfrecord":
            got.append(("records", o.shard, o.indices.tolist()))
        else:
            got.append(("records", o.shard, o.indices.tolist(),
                        [bytes(s) for s in o.serialized]))
    assert got == expected
    assert {e[2] for e in got if e[0] == "error"} == {"parse_error", "missing_feature"}
    assert after_each[0] == 0  # the first CSV batch is still being converted
    assert sum(len(o) for o in outputs if getattr(o, "tag", None) is None) == 60 - 2 + 1


def test_read_ahead_keeps_order_and_hands_over_the_readers_error():
    from transforms.formats.base import ReadAhead

    def reader():
        yield from range(10)
        raise OSError("stream broke")

    ahead = ReadAhead(reader(), depth=2)
    got = []
    try:
        for item in ahead:
            got.append(item)
    except OSError as e:
        got.append(str(e))
    ahead.close()
    assert got == list(range(10)) + ["stream broke"]


def test_read_ahead_close_stops_a_reader_that_is_not_done():
    import itertools
    import threading
    from transforms.formats.base import ReadAhead
    produced = []

    def endless():
        for i in itertools.count():
            produced.append(i)
            yield i

    ahead = ReadAhead(endless(), depth=2)
    first = list(itertools.islice(iter(ahead), 3))
    ahead.close()
    assert first == [0, 1, 2]
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 1  # never more than `depth` (+ the one being put) ahead
