"""JSONL instances input: every promise of `transforms.formats.jsonl_input`'s docstring.

The reference side is written here, independently of the product: JSONL lines come from the
standard library's `json` (bytes as {"b64": ...}), the same rows as tf.Examples from
TensorFlow's own protos (tests/model_zoo), and the value table's outcomes are spelled out by
hand per JSON value and feature dtype (float32 values are numpy's rounding of the float64 the
JSON number is). What the product gives is read back from the serialized tf.Examples with
`tf.train.Example`, so the whole path (reader, typed columns, parse step) is under test.
Each line's outcome (record or error row, its index, line number, message and payload) is
counted here from how the line was written (generated files: blank lines, CRLF, BOMs, lines
over the cap, lines that are not JSON objects), and the real pipeline is checked against the
same counts and the model's own outputs. Splitting is checked the way the runner reads: each block of a split file, read alone, gives
exactly the records and error rows (indices, lines, messages, payloads) of one serial read.
"""
import base64
import gzip
import io
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.run import main
from tests import model_zoo as zoo
from tests.helpers import by_key, errors, predictions, run_job
from transforms import formats
from transforms.errors import InputError
from transforms.feature_spec import Feature, FeatureSpec
from transforms.formats.jsonl_input import JSONL, JsonlInput, summarize
from transforms.parse import columns_to_examples
from transforms.read import index_locally
from transforms.records import ColumnBatch

# fixtures: `gcs` (GCS emulated on loopback), the model zoo's models and `load`
pytest_plugins = ["tests.gcs_emulator", "tests.model_zoo"]

ESTIMATOR_DTYPES = {"id": "string", **zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES)}


# --- the reference writer ---------------------------------------------------------------------
def _b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def _estimator_line(row: dict, style: int) -> str:
    """One Estimator row as a JSONL instance, written with `json`; `style` picks how: scalar
    or one-element list for the [1] features, bytes as {"b64"} or text, an integral float for
    an int64, an explicit null for an absent feature, a key the spec does not know."""
    out = {}
    for name, value in row.items():
        if name in ("age", "hours") and style == 1:
            value = [value]
        elif name == "country" and style == 1:
            value = _b64(value.encode("utf-8"))
        elif name == "tags" and style == 1:
            value = [_b64(t.encode("utf-8")) if i % 2 else t for i, t in enumerate(value)]
        elif name == "dept_id" and style == 1:
            value = float(value)  # 7.0: an integral number is the int64 7
        out[name] = value
    if "hours" not in out:
        out["hours"] = None  # null: absent, as a missing key is
    out["note"] = {"free": ["text", 1, None]}  # not in the spec: ignored
    return json.dumps(out, ensure_ascii=style == 0)


def _write(path, lines: list[str] | bytes, gz: bool = False) -> str:
    data = lines if isinstance(lines, bytes) else "".join(
        line + "\n" for line in lines).encode("utf-8")
    with (gzip.open if gz else open)(str(path), "wb") as fh:
        fh.write(data)
    return str(path)


# --- the real pipeline ------------------------------------------------------------------------
def test_jsonl_scores_like_the_same_rows_as_tf_examples(tmp_path, estimator_v1, load):
    """An Estimator export with a fixed [3] float feature and variable-length string and int64
    features: the same rows as a TFRecord file and as JSONL (plain, and gzip written in the
    other style) give the model's own outputs, bit for bit (one model call per file in both
    runs, as in the oracle: the graph pads varlen features to a batch's longest list)."""
    rows = zoo.estimator_rows(120, seed=7)
    halves = rows[:60], rows[60:]
    jsonl, tfrecord = tmp_path / "jsonl", tmp_path / "tfrecord"
    jsonl.mkdir()
    tfrecord.mkdir()
    _write(jsonl / "a.jsonl", [_estimator_line(r, 0) for r in halves[0]])
    _write(jsonl / "b.jsonl.gz", [_estimator_line(r, 1) for r in halves[1]], gz=True)
    for name, half in zip("ab", halves):
        zoo.write_tfrecord(str(tfrecord / f"{name}.tfrecord"), half, ESTIMATOR_DTYPES)
    args = ("--signature", "predict", "--key_field", "id", "--batch_size", "60")
    outs = {}
    for name, where in (("jsonl", jsonl), ("tfrecord", tfrecord)):
        outs[name] = str(tmp_path / f"out-{name}")
        summary = run_job(estimator_v1["base"], str(where / "*"), outs[name], *args)
        assert (summary["records_in"], summary["predicted"], summary["errors"]) == (120, 120, 0)
        if name == "jsonl":
            assert summary["input_format"] == "jsonl"  # from the extensions, .gz included
    got = by_key(predictions(outs["jsonl"]))
    assert got == by_key(predictions(outs["tfrecord"]))
    model = load(estimator_v1["newest"])
    for half in halves:
        expected = zoo.call_parsing_signature(model, "predict", half, ESTIMATOR_DTYPES)
        zoo.assert_rows_match({r["id"]: got[r["id"]] for r in half}, [r["id"] for r in half],
                              expected, rtol=0)
    assert all(isinstance(r["id"], str) for r in got.values())  # a string key stays one


# --- reading through the parse step -------------------------------------------------------------
def _values(example: bytes) -> dict:
    """{feature: its values} of a serialized tf.Example, read with TensorFlow's protos."""
    import tensorflow as tf
    parsed = tf.train.Example.FromString(example)
    return {name: list(getattr(f, f.WhichOneof("kind")).value)
            for name, f in parsed.features.feature.items()}


def _outcomes(items, spec: FeatureSpec, key: str | None = None) -> dict:
    """{record index: its outcome} of what a reader yields, through the parse step:
    ("ok", line, {feature: values}, key) or ("error", line, type, message, payload)."""
    out = {}
    for item in items:
        if isinstance(item, ColumnBatch):
            batch, rows = columns_to_examples(item, spec, key)
        else:
            batch, rows = None, [item]
        for row in rows:
            assert row["index"] not in out
            out[row["index"]] = ("error", row["line"], row["error_type"], row["message"],
                                 row["payload"])
        if batch is None:
            continue
        keys = batch.keys if batch.keys is not None else [None] * len(batch)
        for i, line, example, k in zip(batch.indices, batch.lines, batch.serialized, keys):
            assert int(i) not in out
            k = k.decode() if isinstance(k, bytes) else k  # text or binary: the same string
            out[int(i)] = ("ok", int(line), _values(example), k)
    return out


