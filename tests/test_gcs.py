"""gs:// models, inputs and outputs, against the GCS emulator on loopback.

Real parts only: `gcp-storage-emulator`, the `google-cloud-storage` client, Beam's GCS
filesystem, the real pipeline (in-process and with two worker processes). Expected predictions
are computed by calling the SavedModel directly on the same rows (tests/helpers.py).
"""
import json
import os

import pytest

from tests.gcs_emulator import gcs, loopback_only  # noqa: F401  (fixtures)
from tests.helpers import assert_close, by_key, expected_outputs, run_job
from transforms.errors import StagingError
from transforms.staging import (check_relative_name, check_sizes,
                                list_model_files, stage_model)


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


@pytest.fixture(scope="module")
def gs_demo(gcs, demo_model_base, demo_data):
    """The demo export base dir and the demo data, uploaded to the emulator."""
    gcs.upload_dir(demo_model_base, "gs://bp-models/demo")
    gcs.upload_dir(demo_data["dir"], "gs://bp-data/in")
    return {"model": "gs://bp-models/demo", "data": "gs://bp-data/in"}


# -- staging ---------------------------------------------------------------------------------
def test_stage_model_copies_every_file_and_reuses_the_copy(gcs, loopback_only,
                                                           demo_model_dir, tmp_path):
    gcs.upload_dir(demo_model_dir, "gs://bp-stage/m1")
    local = stage_model("gs://bp-stage/m1", str(tmp_path))
    staged = _tree(local)
    assert staged.pop(".staged") == b"gs://bp-stage/m1\n"
    assert staged == _tree(demo_model_dir)
    marker = os.stat(os.path.join(local, ".staged"))
    assert stage_model("gs://bp-stage/m1/", str(tmp_path)) == local  # reused, not re-copied
    assert os.stat(os.path.join(local, ".staged")).st_mtime_ns == marker.st_mtime_ns
    assert os.stat(os.path.join(local, ".staged")).st_ino == marker.st_ino


def test_a_changed_model_is_staged_again(gcs, demo_model_dir, tmp_path):
    gcs.upload_dir(demo_model_dir, "gs://bp-stage/m2")
    first = stage_model("gs://bp-stage/m2", str(tmp_path))
    gcs.upload_bytes("gs://bp-stage/m2/assets/extra.txt", b"new file")
    second = stage_model("gs://bp-stage/m2", str(tmp_path))
    assert second != first
    assert open(os.path.join(second, "assets", "extra.txt"), "rb").read() == b"new file"


HOSTILE_NAMES = ["/abs.txt", "variables\\evil.txt", "./evil.txt", "C:/evil.txt"]


@pytest.mark.parametrize("case", range(len(HOSTILE_NAMES)), ids=HOSTILE_NAMES)
def test_object_names_that_escape_the_staging_dir_are_refused(gcs, tmp_path, case):
    name, prefix = HOSTILE_NAMES[case], f"gs://bp-hostile/m{case}"
    gcs.upload_bytes(f"{prefix}/saved_model.pb", b"not really a model")
    gcs.upload_bytes(f"{prefix}/{name}", b"payload")
    with pytest.raises(StagingError, match="refusing to stage"):
        stage_model(prefix, str(tmp_path / "cache"))
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path.parent) for f in fs]
    assert not [w for w in written if "evil" in w or "abs.txt" in w]


@pytest.mark.parametrize("name", ["../evil.txt", "variables/../../evil.txt", "a/..", ".."])
def test_dot_dot_object_names_are_refused(name):
    """GCS allows these names; the emulator refuses to store them, so the check that
    list_model_files applies to every listed name is exercised directly."""
    with pytest.raises(StagingError, match="refusing to stage"):
        check_relative_name(name, "gs://b/m")
    check_relative_name("variables/variables.data-00000-of-00001", "gs://b/m")  # plain: fine


def test_size_check_catches_a_short_file(gcs, demo_model_dir, tmp_path):
    gcs.upload_dir(demo_model_dir, "gs://bp-stage/m3")
    files = list_model_files(gcs.client(), "gs://bp-stage/m3")
    local = stage_model("gs://bp-stage/m3", str(tmp_path))
    check_sizes(local, files)  # as staged: sizes match
    with open(os.path.join(local, "saved_model.pb"), "r+b") as fh:
        fh.truncate(10)
    with pytest.raises(StagingError, match="saved_model.pb: 10 bytes"):
        check_sizes(local, files)


