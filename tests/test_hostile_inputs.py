"""Hostile inputs: bytes that are not text where text is expected, lengths that claim a TiB,
one line of gigabytes, one file under several spellings, headers that almost match, numbers
that are not finite. Every record still ends as a prediction or an error row with a reason, a
bad first input is one start-up error, memory stays bounded by the record cap and reading stays
linear in the input.

Expected values are computed here: TFRecord frames are written by TensorFlow (or framed here
with google_crc32c when the length field must lie), expected scores come from calling the
SavedModel directly, and expected output text is written out literally.
"""
import base64
import csv
import gzip
import io
import json
import os
import struct
import tracemalloc

import numpy as np
import pytest

from pipeline.demo import demo_dtypes, demo_rows
from tests.helpers import assert_close, errors, expected_outputs, predictions, run_job
from transforms.errors import InputError

B64_FFFE = base64.b64encode(b"\xff\xfe").decode()  # "//4="
MIB = 1 << 20


# --- writing inputs -------------------------------------------------------------------------
def _example(row: dict) -> bytes:
    """A tf.Example built by TensorFlow's own protos (a bytes id stays as it is)."""
    import tensorflow as tf
    feats = {}
    for name, v in row.items():
        if v is None:
            continue
        if isinstance(v, (str, bytes)):
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v if isinstance(v, bytes) else v.encode()]))
        elif isinstance(v, int):
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
        else:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def _write_tfrecord(path, records: list[bytes]) -> str:
    import tensorflow as tf
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return str(path)


def _masked_crc(data: bytes) -> int:
    import google_crc32c
    c = google_crc32c.value(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _header(length: int) -> bytes:
    """A TFRecord length field and its valid masked CRC, whatever the length claims."""
    field = struct.pack("<Q", length)
    return field + struct.pack("<I", _masked_crc(field))


def _frame(data: bytes, data_crc_ok: bool = True) -> bytes:
    crc = _masked_crc(data) ^ (0 if data_crc_ok else 1)
    return _header(len(data)) + data + struct.pack("<I", crc)


def _csv_cell(v) -> bytes:
    if v is None:
        return b""
    if isinstance(v, bytes):
        return v
    if isinstance(v, float):
        return repr(float(np.float32(v))).encode()
    return str(v).encode()


def _write_csv(path, header: list[str], rows: list[dict]) -> str:
    lines = [",".join(header).encode()]
    lines += [b",".join(_csv_cell(r.get(c)) for c in header) for r in rows]
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return str(path)


def _features_only(rows):
    return [{k: v for k, v in r.items() if k != "id"} for r in rows]


def _read_csv_predictions(out: str) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(out)):
        if name.startswith("predictions-") and name.endswith(".csv"):
            with open(os.path.join(out, name), newline="", encoding="utf-8") as fh:
                rows += list(csv.DictReader(fh))
    return rows


def _key(value):
    """A row's key as a hashable: text, or ("b64", ...) for bytes that are not UTF-8."""
    if isinstance(value, dict):
        return ("b64", value["b64"])
    if isinstance(value, str) and value.startswith('{"b64"'):
        return ("b64", json.loads(value)["b64"])
    return value


