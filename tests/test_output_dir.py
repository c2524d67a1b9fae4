"""The output dir as a careless or hostile user meets it: only this tool's own names are ever
touched, nothing is written through a symlink, a failed re-run keeps the last good output,
finalize can be retried or resumed after a failure at any step, and two runs never share one
output dir."""
import errno
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.demo import demo_rows, write_tfrecords
from pipeline.run import EXIT_ERROR_BUDGET, EXIT_OK, EXIT_USAGE, main
from tests.helpers import errors, predictions, read_jsonl
from transforms import output_dir as od
from transforms import output_lock as ol

BASE = ["--key_field", "id"]


def _tree(root) -> dict:
    """{relative path: sha256} of every file under root (symlinks as their target text)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            out[rel] = ("link:" + os.readlink(path) if os.path.islink(path) else
                        hashlib.sha256(open(path, "rb").read()).hexdigest())
    return out


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    """30 clean records, and the ids they hold."""
    d = tmp_path_factory.mktemp("small")
    rows = demo_rows(30, seed=21)
    return {"path": write_tfrecords(rows, str(d / "part.tfrecord")),
            "ids": {r["id"] for r in rows}, "rows": rows}


@pytest.fixture(scope="module")
def dirty_input(tmp_path_factory):
    """20 records, 3 lacking the required `device` feature: 15% errors, over the 1% budget."""
    d = tmp_path_factory.mktemp("dirty")
    rows = demo_rows(20, seed=22)
    for i in (2, 9, 15):
        rows[i].pop("device")
    return {"path": write_tfrecords(rows, str(d / "dirty.tfrecord")),
            "good_ids": {r["id"] for r in rows if "device" in r}}


def _score(model, inputs, out, *extra):
    return main(["--model", model, "--input", inputs, "--output", str(out), *BASE, *extra])


# --- only our own names ------------------------------------------------------------------------
def test_overwrite_removes_only_this_tools_outputs(tmp_path, demo_model_base, small_input,
                                                   dirty_input):
    out = tmp_path / "out"
    assert _score(demo_model_base, dirty_input["path"], out, "--max_error_rate", "1") == EXIT_OK
    # someone else's files, some with names close to ours
    foreign = {"notes.txt": b"keep me", "sub/important.doc": b"\x00\x01",
               "predictions-final.jsonl": b"{}", "metrics/dashboard.json": b"[]",
               "errors-00000-of-00001.jsonl.bak": b"x", ".tmp-mine/cache": b"y",
               "manifest.json.orig": b"z", "predictions-00000-of-00001.parquet.txt": b"w"}
    for rel, data in foreign.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    old_predictions = set(glob.glob(str(out / "predictions-*-of-*.jsonl")))
    assert old_predictions
    assert _score(demo_model_base, small_input["path"], out, "--overwrite") == EXIT_OK
    for rel, data in foreign.items():
        assert (out / rel).read_bytes() == data, rel
    rows = read_jsonl(str(out / "predictions-*-of-*.jsonl"))
    assert {r["id"] for r in rows} == small_input["ids"]  # the old run's rows are all gone
    assert read_jsonl(str(out / "errors-*-of-*.jsonl")) == []
    manifest = json.loads((out / "manifest.json").read_text())
    own = {p for p in _tree(out) if od.own_name(p)}
    assert own == set(manifest["outputs"]) | {"manifest.json", "_SUCCESS"}


def test_an_output_dir_that_holds_an_input_is_refused(tmp_path, demo_model_base, small_input,
                                                      capsys):
    d = tmp_path / "dir"
    d.mkdir()
    part = d / "part.tfrecord"
    part.write_bytes(open(small_input["path"], "rb").read())
    (d / "notes.txt").write_text("mine")
    (d / "sub").mkdir()
    (d / "sub" / "important.doc").write_text("mine too")
    before = _tree(d)
    for output in (d, tmp_path / "dir" / "." , tmp_path / "dir" / "sub" / ".."):
        code = _score(demo_model_base, str(part), output, "--overwrite")
        assert code == EXIT_USAGE
        assert "is inside the output dir" in _one_error_line(capsys.readouterr().err)
    assert _tree(d) == before


@pytest.mark.parametrize("name", ["manifest.json", "_SUCCESS", "metrics",
                                  "predictions-00000-of-00001.jsonl", "metrics/summary.json",
                                  ".batch-predict.lock"])
def test_symlinks_at_our_names_are_refused(tmp_path, demo_model_base, small_input, capsys,
                                           name):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "summary.json").write_text("not yours")
    (out / "metrics").mkdir(exist_ok=name == "metrics/summary.json")
    if name == "metrics":
        (out / "metrics").rmdir()
        os.symlink(elsewhere, out / "metrics")
    else:
        os.symlink(elsewhere / "target", out / name)  # dangling
    before, inside = _tree(elsewhere), sorted(os.listdir(out))
    for extra in ([], ["--overwrite"]):
        assert _score(demo_model_base, small_input["path"], out, *extra) == EXIT_USAGE
        assert "symlink" in _one_error_line(capsys.readouterr().err)
    assert _tree(elsewhere) == before
    assert sorted(os.listdir(out)) == inside  # refused at start-up: no lock, no staging dir
    assert not (elsewhere / "target").exists()


@pytest.mark.parametrize("name", ["_SUCCESS", "manifest.json", "predictions-00000-of-00001.jsonl"])
def test_a_directory_or_fifo_at_our_names_is_refused(tmp_path, demo_model_base, small_input,
                                                     capsys, name):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    (out / name / "precious.txt").write_text("not a file of ours")
    os.mkfifo(out / "_SUCCESS" if name != "_SUCCESS" else out / "manifest.json")
    for extra in ([], ["--overwrite"]):
        assert _score(demo_model_base, small_input["path"], out, *extra) == EXIT_USAGE
        assert "not a regular file" in _one_error_line(capsys.readouterr().err)
    assert (out / name / "precious.txt").read_text() == "not a file of ours"


def test_a_symlink_planted_while_the_run_writes_is_never_followed(tmp_path):
    """Finalize checks again: `metrics` turned into a link to elsewhere after start-up."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    staging = _stage(out, "20261203T000000-0000000a")
    os.symlink(elsewhere, out / "metrics")
    with pytest.raises(od.OutputError, match="symlink"):
        _commit(out, staging)
    assert list(elsewhere.iterdir()) == []
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("output,message", [
    ("", "--output"), ("   ", "--output"), ("/", "--output"), ("//", "--output"),
    ("/./", "filesystem root"), ("/tmp/..", "filesystem root"), ("gs://", "names no bucket"),
    ("gs:///scores", "names no bucket")])