def test_missing_model_path_is_one_clear_error(gcs, tmp_path):
    gcs.create_bucket("bp-empty")
    with pytest.raises(StagingError, match="no objects under gs://bp-empty/nothing"):
        stage_model("gs://bp-empty/nothing", str(tmp_path))


# -- the pipeline on gs:// -------------------------------------------------------------------
def _jsonl(gcs, prefix: str, pattern_start: str) -> list[dict]:
    rows = []
    for name in gcs.list(prefix):
        if name.startswith(pattern_start):
            data = gcs.read_bytes(f"{prefix}/{name}").decode()
            rows += [json.loads(line) for line in data.splitlines() if line.strip()]
    return rows


def _check_predictions(rows, demo_model, demo_data):
    expected = expected_outputs(demo_model, demo_data["rows"])
    got = by_key(rows)
    assert len(rows) == len(got) == len(demo_data["rows"])
    for i, row in enumerate(demo_data["rows"]):
        assert_close(got[row["id"]]["score"], expected["score"][i])
        assert got[row["id"]]["label"] == expected["label"][i].decode()


@pytest.mark.slow
def test_gs_run_with_two_worker_processes(gcs, gs_demo, demo_model, demo_data, tmp_path):
    out = "gs://bp-out/multi"
    gcs.create_bucket("bp-out")
    run_job(gs_demo["model"], f"{gs_demo['data']}/part-*.tfrecord*", out,
            "--key_field", "id", "--model_cache_dir", str(tmp_path / "cache"),
            "--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
    names = gcs.list(out)
    assert "_SUCCESS" in names and "manifest.json" in names
    assert not [n for n in names if n.startswith(".tmp-")]  # staging removed on GCS too
    # the worker processes' credential lookups were answered by the loopback metadata server
    assert "/computeMetadata/v1/instance/service-accounts/default/token" in gcs.metadata.requests
    _check_predictions(_jsonl(gcs, out, "predictions-"), demo_model, demo_data)

    loads = _jsonl(gcs, out, "metrics/model_loads-")
    assert len({row["pid"] for row in loads}) == len(loads) >= 1  # one load per process
    # each staging lists the bucket at least (to fingerprint the model): never 0 s
    assert all(row["model"] == "gs://bp-models/demo/1700000000" and row["stage_seconds"] > 0
               for row in loads), loads

    manifest = json.loads(gcs.read_bytes(f"{out}/manifest.json"))
    sizes = {os.path.basename(p): os.path.getsize(p) for p in demo_data["tfrecord"]}
    assert {os.path.basename(f["path"]): f["bytes"] for f in manifest["inputs"]} == sizes
    assert all(f["path"].startswith("gs://bp-data/in/") for f in manifest["inputs"])
    assert manifest["model"]["version"] == "1700000000"
    assert manifest["model"]["loads"]["processes"] == len(loads)
    assert manifest["model"]["loads"]["stage_seconds_max"] == max(r["stage_seconds"] for r in loads)
    assert manifest["counts"] == {"records_in": 1500, "predicted": 1500, "errors": 0,
                                  "accounted": True, "exact": True}
    assert set(manifest["outputs"]) == set(names) - {"manifest.json", "_SUCCESS"}


def test_gs_csv_run_replaces_a_previous_output(gcs, loopback_only, gs_demo, demo_model,
                                               demo_data, tmp_path, caplog):
    for logger in ("google", "urllib3", "transforms"):  # the libraries that hold the token
        caplog.set_level("DEBUG", logger=logger)
    out = "gs://bp-out/csv"
    gcs.upload_bytes(f"{out}/predictions-00000-of-00009.jsonl", b'{"old": 1}\n')
    gcs.upload_bytes(f"{out}/_SUCCESS", b"")
    gcs.upload_bytes(f"{out}/notes/readme.txt", b"not ours")  # never touched
    gcs.upload_bytes(f"{out}/predictions-final.jsonl", b"not ours either")
    summary = run_job(gs_demo["model"], f"{gs_demo['data']}/part-*.csv", out,
                      "--key_field", "id", "--overwrite",
                      "--model_cache_dir", str(tmp_path / "cache"))
    assert summary["records_in"] == summary["predicted"] == 1500
    names = gcs.list(out)
    assert "predictions-00000-of-00009.jsonl" not in names  # the old run's file is gone
    assert "_SUCCESS" in names
    assert not [n for n in names if n.startswith(".tmp-")]
    assert ".batch-predict.lock" not in names  # released by the run's finalize and launcher
    assert gcs.read_bytes(f"{out}/notes/readme.txt") == b"not ours"
    assert gcs.read_bytes(f"{out}/predictions-final.jsonl") == b"not ours either"
    _check_predictions(_jsonl(gcs, out, "predictions-0"), demo_model, demo_data)
    assert "emulated-token" not in caplog.text  # the access token is never logged


def test_a_gs_output_locked_by_another_run_is_refused(gcs, loopback_only, gs_demo, capsys):
    from pipeline.run import EXIT_USAGE, main
    out = "gs://bp-out/locked"
    lock = (b'{"run_id": "20261203T000000-0000beef", "host": "h1", "pid": 7, '
            b'"started": "2026-12-03T00:00:00Z"}')
    gcs.upload_bytes(f"{out}/.batch-predict.lock", lock)
    code = main(["--model", gs_demo["model"], "--input", f"{gs_demo['data']}/part-*.csv",
                 "--output", out])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "is in use by run 20261203T000000-0000beef, process 7 on h1" in err
    assert f"delete {out}/.batch-predict.lock" in err and "Traceback" not in err
    assert gcs.list(out) == [".batch-predict.lock"]  # nothing else written
    assert gcs.read_bytes(f"{out}/.batch-predict.lock") == lock


def test_missing_output_bucket_fails_before_the_job_starts(gcs, gs_demo):
    from transforms.errors import OutputError
    with pytest.raises(OutputError, match="output bucket gs://bp-nowhere does not exist"):
        run_job(gs_demo["model"], f"{gs_demo['data']}/part-*.csv", "gs://bp-nowhere/out")


def test_no_credentials_is_one_clear_error(monkeypatch, tmp_path, loopback_only):
    """Outside the emulator and without any Google credentials, staging says what to do."""
    import google.auth.compute_engine._metadata as metadata
    for var in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST",
                "GCE_METADATA_IP", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials either
    monkeypatch.setattr(metadata, "_NO_GCE_CHECK", True)  # and not on GCE
    with pytest.raises(StagingError, match="no Google credentials to read the model from GCS: "
                                           "run `gcloud auth application-default login`"):
        stage_model("gs://bp-models/demo/1700000000", str(tmp_path / "cache"))


def test_a_gs_output_whose_name_has_glob_characters_is_replaced_exactly(gcs, loopback_only,
                                                                        gs_demo, tmp_path):
    """`[`, `*` and `?` in the output path are names, not patterns: the previous run's files
    there are found and replaced, a sibling matching the pattern is not touched."""
    out = "gs://bp-out/runs/day[1]*"
    gcs.upload_bytes(f"{out}/predictions-00000-of-00009.jsonl", b'{"old": 1}\n')
    gcs.upload_bytes(f"{out}/manifest.json", b'{"run_id": "old"}')
    for sibling in ("predictions-00000-of-00001.jsonl", "_SUCCESS", "manifest.json"):
        gcs.upload_bytes(f"gs://bp-out/runs/day1x/{sibling}", b"sibling\n")
    summary = run_job(gs_demo["model"], f"{gs_demo['data']}/part-00000.csv", out,
                      "--key_field", "id", "--overwrite",
                      "--model_cache_dir", str(tmp_path / "cache"))
    names = gcs.list(out)
    assert "predictions-00000-of-00009.jsonl" not in names  # the old run's file is gone
    assert "predictions-00000-of-00001.jsonl" in names and "_SUCCESS" in names
    assert ".batch-predict.lock" not in names  # released: deleted as a name, not a pattern
    assert summary["records_in"] == 500
    # a sibling that the name read as a pattern would match keeps every file
    assert gcs.list("gs://bp-out/runs/day1x") == ["_SUCCESS", "manifest.json",
                                                 "predictions-00000-of-00001.jsonl"]