# --- 1. keys that are not UTF-8, keys that are empty ------------------------------------------
@pytest.mark.parametrize("input_format", ["csv", "tfrecord"])
def test_keys_that_are_not_utf8_are_base64_in_both_output_formats(
        tmp_path, demo_model_base, demo_model, input_format):
    rows = demo_rows(5, seed=41)
    ids = [b"k0", b"\xff\xfe", "ü-ok".encode(), None, b"k4"]
    for r, i in zip(rows, ids):
        r["id"] = i
    header = list(demo_dtypes())
    if input_format == "csv":
        # the clean file goes through pyarrow's block reader, the other through the csv module
        _write_csv(tmp_path / "a.csv", header, [rows[0], rows[3], rows[4]])
        _write_csv(tmp_path / "b.csv", header, [rows[1], rows[2]])
        pattern = str(tmp_path / "*.csv")
    else:
        _write_tfrecord(tmp_path / "a.tfrecord", [_example(r) for r in rows])
        pattern = str(tmp_path / "a.tfrecord")
    want = {"k0": rows[0], ("b64", B64_FFFE): rows[1], "ü-ok": rows[2], "k4": rows[4]}
    scored = [rows[0], rows[1], rows[2], rows[4]]
    expected = dict(zip(want, expected_outputs(demo_model, _features_only(scored))["score"]))
    for fmt in ("jsonl", "csv"):
        out = str(tmp_path / f"out-{fmt}")
        summary = run_job(demo_model_base, pattern, out, "--key_field", "id",
                          "--key_dtype", "string", "--output_format", fmt,
                          "--max_error_rate", "1.0")
        got = predictions(out) if fmt == "jsonl" else _read_csv_predictions(out)
        by_key = {_key(r["id"]): r for r in got}
        assert sorted(by_key, key=str) == sorted(want, key=str), fmt
        for k, score in expected.items():
            assert_close(float(by_key[k]["score"]), score)
        [err] = errors(out)
        assert err["error_type"] == "missing_key", err
        assert (summary["records_in"], summary["predicted"], summary["errors"]) == (5, 4, 1)
        if input_format == "csv":
            assert (err["index"], err["line"]) == (1, 3) and "empty" in err["message"]
        else:
            assert err["index"] == 3


# --- 2. TFRecord lengths that a CRC vouches for but no file holds ------------------------------
def test_tfrecord_absurd_lengths_are_error_rows_also_at_startup(tmp_path, demo_model_base,
                                                                demo_model):
    rows = demo_rows(4, seed=42)
    for i, r in enumerate(rows):
        r["id"] = f"r{i}"
    d = tmp_path / "in"
    d.mkdir()
    # the first file starts with a 1 TiB length: --key_field without --key_dtype peeks into it
    (d / "a_tib.tfrecord").write_bytes(_header(1 << 40) + os.urandom(3000))
    (d / "b_max.tfrecord").write_bytes(_frame(_example(rows[0])) + _header(2 ** 64 - 1) +
                                       os.urandom(500))
    _write_tfrecord(d / "c_good.tfrecord", [_example(r) for r in rows[1:]])
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, str(d / "*.tfrecord"), out, "--key_field", "id",
                      "--max_error_rate", "1.0")
    got = {r["id"]: r["score"] for r in predictions(out)}
    assert sorted(got) == ["r0", "r1", "r2", "r3"]
    assert_close([got[f"r{i}"] for i in range(4)],
                 expected_outputs(demo_model, _features_only(rows))["score"])
    errs = {os.path.basename(e["shard"]): e for e in errors(out)}
    assert sorted(errs) == ["a_tib.tfrecord", "b_max.tfrecord"]
    assert (errs["a_tib.tfrecord"]["error_type"], errs["a_tib.tfrecord"]["index"]) == \
        ("unreadable_tail", 0)
    assert (errs["b_max.tfrecord"]["error_type"], errs["b_max.tfrecord"]["index"]) == \
        ("unreadable_tail", 1)
    assert "1 records were read before it" in errs["b_max.tfrecord"]["message"]
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (6, 4, 2)
    assert summary["counts_exact"] is False


def _read_shard(path: str, fmt: str, cap: int, columns=None, batch_size=16):
    """ReadFilesDoFn on one file: (records, error rows, stats)."""
    from transforms.read import ReadFilesDoFn
    dofn = ReadFilesDoFn(fmt, batch_size, columns, max_record_bytes=cap)
    dofn.setup()
    batches, errs, stats = [], [], None
    for out in dofn.process_file(path):
        tag = getattr(out, "tag", None)
        if tag == "errors":
            errs.append(out.value)
        elif tag == "shard_stats":
            stats = out.value[1]
        else:
            batches.append(out)
    return batches, errs, stats


