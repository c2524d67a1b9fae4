"""Packaging for batch-predict.

Why this file exists beyond `pip install -e .`: Dataflow workers install the job's code from the
sdist this file builds (`--setup_file ./setup.py`, the default for DataflowRunner runs from a
checkout). The versions pinned below must match the worker image, otherwise a SavedModel
exported with one TensorFlow is loaded by another, or Beam's worker harness differs from the
launcher's:
- plain DataflowRunner runs use Dataflow's image for the launcher's Python and Beam,
  gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:2.77.0, and pip-install these pins on it;
- flex template runs use jobs/flex_template/Dockerfile (launcher = worker image), which installs
  requirements.lock, the same pins.
The full transitive pin set for local runs and CI is `requirements.lock` (pip -c).
"""
from setuptools import find_packages, setup

REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "google-cloud-storage==3.17.1",
    "google-crc32c==1.9.0",
    "orjson==3.13.0",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    "PyYAML==6.0.3",
    # the run report's charts (OUTPUT/report.html), imported only when a report is written
    "matplotlib==3.10.9",
]

TEST = [
    "pytest==9.2.0",
    "hypothesis==6.170.15",
    "gcp-storage-emulator==2026.7.19",
    "google-cloud-dataflow-client==0.13.0",
    # BigQuery on loopback: the emulator and the DuckDB extensions it would otherwise download
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "duckdb-extension-avro==1.5.5",
]

setup(
    name="batch-predict",
    version="0.1.0",
    description="Batch prediction for TensorFlow SavedModels on Apache Beam / Dataflow",
    packages=find_packages(include=["pipeline", "pipeline.*", "transforms", "transforms.*",
                                    "jobs", "jobs.*"]),
    package_data={"jobs": ["*.yaml", "flex_template/*"]},
    python_requires=">=3.10,<3.13",
    install_requires=REQUIRED,
    extras_require={"test": TEST},
    entry_points={"console_scripts": ["batch-predict=pipeline.__main__:main"]},
)
