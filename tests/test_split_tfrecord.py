"""Splitting a TFRecord file: reading its blocks, each on its own, gives what reading the file
whole (`read_shard`, the serial reader) gives, record for record: the same payloads, indices
and error rows (types, messages, payloads), each record once.

Files are framed here (with faults no writer makes: a flipped data byte, a corrupt or absurd
length field, a file cut short, whole frames nested in a payload to mislead resync) or written
by TensorFlow (`tf.io.TFRecordWriter`, the independent reference for the framing). The blocks
are those the pipeline makes: the file's fixed grid of ranges of S bytes, one summary per
range, then the index."""
import io
import math
import os
import random
import struct

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.formats.tfrecord_input import TFRECORD, iter_tfrecord_batches
from transforms.records import RecordBatch

MAX_RANGES = 600  # a smaller S is raised to this many ranges: the test's time, not a limit


# --- framing ---------------------------------------------------------------------------------
def _masked_crc(data: bytes) -> int:
    c = google_crc32c.value(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _header(length: int, crc_ok: bool = True) -> bytes:
    field = struct.pack("<Q", length)
    return field + struct.pack("<I", _masked_crc(field) ^ (0 if crc_ok else 0x10))


def _frame(data: bytes) -> bytes:
    return _header(len(data)) + data + struct.pack("<I", _masked_crc(data))


# --- reading ---------------------------------------------------------------------------------
def _records(items) -> list:
    """Batches and error rows as one entry per record: ("ok", index, payload) or
    ("error", index, the row's fields)."""
    out = []
    for item in items:
        if isinstance(item, RecordBatch):
            out += [("ok", int(i), p) for i, p in zip(item.indices, item.serialized)]
        else:
            out.append(("error", item["index"], tuple(sorted(item.items()))))
    return out


def _serial(path: str, max_record_bytes: int, batch_size: int = 5) -> list:
    return _records(TFRECORD.read_shard(path, batch_size, None, max_record_bytes, {}))


def _grid(size: int, split: int) -> list:
    return [(k * split, min((k + 1) * split, size)) for k in range(math.ceil(size / split))]


def _index(path: str, split: int, max_record_bytes: int):
    size = os.path.getsize(path)
    ranges = _grid(size, split)
    summaries = [TFRECORD.summarize_range(path, a, b, size, max_record_bytes)
                 for a, b in ranges]
    return ranges, summaries, TFRECORD.index_file(path, size, ranges, summaries,
                                                  max_record_bytes)


def _read_blocks(index, order, max_record_bytes: int, batch_size: int = 5) -> list:
    """The records of the blocks, read in `order`, block after block; checks on the way that
    a block's batches hold only its own records and what it says it read."""
    out = []
    for k in order:
        stats: dict = {}
        items = list(TFRECORD.read_block(index, k, batch_size, None, max_record_bytes, stats))
        assert stats["gzip"] is False
        assert stats["bytes"] == index.block_bytes(k)  # small files: every byte is read
        got = _records(items)
        last = index.first_index[k + 1] if k + 1 < index.blocks else math.inf
        assert all(index.first_index[k] <= r[1] < last for r in got)
        assert all(len(b) <= batch_size for b in items if isinstance(b, RecordBatch))
        out += got
    return out


def _check_split(path: str, split: int, max_record_bytes: int, chain=None):
    """Reading the blocks in order, and in reverse, gives the serial reader's records; the
    index's starts are those of `chain` (the file's frame starts, the last error row's
    included) when given. Returns (summaries, index)."""
    want = _serial(path, max_record_bytes)
    ranges, summaries, index = _index(path, split, max_record_bytes)
    size = ranges[-1][1]
    if chain is not None:
        starts = [next((c for c in chain if c >= a), size) for a, _ in ranges]
        first = [chain.index(s) if s < size else len(chain) for s in starts]
    if index is None:  # read whole: only when no block but the first holds a record
        if chain is not None:
            assert len(starts) == 1 or starts[1] == size
        return summaries, index
    assert index.split and index.size == size and index.blocks == len(ranges)
    assert index.starts[0] == 0 and list(index.starts) == sorted(index.starts)
    assert index.first_line == (0,) * index.blocks
    if chain is not None:
        assert list(index.starts) == starts
        assert list(index.first_index) == first
    assert _read_blocks(index, range(index.blocks), max_record_bytes) == want
    backwards = _read_blocks(index, reversed(range(index.blocks)), max_record_bytes)
    assert sorted(backwards, key=lambda r: r[1]) == want
    return summaries, index


# --- generated files -------------------------------------------------------------------------
@st.composite
def tfrecord_files(draw):
    """(file bytes, max_record_bytes, frame starts the serial reader walks, the last of them
    being its final error row when the file ends in a fault)."""
    rnd = draw(st.randoms(use_true_random=False))
    max_record_bytes = draw(st.sampled_from([300, 1000, 1 << 20]))
    frames = []
    for _ in range(draw(st.integers(0, 20))):
        n = draw(st.one_of(st.integers(0, 30), st.integers(0, 400), st.integers(900, 2500)))
        data = bytes(n) if draw(st.integers(0, 9)) == 0 else rnd.randbytes(n)
        kind = draw(st.sampled_from(["ok"] * 5 + ["bad_data", "nested"]))
        if kind == "nested":  # whole valid frames inside the payload: a resync can land there
            inner = b"".join(_frame(rnd.randbytes(rnd.randint(0, 60)))
                             for _ in range(rnd.randint(1, 3)))
            cut = rnd.randint(0, n)
            data = data[:cut] + inner + data[cut:]
        frame = bytearray(_frame(data))
        if kind == "bad_data":
            frame[12 + rnd.randrange(len(data)) if data else -1] ^= 0x40
        frames.append(bytes(frame))
    starts = [sum(map(len, frames[:j])) for j in range(len(frames))]
    blob = b"".join(frames)
    chain = list(starts)
    fault = draw(st.sampled_from(["none", "none", "bad_length", "absurd_length", "truncate"]))
    if fault in ("bad_length", "absurd_length") and frames:
        j = rnd.randrange(len(frames))
        if fault == "bad_length":
            header = _header(len(frames[j]) - 16, crc_ok=False)
        else:  # a length whose CRC is right but which the rest of the file cannot hold
            header = _header(rnd.choice([len(blob) - starts[j] - 15, 1 << 40, 2 ** 64 - 1]))
        blob = blob[:starts[j]] + header + blob[starts[j] + 12:]
        chain = starts[:j + 1]
    elif fault == "truncate" and blob:
        cut = rnd.randrange(1, len(blob))
        blob = blob[:cut]
        chain = [s for s in starts if s < cut]
    return blob, max_record_bytes, chain


def _split_sizes(size: int):
    return st.one_of(st.integers(1, 64), st.integers(1, 2000), st.just(size),
                     st.just(max(1, size - 1)))


@settings(max_examples=120)
@given(st.data())
def test_blocks_read_alone_are_the_serial_read(tmp_path_factory, data):
    blob, max_record_bytes, chain = data.draw(tfrecord_files())
    if not blob:
        return
    split = max(data.draw(_split_sizes(len(blob))), math.ceil(len(blob) / MAX_RANGES))
    path = str(tmp_path_factory.mktemp("split") / "a.tfrecord")
    with open(path, "wb") as fh:
        fh.write(blob)
    _check_split(path, split, max_record_bytes, chain)


@settings(max_examples=40)
@given(tfrecord_files(), st.sampled_from([12, 13, 64, 999]))
def test_the_serial_reader_does_not_depend_on_its_read_size(file, chunk_bytes):
    """What a block yields is what the file yields only if nothing depends on where reads
    happen to end (a block's reads end elsewhere than the whole file's)."""
    blob, max_record_bytes, _ = file

    def read(chunk):
        return list(iter_tfrecord_batches(io.BytesIO(blob), 1, chunk, max_record_bytes))
    assert read(chunk_bytes) == read(1 << 22)


# --- cases by hand ---------------------------------------------------------------------------
def _write(tmp_path, blob: bytes, name="a.tfrecord") -> str:
    path = tmp_path / name
    path.write_bytes(blob)
    return str(path)


def test_a_resync_inside_a_payload_is_not_trusted(tmp_path):
    """A range that starts inside a payload holding whole frames resyncs onto the nested
    frame; the index follows the file's own frames instead."""
    inner = _frame(b"inner record") + _frame(b"another")
    outer = b"o" * 40 + inner + b"o" * 40
    frames = [_frame(b"a" * 30), _frame(outer), _frame(b"b" * 30), _frame(b"c" * 30)]
    starts = [sum(map(len, frames[:j])) for j in range(4)]
    path = _write(tmp_path, b"".join(frames))
    split = starts[1] + 12 + 10  # range 1 starts 10 bytes into the outer payload
    summaries, index = _check_split(path, split, 1 << 20, starts)
    assert summaries[1].first == starts[1] + 12 + 40  # resync found the nested frame...
    assert index.starts[1] == starts[2]               # ...the index did not take it
    got = _read_blocks(index, range(index.blocks), 1 << 20)
    assert [r[2] for r in got] == [b"a" * 30, outer, b"b" * 30, b"c" * 30]


def test_a_frame_spanning_several_ranges(tmp_path):
    frames = [_frame(b"x" * 10), _frame(bytes(range(256)) * 20), _frame(b"y" * 10)]
    starts = [sum(map(len, frames[:j])) for j in range(3)]
    path = _write(tmp_path, b"".join(frames))
    assert starts[2] == 5162 and len(b"".join(frames)) == 5188
    _, index = _check_split(path, 700, 1 << 20, starts)
    # ranges 1..6 hold no frame start: empty blocks that start where the third frame does,
    # and block 0 ends there, with the long frame whole
    assert index.starts == (0,) + (5162,) * 7
    assert [index.block_bytes(k) for k in range(8)] == [5162] + [0] * 6 + [26]
    assert index.first_index == (0,) + (2,) * 7


def test_a_bad_length_checksum_in_the_middle_ends_the_file_there(tmp_path):
    rnd = random.Random(7)
    frames = [_frame(rnd.randbytes(rnd.randint(20, 80))) for _ in range(30)]
    starts = [sum(map(len, frames[:j])) for j in range(30)]
    blob = bytearray(b"".join(frames))
    blob[starts[12]] ^= 1  # the length field of record 12: its CRC no longer matches
    path = _write(tmp_path, bytes(blob))
    split = 300
    _, index = _check_split(path, split, 1 << 20, starts[:13])
    j = starts[12] // split
    assert index.end(j) == len(blob)  # the block of the bad header reads to the end...
    assert all(index.starts[k] == len(blob) for k in range(j + 1, index.blocks))  # ...alone
    rows = _records(TFRECORD.read_block(index, j, 100, None, 1 << 20, {}))
    assert [r[1] for r in rows] == list(range(index.first_index[j], 13))
    tail = dict(rows[-1][2])
    assert (tail["error_type"], tail["index"]) == ("unreadable_tail", 12)
    assert "12 records were read before it" in tail["message"]
    assert tail["payload"] is not None
    for k in range(j + 1, index.blocks):
        assert list(TFRECORD.read_block(index, k, 100, None, 1 << 20, {})) == []


def test_an_oversized_record_then_more_records(tmp_path):
    """A record above --max_record_bytes is one error row in the block where it starts, and
    the walk goes on past it (it is not read into memory by the index)."""
    frames = [_frame(b"s" * 50), _frame(b"L" * 5000), _frame(b"t" * 50), _frame(b"u" * 50)]
    starts = [sum(map(len, frames[:j])) for j in range(4)]
    path = _write(tmp_path, b"".join(frames))
    for split in (30, 1000, 2600):
        _check_split(path, split, 1000, starts)


def test_block_messages_count_the_records_of_the_whole_file(tmp_path):
    frames = [_frame(b"r" * 20) for _ in range(10)]
    blob = b"".join(frames) + _header(100) + b"cut"  # a last record cut short
    path = _write(tmp_path, blob)
    _, index = _check_split(path, 100, 1 << 20, [36 * j for j in range(11)])
    last = _records(TFRECORD.read_block(index, index.blocks - 1, 5, None, 1 << 20, {}))
    row = dict(last[-1][2])
    assert row["index"] == 10 and row["error_type"] == "corrupt_record"
    assert row["message"] == "truncated last record (needs 100 bytes); 10 records were read " \
                             "before it"


def test_not_a_tfrecord_file_is_read_whole(tmp_path):
    path = _write(tmp_path, b"this is not a TFRecord file " * 50)
    _, index = _check_split(path, 100, 1 << 20, [0])
    assert index is None


def test_tensorflow_files_holding_tfrecord_files_in_their_examples(tmp_path):
    """tf.Examples written by TensorFlow whose bytes feature is itself a TFRecord file (made
    by TensorFlow too): ranges resync inside payloads, and the blocks still match."""
    import tensorflow as tf

    def example(i: int, blob: bytes) -> bytes:
        return tf.train.Example(features=tf.train.Features(feature={
            "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
            "file": tf.train.Feature(bytes_list=tf.train.BytesList(value=[blob]))}
        )).SerializeToString()

    rnd = random.Random(3)
    inner_path = str(tmp_path / "inner.tfrecord")
    with tf.io.TFRecordWriter(inner_path) as w:
        for i in range(40):
            w.write(example(i, rnd.randbytes(rnd.randint(0, 30))))
    inner = open(inner_path, "rb").read()
    records = [example(i, inner if i % 3 == 0 else rnd.randbytes(rnd.randint(0, 200)))
               for i in range(60)]
    path = str(tmp_path / "outer.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    assert [r[2] for r in _serial(path, 1 << 20)] == records
    starts = list(np.cumsum([0] + [len(r) + 16 for r in records[:-1]]))
    misled = 0
    for split in (37, 500, 1999, 4096):
        summaries, index = _check_split(path, split, 1 << 20, [int(s) for s in starts])
        misled += sum(s.first is not None and s.first not in starts for s in summaries)
    assert misled  # some resync did land inside a payload


def test_index_file_refuses_ranges_that_are_not_the_grid(tmp_path):
    path = _write(tmp_path, _frame(b"x" * 100))
    with pytest.raises(ValueError, match="must cover"):
        TFRECORD.index_file(path, 116, [(0, 50), (60, 116)], [None, None], 1 << 20)