def test_tfrecord_record_above_the_cap_is_skipped_and_reading_goes_on(tmp_path):
    good = [os.urandom(100) for _ in range(3)]
    big_ok, big_bad = os.urandom(3 * MIB), os.urandom(3 * MIB)
    path = tmp_path / "big.tfrecord"
    path.write_bytes(_frame(good[0]) + _frame(big_ok) + _frame(good[1]) +
                     _frame(big_bad, data_crc_ok=False) + _frame(good[2]))
    batches, errs, stats = _read_shard(str(path), "tfrecord", cap=MIB)
    records = [(int(i), bytes(p)) for b in batches for i, p in zip(b.indices, b.serialized)]
    assert records == [(0, good[0]), (2, good[1]), (4, good[2])]
    assert [(e["index"], e["error_type"]) for e in errs] == [(1, "corrupt_record"),
                                                           (3, "corrupt_record")]
    assert "larger than --max_record_bytes" in errs[0]["message"]
    assert "checksum matches" in errs[0]["message"]
    assert "does not match" in errs[1]["message"]
    assert base64.b64decode(errs[0]["payload"]) == big_ok[:64 * 1024]
    assert errs[0]["payload_truncated"] is True
    assert (stats["records"], stats["read_errors"], stats["unreadable_tail"]) == (5, 2, False)


def test_max_record_bytes_option_reaches_the_readers(tmp_path, demo_model_base):
    """--max_record_bytes from the command line: a 2 MiB record is skipped at a 1 MiB cap
    (TFRecord), a 2 MiB line is one csv_format row (CSV); the rest is scored."""
    rows = demo_rows(2, seed=48)
    for i, r in enumerate(rows):
        r["id"] = f"m{i}"
    big = _example({**rows[0], "id": "big", "pad": "x" * (2 * MIB)})
    path = tmp_path / "a.tfrecord"
    path.write_bytes(_frame(_example(rows[0])) + _frame(big) + _frame(_example(rows[1])))
    header = list(demo_dtypes())
    _write_csv(tmp_path / "a.csv", header, [rows[0], {**rows[1], "id": "y" * (2 * MIB)},
                                            rows[1]])
    for name in ("a.tfrecord", "a.csv"):
        out = str(tmp_path / f"out-{name}")
        summary = run_job(demo_model_base, str(tmp_path / name), out, "--key_field", "id",
                          "--key_dtype", "string", "--max_record_bytes", str(MIB),
                          "--max_error_rate", "1.0")
        assert sorted(r["id"] for r in predictions(out)) == ["m0", "m1"]
        [err] = errors(out)
        assert err["index"] == 1 and "--max_record_bytes (1048576" in err["message"]
        assert err["error_type"] == ("corrupt_record" if name.endswith("tfrecord")
                                     else "csv_format")
        assert (summary["records_in"], summary["predicted"]) == (3, 2)


class _SmallReads(io.RawIOBase):
    """A stream whose read1 hands out at most `piece` bytes, as GzipFile's does; every
    `bytes + piece` concatenation of what it returned is counted, and so are read calls and
    the largest size asked for."""

    class Piece(bytes):
        owner = None

        def __radd__(self, other):
            self.owner.concatenated += len(other) + len(self)
            return bytes(other) + bytes(self)

        def __add__(self, other):
            self.owner.concatenated += len(self) + len(other)
            return bytes(self) + bytes(other)

    def __init__(self, inner, piece: int):
        self._inner, self._piece = inner, piece
        self.concatenated = self.calls = self.returned = self.largest_ask = 0

    def readable(self):
        return True

    def read1(self, n=-1):
        self.calls += 1
        self.largest_ask = max(self.largest_ask, n)
        data = self._inner.read(min(n, self._piece) if n and n > 0 else self._piece)
        self.returned += len(data)
        piece = self.Piece(data)
        piece.owner = self
        return piece

    read = read1


def test_gzip_record_is_read_in_linear_time(tmp_path):
    """One 8 MiB record arriving in 64 KiB pieces: each piece is copied a bounded number of
    times (the old `buf = buf[pos:] + chunk` copied ~0.5 GB for this record)."""
    from transforms.formats.tfrecord_input import iter_tfrecords
    record = bytes(8 * MIB)
    tail = _example({"id": "after"})
    blob = _frame(record) + _frame(tail)
    path = tmp_path / "one_big.tfrecord.gz"
    path.write_bytes(gzip.compress(blob))
    with gzip.open(path, "rb") as gz:
        stream = _SmallReads(gz, 64 << 10)
        got = list(iter_tfrecords(stream, chunk_bytes=256 << 10, max_record_bytes=64 * MIB))
    assert [(k, i, len(p)) for k, i, p in got] == [("ok", 0, len(record)), ("ok", 1, len(tail))]
    assert got[0][2] == record and got[1][2] == tail
    assert stream.returned == len(blob)
    assert stream.concatenated <= 2 * len(blob)
    assert stream.largest_ask <= len(record) + (256 << 10)


