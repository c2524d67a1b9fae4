"""Frozen GraphDefs and SavedModels that only load by their signatures, scored by the real
pipeline and compared with the models they came from (tests/graph_zoo.py): the original
SavedModel's signature called directly on `tf.train.Example` protos or tensors built by
TensorFlow itself. Start-up errors are one `error:` line with exit code 2."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.describe import main as describe_main
from pipeline.run import EXIT_OK, EXIT_USAGE, main
from tests import graph_zoo as gz
from tests import model_zoo as zoo
from tests.gcs_emulator import gcs, loopback_only  # noqa: F401  (fixtures)
from tests.helpers import by_key, errors, one_error_line, predictions, run_job
from transforms.graph_models import parse_tensor_map

pytest_plugins = ["tests.model_zoo", "tests.graph_zoo"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FROZEN_DTYPES = {"id": "string", **zoo.feature_dtypes(gz.FROZEN_FEATURES)}
RAW_DTYPES = {"id": "string", "x": "float32", "n": "int64", "word": "string"}
KERAS2_DTYPES = {"id": "string", **zoo.feature_dtypes(gz.KERAS2_FEATURES)}
GRAPH_OPTIONS = ("--model_inputs", gz.FROZEN_INPUTS, "--model_outputs", gz.FROZEN_OUTPUTS)


def _inputs(tmp_path, rows, dtypes, fmt):
    if fmt == "tfrecord":
        return zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), rows, dtypes)
    return zoo.write_csv(str(tmp_path / "in.csv"), rows, list(dtypes))


def _manifest(out) -> dict:
    with open(os.path.join(out, "manifest.json")) as fh:
        return json.load(fh)


# --- a frozen TF1 graph with a ParseExample op ----------------------------------------------
@pytest.fixture(scope="module")
def graph_rows():
    return gz.frozen_rows(120, seed=3)


@pytest.fixture(scope="module")
def graph_expected(frozen_estimator, graph_rows, load):
    """The unfrozen original's `predict` signature on the same rows."""
    return zoo.call_parsing_signature(load(frozen_estimator["saved_model"]), "predict",
                                      graph_rows, FROZEN_DTYPES)


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_frozen_graph_scores_like_the_model_it_was_frozen_from(tmp_path, frozen_estimator,
                                                               graph_rows, graph_expected,
                                                               fmt):
    """Tensors named on the command line; the spec comes from the graph's ParseExample op, so
    CSV rows are parsed as the graph parses tf.Examples; the vocabulary table is filled by the
    graph's init_all_tables. Catches: outputs bound to the wrong tensors, a spec not recovered
    from the graph, an unfilled table (a start-up error), the kind not recorded."""
    out = str(tmp_path / "out")
    summary = run_job(frozen_estimator["graph"], _inputs(tmp_path, graph_rows, FROZEN_DTYPES,
                                                         fmt),
                      out, *GRAPH_OPTIONS, "--key_field", "id", "--batch_size", "32")
    assert summary["model_kind"] == "frozen_graph"
    assert summary["model_path"] == frozen_estimator["graph"]
    assert summary["signature_convention"] == "serialized"
    assert summary["feature_spec_source"] == "model (serving_default parse op)"
    assert summary["feature_spec"]["features"] == gz.FROZEN_SPEC_JSON
    assert summary["records_in"] == summary["predicted"] == len(graph_rows)
    assert errors(out) == []
    assert _manifest(out)["model"]["kind"] == "frozen_graph"
    assert set(graph_expected) == {"score", "logits", "class_ids", "classes"}
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in graph_rows],
                          graph_expected)


def test_frozen_graph_missing_required_feature_is_an_error_row(tmp_path, frozen_estimator,
                                                               graph_rows, graph_expected):
    """The graph's own parse op rejects a record without the required `age`: one error row,
    the rest scored."""
    rows = [dict(r) for r in graph_rows[:10]]
    del rows[4]["age"]
    out = str(tmp_path / "out")
    summary = run_job(frozen_estimator["graph"], _inputs(tmp_path, rows, FROZEN_DTYPES,
                                                         "tfrecord"),
                      out, *GRAPH_OPTIONS, "--key_field", "id", "--max_error_rate", "1")
    assert (summary["predicted"], summary["errors"]) == (9, 1)
    [err] = errors(out)
    assert err["error_type"] == "missing_feature"
    got = by_key(predictions(out))
    for i, row in enumerate(rows):
        if i != 4:
            zoo.assert_value_matches(got[row["id"]]["score"], graph_expected["score"][i],
                                     np.float32, row["id"])


