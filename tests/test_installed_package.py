"""Dataflow from an installed copy of this package (pip install, no checkout), built for real.

The project is pip-installed (no dependencies, offline) into a temp dir. A subprocess whose cwd
and PYTHONPATH lie outside the checkout, so only that installed copy is importable, builds a
Dataflow job with `python -m pipeline` to a template file, staging to the GCS emulator. The
test reads back the sdist Beam staged for the workers and pip-installs it the way a worker
does: the worker must get the launcher's installed files, byte for byte, and setup.py's pins.
A bare copy of the packages (neither a checkout nor installed) is refused in one line.
"""
import ast
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests import gcs_emulator
from tests.helpers import one_error_line

gcs = gcs_emulator.gcs  # the module's GCS emulator (a fixture)

REPO = Path(__file__).resolve().parents[1]
MARKER = "# this line exists only in the installed copy\n"

# Run in a subprocess with only the installed copy (and the network guard of
# tests/offline_site, which records any address off loopback) on its path: it checks which copy
# it imports, then runs the command.
OFFLINE_SITE = REPO / "tests" / "offline_site"
DRIVER = r'''
import json, sys
site, argv = sys.argv[1], sys.argv[2:]
import pipeline
assert pipeline.__file__.startswith(site + "/"), f"imported {pipeline.__file__}, not {site}"
from pipeline.__main__ import main
print("RESULT " + json.dumps({"code": main(argv)}))
'''


def _setup_py() -> dict:
    """name, version and install_requires of the project's setup.py, read from its source."""
    tree = ast.parse((REPO / "setup.py").read_text())
    assigned = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    kwargs = {k.arg: k.value for k in call.keywords}
    value = {key: ast.literal_eval(assigned[kwargs[key].id] if isinstance(kwargs[key], ast.Name)
                                   else kwargs[key])
             for key in ("name", "version", "install_requires")}
    assert value["install_requires"], "setup.py pins nothing?"
    return value


def _copy_sources(into: Path) -> None:
    """What `pip install` of a checkout sees: setup.py and the packages (no bytecode), copied so
    that the build leaves nothing (build/, egg-info) in the checkout."""
    into.mkdir()
    shutil.copy(REPO / "setup.py", into / "setup.py")
    for top in ("pipeline", "transforms", "jobs"):
        shutil.copytree(REPO / top, into / top,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _pip_install(source: str, target: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
         "--target", str(target), source],
        capture_output=True, text=True, timeout=300, cwd=str(target.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]


def _record(site: Path) -> dict[str, str]:
    """The package files an installation holds, from its RECORD: path -> sha256 (no bytecode,
    no metadata, no scripts); the packages are the dist-info's top_level.txt."""
    dist_info = next(site.glob("batch_predict-*.dist-info"))
    top = set((dist_info / "top_level.txt").read_text().split())
    with open(dist_info / "RECORD", newline="") as fh:
        rows = list(csv.reader(fh))
    return {path: digest for path, digest, _ in rows
            if path.split("/")[0] in top and "__pycache__" not in path.split("/")}


def _env(site: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(site), str(OFFLINE_SITE))),
               TF_CPP_MIN_LOG_LEVEL="2", OFFLINE_SITE_LOG=str(site.parent / "off-loopback.log"))
    env.pop("PYTHONHOME", None)
    return env


def _result(proc: subprocess.CompletedProcess, env: dict) -> dict:
    """The driver's RESULT, and the addresses off loopback the guard refused."""
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    log = Path(env["OFFLINE_SITE_LOG"])
    result["attempts"] = log.read_text().splitlines() if log.exists() else []
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """This project pip-installed into ROOT/site from a copy marked as not the checkout."""
    root = tmp_path_factory.mktemp("installed")
    _copy_sources(root / "src")
    with open(root / "src" / "transforms" / "__init__.py", "a") as fh:
        fh.write(MARKER)
    _pip_install(str(root / "src"), root / "site")
    (root / "cwd").mkdir()
    return root


@pytest.fixture(scope="module")
def job_from_installed_copy(installed, gcs, demo_model_base, demo_data):
    gcs.upload_dir(demo_model_base, "gs://bp-inst/model")
    gcs.upload_bytes("gs://bp-inst/in/part-00000.tfrecord",
                     Path(demo_data["tfrecord"][0]).read_bytes())
    gcs.create_bucket("bp-inst-out")
    site, job_file = installed / "site", installed / "job.json"
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(site),
         "--runner", "DataflowRunner", "--project", "emulated-project",
         "--region", "europe-west1", "--temp_location", "gs://bp-inst/tmp",
         "--staging_location", "gs://bp-inst/staging", "--template_location", str(job_file),
         "--model", "gs://bp-inst/model", "--input", "gs://bp-inst/in/part-*.tfrecord",
         "--output", "gs://bp-inst-out/scores", "--key_field", "id"],
        capture_output=True, text=True, env=(env := _env(site)), cwd=str(installed / "cwd"),
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _result(proc, env)
    assert result == {"code": 0, "attempts": []}, (result, proc.stderr[-3000:])
    staged = gcs.list("gs://bp-inst/staging")
    sdists = [n for n in staged if n.endswith("workflow.tar.gz")]
    assert len(sdists) == 1, staged
    return {"job": json.loads(job_file.read_text()), "stderr": proc.stderr,
            "sdist": gcs.read_bytes(f"gs://bp-inst/staging/{sdists[0]}"),
            "site": site, "root": installed}