def test_gzip_record_above_the_cap_keeps_memory_bounded(tmp_path):
    """30 MB of zeros as one record (30 KB of gzip) against a 1 MiB cap: skipped in chunks,
    never held, and the record after it is read."""
    from transforms.formats.tfrecord_input import iter_tfrecord_batches
    tail = _example({"id": "after"})
    path = tmp_path / "zeros.tfrecord.gz"
    path.write_bytes(gzip.compress(_frame(bytes(30_000_000)) + _frame(tail)))
    with gzip.open(path, "rb") as gz:
        stream = _SmallReads(gz, 64 << 10)
        tracemalloc.start()
        try:
            got = list(iter_tfrecord_batches(stream, 16, chunk_bytes=256 << 10,
                                             max_record_bytes=MIB))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert [g[0] for g in got] == ["error", "ok"]
    assert got[0][1:3] == (0, "corrupt_record") and "30000000 bytes" in got[0][3]
    assert got[1][1:] == ([tail], [1])
    assert peak < 4 * MIB, peak
    assert stream.largest_ask <= 256 << 10
    assert stream.concatenated <= 2 * stream.returned


def test_csv_line_above_the_cap_is_one_row_and_memory_stays_bounded(tmp_path):
    header = list(demo_dtypes())
    rows = demo_rows(2, seed=43)
    line = [b",".join(_csv_cell(r.get(c)) for c in header) for r in rows]
    blob = b"\n".join([",".join(header).encode(), line[0], b"0" * 30_000_000, line[1]]) + b"\n"
    path = tmp_path / "long_line.csv.gz"
    path.write_bytes(gzip.compress(blob))
    tracemalloc.start()
    try:
        batches, errs, stats = _read_shard(str(path), "csv", cap=MIB, columns=header)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    read = [(int(i), int(n), c) for b in batches
            for i, n, c in zip(b.indices, b.lines, b.column("id") if b.table is None
                               else b.column("id").to_pylist())]
    assert read == [(0, 2, "r0"), (2, 4, "r1")]
    [err] = errs
    assert (err["error_type"], err["index"], err["line"]) == ("csv_format", 1, 3)
    assert err["payload"] == "0" * 64 * 1024 and err["payload_truncated"] is True
    assert "longer than --max_record_bytes" in err["message"]
    assert (stats["records"], stats["read_errors"]) == (3, 1)
    assert peak < 12 * MIB, peak


def test_csv_header_of_zeros_is_an_unreadable_file_not_a_header(tmp_path):
    """50 MB of NUL bytes in a .csv.gz: one unreadable_tail row, and reading stops early."""
    from transforms.formats.csv_reader import iter_csv_blocks
    path = tmp_path / "zeros.csv.gz"
    path.write_bytes(gzip.compress(bytes(50_000_000)))
    batches, errs, stats = _read_shard(str(path), "csv", cap=MIB)
    assert batches == []
    [err] = errs
    assert err["error_type"] == "unreadable_tail" and err["line"] == 1
    assert err["message"].startswith("line 1 is not a CSV header: it is longer than")
    assert (stats["records"], stats["unreadable_tail"]) == (1, True)
    with gzip.open(path, "rb") as gz:
        stream = _SmallReads(gz, 64 << 10)
        items = list(iter_csv_blocks(stream, None, block_bytes=256 << 10,
                                     max_record_bytes=MIB))
    assert [it[0] for it in items] == ["error"]
    assert stream.returned <= MIB + (256 << 10)  # stopped at the cap, not at the end