def test_a_frozen_graph_signature_looks_like_the_savedmodel_signature(frozen_estimator, load):
    """The same keyword inputs and the same outputs (names, dtypes, shapes) as the original's
    TF1 signature, which TensorFlow's own loader built: what introspection and LoadedModel
    rely on."""
    from transforms.model import load_signature
    graph_fn = load_signature(frozen_estimator["graph"], model_inputs=parse_tensor_map(
        gz.FROZEN_INPUTS), model_outputs=parse_tensor_map(gz.FROZEN_OUTPUTS)).loaded.signatures[
        "serving_default"]
    original = load(frozen_estimator["saved_model"]).signatures["predict"]
    assert graph_fn.structured_input_signature == original.structured_input_signature
    assert {k: (v.dtype, v.shape.as_list()) for k, v in graph_fn.structured_outputs.items()} == \
        {k: (v.dtype, v.shape.as_list()) for k, v in original.structured_outputs.items()}


def test_describe_a_frozen_graph(frozen_estimator, capsys):
    assert describe_main(["--model", frozen_estimator["graph"], *GRAPH_OPTIONS]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["model_kind"] == "frozen_graph"
    assert info["size_bytes"] == os.path.getsize(frozen_estimator["graph"])
    assert info["signatures"]["serving_default"]["inputs"] == {"examples": "string[None]"}
    assert info["signatures"]["serving_default"]["outputs"] == {
        "class_ids": "int64[None]", "classes": "string[None]", "logits": "float32[None,1]",
        "score": "float32[None,1]"}
    assert info["feature_spec"]["features"] == gz.FROZEN_SPEC_JSON


# --- a frozen TF2 function over raw tensors, tensors named in its sidecar ---------------------
@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_frozen_tf2_graph_with_sidecar_takes_named_tensors(tmp_path, frozen_tf2, load, fmt):
    rows = gz.tf2_raw_rows(60, seed=5)
    expected = zoo.call_signature(
        load(frozen_tf2["saved_model"]), "serving_default",
        x=np.array([r["x"] for r in rows], np.float32), n=np.array([r["n"] for r in rows]),
        word=np.array([r["word"] for r in rows], object))
    out = str(tmp_path / "out")
    summary = run_job(frozen_tf2["graph"], _inputs(tmp_path, rows, RAW_DTYPES, fmt), out,
                      "--key_field", "id")
    assert summary["model_kind"] == "frozen_graph"
    assert summary["signature_convention"] == "tensors"
    assert summary["predicted"] == len(rows) and errors(out) == []
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_frozen_tf2_parsing_graph_recovers_its_spec(tmp_path, frozen_tf2, load, fmt):
    """A TF2 function with ParseExampleV2, frozen: a parsing model whose spec (defaults
    included) comes from the graph, as it does from the SavedModel's signature."""
    rows = gz.tf2_raw_rows(40, seed=6)
    for i in range(0, 40, 3):  # absent features take the parse op's defaults
        del rows[i]["word"]
    for i in range(0, 40, 4):
        del rows[i]["x"]
    expected = zoo.call_parsing_signature(load(frozen_tf2["saved_model"]), "parsing", rows,
                                          RAW_DTYPES)
    out = str(tmp_path / "out")
    summary = run_job(frozen_tf2["parsing"], _inputs(tmp_path, rows, RAW_DTYPES, fmt), out,
                      "--key_field", "id")
    assert summary["model_kind"] == "frozen_graph"
    assert summary["signature_convention"] == "serialized"
    assert summary["feature_spec"]["features"] == {
        "n": {"kind": "fixed", "dtype": "int64", "shape": []},
        "word": {"kind": "fixed", "dtype": "string", "shape": [], "default": ["none"]},
        "x": {"kind": "fixed", "dtype": "float32", "shape": [3], "default": [0.0, 0.0, 0.0]}}
    assert summary["predicted"] == len(rows) and errors(out) == []
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


def test_cli_describe_a_frozen_graph_with_sidecar(frozen_tf2):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "describe", "--model",
                           frozen_tf2["graph"]], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["model_kind"] == "frozen_graph"
    assert info["signatures"]["serving_default"] == {
        "convention": "tensors",
        "inputs": {"n": "int64[None]", "word": "string[None]", "x": "float32[None,3]"},
        "outputs": {"probs": "float32[None,2]", "top": "int64[None]"}}
    assert info["feature_spec"]["features"] == {
        "n": {"kind": "fixed", "dtype": "int64", "shape": []},
        "word": {"kind": "fixed", "dtype": "string", "shape": []},
        "x": {"kind": "fixed", "dtype": "float32", "shape": [3]}}