def test_outputs_that_are_not_a_dir_to_own_are_refused(tmp_path, monkeypatch, demo_model_base,
                                                       small_input, capsys, output, message):
    monkeypatch.chdir(tmp_path)
    code = main(["--model", demo_model_base, "--input", small_input["path"], "--output",
                 output])
    assert code == EXIT_USAGE
    assert message in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # nothing created in the working directory


def test_an_existing_file_or_a_path_under_one_is_refused(tmp_path, demo_model_base,
                                                         small_input, capsys):
    f = tmp_path / "file.txt"
    f.write_text("not a dir")
    assert _score(demo_model_base, small_input["path"], f) == EXIT_USAGE
    assert "is not a directory" in _one_error_line(capsys.readouterr().err)
    assert _score(demo_model_base, small_input["path"], f / "out") == EXIT_USAGE
    assert "not a directory" in _one_error_line(capsys.readouterr().err)
    assert f.read_text() == "not a dir"


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory on a read-only filesystem (a tmpfs mounted read-only; as a non-root user,
    a directory without write permission)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                              capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode()[:200]}")
        yield d
        subprocess.run(["umount", str(d)], check=True)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_a_read_only_output_fails_before_the_job_starts(read_only_dir, demo_model_base,
                                                        small_input, capsys):
    start = time.monotonic()
    code = _score(demo_model_base, small_input["path"], read_only_dir / "out")
    assert code == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot write to output dir" in line and ("read-only" in line or
                                                     "not writable" in line)
    assert time.monotonic() - start < 60  # (the refusal comes before any worker: no job ran)


