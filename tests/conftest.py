"""Shared fixtures: real tiny SavedModels and real input files, built once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")  # never probe the GCE metadata server

import tempfile  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from pipeline import demo  # noqa: E402

# Hypothesis: no example database in the work tree; in CI a fixed seed (the same examples on
# every run, so a red CI is reproducible), locally fresh examples each run. The health checks
# that fire on a loaded 2-core machine (slow data generation) are not about the product.
_HYPOTHESIS = dict(database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", derandomize=True, **_HYPOTHESIS)
settings.register_profile("dev", **_HYPOTHESIS)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


_HYPOTHESIS_HOME: list = []


def pytest_configure(config):
    """Hypothesis caches what it learns under .hypothesis/ in the working directory, from the
    moment tests are collected: give it a temporary home for the session instead."""
    from hypothesis.configuration import set_hypothesis_home_dir
    _HYPOTHESIS_HOME.append(tempfile.mkdtemp(prefix="hypothesis-"))
    set_hypothesis_home_dir(_HYPOTHESIS_HOME[-1])


def pytest_unconfigure(config):
    import shutil
    for home in _HYPOTHESIS_HOME:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def private_temp_dir(tmp_path_factory):
    """Everything the code under test puts in "the system temp dir" (staged models, Beam's
    staging, TensorFlow's autograph files), here and in worker subprocesses, lands under this
    session's pytest tmp dir instead of /tmp."""
    path = str(tmp_path_factory.mktemp("system-tmp"))
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = path
    tempfile.tempdir = path
    yield path
    tempfile.tempdir = saved[1]
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]


@pytest.fixture(scope="session")
def demo_model_base(tmp_path_factory):
    """An export base dir holding the demo model as version 1700000000 (plus a temp- dir)."""
    base = tmp_path_factory.mktemp("demo_model")
    demo.build_demo_model(str(base / "1700000000"))
    (base / "temp-1800000000").mkdir()  # an unfinished export: must be ignored
    return str(base)


@pytest.fixture(scope="session")
def demo_model_dir(demo_model_base):
    return os.path.join(demo_model_base, "1700000000")


@pytest.fixture(scope="session")
def demo_model(demo_model_dir):
    """The loaded demo model, to compute expected predictions independently of the pipeline."""
    import tensorflow as tf
    return tf.saved_model.load(demo_model_dir)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """1,500 rows as 3 TFRecord shards (shard 1 gzip) and 3 CSV shards, with their rows."""
    root = tmp_path_factory.mktemp("demo_data")
    files = demo.write_demo_data(str(root), rows=1500, shards=3)
    rows = []
    for s in range(3):
        rows += demo.demo_rows(500, seed=1 + s, start_id=s * 500)
    return {"dir": str(root), "rows": rows, **files}


# --- no test reaches the network beyond loopback -------------------------------------------
import socket  # noqa: E402

from tests.offline_site.sitecustomize import is_loopback as _is_loopback  # noqa: E402

NETWORK_ATTEMPTS: list = []


def _guard(address):
    if isinstance(address, tuple) and address and not _is_loopback(address[0]):
        NETWORK_ATTEMPTS.append(address)
        raise OSError(f"tests may only reach loopback; refused {address!r}")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard(address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard(address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    _guard((host,))
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
socket.getaddrinfo = _getaddrinfo


@pytest.fixture
def network_attempts():
    """Non-loopback connection attempts made (and refused) during the test."""
    start = len(NETWORK_ATTEMPTS)
    yield lambda: NETWORK_ATTEMPTS[start:]