def _read(blob: bytes, spec: FeatureSpec, key: str | None = None, batch_size: int = 1000,
          cap: int = 1 << 20, reader: JsonlInput = JSONL) -> dict:
    columns = list(spec) + ([key] if key else [])
    return _outcomes(reader.read_stream("in.jsonl", io.BytesIO(blob), batch_size, columns, cap),
                     spec, key)


# --- the value table ------------------------------------------------------------------------
P, T, A = "parse_error", "type_mismatch", "absent"


def f32(x: float) -> float:
    """A JSON number as a float32 feature holds it: its float64, rounded to float32."""
    return float(np.float32(x))


# JSON value -> outcome as an int64, a float32 and a string feature: the values, an error
# type, or absent. Written out by hand from the docstring's table.
VALUE_TABLE = [
    ("0", [0], [0.0], T),
    ("-7", [-7], [-7.0], T),
    ("9007199254740993", [2 ** 53 + 1], [f32(2.0 ** 53)], T),  # int64 exact beyond 2**53
    ("9223372036854775807", [2 ** 63 - 1], [f32(2.0 ** 63)], T),
    ("-9223372036854775808", [-2 ** 63], [f32(-2.0 ** 63)], T),
    ("9223372036854775808", P, [f32(2.0 ** 63)], T),       # beyond int64
    ("18446744073709551616", P, [f32(2.0 ** 64)], T),
    ("-9223372036854777856", P, [f32(-2.0 ** 63 - 2048)], T),
    ("100000000000000000000000000000000000000000", P, P, T),  # beyond float32 too
    ("2.5", P, [2.5], T),
    ("0.1", P, [f32(0.1)], T),
    ("-1.5e-3", P, [f32(-1.5e-3)], T),
    ("3e38", P, [f32(3e38)], T),
    ("1e39", P, P, T),
    ("-1e300", P, P, T),
    ("180.0", [180], [180.0], T),
    ("1e3", [1000], [1000.0], T),
    ("-0.0", [0], [-0.0], T),
    ("9.2233720368547758e18", P, [f32(2.0 ** 63)], T),  # 2**63 as a float64: beyond int64
    ("true", [1], [1.0], T),
    ("false", [0], [0.0], T),
    ('"NaN"', P, [math.nan], [b"NaN"]),
    ('"Infinity"', P, [math.inf], [b"Infinity"]),
    ('"-Infinity"', P, [-math.inf], [b"-Infinity"]),
    ('"nan"', T, T, [b"nan"]),                              # only those three spellings
    ('"inf"', T, T, [b"inf"]),
    ('"7"', T, T, [b"7"]),
    ('""', T, T, [b""]),
    ('"caf\\u00e9 \u00fcber"', T, T, ["caf\u00e9 \u00fcber".encode()]),
    ('"a b|c"', T, T, [b"a b|c"]),                          # no list separator in JSON
    ('{"b64": "AP8="}', T, T, [b"\x00\xff"]),
    ('{"b64": ""}', T, T, [b""]),
    ("[1, 2]", [1, 2], [1.0, 2.0], T),
    ("[2]", [2], [2.0], T),
    ("[1, 2.5]", P, [1.0, 2.5], T),
    ("[180.0, 1e3, -0.0]", [180, 1000, 0], [180.0, 1000.0, -0.0], T),
    ("[true, 2]", [1, 2], [1.0, 2.0], T),
    ('["NaN", 1, "-Infinity"]', P, [math.nan, 1.0, -math.inf], T),
    ('["NaN"]', P, [math.nan], T),                          # a list of numbers
    ('["a", {"b64": "AQ=="}, "NaN"]', T, T, [b"a", b"\x01", b"NaN"]),
    ("[9007199254740993, 9223372036854775807]", [2 ** 53 + 1, 2 ** 63 - 1],
     [f32(2.0 ** 53), f32(2.0 ** 63)], T),
    ("[9223372036854775807, 0.5]", P, [f32(2.0 ** 63), 0.5], T),
    ('[9007199254740993, "NaN"]', P, [f32(2.0 ** 53), math.nan], T),
    ("[9223372036854775808]", P, [f32(2.0 ** 63)], T),
    ("[1e39]", P, P, T),
    ("null", A, A, A),
    ("[]", A, A, A),
    ('{"a": 1}', T, T, T),
    ('{"b64": 5}', T, T, T),
    ('{"b64": "AA==", "more": 1}', T, T, T),
    ('{"b64": "A"}', P, P, P),                              # not base64
    ('{"b64": "AA"}', P, P, P),                             # no padding
    ('{"b64": "-_8="}', P, P, P),                           # the URL-safe alphabet
    ("[[1]]", T, T, T),
    ("[1, null]", P, P, P),
    ("[1, \"a\"]", T, T, T),
    ('[{"b64": "AA=="}, 1]', T, T, T),
    ('[{"a": 1}]', T, T, T),
    ('[{"b64": "A"}]', P, P, P),
]
DTYPES = ("int64", "float32", "string")


def _same(got: list, want: list, dtype: str) -> bool:
    if dtype == "float32":  # bit for bit: NaN, -0.0
        return np.asarray(got, np.float32).tobytes() == np.asarray(want, np.float32).tobytes()
    return got == want


def _table_cases():
    for text, *outcomes in VALUE_TABLE:
        for dtype, outcome in zip(DTYPES, outcomes):
            for kind in ("fixed", "varlen"):
                want = outcome
                if kind == "fixed" and isinstance(want, list):
                    want = want if len(want) == 1 else "shape_mismatch"
                elif kind == "fixed" and want == A:
                    want = "missing_feature"
                yield text, dtype, kind, want