# --- a failed re-run keeps the last good output --------------------------------------------------
def test_an_over_budget_overwrite_keeps_the_last_good_output(tmp_path, demo_model_base,
                                                             small_input, dirty_input, capsys):
    out = tmp_path / "out"
    assert _score(demo_model_base, small_input["path"], out) == EXIT_OK
    good = _tree(out)
    assert _score(demo_model_base, dirty_input["path"], out, "--overwrite") == EXIT_ERROR_BUDGET
    err = capsys.readouterr().err
    assert "previous run's outputs" in err and "are kept" in err
    staging = glob.glob(str(out / ".tmp-*"))
    assert len(staging) == 1
    assert {p: h for p, h in _tree(out).items() if not p.startswith(".tmp-")
            and p != ol.LOCK} == {p: h for p, h in good.items() if p != ol.LOCK}
    # the rejected run's outputs are finalized in its staging dir, for inspection
    kept = staging[0]
    assert {e["index"] for e in errors(kept)} == {2, 9, 15}
    assert len(predictions(kept)) == 17
    manifest = json.loads(open(os.path.join(kept, "manifest.json")).read())
    assert (manifest["counts"]["errors"], manifest["errors"]["within_budget"]) == (3, False)
    assert not os.path.exists(os.path.join(kept, "_SUCCESS"))
    # the next run within its budget replaces the good output and clears the kept-aside one
    assert _score(demo_model_base, dirty_input["path"], out, "--overwrite",
                  "--max_error_rate", "0.2") == EXIT_OK
    assert glob.glob(str(out / ".tmp-*")) == []
    assert {r["id"] for r in predictions(str(out))} == dirty_input["good_ids"]
    assert len(predictions(str(out))) == 17 and (out / "_SUCCESS").exists()


def test_an_over_budget_run_replaces_a_previous_run_that_was_not_good(
        tmp_path, demo_model_base, small_input, dirty_input):
    out = tmp_path / "out"
    assert _score(demo_model_base, dirty_input["path"], out) == EXIT_ERROR_BUDGET
    assert not (out / "_SUCCESS").exists() and (out / "manifest.json").exists()
    assert _score(demo_model_base, dirty_input["path"], out, "--overwrite") == EXIT_ERROR_BUDGET
    assert glob.glob(str(out / ".tmp-*")) == []
    assert len(predictions(str(out))) == 17


# --- finalize: retried, and failed at every step ------------------------------------------------
RUN = "20261203T010203-00c0ffee"


def _stage(out, run_id=RUN, families=(("predictions", 3), ("errors", 1))):
    """A staging dir as the write steps leave it: uuid-named files of each family and the
    metrics files; returns it."""
    staging = out / f".tmp-{run_id}"
    (staging / "metrics").mkdir(parents=True)
    for family, n in families:
        for i in range(n):
            (staging / f"{family}-{i:032x}.jsonl").write_text(
                "".join(json.dumps({"family": family, "i": i, "row": r}) + "\n"
                        for r in range(5)))
    (staging / "metrics" / "summary.json").write_text(json.dumps({"run_id": run_id}))
    (staging / "metrics" / "model_loads-00000-of-00001.jsonl").write_text("")
    return staging


def _renames(staging):
    from transforms.write import final_names
    rel = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    names = final_names(rel)
    return {str(staging / r): names[r] for r in rel}


def _commit(out, staging, run_id=RUN, within=True, overwrite=True, ops=None, renames=None):
    renames = renames or _renames(staging)
    return od.commit(str(out), str(staging), run_id, renames, within, overwrite,
                     lambda d, outputs: {"run_id": run_id, "outputs": outputs}, ops)


class FailAt(od.FileOps):
    """Fails the n-th mutating operation (write, rename, delete, remove_tree) like a full
    disk or a lost connection would."""

    def __init__(self, n):
        self.n, self.count = n, 0

    def _tick(self, what):
        self.count += 1
        if self.count == self.n:
            raise OSError(errno.ENOSPC, f"injected failure at {what}")

    def write(self, path, data):
        self._tick("write")
        super().write(path, data)

    def rename(self, source, target):
        self._tick("rename")
        super().rename(source, target)

    def delete(self, path):
        self._tick("delete")
        super().delete(path)

    def remove_tree(self, path):
        self._tick("remove_tree")
        super().remove_tree(path)