def test_installed_copy_stages_its_own_files(job_from_installed_copy):
    """The staged sdist holds exactly the installed package files (modules and package data
    such as jobs/flex_template/*), as installed: not the checkout's, not a subset."""
    site = job_from_installed_copy["site"]
    tar = tarfile.open(fileobj=io.BytesIO(job_from_installed_copy["sdist"]))
    members = {m.name.split("/", 1)[1]: m for m in tar.getmembers()
               if m.isfile() and "/" in m.name}
    installed = _record(site)
    top = {path.split("/")[0] for path in installed}
    assert {path for path in members if path.split("/")[0] in top} == set(installed)
    for path in installed:
        assert tar.extractfile(members[path]).read() == (site / path).read_bytes(), path
    assert tar.extractfile(members["transforms/__init__.py"]).read().decode().endswith(MARKER)
    assert "setup.py" in members and "PKG-INFO" in members
    # the generated setup.py was only needed while the job was built
    setup_file = job_from_installed_copy["job"]["environment"]["sdkPipelineOptions"][
        "options"]["setup_file"]
    assert os.path.basename(setup_file) == "setup.py"
    assert not setup_file.startswith(str(REPO)) and not os.path.exists(setup_file)
    lines = [line for line in job_from_installed_copy["stderr"].splitlines()
             if "Dataflow workers get" in line]
    assert len(lines) == 1 and f"installed in {site}" in lines[0], lines


def test_worker_install_of_the_staged_sdist_matches_the_launcher(job_from_installed_copy):
    """What a worker does with workflow.tar.gz (pip install it): the same files with the same
    hashes as the launcher's install, and the name, version and pins of setup.py."""
    root = job_from_installed_copy["root"]
    sdist = root / "staged" / "workflow.tar.gz"
    sdist.parent.mkdir()
    sdist.write_bytes(job_from_installed_copy["sdist"])
    _pip_install(str(sdist), root / "worker")
    assert _record(root / "worker") == _record(job_from_installed_copy["site"])
    dist_info = next((root / "worker").glob("batch_predict-*.dist-info"))
    meta = Parser().parsestr((dist_info / "METADATA").read_text())
    expected = _setup_py()
    assert (meta["Name"], meta["Version"]) == (expected["name"], expected["version"])
    assert meta.get_all("Requires-Dist") == expected["install_requires"]
    assert meta.get_all("Provides-Extra") is None  # test tools are not worker requirements


def test_bare_copy_is_refused_in_one_line(tmp_path):
    """Packages copied without setup.py and not installed: nothing to build the workers' sdist
    from, unless --extra_package stages the package. (A batch-predict installed elsewhere, such
    as an editable install in this venv, is not this copy and must not be staged for it.)"""
    bare = tmp_path / "bare"
    _copy_sources(bare)
    (bare / "setup.py").unlink()
    (tmp_path / "cwd").mkdir()
    argv = ["--runner", "DataflowRunner", "--project", "p", "--region", "r",
            "--temp_location", "gs://t/tmp", "--model", "gs://t/m", "--input", "gs://t/in/*",
            "--output", "gs://t/out"]
    env = _env(bare)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(bare), "--verbose", *argv],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path / "cwd"),
                          timeout=300)
    result = _result(proc, env)
    assert result == {"code": 2, "attempts": []}, proc.stderr[-3000:]
    one_error_line(proc.stderr, "neither a checkout", "--setup_file", "--extra_package",
                   "--sdk_container_image")
    check = ("from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions\n"
             "from pipeline.dataflow import prepare_dataflow_options\n"
             "import sys\n"
             "options = PipelineOptions(sys.argv[1:])\n"
             "prepare_dataflow_options(options)\n"
             "print(options.view_as(SetupOptions).setup_file)\n")
    proc = subprocess.run([sys.executable, "-c", check, *argv[:8], "--extra_package",
                           "dist/batch_predict-0.1.0.tar.gz"], capture_output=True, text=True,
                          env=_env(bare), cwd=str(tmp_path / "cwd"), timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["None"], proc.stderr[-3000:]