def test_every_json_value_becomes_what_the_value_table_says():
    """Each value of the table as an int64, float32 and string feature, fixed (one value,
    required) and variable-length: the values, an error row of the type, or no feature.
    Read together in one batch and each record alone: the same outcome."""
    for dtype in DTYPES:
        for kind in ("fixed", "varlen"):
            spec = FeatureSpec([Feature("x", kind, dtype, () if kind == "fixed" else None)])
            cases = [c for c in _table_cases() if c[1:3] == (dtype, kind)]
            lines = [f'{{"x": {text}}}'.encode() for text, *_ in cases] + [b"{}"]
            together = _read(b"\n".join(lines), spec)
            for i, line in enumerate(lines):
                alone, beside = _read(line, spec)[0], together[i]
                if alone[0] == "error":  # the type and payload (the wording names the
                    alone, beside = alone[:3] + alone[4:], beside[:3] + beside[4:]  # column)
                # the same outcome (repr: NaN is NaN, -0.0 is not 0.0); its line is 1 alone
                assert (alone[0], repr(alone[2:])) == (beside[0], repr(beside[2:])), \
                    (line, alone, beside)
            for i, (text, _, _, want) in enumerate(cases + [("{}", dtype, kind, None)]):
                if want is None:  # a missing key is a null
                    want = [c[3] for c in cases if c[0] == "null"][0]
                got = together[i]
                where = (text, dtype, kind, got)
                if isinstance(want, list):
                    assert got[0] == "ok" and _same(got[2]["x"], want, dtype), where
                elif want == A:
                    assert got[0] == "ok" and got[2] == {}, where
                else:
                    assert got[:3] == ("error", i + 1, want), where
                    assert got[4] == lines[i].decode(), where  # the line is the payload


# --- lines: the reference reading, written from the docstring ---------------------------------
BOM = b"\xef\xbb\xbf"
SPEC = FeatureSpec([Feature("x", "varlen", "float32"), Feature("s", "varlen", "string")])
COLUMNS = ["x", "s", "id"]
# lines that are not JSON (RFC 8259; orjson also refuses a number beyond float64 and a lone
# surrogate): the message starts "line N is not valid JSON: " and ends with orjson's reason
NOT_JSON = [b"not json", b"{", b'{"x": [1, 2]', b"{'id': 1}", b'{"id": "a",}', b"NaN",
            b"Infinity", b'{"x": 1e400}', b"\xff\xfe{}", b'{"s": "\xc3"}', b'{"s": "\\ud800"}',
            b'{"id": "a"} {"id": "b"}', b"\x0c{}", b"\x00", b'{"a": 1}x', b"[1,2",
            b'"unterminated', b"\xc2\xa0{}", b'{"a": 1}\x0b']
# JSON that is not an object: what the message calls it
NOT_OBJECT = [(b"[1, 2]", "a JSON array"), (b"[]", "a JSON array"), (b' [{"id": "a"}] ',
              "a JSON array"), (b"3", "a JSON number"), (b"-0.5e3", "a JSON number"),
              (b'"text"', "a JSON string"), (b'""', "a JSON string"), (b"null", "JSON null"),
              (b"true", "JSON true"), (b"\tfalse\r", "JSON false")]
BLANK = [b"", b" ", b"\t", b"\r", b" \t \r", b"\r\r"]


class Prefix(str):
    """An expected message of which only the start is the product's own (orjson's reason
    follows it)."""


def _reference(blob: bytes, kinds: list, cap: int) -> dict:
    """{record index: outcome} as `_outcomes` gives it, from the docstring alone: lines end
    with LF; a line of spaces, tabs and CRs is blank (no record, but a line); a BOM is dropped
    at the file's start only; a line longer than the cap (a CR before the LF excluded) is a
    corrupt_record; otherwise the line's kind (known from how it was written) decides.
    `kinds[i]`: ("ok", values, key) | ("not_json",) | ("not_object", what) for line i + 1."""
    lines = blob.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the last line's LF ends it; nothing follows
    assert len(lines) == len(kinds)
    out, index = {}, 0
    for n, (raw, kind) in enumerate(zip(lines, kinds), start=1):
        if n == 1 and raw.startswith(BOM):
            raw = raw[3:]
        if not raw.strip(b" \t\r"):
            continue
        payload = raw.decode("utf-8", "replace")
        body = raw[:-1] if raw.endswith(b"\r") else raw
        if len(body) > cap:
            out[index] = ("error", n, "corrupt_record", f"line {n} is longer than "
                          f"--max_record_bytes ({cap} bytes); it was skipped", payload)
        elif raw.startswith(BOM) or kind[0] == "not_json":  # a BOM later is not dropped
            out[index] = ("error", n, "parse_error", Prefix(f"line {n} is not valid JSON: "),
                          payload)
        elif kind[0] == "not_object":
            out[index] = ("error", n, "parse_error", f"line {n} is {kind[1]}, not a JSON object",
                          payload)
        else:
            out[index] = ("ok", n, kind[1], kind[2])
        index += 1
    return out


def _assert_outcomes(got: dict, want: dict):
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for i, w in want.items():
        g = got[i]
        if isinstance(w[3], Prefix):
            assert g[:3] == w[:3] and g[4] == w[4], (i, g, w)
            assert g[3].startswith(w[3]) and g[3].endswith(")") and "(column " in g[3], (i, g)
        else:
            assert g == w, (i, g, w)


class Trickle:
    """A stream that hands over at most `most` bytes a read, as gzip and network streams do
    (no read1: the reader's other path)."""

    def __init__(self, data: bytes, most: int):
        self._data, self._at, self._most = data, 0, most

    def read(self, n: int = -1) -> bytes:
        n = self._most if n is None or n < 0 else min(n, self._most)
        out = self._data[self._at:self._at + n]
        self._at += len(out)
        return out


# --- generated files ------------------------------------------------------------------------
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6).map(lambda t: "t" + t)