def _consumer_view(out) -> str:
    """What a consumer may conclude; asserts the view is never a lie."""
    tree = _tree(out)
    if "manifest.json" in tree:
        manifest = json.loads((out / "manifest.json").read_text())
        for rel in manifest["outputs"]:  # every file the manifest lists is there, complete
            assert rel in tree, rel
            if rel.endswith(".jsonl") and not rel.startswith("metrics/"):
                assert len((out / rel).read_text().splitlines()) == 5
    if "_SUCCESS" in tree:
        assert "manifest.json" in tree
        manifest = json.loads((out / "manifest.json").read_text())
        return f"final:{manifest['run_id']}"
    return "not final"


def _previous_run(out):
    """A finished previous run in out: 2 prediction files, an errors file, manifest, _SUCCESS."""
    old = "20261202T000000-0000000b"
    staging = _stage(out, old, (("predictions", 2), ("errors", 1)))
    _commit(out, staging, old)
    assert _consumer_view(out) == f"final:{old}"
    return old


def test_finalize_twice_is_the_same_as_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _previous_run(out)
    staging = _stage(out)
    renames = _renames(staging)
    _commit(out, staging, renames=renames)
    once = _tree(out)
    _commit(out, staging, renames=renames)  # a retried step: same side inputs
    assert _tree(out) == once
    assert _consumer_view(out) == f"final:{RUN}"
    assert sorted(p for p in once if p.startswith("predictions-")) == [
        f"predictions-0000{i}-of-00003.jsonl" for i in range(3)]


@pytest.mark.parametrize("previous", [False, True])
@pytest.mark.parametrize("within", [True, False])
def test_finalize_failing_at_every_step_never_lies_and_a_retry_finishes(tmp_path, previous,
                                                                          within):
    """Fail the 1st, 2nd, ... operation of finalize until one attempt has none left to fail:
    after each failure a consumer sees either the old run, or nothing final; the retry (same
    arguments) ends exactly where an undisturbed finalize ends."""
    reference = None
    n = 1
    while True:
        out = tmp_path / f"n{n}" / "out"
        out.mkdir(parents=True)
        old = _previous_run(out) if previous else None
        staging = _stage(out)
        renames = _renames(staging)
        ops = FailAt(n)
        try:
            _commit(out, staging, within=within, ops=ops, renames=renames)
            failed = False
        except OSError:
            failed = True
        if failed:
            # the old run, nothing final, or (a failure in the clean-up after _SUCCESS) the
            # new run, complete
            assert _consumer_view(out) in ("not final", f"final:{old}",
                                           f"final:{RUN}" if within else "not final")
            _commit(out, staging, within=within, renames=renames)  # the retry
        view = _consumer_view(out)
        tree = _tree(out)
        if reference is None:
            reference = (view, tree)
        else:
            assert (view, tree) == reference, f"fault at operation {n}"
        if not failed:
            break
        n += 1
    assert n > 5  # every step was failed once: deletes, renames, manifest, _SUCCESS, clean-up
    if within:
        assert reference[0] == f"final:{RUN}"
    elif previous:  # the good previous run stays; this run's outputs wait in its staging dir
        assert reference[0] == f"final:{old}"
        assert f".tmp-{RUN}/manifest.json" in reference[1]
    else:
        assert reference[0] == "not final" and "manifest.json" in reference[1]


def test_a_finished_run_appearing_while_this_one_writes_is_not_replaced_without_overwrite(
        tmp_path):
    """Without --overwrite, finalize refuses an output dir that gained a finished run's
    outputs after start-up (written by something that ignores the lock)."""
    out = tmp_path / "out"
    out.mkdir()
    staging = _stage(out)
    _previous_run(out)  # lands while this run writes
    before = _tree(out)
    with pytest.raises(od.OutputError, match="gained a finished run's outputs while this run "
                                             "was writing"):
        _commit(out, staging, overwrite=False)
    assert _tree(out) == before  # nothing of the other run was touched