# --- start-up errors --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_graphs(tmp_path_factory, frozen_estimator, frozen_tf2):
    root = tmp_path_factory.mktemp("bad_graphs")
    junk = root / "junk.pb"
    junk.write_bytes(b"this is not a GraphDef \x00\xff" * 10)
    bad_sidecar = root / "bad_sidecar.pb"
    bad_sidecar.write_bytes(open(frozen_estimator["graph"], "rb").read())
    (root / "bad_sidecar.pb.json").write_text(json.dumps({"inputs": {"examples": "x:0"}}))
    typo = root / "typo.pb"
    typo.write_bytes(open(frozen_tf2["graph"], "rb").read())
    sidecar = json.load(open(frozen_tf2["graph"] + ".json"))
    sidecar["outputs"]["probs"] = "Identty:0"
    (root / "typo.pb.json").write_text(json.dumps(sidecar))
    rows = gz.frozen_rows(3)
    return {"junk": str(junk), "bad_sidecar": str(bad_sidecar), "typo": str(typo),
            "tfrecord": zoo.write_tfrecord(str(root / "in.tfrecord"), rows, FROZEN_DTYPES)}


STARTUP_ERRORS = {
    # case: (model, options, words in the one error line)
    "unknown output tensor": (
        "graph", ["--model_inputs", gz.FROZEN_INPUTS, "--model_outputs", "score:head/scroe:0"],
        ["--model_outputs score:head/scroe:0", "no node 'head/scroe'",
         "close node names: head/score"]),
    "unknown input tensor": (
        "graph", ["--model_inputs", "examples:input_example:0", "--model_outputs",
                  "score:head/score:0"],
        ["--model_inputs examples:input_example:0", "input_example_tensor"]),
    "output index out of range": (
        "graph", ["--model_inputs", gz.FROZEN_INPUTS, "--model_outputs", "score:head/score:3"],
        ["--model_outputs score:head/score:3", "node 'head/score'",
         "has 1 output(s) (head/score:0 to head/score:0)"]),
    "pair without a name": (
        "graph", ["--model_inputs", gz.FROZEN_INPUTS, "--model_outputs", "head/score:0"],
        ["--model_outputs", "'head/score:0' is not NAME:TENSOR"]),
    "name given twice": (
        "graph", ["--model_inputs", "a:x:0,a:y:0"], ["--model_inputs", "names a more than once"]),
    "no options and no sidecar": (
        "graph", [], ["needs its input and output tensors", "graph.pb.json", "--model_inputs"]),
    "sidecar without outputs": (
        "bad_sidecar", [], ["bad_sidecar.pb.json", '"outputs" must be a non-empty object']),
    "unknown tensor in the sidecar": (
        "typo", [], ["typo.pb.json outputs probs:Identty:0", "no node 'Identty'",
                     "close node names: Identity"]),
    "not a graph file": ("junk", GRAPH_OPTIONS, ["junk.pb", "is not a frozen graph"]),
    "lookup table without its initializer": (
        "graph_no_init", GRAPH_OPTIONS, ["graph_no_init.pb", "lookup table(s) hash_table",
                                         "no init_all_tables node"]),
    "tensors for a SavedModel": (
        "saved_model", GRAPH_OPTIONS, ["--model_inputs and --model_outputs name the tensors",
                                       "is not one"]),
}


@pytest.mark.parametrize("case", list(STARTUP_ERRORS))
def test_unusable_graph_or_tensors_fail_at_start_up_in_one_line(tmp_path, frozen_estimator,
                                                                 bad_graphs, capsys, case):
    model, options, words = STARTUP_ERRORS[case]
    model = {**frozen_estimator, **bad_graphs}[model]
    out = tmp_path / "out"
    code = main(["--model", model, "--input", bad_graphs["tfrecord"], "--output", str(out),
                 *options])
    assert code == EXIT_USAGE
    one_error_line(capsys.readouterr().err, *words)
    assert not out.exists()