@st.composite
def object_lines(draw):
    """(line, values the parse step gives, key): a JSON object written with `json`, with
    features as scalars or lists (an empty list or null: absent), keys the spec does not know
    (ignored, however long or odd), in ASCII or UTF-8."""
    key = f"k{draw(st.integers(0, 999))}"
    obj, want = {"id": key}, {}
    x = draw(st.one_of(st.none(), st.just([]), st.integers(-64, 64).map(lambda i: i / 8),
                       st.lists(st.integers(-4000, 4000).map(lambda i: i / 4), max_size=3)))
    s = draw(st.one_of(st.none(), _TEXT, st.lists(_TEXT, max_size=3)))
    for name, value in (("x", x), ("s", s)):
        if value is None and draw(st.booleans()):
            continue  # a missing key, else an explicit null
        obj[name] = value
        values = value if isinstance(value, list) else [value] if value is not None else []
        if values:
            want[name] = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    if draw(st.booleans()):
        obj["pad"] = "y" * draw(st.integers(0, 300))  # not in the spec: only the length counts
    if draw(st.booleans()):
        obj["note"] = {"free": [[1], None, {"b64": "!"}, 1.5, "NaN"]}  # not a feature value
    items = list(obj.items())
    items = draw(st.permutations(items))
    line = json.dumps(dict(items), ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(", ", ": "), (",", ":")])))
    space = draw(st.sampled_from(["", " ", "\t", " \r"]))
    return (space + line + space.rstrip("\r")).encode("utf-8"), want, key


@st.composite
def jsonl_files(draw, max_lines: int = 30):
    """(file bytes, the kind of each line, max_record_bytes): objects, lines that are not JSON
    or not objects, blank lines (some longer than the cap), LF or CRLF ends, a BOM at the start
    and later, a last line with or without its LF."""
    cap = draw(st.sampled_from([6, 24, 64, 120, 400, 1 << 20]))
    lines, kinds = [], []
    for _ in range(draw(st.integers(0, max_lines))):
        what = draw(st.sampled_from(["ok"] * 5 + ["not_json", "not_object", "blank",
                                                  "long_blank", "long_text", "bom"]))
        if what in ("ok", "bom"):
            line, want, key = draw(object_lines())
            kind = ("ok", want, key)
            if what == "bom":
                line = BOM + line  # a BOM on a line but the first: not dropped
        elif what == "not_json":
            line, kind = draw(st.sampled_from(NOT_JSON)), ("not_json",)
        elif what == "not_object":
            line, name = draw(st.sampled_from(NOT_OBJECT))
            kind = ("not_object", name)
        elif what == "blank":
            line, kind = draw(st.sampled_from(BLANK)), ("blank",)
        elif what == "long_blank":
            line, kind = draw(st.sampled_from([b" ", b"\t", b" \r"])) * draw(
                st.integers(1, 200)), ("blank",)
        else:
            line, kind = b"x" * draw(st.integers(1, 300)), ("not_json",)
        lines.append(line + draw(st.sampled_from([b"\n", b"\r\n"])))
        kinds.append(kind)
    if lines and draw(st.booleans()):  # no LF after the last line
        last = lines[-1][:-1]
        lines[-1] = last if last.strip(b"\r") else lines[-1]
    blob = b"".join(lines)
    if draw(st.booleans()):
        blob = BOM + blob
        if not kinds:
            kinds = [("blank",)]  # the BOM alone: one blank line
    return blob, kinds, cap


READERS = [JSONL, JsonlInput(block_bytes=1), JsonlInput(block_bytes=5),
           JsonlInput(block_bytes=64)]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(jsonl_files(), st.sampled_from(READERS), st.integers(1, 7), st.sampled_from([0, 1, 3]))
def test_a_serial_read_gives_each_line_its_documented_outcome(file, reader, batch_size,
                                                              trickle):
    """Every line's outcome (a record's values and key, or its error row's type, message and
    payload), its record index and its line number are those the docstring gives, however
    the stream hands the bytes over and however much the reader asks for at once. A bug in
    blank or BOM handling, CR counting, the cap's off-by-one, the long-line path's line or
    index bookkeeping, or a record's outcome depending on its batch makes this fail."""
    blob, kinds, cap = file
    stream = io.BytesIO(blob) if not trickle else Trickle(blob, trickle)
    got = _outcomes(reader.read_stream("in.jsonl", stream, batch_size, COLUMNS, cap), SPEC,
                    "id")
    _assert_outcomes(got, _reference(blob, kinds, cap))


# --- splitting ------------------------------------------------------------------------------
def _line_starts(blob: bytes) -> list[int]:
    """The byte offset of every line's start (the file's start and each byte after an LF that
    is not the end of the file)."""
    return [0] + [i + 1 for i, b in enumerate(blob) if b == 0x0A and i + 1 < len(blob)]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jsonl_split")


@settings(derandomize=True, max_examples=250, deadline=None)
@given(jsonl_files(max_lines=40), st.data())
def test_each_block_of_a_split_file_read_alone_gives_the_serial_records(split_dir, file,
                                                                         data):
    """The file cut at random points (on blank lines, inside long lines, after a BOM, between
    the CR and LF of a line end), each range summarized (in pieces of a few bytes too, and
    whole), the index built from the summaries in order: every block starts at the first line
    start of its range with the record index and line number counted here, and each block,
    read alone (in any order, by a reader reading other amounts at once than the serial one,
    and as the slices the reading step gets), gives exactly the serial read's records and
    error rows, indices, lines, messages and payloads. A wrong count of blank lines or lines
    across a cut, a BOM counted as a record, a block starting mid-line or a payload that
    depends on where a read began makes this fail."""
    blob, kinds, cap = file
    size = len(blob)
    path = str(split_dir / "f.jsonl")
    with open(path, "wb") as fh:
        fh.write(blob)
    serial_reader, block_reader = data.draw(st.permutations(READERS))[:2]
    batch_size = data.draw(st.integers(1, 5))
    serial = _outcomes(serial_reader.read_shard(path, batch_size, COLUMNS, cap, {}), SPEC, "id")
    want = _reference(blob, kinds, cap)
    _assert_outcomes(serial, want)
    if size < 2:
        return
    cuts = sorted(data.draw(st.sets(st.integers(1, size - 1), min_size=1, max_size=6)))
    ranges = list(zip([0] + cuts, cuts + [size]))
    scan = data.draw(st.sampled_from([1, 2, 7, 64]))
    summaries = [summarize(path, a, b, size, scan) for a, b in ranges]
    assert summaries == [JSONL.summarize_range(path, a, b, size, cap) for a, b in ranges]
    index = JSONL.index_file(path, size, ranges, summaries, cap)
    assert index is not None and index.split and index.blocks == len(ranges)

    # the index, counted here: a block starts at its range's first line start (none: where
    # the next line starts, or the file's end), after the records and lines before it
    starts = _line_starts(blob)
    line_of = {s: n for n, s in enumerate(starts, start=1)}
    expect = []
    for a, _ in ranges:
        s = min([p for p in starts if p >= a] + [size])
        first_record = min([i for i, o in want.items() if starts[o[1] - 1] >= s] + [len(want)])
        expect.append((s, first_record, line_of.get(s, blob.count(b"\n") + 1)))
    assert list(zip(index.starts, index.first_index, index.first_line)) == expect

    order = data.draw(st.permutations(range(index.blocks)))
    blocks = {}
    for k in order:
        stats = {}
        blocks[k] = _outcomes(block_reader.read_block(index, k, batch_size, COLUMNS, cap, stats),
                              SPEC, "id")
        assert stats.pop("position", lambda: 0)() == stats["bytes"] == index.block_bytes(k)
        assert stats == {"gzip": False, "bytes": index.block_bytes(k)}
        last = index.first_index[k + 1] if k + 1 < index.blocks else len(want)
        assert all(index.first_index[k] <= i < last for i in blocks[k]), (k, sorted(blocks[k]))
    merged = {}
    for k in range(index.blocks):
        assert not merged.keys() & blocks[k].keys()
        merged.update(blocks[k])
    assert merged == serial
    sliced = [_outcomes(block_reader.read_block(part, k, batch_size, COLUMNS, cap, {}), SPEC,
                        "id") for part in index.slices(2) for k in range(part.blocks)]
    assert sliced == [blocks[k] for k in range(index.blocks)]


