"""How `python -m jobs run` starts, for a local spec on local paths, as a user's shell runs it
(in a subprocess): it asks nobody for Google credentials, and it prints none of TensorFlow's
start-up chatter, like `python -m pipeline`.

The credentials oracle: a loopback server that accepts connections and never answers stands
where google-auth (and TensorFlow's GCS file system) look for the Compute Engine metadata
server (GCE_METADATA_HOST, GCE_METADATA_IP), with no application-default credentials file (a
fresh HOME and CLOUDSDK_CONFIG) and NO_GCE_CHECK unset (tests/conftest.py sets it for the test
process, which would hide the probe). Whoever looks up credentials connects there, and on a
machine whose DNS does not fail at once it would wait seconds per attempt. A network guard in
the subprocess (tests/offline_site) refuses and records every other address off loopback.
"""
import datetime as dt
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import pytest
import yaml

from jobs.spec import load_spec, pipeline_argv
from pipeline.run import TENSORFLOW_START_UP_CHATTER as CHATTER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE_SITE = os.path.join(REPO, "tests", "offline_site")
DAY = "2026-03-01"
# TensorFlow's C++ log lines: severity letter, MMDD, space (I0000 00:00:17... port.cc:153] ...)
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


class HangingMetadataServer:
    """Accepts TCP connections on 127.0.0.1 and never answers; counts them."""

    def __init__(self):
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            if select.select([self._sock], [], [], 0.05)[0]:
                self._held.append(self._sock.accept()[0])

    def connections(self) -> int:
        """Stop accepting; count what was accepted plus what completed its handshake and
        still waits in the backlog (a client may have connected just before it exited)."""
        self._stop.set()
        self._thread.join()
        self._sock.setblocking(False)
        while True:
            try:
                self._held.append(self._sock.accept()[0])
            except BlockingIOError:
                break
        return len(self._held)

    def close(self):
        self.connections()
        for conn in self._held:
            conn.close()
        self._sock.close()


def _user_env(home, metadata: HangingMetadataServer, **extra) -> dict:
    """A user's shell on a machine with no Google credentials and a metadata server that
    hangs; no TF_CPP_MIN_LOG_LEVEL (the test process sets one, a user's shell does not)."""
    drop = {"NO_GCE_CHECK", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
            "GCLOUD_PROJECT", "CLOUDSDK_CONFIG", "GCE_METADATA_ROOT", "TF_CPP_MIN_LOG_LEVEL",
            "STORAGE_EMULATOR_HOST"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"),
               GCE_METADATA_HOST=metadata.address, GCE_METADATA_IP=metadata.address,
               OFFLINE_SITE_LOG=str(home / "off-loopback.log"),
               PYTHONPATH=os.pathsep.join(p for p in (OFFLINE_SITE, env.get("PYTHONPATH"))
                                          if p))
    env.update(extra)
    return env


def _off_loopback(env: dict) -> list[str]:
    path = env["OFFLINE_SITE_LOG"]
    return open(path).read().splitlines() if os.path.exists(path) else []