@pytest.mark.parametrize("first_lines, why, at", [
    (b"id,n0\x00,n1\n", "NUL", 1),
    (b'"id","n0",\xff\xfen1\n', "UTF-8", 1),
    (b"\nid,n0,\xff\n", "UTF-8", 2),  # after a blank line: read by the csv module
])
def test_csv_header_that_is_not_text(first_lines, why, at):
    from transforms.formats.csv_reader import iter_csv_blocks
    items = list(iter_csv_blocks(io.BytesIO(first_lines + b"r0,1.0,2.0\n")))
    [(kind, index, line, etype, message, _)] = items
    assert (kind, index, line, etype) == ("error", None, at, "unreadable_tail")
    assert message.startswith(f"line {at} is not a CSV header") and why in message


# --- 4. one file, several spellings; directories ----------------------------------------------
def test_one_file_under_several_spellings_is_scored_once(tmp_path, monkeypatch,
                                                         demo_model_base):
    from transforms.read import match_inputs
    rows = demo_rows(3, seed=44)
    for i, r in enumerate(rows):
        r["id"] = f"s{i}"
    data = tmp_path / "data"
    data.mkdir()
    _write_tfrecord(data / "a.tfrecord", [_example(r) for r in rows])
    os.symlink(data / "a.tfrecord", tmp_path / "link.tfrecord")
    os.link(data / "a.tfrecord", tmp_path / "hard.tfrecord")  # the same inode, another name
    monkeypatch.chdir(tmp_path)
    spellings = ["data/a.tfrecord", "./data/a.tfrecord", str(data / "a.tfrecord"),
                 "link.tfrecord", "hard.tfrecord", "data/*.tfrecord"]
    files = match_inputs(spellings)
    assert [f for f, _ in files] == ["data/a.tfrecord"]
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, ",".join(spellings), out, "--key_field", "id")
    assert sorted(r["id"] for r in predictions(out)) == ["s0", "s1", "s2"]
    assert summary["records_in"] == 3


def test_directory_input_is_a_startup_error(tmp_path, demo_model_base):
    d = tmp_path / "shards"
    d.mkdir()
    _write_tfrecord(d / "part-0.tfrecord", [_example({"id": "x"})])
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        run_job(demo_model_base, str(d), str(out))
    assert "is a directory" in str(info.value) and f"{d}/*" in str(info.value)
    assert not out.exists()


# --- 5. CSV headers that almost match ---------------------------------------------------------
HEADER = list(demo_dtypes())


def _header_case(name: str) -> list[str]:
    if name == "upper_n0":
        return [c.upper() if c == "n0" else c for c in HEADER]
    if name == "twice_n1":
        return HEADER + ["n1"]
    if name == "twice_key":
        return HEADER + ["id"]
    if name == "no_device":
        return [c for c in HEADER if c != "device"]
    raise KeyError(name)


@pytest.mark.parametrize("case, words", [
    ("upper_n0", ["'N0'", "'n0'", "letter case"]),
    ("twice_n1", ["'n1'", "more than once"]),
    ("twice_key", ["'id'", "more than once"]),
    ("no_device", ["'device'", "not a column"]),
])
def test_csv_header_problems_in_the_first_file_fail_at_startup(tmp_path, demo_model_base,
                                                               case, words):
    rows = demo_rows(2, seed=45)
    header = _header_case(case)
    cells = [{**r, "N0": r["n0"]} for r in rows]
    path = _write_csv(tmp_path / "a.csv", header, cells)
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        run_job(demo_model_base, path, str(out), "--key_field", "id")
    message = str(info.value)
    assert "a.csv" in message and "\n" not in message
    for w in words:
        assert w in message, message
    assert not out.exists()


def test_csv_first_file_with_a_binary_first_line_fails_at_startup(tmp_path, demo_model_base):
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b"\x1f\x00\x00\x07PK\x03\x04" * 100 + b"\n1,2\n"))
    with pytest.raises(InputError) as info:
        run_job(demo_model_base, str(path), str(tmp_path / "out"))
    message = str(info.value)
    assert message == f"{path}: line 1 is not a CSV header: it holds NUL bytes (a binary file?)"