# --- long lines -------------------------------------------------------------------------------
@pytest.mark.parametrize("reader", [JSONL, JsonlInput(block_bytes=3),
                                    JsonlInput(block_bytes=16)])
def test_the_cap_counts_a_line_without_its_line_end(reader):
    """A line of exactly --max_record_bytes is read, with LF or CRLF; one byte more (a second
    CR included) is a corrupt_record; a blank line is blank at any length. Whether the line
    comes whole in one read or is read past in pieces: the same outcome (an off-by-one between
    the two paths makes this fail)."""
    obj = b'{"id": "k", "s": "a"}'
    cap = len(obj)  # 21
    lines = [obj + b"\n", obj + b"\r\n", obj + b" \n", obj + b"\r\r\n", b" " * 500 + b"\r\n",
             b"\r" * 50 + b"\n", obj[:-1] + b" \t" + b"}\n", obj]
    got = _read(b"".join(lines), SPEC, "id", cap=cap, reader=reader)
    too_long = "line {} is longer than --max_record_bytes (21 bytes); it was skipped"
    ok = ("ok", None, {"s": [b"a"]}, "k")
    assert got == {
        0: ok[:1] + (1,) + ok[2:],
        1: ok[:1] + (2,) + ok[2:],
        2: ("error", 3, "corrupt_record", too_long.format(3), (obj + b" ").decode()),
        3: ("error", 4, "corrupt_record", too_long.format(4), (obj + b"\r\r").decode()),
        4: ("error", 7, "corrupt_record", too_long.format(7), (obj[:-1] + b" \t}").decode()),
        5: ok[:1] + (8,) + ok[2:],  # the last line, without its LF
    }


def test_a_long_line_is_read_past_in_bounded_pieces_and_its_payload_is_its_start():
    """A 24 MB line (and a 24 MB blank one) with a 1 KiB cap: one corrupt_record row whose
    payload is the line's first 64 Ki characters, flagged as cut, the lines after it numbered
    on; the reader holds at most a few of its reads at once (holding the line whole, or
    its pieces, makes the peak the line's size)."""
    import tracemalloc

    class Lazy:
        """A stream that makes its bytes as they are read: nothing but the reader holds them."""

        def __init__(self, parts):
            self._parts = list(parts)  # (byte, count) or bytes

        def read(self, n=-1):
            while self._parts:
                head = self._parts[0]
                if isinstance(head, bytes):
                    self._parts.pop(0)
                    if head:
                        return head
                    continue
                byte, count = head
                take = min(n, count)
                self._parts[0] = (byte, count - take) if count > take else b""
                return byte * take
            return b""

    big = 24 << 20
    stream = Lazy([b'{"id": "a"}\n{"id": "b", "s": "', (b"z", big), b'"}\r\n', (b" ", big),
                   b'\n{"id": "c"}'])
    tracemalloc.start()
    try:
        items = list(JsonlInput(block_bytes=64 << 10).read_stream(
            "big.jsonl", stream, 100, COLUMNS, 1024))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    rows = [item for item in items if isinstance(item, dict)]
    assert len(rows) == 1
    row = rows[0]
    assert (row["index"], row["line"], row["error_type"], row["payload_truncated"]) == \
        (1, 2, "corrupt_record", True)
    assert row["payload"] == '{"id": "b", "s": "' + "z" * (65536 - 18)
    got = _outcomes(items, SPEC, "id")
    assert got[0] == ("ok", 1, {}, "a") and got[2] == ("ok", 4, {}, "c")
    assert sorted(got) == [0, 1, 2]


@pytest.mark.parametrize("block_bytes", [7, 4096, 4 << 20])
def test_the_payload_of_a_long_line_does_not_depend_on_where_reads_end(block_bytes):
    """With a cap below the payload's size, a long line's error row holds the line's start up
    to the payload limit (all of it when shorter), and says whether it was cut, whatever the
    read size: a serial read and a block of a split file begin their reads at different
    offsets and must give the same row."""
    cap = 100
    short = b'{"s": "' + "\u00e9".encode() * 3000 + b'"}'    # 6,009 bytes: kept whole
    long_ = b'{"s": "' + "\u20ac".encode() * 40000 + b'"}'  # 120,009 bytes, 40,009 characters
    huge = b"q" * 300_000                                    # beyond the payload limit
    blob = b"\n".join([b"{}", short, long_, huge, b""])
    for stream in (io.BytesIO(blob), Trickle(blob, 1000)):
        rows = list(JsonlInput(block_bytes=block_bytes).read_stream("p.jsonl", stream, 10,
                                                                    COLUMNS, cap))
        rows = [r for r in rows if isinstance(r, dict)]
        assert [(r["index"], r["line"], r["error_type"]) for r in rows] == \
            [(1, 2, "corrupt_record"), (2, 3, "corrupt_record"), (3, 4, "corrupt_record")]
        assert [(r["payload"], r["payload_truncated"]) for r in rows] == [
            (short.decode(), False), (long_.decode(), False), ("q" * 65536, True)]


