"""Shared fixtures: real tiny SavedModels and real input files, built once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")  # never probe the GCE metadata server

import pytest  # noqa: E402

from pipeline import demo  # noqa: E402


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