def _python(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def _write_spec(root, model: str, input_file: str, **options) -> str:
    """A local spec reading one demo shard (500 rows) as the run date's input."""
    day_dir = root / "events" / f"dt={DAY}"
    day_dir.mkdir(parents=True)
    shutil.copy(input_file, day_dir / "part-00000.tfrecord")
    spec = {"name": "local-scores", "model": model,
            "input": f"{root}/events/dt={{date}}/part-*.tfrecord",
            "output": f"{root}/scores/dt={{date}}", "batch_size": 256, "error_budget": 0.0,
            "options": {"key_field": "id", **options}, "runner": {"name": "local"}}
    path = root / "local.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory, demo_model_base, demo_data):
    """The same local job run once as `python -m jobs run SPEC --date D` and once as the
    `python -m pipeline` command line the spec makes for that date, each with its own
    hanging metadata server; with what each printed, wrote and connected to."""
    runs = {}
    for command in ("jobs", "pipeline"):
        root = tmp_path_factory.mktemp(f"{command}-startup")
        spec = _write_spec(root, demo_model_base, demo_data["tfrecord"][0])
        home = root / "home"
        home.mkdir()
        metadata = HangingMetadataServer()
        try:
            env = _user_env(home, metadata)
            if command == "jobs":
                args = ["-m", "jobs", "run", spec, "--date", DAY]
            else:
                args = ["-m", "pipeline", *pipeline_argv(load_spec(spec),
                                                          dt.date.fromisoformat(DAY))]
            done = _python(args, env)
            runs[command] = {"done": done, "connections": metadata.connections(),
                             "off_loopback": _off_loopback(env),
                             "output": root / "scores" / f"dt={DAY}"}
        finally:
            metadata.close()
    return runs


@pytest.mark.parametrize("command", ["jobs", "pipeline"])
def test_a_local_run_on_local_paths_asks_nobody_for_credentials(local_runs, command):
    run = local_runs[command]
    done = run["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run["output"] / "_SUCCESS").exists()
    manifest = json.loads((run["output"] / "manifest.json").read_text())
    assert manifest["counts"]["records_in"] == manifest["counts"]["predicted"] == 500
    assert run["connections"] == 0, "something looked up Google credentials (metadata server)"
    assert run["off_loopback"] == []


_LOOKUPS = textwrap.dedent("""\
    import socket
    import google.auth, google.auth.exceptions
    assert socket.getaddrinfo.__module__ == "sitecustomize"  # the guard is in place
    try:
        socket.getaddrinfo("metadata.google.internal", 80)
    except OSError as e:
        print("lookup refused" if "test guard" in str(e) else e)
    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        print("no credentials")
""")


def test_the_oracles_see_a_credential_lookup(tmp_path):
    """The same environment catches google.auth.default(), the lookup Beam's GCS and BigQuery
    clients make (the zero above is not a server nobody could reach), and the guard refuses
    and records a lookup off loopback."""
    metadata = HangingMetadataServer()
    try:
        env = _user_env(tmp_path, metadata, GCE_METADATA_TIMEOUT="1",
                        GCE_METADATA_DETECT_RETRIES="1")
        done = _python(["-c", _LOOKUPS], env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split("\n")[:2] == ["lookup refused", "no credentials"]
        assert metadata.connections() >= 1
        assert [line.split(" pid ")[0] for line in _off_loopback(env)] == \
            ["metadata.google.internal:80"]
    finally:
        metadata.close()


def test_jobs_run_prints_no_tensorflow_start_up_lines(local_runs):
    done = local_runs["jobs"]["done"]
    assert done.returncode == 0, done.stderr[-3000:]
    for line in done.stderr.splitlines():
        assert not TF_LOG_LINE.match(line), line
        assert "ERROR" not in line, line  # a healthy run has no error to report
        assert not any(c in line for c in CHATTER), line
    assert "INFO pipeline.build: plan:" in done.stderr  # the job's own lines stay
    assert f"{DAY}  ok" in done.stdout


@pytest.mark.parametrize("asked_by", ["TF_CPP_MIN_LOG_LEVEL=0", "options.verbose"])
def test_jobs_run_shows_them_when_asked(tmp_path, demo_model_base, demo_data, asked_by):
    """As `python -m pipeline` does: a user's own TensorFlow log level, or the spec's
    `verbose: true` (the pipeline's --verbose), shows TensorFlow's start-up lines."""
    verbose = {"verbose": True} if asked_by == "options.verbose" else {}
    spec = _write_spec(tmp_path, demo_model_base, demo_data["tfrecord"][0], **verbose)
    (tmp_path / "home").mkdir()
    metadata = HangingMetadataServer()
    try:
        level = {"TF_CPP_MIN_LOG_LEVEL": "0"} if not verbose else {}
        done = _python(["-m", "jobs", "run", spec, "--date", DAY],
                       _user_env(tmp_path / "home", metadata, **level))
    finally:
        metadata.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(c in done.stderr for c in CHATTER), done.stderr[-3000:]


@pytest.mark.parametrize("when", [["--date", "2026-02-30"],
                                  ["--backfill", "2026-03-02", "2026-03-01"]])
def test_a_bad_date_is_refused_before_tensorflow_is_imported(tmp_path, demo_model_base,
                                                             demo_data, when):
    """The quiet start comes after the checks: a mistyped date costs no TensorFlow import."""
    spec = _write_spec(tmp_path, demo_model_base, demo_data["tfrecord"][0])
    (tmp_path / "home").mkdir()
    metadata = HangingMetadataServer()
    try:
        done = _python(["-c", "import runpy, sys\n"
                              f"sys.argv = ['jobs', 'run', {spec!r}, *{when!r}]\n"
                              "try:\n    runpy.run_module('jobs', run_name='__main__')\n"
                              "except SystemExit as e:\n"
                              "    print('exit', e.code, 'tensorflow' in sys.modules)"],
                       _user_env(tmp_path / "home", metadata))
    finally:
        metadata.close()
    assert done.stdout.strip() == "exit 2 False", done.stderr[-3000:]
    assert done.stderr.startswith("error: "), done.stderr