# --- the real pipeline: every line a prediction or an error row --------------------------------
class Lines:
    """A JSONL file written line by line, with what each line must become: a row (predicted),
    an error row (type, message or Prefix, payload), or nothing (blank); line numbers and
    record indices are counted here as the lines are added."""

    def __init__(self, name: str):
        self.name, self.data, self.line, self.index = name, b"", 0, 0
        self.rows, self.errors = [], []

    def add(self, raw: bytes, what, end: bytes = b"\n"):
        self.data += raw + end
        self.line += 1
        if what is None:
            return
        if isinstance(what, dict):
            self.rows.append(what)
        else:
            error_type, message = what
            message = (Prefix(message.format(n=self.line)) if isinstance(message, Prefix)
                       else message.format(n=self.line))
            self.errors.append((self.name, self.index, self.line, error_type, message,
                                raw.decode("utf-8")))
        self.index += 1

    def row(self, row: dict, style: int = 0, end: bytes = b"\n", extra: dict | None = None):
        line = _estimator_line(row, style)
        if extra:
            line = line[:-1] + ", " + json.dumps(extra)[1:]
        self.add(line.encode("utf-8"), row, end)


def _hostile_file(rows: list[dict], cap: int) -> Lines:
    """A file > 3 x 4 KiB that holds every kind of line, a BOM at its start and later, CRLF
    runs, blank lines (runs of them, long ones crossing the split grid), a long line over the
    cap crossing it too, records without the key or a required feature, and no LF at its
    end."""
    f = Lines("a.jsonl")
    f.add(BOM + _estimator_line(rows[0], 0).encode(), rows[0])  # the BOM is dropped
    rest = iter(rows[1:])
    for k in range(6):
        f.row(next(rest), k % 2)
    f.add(b"   \t", None)
    f.add(b"", None)
    f.add(b"not json", ("parse_error", Prefix("line {n} is not valid JSON: ")))
    for raw, what in [(b"[1, 2]", "a JSON array"), (b"3", "a JSON number"),
                      (b'"text"', "a JSON string"), (b"null", "JSON null")]:
        f.add(raw, ("parse_error", f"line {{n}} is {what}, not a JSON object"))
    later_bom = BOM + _estimator_line(rows[0], 0).encode()
    f.add(later_bom, ("parse_error", Prefix("line {n} is not valid JSON: ")))
    for k in range(8):
        f.row(next(rest), k % 2, end=b"\r\n")
    f.add(b" " * 6000 + b"\r", None)  # blank, over the cap and across the grid
    for k in range(4):
        f.row(next(rest), k % 2)
    long_row = next(rest)
    long_line = _estimator_line({**long_row, "pad": "p" * 9000}, 0).encode()
    f.add(long_line, ("corrupt_record", f"line {{n}} is longer than --max_record_bytes ({cap} "
                                        "bytes); it was skipped"))
    no_key = {k: v for k, v in next(rest).items() if k != "id"}
    f.add(json.dumps(no_key).encode(), ("missing_key", "key column 'id' is empty"))
    no_age = {k: v for k, v in next(rest).items() if k != "age"}
    f.add(json.dumps(no_age).encode(), ("missing_feature", "required column 'age' is empty"))
    for k in range(3):
        f.add(b"", None)
    for k, row in enumerate(rest):
        f.row(row, k % 2, end=b"\r\n" if k % 3 == 0 else b"\n",
              extra={"extra": [[1, None], {"b64": "!"}]} if k % 4 == 0 else None)
    f.data = f.data[:-1] if f.data.endswith(b"\n") else f.data
    f.data = f.data[:-1] if f.data.endswith(b"\r") else f.data  # no line end at all
    return f


def test_every_line_of_hostile_files_is_a_prediction_or_its_error_row(tmp_path, estimator_v1,
                                                                      load):
    """A hostile file split by the runner (--split_bytes 4096), a gzip file with a line that
    is not JSON and one over the cap, a gzip file named .json (gzip is told by its bytes), an
    empty file: records in = predicted + error rows = the non-blank lines; each error row has
    the file, record index, line number, type, message and payload counted here; every
    prediction is the model's own output for its row (keys not in the spec ignored)."""
    cap = 2000
    data = tmp_path / "in"
    data.mkdir()
    a = _hostile_file(zoo.estimator_rows(48, seed=21), cap)
    b = Lines("b.jsonl.gz")
    rows_b = zoo.estimator_rows(6, seed=22)
    for k, row in enumerate(rows_b[:3]):
        b.row(row, k % 2)
    b.add(b"{not json}", ("parse_error", Prefix("line {n} is not valid JSON: ")))
    b.add(b"\t" + b'{"id": "zz", "s": "' + b"u" * 3000 + b'"}',
          ("corrupt_record", f"line {{n}} is longer than --max_record_bytes ({cap} bytes); "
                             "it was skipped"))
    for k, row in enumerate(rows_b[3:]):
        b.row(row, k % 2, end=b"\r\n")
    d = Lines("d.json")
    for row in zoo.estimator_rows(3, seed=23):
        d.row(row, 1, end=b"\r\n")
    (data / "a.jsonl").write_bytes(a.data)
    (data / "b.jsonl.gz").write_bytes(gzip.compress(b.data))
    (data / "c.json").write_bytes(b"")
    (data / "d.json").write_bytes(gzip.compress(d.data))
    assert len(a.data) > 3 * 4096
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], str(data / "*"), out, "--signature", "predict",
                      "--key_field", "id", "--batch_size", "16", "--max_error_rate", "1",
                      "--max_record_bytes", str(cap), "--split_bytes", "4096")
    files = (a, b, d)
    good = [row for f in files for row in f.rows]
    want_errors = [e for f in files for e in f.errors]
    assert summary["input_format"] == "jsonl"
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == \
        (sum(f.index for f in files), len(good), len(want_errors))
    # the runner read a.jsonl in blocks: its index has several non-empty ones
    index = index_locally(JSONL, str(data / "a.jsonl"), len(a.data), 4096, cap)
    assert index.split and len(set(index.starts)) >= 3
    got_errors = sorted(errors(out), key=lambda e: (os.path.basename(e["shard"]), e["index"]))
    assert len(got_errors) == len(want_errors)
    for got, want in zip(got_errors, want_errors):
        where = (got, want)
        assert (os.path.basename(got["shard"]), got["index"], got["line"], got["error_type"],
                got["payload"], got["payload_truncated"]) == want[:4] + (want[5], False), where
        if isinstance(want[4], Prefix):
            assert got["message"].startswith(want[4]), where
        else:
            assert got["message"] == want[4], where
    expected = zoo.call_parsing_signature(load(estimator_v1["newest"]), "predict", good,
                                          ESTIMATOR_DTYPES)
    # batches of 16 by block here, one call there: a float32 output may differ in its last
    # bits (1e-5, as tests/helpers.assert_close allows); another row's output is far off
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in good], expected,
                          rtol=1e-5)