def test_graph_outputs_needing_an_unfed_placeholder_fail_at_start_up(tmp_path, frozen_tf2,
                                                                     capsys):
    """`word` feeds both outputs; leaving it out of --model_inputs is refused at load, not
    at the first call."""
    data = zoo.write_tfrecord(str(tmp_path / "in.tfrecord"), gz.tf2_raw_rows(2), RAW_DTYPES)
    out = tmp_path / "out"
    code = main(["--model", frozen_tf2["graph"], "--input", data, "--output", str(out),
                 "--model_inputs", "x:x:0,n:n:0", "--model_outputs", "probs:Identity:0"])
    assert code == EXIT_USAGE
    one_error_line(capsys.readouterr().err, "need placeholder(s) word",
                    "--model_inputs does not feed")


def test_parse_tensor_map():
    assert parse_tensor_map("score:head/score:0, examples:input_example_tensor:0,y:out") == (
        ("examples", "input_example_tensor:0"), ("score", "head/score:0"), ("y", "out"))
    for bad in ("", "score", "score:", ":head/score:0", "a:b:c:d", "a b:x:0", "a:x:0,,b:y:0"):
        with pytest.raises(ValueError):
            parse_tensor_map(bad)


# --- a SavedModel that TensorFlow cannot revive, loaded by its signatures ---------------------
def test_the_keras2_style_fixture_really_fails_revival(keras2_style):
    import tensorflow as tf
    with pytest.raises(AttributeError, match="'_UserObject' object has no attribute 'add_slot'"):
        tf.saved_model.load(keras2_style["model"])
    assert "serving_default" in tf.saved_model.load(keras2_style["original"]).signatures


