"""Dirty inputs: every record ends up as a prediction or an error row with a reason.

One glob of damaged TFRecord files and one of damaged CSV files are each scored in one run
(as a nightly job meets them); each test then checks one file's fate.
"""
import base64
import gzip
import os
import struct

import pytest

from pipeline.demo import demo_dtypes, demo_rows, write_csv
from tests.helpers import assert_close, errors, expected_outputs, predictions, run_job
from transforms.examples import encode_rows


def _frame(data: bytes) -> bytes:
    """A TFRecord frame, written by TensorFlow itself (via a temp file)."""
    import tempfile

    import tensorflow as tf
    with tempfile.NamedTemporaryFile(suffix=".tfrecord") as tmp:
        with tf.io.TFRecordWriter(tmp.name) as w:
            w.write(data)
        return open(tmp.name, "rb").read()


def _records(rows) -> list[bytes]:
    return list(encode_rows(rows, demo_dtypes()))


def _rows(prefix: str, n: int, seed: int) -> list[dict]:
    rows = demo_rows(n, seed=seed)
    for i, r in enumerate(rows):
        r["id"] = f"{prefix}{i}"
    return rows


@pytest.fixture(scope="module")
def tfrecord_case(tmp_path_factory, demo_model_base):
    d = tmp_path_factory.mktemp("bad_tfrecord")
    cases = {}

    def write(name, content: bytes, rows=None):
        (d / name).write_bytes(content)
        cases[name] = {"path": str(d / name), "rows": rows or []}

    good = _rows("good", 20, 11)
    write("good.tfrecord", b"".join(map(_frame, _records(good))), good)

    rows = _rows("lencrc", 10, 12)
    frames = [_frame(r) for r in _records(rows)]
    bad = bytearray(frames[4])
    bad[8] ^= 0xFF  # the length's CRC
    write("bad_length_crc.tfrecord", b"".join(frames[:4]) + bytes(bad) +
          b"".join(frames[5:]), rows)

    rows = _rows("datacrc", 10, 13)
    frames = [_frame(r) for r in _records(rows)]
    bad = bytearray(frames[3])
    bad[20] ^= 0x01  # a byte of the record's data
    write("bad_data_crc.tfrecord", b"".join(frames[:3]) + bytes(bad) + b"".join(frames[4:]),
          rows)
    cases["bad_data_crc.tfrecord"]["damaged"] = bytes(bad[12:-4])  # the data, as damaged

    rows = _rows("trunc", 10, 14)
    blob = b"".join(_frame(r) for r in _records(rows))
    write("truncated.tfrecord", blob[:-10], rows)

    write("empty.tfrecord", b"")
    write("notes.tfrecord", b"this is not a tfrecord file\nbut it matches the glob\n" * 5)

    rows = _rows("plaingz", 5, 15)
    write("plain_named.tfrecord.gz", b"".join(_frame(r) for r in _records(rows)), rows)
    write("garbage.tfrecord.gz", b"\x00garbage, neither gzip nor tfrecord" * 10)

    rows = _rows("cutgz", 3000, 16)
    blob = gzip.compress(b"".join(_frame(r) for r in _records(rows)))
    write("cut.tfrecord.gz", blob[: len(blob) * 2 // 3], rows)

    rows = _rows("mixed", 8, 17)
    records = _records(rows)
    records[1] = b"\x0a\xff\xff\xff\xff\x0f not a proto"              # not a tf.Example
    no_device = dict(rows[3]); no_device.pop("device")             # required, no default
    records[3] = _records([no_device])[0]
    wrong_type = dict(rows[5]); wrong_type["n0"] = 7               # int64 where float32
    records[5] = encode_rows([wrong_type], {**demo_dtypes(), "n0": "int64"})[0]
    wrong_count = dict(rows[6]); wrong_count["n1"] = [1.0, 2.0]    # 2 values for shape []
    records[6] = _records([wrong_count])[0]
    no_key = dict(rows[7]); no_key.pop("id")
    records[7] = _records([no_key])[0]
    write("mixed.tfrecord", b"".join(map(_frame, records)), rows)
    cases["mixed.tfrecord"]["records"] = records

    out = str(d / "out")
    summary = run_job(demo_model_base, str(d / "*.tfrecord*"), out, "--key_field", "id",
                      "--key_dtype", "string", "--batch_size", "64", "--max_error_rate", "1.0")
    errs = errors(out)
    by_file = {}
    for e in errs:
        by_file.setdefault(os.path.basename(e["shard"]), []).append(e)
    return {"cases": cases, "summary": summary, "predictions": predictions(out),
            "errors": by_file, "out": out}


def _predicted_ids(case, prefix):
    return sorted(int(r["id"][len(prefix):]) for r in case["predictions"]
                  if r["id"].startswith(prefix))


# what each file holds, as written above: (records predicted, error rows); the cut gzip file's
# count depends on where the cut falls in the compressed stream (checked in its own test)
EXPECTED_TFRECORD = {
    "good.tfrecord": (20, 0), "bad_length_crc.tfrecord": (4, 1),
    "bad_data_crc.tfrecord": (9, 1), "truncated.tfrecord": (9, 1), "empty.tfrecord": (0, 0),
    "notes.tfrecord": (0, 1), "plain_named.tfrecord.gz": (5, 0),
    "garbage.tfrecord.gz": (0, 1), "mixed.tfrecord": (3, 5)}


def test_every_tfrecord_is_accounted_for(tfrecord_case):
    """The summary, the error rows and the predictions against what the test wrote."""
    cut = len(_predicted_ids(tfrecord_case, "cutgz"))
    expected = dict(EXPECTED_TFRECORD, **{"cut.tfrecord.gz": (cut, 1)})
    prefixes = {"good": "good.tfrecord", "lencrc": "bad_length_crc.tfrecord",
                "datacrc": "bad_data_crc.tfrecord", "trunc": "truncated.tfrecord",
                "plaingz": "plain_named.tfrecord.gz", "mixed": "mixed.tfrecord",
                "cutgz": "cut.tfrecord.gz"}
    predicted = {}
    for row in tfrecord_case["predictions"]:
        name = prefixes[row["id"].rstrip("0123456789")]
        predicted[name] = predicted.get(name, 0) + 1
    got = {name: (predicted.get(name, 0), len(tfrecord_case["errors"].get(name, [])))
           for name in expected}
    assert got == expected
    s = tfrecord_case["summary"]
    assert (s["records_in"], s["predicted"], s["errors"]) == (
        sum(p + e for p, e in expected.values()), sum(p for p, _ in expected.values()),
        sum(e for _, e in expected.values()))
    assert s["accounted"]
    assert s["counts_exact"] is False  # some tails were unreadable, and the summary says so
    assert "unreadable tails" in s["note"]


def test_good_file_scores_exactly(tfrecord_case, demo_model):
    rows = tfrecord_case["cases"]["good.tfrecord"]["rows"]
    got = {r["id"]: r for r in tfrecord_case["predictions"] if r["id"].startswith("good")}
    expected = expected_outputs(demo_model, rows)["score"]
    assert_close([got[r["id"]]["score"] for r in rows], expected)


def test_bad_length_crc_loses_the_tail_and_says_how_many_were_read(tfrecord_case):
    assert _predicted_ids(tfrecord_case, "lencrc") == [0, 1, 2, 3]
    [err] = tfrecord_case["errors"]["bad_length_crc.tfrecord"]
    assert (err["error_type"], err["index"]) == ("unreadable_tail", 4)
    assert "4 records were read before it" in err["message"]
    assert "remainder of the file was not" in err["message"]


def test_bad_data_crc_rejects_one_record_and_reads_on(tfrecord_case):
    assert _predicted_ids(tfrecord_case, "datacrc") == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    [err] = tfrecord_case["errors"]["bad_data_crc.tfrecord"]
    assert (err["error_type"], err["index"]) == ("corrupt_record", 3)
    damaged = tfrecord_case["cases"]["bad_data_crc.tfrecord"]["damaged"]
    assert base64.b64decode(err["payload"]) == damaged  # the record's bytes, as read
    assert err["payload_truncated"] is False


def test_truncated_last_record(tfrecord_case):
    assert _predicted_ids(tfrecord_case, "trunc") == list(range(9))
    [err] = tfrecord_case["errors"]["truncated.tfrecord"]
    assert (err["error_type"], err["index"]) == ("corrupt_record", 9)
    assert "9 records were read before it" in err["message"]


def test_empty_and_non_tfrecord_files(tfrecord_case):
    assert "empty.tfrecord" not in tfrecord_case["errors"]  # zero records, zero errors
    [err] = tfrecord_case["errors"]["notes.tfrecord"]
    assert (err["error_type"], err["index"]) == ("unreadable_tail", 0)
    assert "0 records were read" in err["message"]


def test_gzip_detected_by_content_not_name(tfrecord_case):
    assert _predicted_ids(tfrecord_case, "plaingz") == list(range(5))
    [err] = tfrecord_case["errors"]["garbage.tfrecord.gz"]
    assert err["error_type"] == "unreadable_tail"


def test_gzip_cut_short_keeps_what_was_decompressed(tfrecord_case):
    ids = _predicted_ids(tfrecord_case, "cutgz")
    [err] = tfrecord_case["errors"]["cut.tfrecord.gz"]
    assert err["error_type"] == "unreadable_tail"
    read = len(ids) + (0 if "truncated" not in err["message"] else 1)
    assert ids == list(range(len(ids))) and 0 < len(ids) < 3000
    assert err["index"] == len(ids)
    assert f"{err['index']} records were read before it" in err["message"]
    assert read <= 3000


def test_bad_examples_are_isolated_with_their_reason(tfrecord_case, demo_model):
    errs = {e["index"]: e for e in tfrecord_case["errors"]["mixed.tfrecord"]}
    assert {i: e["error_type"] for i, e in errs.items()} == {
        1: "parse_error", 3: "missing_feature", 5: "type_mismatch", 6: "shape_mismatch",
        7: "missing_key"}
    assert "device" in errs[3]["message"] and "n0" in errs[5]["message"]
    records = tfrecord_case["cases"]["mixed.tfrecord"]["records"]
    assert {i: base64.b64decode(e["payload"]) for i, e in errs.items()} == {
        i: records[i] for i in errs}  # each rejected record, byte for byte
    assert _predicted_ids(tfrecord_case, "mixed") == [0, 2, 4]
    rows = tfrecord_case["cases"]["mixed.tfrecord"]["rows"]
    got = {r["id"]: r["score"] for r in tfrecord_case["predictions"]}
    expected = expected_outputs(demo_model, [rows[0], rows[2], rows[4]])["score"]
    assert_close([got["mixed0"], got["mixed2"], got["mixed4"]], expected)


def test_errors_by_type_report(tfrecord_case):
    import json
    with open(os.path.join(tfrecord_case["out"], "metrics", "errors_by_type.json")) as fh:
        report = json.load(fh)
    assert sum(report["total"].values()) == tfrecord_case["summary"]["errors"]
    mixed = next(v for k, v in report["by_shard"].items() if k.endswith("mixed.tfrecord"))
    assert mixed == {"missing_feature": 1, "missing_key": 1, "parse_error": 1,
                     "shape_mismatch": 1, "type_mismatch": 1}


# --- CSV --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_case(tmp_path_factory, demo_model_base):
    d = tmp_path_factory.mktemp("bad_csv")
    cases = {}
    header = list(demo_dtypes())

    def line(row):
        return ",".join("" if row.get(c) is None else str(row[c]) for c in header)

    def write(name, text: str, rows=None, encoding="utf-8"):
        (d / name).write_bytes(text.encode(encoding))
        cases[name] = rows or []

    rows = _rows("cols", 4, 21)
    lines = [line(r) for r in rows]
    lines[2] += ",extra"
    write("wrong_cols.csv", "\n".join([",".join(header)] + lines) + "\n", rows)
    cases["wrong_cols line"] = lines[2]

    rows = _rows("num", 4, 22)
    lines = [line(r) for r in rows]
    lines[1] = lines[1].replace(str(rows[1]["n0"]), "abc", 1)
    rows[3]["c0"] = 180
    lines[3] = line(dict(rows[3], c0="180.0"))  # an integral float in an int64 column
    write("bad_number.csv", "\n".join([",".join(header)] + lines) + "\n", rows)

    rows = _rows("nodev", 3, 23)
    cols = [c for c in header if c != "device"]
    write("missing_col.csv", "\n".join([",".join(cols)] + [
        ",".join(str(r[c]) for c in cols) for r in rows]) + "\n", rows)

    rows = _rows("quoted", 3, 24)
    rows[1]["country"] = "de, fr\nand more"
    write_csv(rows, str(d / "quoted.csv"))
    cases["quoted.csv"] = rows

    rows = _rows("bomcrlf", 3, 25)
    write("bom_crlf.csv", "\ufeff" + "\r\n".join([",".join(header)] + [line(r) for r in rows])
          + "\r\n", rows)

    write("header_only.csv", ",".join(header) + "\n")

    rows = _rows("blank", 3, 26)
    write("blank_lines.csv", "\n".join([",".join(header), "", line(rows[0]), "", "",
                                        line(rows[1]), line(rows[2]), ""]) + "\n", rows)

    rows = _rows("long", 2, 27)
    rows[0]["country"] = "x" * 200_000
    long_bad = line(rows[1]) + "," + "y" * 100_000
    write("long_lines.csv", "\n".join([",".join(header), line(rows[0]), long_bad]) + "\n",
          rows)

    out = str(d / "out")
    summary = run_job(demo_model_base, str(d / "*.csv"), out, "--key_field", "id",
                      "--max_error_rate", "1.0", "--batch_size", "4")
    by_file = {}
    for e in errors(out):
        by_file.setdefault(os.path.basename(e["shard"]), []).append(e)
    return {"cases": cases, "summary": summary, "errors": by_file,
            "predictions": {r["id"]: r for r in predictions(out)}}


def _csv_ids(case, prefix):
    return sorted(int(k[len(prefix):]) for k in case["predictions"] if k.startswith(prefix))


# (rows predicted, error rows) per file, as written above
EXPECTED_CSV = {"wrong_cols.csv": (3, 1), "bad_number.csv": (3, 1), "missing_col.csv": (0, 3),
                "quoted.csv": (3, 0), "bom_crlf.csv": (3, 0), "header_only.csv": (0, 0),
                "blank_lines.csv": (3, 0), "long_lines.csv": (1, 1)}


def test_every_csv_row_is_accounted_for(csv_case):
    prefixes = {"cols": "wrong_cols.csv", "num": "bad_number.csv", "quoted": "quoted.csv",
                "bomcrlf": "bom_crlf.csv", "blank": "blank_lines.csv", "long": "long_lines.csv"}
    predicted = {}
    for key in csv_case["predictions"]:
        name = prefixes[key.rstrip("0123456789")]
        predicted[name] = predicted.get(name, 0) + 1
    got = {name: (predicted.get(name, 0), len(csv_case["errors"].get(name, [])))
           for name in EXPECTED_CSV}
    assert got == EXPECTED_CSV
    s = csv_case["summary"]
    assert (s["records_in"], s["predicted"], s["errors"]) == (22, 16, 6)
    assert s["accounted"] and s["counts_exact"]


def test_wrong_number_of_columns(csv_case):
    assert _csv_ids(csv_case, "cols") == [0, 1, 3]
    [err] = csv_case["errors"]["wrong_cols.csv"]
    assert (err["error_type"], err["index"], err["line"]) == ("csv_format", 2, 4)
    assert err["payload"] == csv_case["cases"]["wrong_cols line"]  # the row's text, exactly


def test_unparseable_number_and_integral_float(csv_case, demo_model):
    assert _csv_ids(csv_case, "num") == [0, 2, 3]
    [err] = csv_case["errors"]["bad_number.csv"]
    assert (err["error_type"], err["line"]) == ("parse_error", 3)
    assert "n0" in err["message"] and "abc" in err["message"]
    rows = csv_case["cases"]["bad_number.csv"]
    expected = expected_outputs(demo_model, [rows[3]])  # c0 = 180 as an int64
    assert csv_case["predictions"]["num3"]["bucket"] == int(expected["bucket"][0])
    assert_close(csv_case["predictions"]["num3"]["score"], expected["score"][0])


def test_missing_required_column_in_header(csv_case):
    assert _csv_ids(csv_case, "nodev") == []
    errs = csv_case["errors"]["missing_col.csv"]
    # a header problem (the rule of transforms.parse.header_problem): every row, csv_format
    assert [e["error_type"] for e in errs] == ["csv_format"] * 3
    assert "device" in errs[0]["message"] and "header" in errs[0]["message"]


def test_quoted_fields_with_commas_and_newlines(csv_case, demo_model):
    rows = csv_case["cases"]["quoted.csv"]
    assert _csv_ids(csv_case, "quoted") == [0, 1, 2]
    expected = expected_outputs(demo_model, rows)["score"]
    assert_close([csv_case["predictions"][f"quoted{i}"]["score"] for i in range(3)], expected)


def test_bom_crlf_header_only_and_blank_lines(csv_case, demo_model):
    assert _csv_ids(csv_case, "bomcrlf") == [0, 1, 2]
    assert _csv_ids(csv_case, "blank") == [0, 1, 2]
    for name in ("bom_crlf.csv", "header_only.csv", "blank_lines.csv"):
        assert name not in csv_case["errors"]
    rows = csv_case["cases"]["bom_crlf.csv"]
    expected = expected_outputs(demo_model, rows)["score"]
    assert_close([csv_case["predictions"][f"bomcrlf{i}"]["score"] for i in range(3)],
                 expected)


def test_very_long_lines(csv_case):
    assert _csv_ids(csv_case, "long") == [0]
    [err] = csv_case["errors"]["long_lines.csv"]
    assert err["error_type"] == "csv_format" and err["line"] == 3
    assert err["payload_truncated"] is True and len(err["payload"]) == 64 * 1024


def test_tfrecord_framing_matches_tensorflow():
    """Our CRC-checking reader reads what TensorFlow wrote, byte for byte."""
    import io

    from transforms.formats.tfrecord_input import iter_tfrecords
    payloads = [b"", b"x", os.urandom(1000), os.urandom(70000)]
    blob = b"".join(_frame(p) for p in payloads)
    got = list(iter_tfrecords(io.BytesIO(blob)))
    assert got == [("ok", i, p) for i, p in enumerate(payloads)]
    assert struct.unpack("<Q", blob[:8])[0] == 0