# --- the key ----------------------------------------------------------------------------------
def _typed(value) -> tuple:
    """A key with its JSON type: 1 and 1.0 are different keys in an output row."""
    return type(value).__name__, value


def test_the_key_keeps_its_json_type_in_the_output_rows(tmp_path, estimator_v1, load):
    """Integer keys (beyond 2**53, the int64 extremes), number keys (0.1 is not rounded to
    float32, 1e300 stays) and string keys come out as the JSON values they were, each row with
    the model's outputs for its own record (a key rounded through float64 or float32, a number
    turned into text or a row paired with another's key makes this fail)."""
    keys = {"a.jsonl": [5, -3, 2 ** 53 + 1, 2 ** 63 - 1, -2 ** 63],
            "b.jsonl": [0.1, -2.5, 1e20, 1e300],
            "c.jsonl": ["x", "7", "caf\u00e9 \u00fcber"]}
    data = tmp_path / "in"
    data.mkdir()
    rows = []
    for seed, (name, values) in enumerate(keys.items()):
        part = [{**row, "id": k} for row, k in zip(zoo.estimator_rows(len(values), seed), values)]
        _write(data / name, [_estimator_line(row, 0) for row in part])
        rows += part
    assert [JSONL.key_dtype(str(data / name), "id") for name in keys] == \
        ["int64", "float32", "string"]
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], str(data / "*.jsonl"), out, "--signature",
                      "predict", "--key_field", "id")
    assert (summary["records_in"], summary["predicted"]) == (len(rows), len(rows))
    got = {_typed(r["id"]): r for r in predictions(out)}
    assert sorted(got, key=repr) == sorted(map(_typed, (r["id"] for r in rows)), key=repr)
    expected = zoo.call_parsing_signature(load(estimator_v1["newest"]), "predict", rows,
                                          zoo.feature_dtypes(zoo.ESTIMATOR_FEATURES))
    for i, row in enumerate(rows):
        for name, values in expected.items():
            zoo.assert_value_matches(got[_typed(row["id"])][name], values[i], values.dtype,
                                     f"{row['id']!r}.{name}", rtol=1e-5)


@pytest.mark.parametrize("lines, dtype", [
    ([b'{"id": 5}'], "int64"),
    ([b'{"id": -9223372036854775808}'], "int64"),
    ([b'{"id": true}'], "int64"),
    ([b'{"id": 0.5}'], "float32"),
    ([b'{"id": 1e3}'], "float32"),                  # a number written with an exponent
    ([b'{"id": "5"}'], "string"),
    ([b'{"id": {"b64": "AA=="}}'], "string"),
    ([b'{"id": 7.5}', b'{"id": 7}'], "float32"),    # the first record's, not the others'
    ([BOM + b'', b" \t\r", b"not json", b"[1]", b"{}", b'{"id": null, "x": 1}', b'{"id": []}',
      b'{"id": 9}'], "int64"),                      # the first record that has one
    ([b'{"x": 1}'] * 3, "string"),                  # none: text
    ([b"{}"] * 1000 + [b'{"id": 1}'], "string"),   # only the first 1,000 records are looked at
    ([b"{}"] * 999 + [b'{"id": 1}'], "int64"),
    ([b"  "] * 1500 + [b'{"id": 1}'], "int64"),    # blank lines are not records
])
def test_the_key_dtype_is_the_type_of_the_first_records_key(tmp_path, lines, dtype):
    path = str(tmp_path / "k.jsonl")
    blob = b"\n".join(lines) + b"\n"
    for name, data in ((path, blob), (path + ".gz", gzip.compress(blob))):
        with open(name, "wb") as fh:
            fh.write(data)
        assert JSONL.key_dtype(name, "id") == dtype, name


def test_a_record_whose_key_is_not_a_string_or_number_is_an_error_row(tmp_path, estimator_v1):
    """One record's key is a JSON array: that record is an error row and the job scores the
    others, as for a record without its key."""
    rows = zoo.estimator_rows(3, seed=5)
    path = _write(tmp_path / "k.jsonl", [_estimator_line(rows[0], 0),
                                         json.dumps({**rows[1], "id": [1, 2]}),
                                         _estimator_line(rows[2], 0)])
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], path, out, "--signature", "predict",
                      "--key_field", "id", "--max_error_rate", "1")
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (3, 2, 1)
    assert [(e["index"], e["line"], e["error_type"]) for e in errors(out)] == \
        [(1, 2, "type_mismatch")]
    assert set(by_key(predictions(out))) == {rows[0]["id"], rows[2]["id"]}