@pytest.mark.parametrize("fmt", ["tfrecord", "csv"])
def test_unrevivable_savedmodel_scores_through_its_signatures(tmp_path, keras2_style, load,
                                                              caplog, fmt):
    """Same predictions as the unmodified model; one log line says how it was loaded; the
    summary and manifest record the kind. Catches: no fallback (start-up error), a fallback
    that skips restoring the variables (other numbers), a silent or noisy fallback."""
    rows = gz.keras2_rows(50, seed=7)
    expected = zoo.call_parsing_signature(load(keras2_style["original"]), "serving_default",
                                          rows, KERAS2_DTYPES)
    out = str(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        summary = run_job(keras2_style["model"], _inputs(tmp_path, rows, KERAS2_DTYPES, fmt),
                          out, "--key_field", "id")
    notes = [r.getMessage() for r in caplog.records if "cannot be revived" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "\n" not in notes[0] and "add_slot" in notes[0]
    assert summary["model_kind"] == "saved_model_signatures_only"
    assert _manifest(out)["model"]["kind"] == "saved_model_signatures_only"
    assert summary["feature_spec"]["features"] == {
        "k": {"kind": "fixed", "dtype": "int64", "shape": [1], "default": [0]},
        "x": {"kind": "fixed", "dtype": "float32", "shape": [2]}}
    assert summary["predicted"] == len(rows) and errors(out) == []
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


def test_describe_says_how_a_savedmodel_was_loaded(keras2_style, capsys):
    assert describe_main(["--model", keras2_style["model"]]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["model_kind"] == "saved_model_signatures_only"
    assert "cannot be revived" in info["model_load_note"]
    assert "add_slot" in info["model_load_note"]
    assert list(info["signatures"]) == ["serving_default"]  # not the loader's init op
    assert describe_main(["--model", keras2_style["original"]]) == EXIT_OK
    info = json.loads(capsys.readouterr().out)
    assert info["model_kind"] == "saved_model" and "model_load_note" not in info


def test_ordinary_savedmodel_run_records_its_kind(tmp_path, keras2_style):
    rows = gz.keras2_rows(3)
    out = str(tmp_path / "out")
    summary = run_job(keras2_style["original"], _inputs(tmp_path, rows, KERAS2_DTYPES,
                                                        "tfrecord"), out)
    assert summary["model_kind"] == "saved_model"
    assert _manifest(out)["model"]["kind"] == "saved_model"


# --- in worker processes: each loads the model from the plan's ModelConfig --------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["frozen_graph", "saved_model_signatures_only"])
def test_worker_processes_load_the_same_kind_of_model(tmp_path, frozen_estimator, keras2_style,
                                                      load, kind):
    """The launcher's model is not reused in worker processes: each loads it again from the
    ModelConfig the plan carried to it (the graph's tensors, the fallback). Catches: tensors
    named on the command line that never reach the workers, a table left unfilled there."""
    from pipeline.run import run
    from tests.helpers import read_jsonl
    if kind == "frozen_graph":
        model, extra, dtypes = frozen_estimator["graph"], GRAPH_OPTIONS, FROZEN_DTYPES
        rows = gz.frozen_rows(40, seed=8)
        expected = zoo.call_parsing_signature(load(frozen_estimator["saved_model"]), "predict",
                                              rows, dtypes)
    else:
        model, extra, dtypes = keras2_style["model"], (), KERAS2_DTYPES
        rows = gz.keras2_rows(40, seed=8)
        expected = zoo.call_parsing_signature(load(keras2_style["original"]), "serving_default",
                                              rows, dtypes)
    for s in range(4):
        zoo.write_tfrecord(str(tmp_path / f"part-{s}.tfrecord"), rows[s * 10:(s + 1) * 10],
                           dtypes)
    out = str(tmp_path / "out")
    run(["--model", model, "--input", str(tmp_path / "part-*.tfrecord"), "--output", out,
         "--key_field", "id", *extra, "--direct_running_mode=multi_processing",
         "--direct_num_workers=2"])
    loads = read_jsonl(os.path.join(out, "metrics", "model_loads-*.jsonl"))
    assert loads and os.getpid() not in {r["pid"] for r in loads}
    assert _manifest(out)["model"]["kind"] == kind
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)


# --- a frozen graph on gs:// ----------------------------------------------------------------
def test_frozen_graph_on_gcs_is_staged_with_its_sidecar_alone(tmp_path, gcs, loopback_only,
                                                              frozen_tf2, load):
    """The graph file and its sidecar are copied, not the rest of the directory around them;
    then it scores like the original. Catches: a .pb on gs:// handed to TensorFlow unstaged,
    a sidecar not staged with it, a whole bucket directory copied."""
    from transforms.staging import stage_graph_file
    graph = open(frozen_tf2["graph"], "rb").read()
    gcs.upload_bytes("gs://bp-graphs/m/graph.pb", graph)
    gcs.upload_bytes("gs://bp-graphs/m/graph.pb.json",
                     open(frozen_tf2["graph"] + ".json", "rb").read())
    gcs.upload_bytes("gs://bp-graphs/m/graph.pb.old", b"an older graph")
    gcs.upload_bytes("gs://bp-graphs/m/other/big.bin", b"x" * 1000)
    cache = tmp_path / "cache"
    local = stage_graph_file("gs://bp-graphs/m/graph.pb", str(cache))
    assert open(local, "rb").read() == graph
    assert sorted(os.listdir(os.path.dirname(local))) == [".staged", "graph.pb",
                                                          "graph.pb.json"]
    rows = gz.tf2_raw_rows(20, seed=9)
    expected = zoo.call_signature(
        load(frozen_tf2["saved_model"]), "serving_default",
        x=np.array([r["x"] for r in rows], np.float32), n=np.array([r["n"] for r in rows]),
        word=np.array([r["word"] for r in rows], object))
    out = str(tmp_path / "out")
    summary = run_job("gs://bp-graphs/m/graph.pb",
                      _inputs(tmp_path, rows, RAW_DTYPES, "tfrecord"), out, "--key_field", "id",
                      "--model_cache_dir", str(tmp_path / "cache2"))
    assert summary["model_kind"] == "frozen_graph"
    assert summary["model_path"] == "gs://bp-graphs/m/graph.pb"
    cache2 = tmp_path / "cache2"
    staged = [d for d in os.listdir(cache2) if os.path.isdir(cache2 / d)]
    assert [sorted(os.listdir(cache2 / d)) for d in staged] == [
        [".staged", "graph.pb", "graph.pb.json"]]
    zoo.assert_rows_match(by_key(predictions(out)), [r["id"] for r in rows], expected)