def test_a_pipeline_whose_finalize_runs_twice_ends_as_if_once(tmp_path, monkeypatch,
                                                               demo_model_base, small_input,
                                                               dirty_input):
    """The real Finalize step, run twice over the same side inputs (a retried step), on top of
    a previous run that it replaces."""
    import pipeline.build
    from transforms.write import FinalizeDoFn

    class TwiceFinalize(FinalizeDoFn):
        def process(self, summary, *written):
            list(super().process(summary, *written))
            yield from super().process(summary, *written)
    out = tmp_path / "out"
    assert _score(demo_model_base, dirty_input["path"], out, "--max_error_rate", "1") == EXIT_OK
    monkeypatch.setattr(pipeline.build, "FinalizeDoFn", TwiceFinalize)
    assert _score(demo_model_base, small_input["path"], out, "--overwrite") == EXIT_OK
    rows = predictions(str(out))
    assert sorted(r["id"] for r in rows) == sorted(small_input["ids"])
    assert errors(str(out)) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["records_in"] == 30 and (out / "_SUCCESS").exists()
    assert {p for p in _tree(out) if od.own_name(p)} == set(manifest["outputs"]) | {
        "manifest.json", "_SUCCESS"}
    assert glob.glob(str(out / ".tmp-*")) == []


def test_a_full_disk_while_writing_the_manifest_leaves_nothing_final_and_a_rerun_succeeds(
        tmp_path, demo_model_base, small_input, monkeypatch, capsys):
    out = tmp_path / "out"
    real_write = od.FileOps.write

    def full_disk(self, path, data):
        if "manifest" in os.path.basename(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, path, data)
    monkeypatch.setattr(od.FileOps, "write", full_disk)
    with pytest.raises(Exception, match="No space left"):
        from tests.helpers import run_job
        run_job(demo_model_base, small_input["path"], str(out), *BASE)
    assert not (out / "manifest.json").exists() and not (out / "_SUCCESS").exists()
    monkeypatch.setattr(od.FileOps, "write", real_write)
    # the same command again (no --overwrite): the unfinished outputs are replaced
    assert _score(demo_model_base, small_input["path"], out) == EXIT_OK
    assert {r["id"] for r in predictions(str(out))} == small_input["ids"]
    assert glob.glob(str(out / ".tmp-*")) == []


# --- stale staging, concurrent runs, signals -----------------------------------------------------
def test_stale_staging_dirs_are_removed_by_the_next_successful_run(tmp_path, demo_model_base,
                                                                   small_input):
    out = tmp_path / "out"
    stale = out / ".tmp-20260101T000000-deadbeef"
    (stale / "metrics").mkdir(parents=True)
    (stale / ("predictions-" + "0" * 32 + ".jsonl")).write_text("half a run")
    not_ours = out / ".tmp-something-else"
    not_ours.mkdir()
    assert _score(demo_model_base, small_input["path"], out) == EXIT_OK
    assert not stale.exists()
    assert not_ours.exists()


def test_a_second_run_on_a_busy_output_dir_is_refused(tmp_path, demo_model_base, small_input,
                                                      capsys):
    out = tmp_path / "out"
    other = ol.claim_output(str(out), "20261203T000000-0000beef")  # a run in progress
    try:
        assert _score(demo_model_base, small_input["path"], out) == EXIT_USAGE
        line = _one_error_line(capsys.readouterr().err)
        assert "is in use by run 20261203T000000-0000beef" in line
        assert f"process {os.getpid()}" in line
    finally:
        other.release()
    assert _score(demo_model_base, small_input["path"], out) == EXIT_OK  # free again


def start_paused_job(tmp_path, *argv):
    """`python -m pipeline argv` in a child, paused inside Predict with two batches staged;
    returns the process once it has reached that point."""
    marker = tmp_path / "paused"
    env = dict(os.environ, PAUSE_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-m", "tests.stoppable_job", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the job never reached its pause"
        time.sleep(0.05)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_run_exits_in_one_line(tmp_path, demo_model_base, small_input, sig, code):
    out = tmp_path / "out"
    argv = ["--model", demo_model_base, "--input", small_input["path"], "--output", str(out),
            "--batch_size", "5"]
    proc = start_paused_job(tmp_path, *argv)
    assert glob.glob(str(out / ".tmp-*/predictions-*"))  # stopped in the middle of writing
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    line = _one_error_line(err)
    assert f"stopped by {signal.Signals(sig).name}" in line
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert not glob.glob(str(out / "predictions-*"))
    assert _score(demo_model_base, small_input["path"], out) == EXIT_OK  # the dir is free
    assert {r["id"] for r in predictions(str(out))} == small_input["ids"]