def test_csv_without_a_header_fails_at_startup(tmp_path, demo_model_base):
    rows = demo_rows(3, seed=46)
    path = tmp_path / "a.csv"
    path.write_bytes(b"\n".join(b",".join(_csv_cell(r.get(c)) for c in HEADER)
                                for r in rows) + b"\n")
    with pytest.raises(InputError) as info:
        run_job(demo_model_base, str(path), str(tmp_path / "out"))
    assert "none of the model's features" in str(info.value)


def test_csv_header_problems_in_later_files_reject_every_row(tmp_path, demo_model_base,
                                                             demo_model):
    good = demo_rows(3, seed=47)
    for i, r in enumerate(good):
        r["id"] = f"g{i}"
    _write_csv(tmp_path / "a_good.csv", HEADER, good)
    bad_rows = {}
    for n, case in enumerate(["upper_n0", "twice_n1", "twice_key"]):
        rows = demo_rows(2, seed=50 + n)
        for i, r in enumerate(rows):
            r["id"] = f"{case}{i}"
            r["N0"] = r["n0"]
        _write_csv(tmp_path / f"b_{case}.csv", _header_case(case), rows)
        bad_rows[case] = rows
    # a file whose first line is binary: its one unreadable_tail row
    (tmp_path / "c_binary.csv").write_bytes(b"\x00\x01\x02\x03,\x00\n" + b"1,2\n" * 5)
    out = str(tmp_path / "out")
    summary = run_job(demo_model_base, str(tmp_path / "*.csv"), out, "--key_field", "id",
                      "--max_error_rate", "1.0")
    got = {r["id"]: r["score"] for r in predictions(out)}
    assert sorted(got) == ["g0", "g1", "g2"]
    assert_close([got[f"g{i}"] for i in range(3)],
                 expected_outputs(demo_model, _features_only(good))["score"])
    by_file: dict = {}
    for e in errors(out):
        by_file.setdefault(os.path.basename(e["shard"]), []).append(e)
    for case, words in [("upper_n0", ["'N0'", "'n0'"]), ("twice_n1", ["'n1'"]),
                        ("twice_key", ["'id'"])]:
        errs = sorted(by_file[f"b_{case}.csv"], key=lambda e: e["index"])
        assert [(e["error_type"], e["index"], e["line"]) for e in errs] == [
            ("csv_format", 0, 2), ("csv_format", 1, 3)]
        for w in words:
            assert w in errs[0]["message"], errs[0]["message"]
        assert errs[1]["payload"].startswith(f"{case}1,")
    [binary] = by_file["c_binary.csv"]
    assert binary["error_type"] == "unreadable_tail"
    assert "not a CSV header" in binary["message"]
    assert summary["records_in"] == 3 + 6 + 1
    assert (summary["predicted"], summary["errors"]) == (3, 7)
    assert summary["counts_exact"] is False


# --- 6. non-finite numbers --------------------------------------------------------------------
def test_float32_cells_nan_inf_range_and_ascii_digits_on_both_paths():
    import pyarrow as pa

    from transforms.feature_spec import Feature
    from transforms.parse import convert_column
    feature = Feature("x", "fixed", "float32", ())
    # every cell Arrow's cast accepts (the vectorised path), then the ones it refuses
    cells = ["nan", "-Infinity", "+inf", "INF", "NaN", "1.5", "1e400", "-1e400", "1e39",
             "nan(1)", "", "3.4028235e38", "\u0663", "\uff13", "1_0"]
    ok = {0: "nan", 1: -np.inf, 2: np.inf, 3: np.inf, 4: "nan", 5: 1.5,
          11: float(np.float32(3.4028235e38))}
    out_of_range = {6, 7, 8}
    not_valid = {9, 12, 13, 14}
    arrow_only = cells[:12]
    # as pyarrow's block reader hands them, as the csv module does (a list), and with a cell
    # Arrow refuses, so that every cell takes the Python path
    for column in (pa.array(arrow_only), arrow_only, cells, cells + [" 2 "]):
        col, errs = convert_column(column, feature)
        assert set(errs) == (out_of_range | not_valid) & set(range(len(column))), \
            (type(column), errs)
        for i in out_of_range:
            assert "out of float32 range" in str(errs[i])
        for i in not_valid & set(errs):
            assert "not a valid float32" in str(errs[i])
        for i, v in ok.items():
            if v == "nan":
                assert np.isnan(col.values[i])
            else:
                assert col.values[i] == np.float32(v), (i, col.values[i])
        assert col.values.dtype == np.float32