# --- start-up -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, blob, first", [
    ("array.jsonl", b'[{"id": "a", "age": 1},\n {"id": "b", "age": 2}]\n',
     '[{"id": "a", "age": 1},'),
    ("pretty.json", b'{\n  "id": "a",\n  "age": 1\n}\n', "{"),
    ("bom.json", BOM + b"\n \r\n\t[  \r\n" + b'{"id": "a", "age": 1}\n]', "["),
    ("doc.json.gz", gzip.compress(b'[\n{"id": "a", "age": 1}\n]'), "["),
], ids=["array", "indented", "bom-and-blank-lines", "gzip"])
def test_a_first_input_that_is_one_json_document_is_refused_in_one_line(
        tmp_path, estimator_v1, capsys, name, blob, first):
    """A JSON array or an object written over several lines (a `.json` file as editors and
    json.dump(indent=2) write them) would be nothing but error rows: the job stops at start-up
    with one `error:` line naming the file and its first line, exit code 2, no output."""
    path = tmp_path / name
    path.write_bytes(blob)
    code = main(["--model", estimator_v1["base"], "--input", str(path), "--output",
                 str(tmp_path / "out"), "--signature", "predict", "--key_field", "id"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: {path} is not JSON Lines: its first line {first!r} begins a JSON "
                   "array or an object written over several lines; JSONL input holds one JSON "
                   "object per line"], err
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")


@pytest.mark.parametrize("blob, refused", [
    (b"", False),
    (b'{"id": "a"}\n[1, 2]\n{\n', False),      # only the first non-blank line is looked at
    (b'\n\n{ "id": "a" }\n', False),
    (b"{}", False),
    (b'"a JSON string"\n', False),                # its own error row, not a document
    (b"   " * 100 + b"\n[\n", True),               # a blank line over the cap is still blank
    (b"[" + b" " * 100 + b"1]\n", True),           # a one-line array over the cap, read whole
    (b"[" + b"1, " * 100_000 + b"1]\n", True),     # ... or read past in pieces: the same
])
def test_only_a_first_line_that_begins_a_json_document_is_refused(tmp_path, blob, refused):
    """With a 50-byte cap: whether the first line comes whole or only its first bytes do, the
    same call (a check that depends on where the reads end makes this fail)."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(blob)
    spec = FeatureSpec([Feature("x", "varlen", "float32")])
    if refused:
        with pytest.raises(InputError, match=r"is not JSON Lines: its first line '\["):
            JSONL.check_first_shard(str(path), spec, "id", 50)
    else:
        JSONL.check_first_shard(str(path), spec, "id", 50)


def test_jsonl_is_inferred_from_its_extensions():
    for path in ("gs://b/d/part-0.jsonl", "a.JSON", "x/y.jsonl.gz", "y.json.gz", "Z.JSONL"):
        assert formats.infer_input_format([path]) is JSONL, path
    assert formats.infer_input_format(["a.jsonl", "b.json.gz"]) is JSONL
    assert formats.input_format("jsonl") is JSONL
    with pytest.raises(InputError, match="the inputs mix CSV and JSONL files"):
        formats.infer_input_format(["a.jsonl", "b.csv"])


# --- gs:// ------------------------------------------------------------------------------------
def test_gs_jsonl_is_read_like_a_local_file(gcs, tmp_path, estimator_v1, load):
    """Beam's GCS filesystem against the emulator on loopback: a plain and a gzip JSONL file
    on gs:// are scored, with their error rows' lines, and a plain one is indexed into the
    same blocks as its local copy."""
    rows = zoo.estimator_rows(30, seed=31)
    plain = [_estimator_line(r, 0) for r in rows[:20]]
    plain[4:4] = ["", "not json"]
    gcs.upload_bytes("gs://bp-jsonl/in/a.jsonl", "\r\n".join(plain).encode("utf-8"))
    gcs.upload_bytes("gs://bp-jsonl/in/b.jsonl.gz", gzip.compress(
        BOM + "\n".join(_estimator_line(r, 1) for r in rows[20:]).encode("utf-8")))
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], "gs://bp-jsonl/in/*", out, "--signature", "predict",
                      "--key_field", "id", "--max_error_rate", "1")
    assert summary["input_format"] == "jsonl"
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (31, 30, 1)
    [error] = errors(out)
    assert (error["shard"], error["index"], error["line"], error["payload"]) == \
        ("gs://bp-jsonl/in/a.jsonl", 4, 6, "not json\r")
    expected = zoo.call_parsing_signature(load(estimator_v1["newest"]), "predict", rows,
                                          ESTIMATOR_DTYPES)
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected,
                          rtol=1e-5)

    blob = "\n".join(_estimator_line(r, k % 2) for k, r in enumerate(
        zoo.estimator_rows(60, seed=32))).encode("utf-8")
    local = tmp_path / "big.jsonl"
    local.write_bytes(blob)
    gcs.upload_bytes("gs://bp-jsonl/big.jsonl", blob)
    remote = index_locally(JSONL, "gs://bp-jsonl/big.jsonl", len(blob), 4096)
    assert remote.split and remote.blocks > 2
    here = index_locally(JSONL, str(local), len(blob), 4096)
    assert (remote.starts, remote.first_index, remote.first_line) == \
        (here.starts, here.first_index, here.first_line)
    for k in range(remote.blocks):
        assert _outcomes(JSONL.read_block(remote, k, 7, None, 1 << 20, {}), FeatureSpec([])) \
            == _outcomes(JSONL.read_block(here, k, 7, None, 1 << 20, {}), FeatureSpec([]))


def test_a_key_of_another_type_than_the_first_is_an_error_row_in_a_typed_output(
        tmp_path, estimator_v1):
    """Parquet holds the key in one typed column, of the first input's key type (int64 here):
    a later record's string key or fractional number is a type_mismatch row, an integral
    number is kept as the integer, and the job scores the rest (JSONL output keeps each key as
    written: the test above)."""
    rows = zoo.estimator_rows(4, seed=8)
    keys = [5, "x7", 2.5, 9.0]
    path = _write(tmp_path / "k.jsonl", [_estimator_line({**r, "id": k}, 0)
                                         for r, k in zip(rows, keys)])
    out = str(tmp_path / "out")
    summary = run_job(estimator_v1["base"], path, out, "--signature", "predict",
                      "--key_field", "id", "--output_format", "parquet",
                      "--max_error_rate", "1", "--batch_size", "1")
    assert (summary["records_in"], summary["predicted"], summary["errors"]) == (4, 2, 2)
    assert sorted((e["line"], e["error_type"]) for e in errors(out)) == \
        [(2, "type_mismatch"), (3, "type_mismatch")]
    import glob
    import pyarrow.parquet as pq
    [part] = glob.glob(os.path.join(out, "predictions-*.parquet"))
    table = pq.read_table(part)
    assert table.schema.field("id").type == "int64"
    assert sorted(table.column("id").to_pylist()) == [5, 9]