def test_int64_cells_take_ascii_digits_only():
    from transforms.feature_spec import Feature
    from transforms.parse import convert_column
    feature = Feature("c", "fixed", "int64", ())
    cells = ["12", "+12", "180.0", "1e3", "\u0663", "\uff11\uff12", "1_000", "1e99",
             "nan", "inf"]
    for column in (cells, cells + [" 5 "]):
        col, errs = convert_column(column, feature)
        assert sorted(errs) == [4, 5, 6, 7, 8, 9]
        assert "out of int64 range" in str(errs[7])
        assert col.values[:4].tolist() == [12, 12, 180, 1000]


def test_int64_cell_with_a_huge_exponent_is_refused_without_building_the_number():
    """"1e999999999" is an integral Decimal: turning it into an int would take a billion
    digits (minutes of CPU). Run apart, so that a regression times out instead of hanging."""
    import subprocess
    import sys
    code = ("from transforms.feature_spec import Feature\n"
            "from transforms.parse import convert_column\n"
            "col, errs = convert_column(['1e999999999', '-1e999999999', '7'], "
            "Feature('c', 'fixed', 'int64', ()))\n"
            "print([int(i) for i in sorted(errs)], [str(e) for e in errs.values()], "
            "col.values.tolist())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("[0, 1] [")
    assert proc.stdout.count("out of int64 range") == 2
    assert proc.stdout.rstrip().endswith("[0, 0, 7]")


def _batch(outputs: dict):
    from transforms.predict import PredictionBatch
    n = len(next(iter(outputs.values())))
    return PredictionBatch(np.array(["s"] * n, dtype=object), np.arange(n), None, outputs)


def test_non_finite_outputs_are_written_losslessly_and_alike():
    from transforms.formats.csv_output import to_csv
    from transforms.formats.jsonl_output import to_jsonl
    outputs = {"score": np.array([np.nan, np.inf, -np.inf, 0.1], np.float32),
               "vec": np.array([[1, np.nan], [np.inf, 2.5], [0.1, 0.2], [1e-5, -0.0]],
                               np.float32),
               "ids": np.array([1, 2, 3, 2 ** 62], np.int64)}
    assert to_jsonl(_batch(outputs), None).decode().split("\n") == [
        '{"shard":"s","index":0,"ids":1,"score":"NaN","vec":[1.0,"NaN"]}',
        '{"shard":"s","index":1,"ids":2,"score":"Infinity","vec":["Infinity",2.5]}',
        '{"shard":"s","index":2,"ids":3,"score":"-Infinity","vec":[0.1,0.2]}',
        '{"shard":"s","index":3,"ids":4611686018427387904,"score":0.1,"vec":[0.00001,-0.0]}',
    ]
    assert to_csv(_batch(outputs), None).decode().split("\n") == [
        '"s",0,1,NaN,"[1.0,""NaN""]"',
        '"s",1,2,Infinity,"[""Infinity"",2.5]"',
        '"s",2,3,-Infinity,"[0.1,0.2]"',
        '"s",3,4611686018427387904,0.1,"[0.00001,-0.0]"',
    ]
    # a row reads the same whether or not its batch holds a non-finite value
    finite = {k: v[3:] for k, v in outputs.items()}
    for fmt in (to_jsonl, to_csv):
        alone = fmt(_batch(finite), None).decode().replace('"index":0', '"index":3')
        if fmt is to_csv:
            alone = alone.replace('"s",0,', '"s",3,', 1)
        assert fmt(_batch(outputs), None).decode().split("\n")[3] == alone


@pytest.fixture(scope="module")
def passthrough_model(tmp_path_factory):
    """A SavedModel whose outputs are its float inputs as parsed."""
    import tensorflow as tf

    from transforms.export import export_parsing_model
    from transforms.feature_spec import Feature, FeatureSpec
    spec = FeatureSpec([Feature("x", "fixed", "float32", (), (0.0,)),
                        Feature("v", "fixed", "float32", (2,), (0.0, 0.0))])
    d = str(tmp_path_factory.mktemp("passthrough") / "1")
    return export_parsing_model(lambda f: {"x": tf.identity(f["x"]), "v": tf.identity(f["v"])},
                                spec, d, raw_signature=None)


def test_non_finite_inputs_reach_the_model_and_come_out_as_written(tmp_path,
                                                                   passthrough_model):
    path = tmp_path / "in.csv"
    path.write_text("id,x,v\n"
                    "a,nan,1.5|-inf\n"
                    "b,-Infinity,INF|0.25\n"
                    "c,1e400,1|2\n"
                    "d,\u0663,1|2\n"
                    "e,0.1,nan(1)|2\n"
                    "f,3.5,1e39|2\n", encoding="utf-8")
    lines = {}
    for fmt in ("jsonl", "csv"):
        out = str(tmp_path / f"out-{fmt}")
        run_job(passthrough_model, str(path), out, "--key_field", "id", "--output_format",
                fmt, "--max_error_rate", "1.0")
        errs = sorted(errors(out), key=lambda e: e["index"])
        assert [(e["index"], e["error_type"]) for e in errs] == [
            (2, "parse_error"), (3, "parse_error"), (4, "parse_error"), (5, "parse_error")]
        assert "out of float32 range" in errs[0]["message"]
        assert "out of float32 range" in errs[3]["message"]
        name = [n for n in os.listdir(out) if n.startswith("predictions-")][0]
        with open(os.path.join(out, name), encoding="utf-8") as fh:
            lines[fmt] = sorted(fh.read().splitlines())
    assert lines["jsonl"] == [
        '{"id":"a","v":[1.5,"-Infinity"],"x":"NaN"}',
        '{"id":"b","v":["Infinity",0.25],"x":"-Infinity"}',
    ]
    assert lines["csv"] == [
        '"a","[1.5,""-Infinity""]",NaN',
        '"b","[""Infinity"",0.25]",-Infinity',
        "id,v,x",
    ]


# --- the csv module's path: rows cross the read-ahead thread in groups -------------------------
def test_quoted_csv_cut_short_keeps_every_row_read_and_hands_rows_over_in_groups(
        tmp_path, monkeypatch):
    """A quoted file is read row by row by the csv module; its rows reach the bundle thread in
    lists (a queue handoff per row cost ten times the reading), and the rows read before a
    broken gzip tail are all there, then one unreadable_tail row."""
    from transforms.formats.base import ReadAhead
    handoffs = []
    real_put = ReadAhead._put

    def counting_put(self, entry):
        handoffs.append(entry)
        return real_put(self, entry)

    monkeypatch.setattr(ReadAhead, "_put", counting_put)
    header = list(demo_dtypes())
    rows = demo_rows(20000, seed=60)
    text = io.StringIO()
    w = csv.writer(text, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    w.writerow(header)
    w.writerows([[r[c] for c in header] for r in rows])
    blob = gzip.compress(text.getvalue().encode())
    path = tmp_path / "quoted.csv.gz"
    path.write_bytes(blob[: len(blob) // 2])
    batches, errs, stats = _read_shard(str(path), "csv", cap=MIB, columns=header,
                                       batch_size=4096)
    indices = np.concatenate([b.indices for b in batches])
    assert 0 < len(indices) < 20000
    assert np.array_equal(indices, np.arange(len(indices)))
    ids = [c for b in batches for c in b.column("id")]
    assert ids == [r["id"] for r in rows[:len(indices)]]
    assert [e["error_type"] for e in errs][-1] == "unreadable_tail"
    assert stats["records"] == len(indices) + len(errs)
    assert len(handoffs) < len(indices) / 100


def test_an_input_that_is_a_fifo_or_a_device_fails_at_startup(tmp_path, demo_model_base):
    """Reading a FIFO would block the job forever and a device never ends: refused (exit 2)
    before anything reads them."""
    from pipeline.run import main
    fifo = tmp_path / "pipe.tfrecord"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        code = main(["--model", demo_model_base, "--input", path, "--output",
                     str(tmp_path / "out"), "--input_format", "tfrecord"])
        assert code == 2
    assert not (tmp_path / "out").exists()
