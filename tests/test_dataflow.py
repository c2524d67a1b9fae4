"""The Dataflow job, built for real and offline.

DataflowRunner writes the complete job (what it would send to the Dataflow API) to a template
file, and really uploads its staged files (the sdist built from setup.py, the pipeline proto,
the pickled main session...) to the GCS emulator. The test reads both back and checks what a
worker would get.
"""
import io
import json
import tarfile

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipeline.dataflow import prepare_dataflow_options, repo_setup_file
from transforms.errors import OptionsError
from pipeline.run import main, run
from tests.gcs_emulator import deny_off_loopback, gcs  # noqa: F401  (fixture)

EXPECTED_STEPS = ["Read", "ParseWithSpec", "Predict", "WritePredictions", "WriteErrors",
                  "WriteMetrics", "Finalize"]


@pytest.fixture(scope="module")
def dataflow_job(gcs, demo_model_base, demo_data, tmp_path_factory):
    gcs.upload_dir(demo_model_base, "gs://bp-df/model")
    gcs.upload_bytes("gs://bp-df/in/part-00000.tfrecord",
                     open(demo_data["tfrecord"][0], "rb").read())
    gcs.create_bucket("bp-df-out")
    job_file = str(tmp_path_factory.mktemp("dataflow") / "job.json")
    argv = ["--runner", "DataflowRunner", "--project", "emulated-project",
            "--region", "europe-west1", "--temp_location", "gs://bp-df/tmp",
            "--staging_location", "gs://bp-df/staging", "--template_location", job_file,
            "--machine_type", "n2-standard-4", "--max_num_workers", "7",
            "--experiments", "use_runner_v2", "--experiments", "no_use_multiple_sdk_containers",
            "--model", "gs://bp-df/model", "--input", "gs://bp-df/in/part-*.tfrecord",
            "--output", "gs://bp-df-out/scores", "--key_field", "id",
            "--split_bytes", "4096",  # the input's 120 kB in ranges: the splittable read
            "--labels", '{"job": "nightly-scores", "run_date": "2026-03-01"}']
    with deny_off_loopback() as attempts:
        result, plan = run(argv)
    assert not attempts, f"building the Dataflow job tried to leave loopback: {attempts}"
    with open(job_file) as fh:
        job = json.load(fh)
    return {"job": job, "plan": plan, "gcs": gcs}


def _pipeline_options(job) -> dict:
    return job["environment"]["sdkPipelineOptions"]["options"]


def test_job_options_are_as_given(dataflow_job):
    job = dataflow_job["job"]
    options = _pipeline_options(job)
    assert options["setup_file"] == repo_setup_file()  # defaulted to this checkout's setup.py
    assert options["machine_type"] == "n2-standard-4"
    assert options["max_num_workers"] == 7
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(options["experiments"])
    assert options["model"] == "gs://bp-df/model"
    pool = job["environment"]["workerPools"][0]
    assert pool["machineType"] == "n2-standard-4"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 7
    assert set(job["environment"]["experiments"]) >= {"use_runner_v2"}
    assert job["labels"] == {"job": "nightly-scores", "run_date": "2026-03-01"}


def test_workers_run_the_beam_image_that_setup_py_pins(dataflow_job):
    """The documented worker image: Dataflow's Beam image for this Python and the Beam version
    pinned in setup.py (which the sdist then installs on it)."""
    import re
    import sys

    import apache_beam
    pinned = re.search(r'"apache-beam\[gcp\]==([^"]+)"', open(repo_setup_file()).read())[1]
    assert apache_beam.__version__ == pinned
    pool = dataflow_job["job"]["environment"]["workerPools"][0]
    assert pool["sdkHarnessContainerImages"][0]["containerImage"] == (
        f"gcr.io/cloud-dataflow/v1beta3/beam_python{sys.version_info.major}."
        f"{sys.version_info.minor}_sdk:{pinned}")


def test_staged_sdist_holds_the_packages(dataflow_job):
    gcs = dataflow_job["gcs"]
    staged = gcs.list("gs://bp-df/staging")
    sdists = [n for n in staged if n.endswith("workflow.tar.gz")]
    assert len(sdists) == 1, staged
    tar = tarfile.open(fileobj=io.BytesIO(gcs.read_bytes(f"gs://bp-df/staging/{sdists[0]}")))
    names = tar.getnames()
    for module in ("pipeline/run.py", "pipeline/build.py", "transforms/predict.py",
                   "transforms/staging.py", "setup.py"):
        assert any(n.endswith("/" + module) for n in names), (module, names[:20])
    # the job's package list points at the uploaded files
    packages = dataflow_job["job"]["environment"]["workerPools"][0]["packages"]
    assert any(p["name"] == "workflow.tar.gz" for p in packages)


def test_pipeline_has_the_named_steps(dataflow_job):
    from apache_beam.portability.api import beam_runner_api_pb2
    gcs = dataflow_job["gcs"]
    staged = gcs.list("gs://bp-df/staging")
    proto_names = [n for n in staged if n.endswith("pipeline.pb")]
    assert proto_names, staged
    proto = beam_runner_api_pb2.Pipeline.FromString(
        gcs.read_bytes(f"gs://bp-df/staging/{proto_names[0]}"))
    top = [proto.components.transforms[t].unique_name
           for t in proto.components.transforms[proto.root_transform_ids[0]].subtransforms]
    for step in EXPECTED_STEPS:
        assert step in top, top


def test_missing_dataflow_flags_fail_fast_with_one_message(capsys):
    code = main(["--runner", "DataflowRunner", "--project", "p", "--model", "/nowhere",
                 "--input", "/nowhere/*", "--output", "/tmp/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --runner DataflowRunner needs --region and --temp_location (e.g. --project "
        "my-project --region europe-west1 --temp_location gs://my-bucket/tmp)"]


def test_local_temp_location_is_refused():
    with pytest.raises(OptionsError, match="--temp_location /tmp/t must be a gs:// path"):
        run(["--runner", "DataflowRunner", "--project", "p", "--region", "r",
             "--temp_location", "/tmp/t", "--model", "/nowhere", "--input", "/x/*",
             "--output", "/tmp/x"])


def test_setup_file_defaults_to_this_checkout_unless_the_image_has_the_code():
    base = ["--runner", "DataflowRunner", "--project", "p", "--region", "r",
            "--temp_location", "gs://t/tmp"]
    options = PipelineOptions(base)
    prepare_dataflow_options(options)
    assert options.view_as(SetupOptions).setup_file == repo_setup_file()
    options = PipelineOptions(base + ["--sdk_container_image", "europe-docker.pkg.dev/p/r/i:1"])
    prepare_dataflow_options(options)
    assert options.view_as(SetupOptions).setup_file is None
    with pytest.raises(OptionsError, match="--setup_file /no/setup.py does not exist"):
        prepare_dataflow_options(PipelineOptions(base + ["--setup_file", "/no/setup.py"]))


def test_read_step_is_splittable(dataflow_job):
    """On Dataflow the read is a splittable DoFn (the service splits its block ranges up front
    and, while it runs, rebalances them). The input's 124 kB in ranges of 4 kB are 31 reads for
    7 workers x 4 vCPUs: enough, so record batches are not reshuffled before the model."""
    from apache_beam.portability.api import beam_runner_api_pb2
    gcs = dataflow_job["gcs"]
    name = next(n for n in gcs.list("gs://bp-df/staging") if n.endswith("pipeline.pb"))
    proto = beam_runner_api_pb2.Pipeline.FromString(gcs.read_bytes(f"gs://bp-df/staging/{name}"))
    by_name = {t.unique_name: t for t in proto.components.transforms.values()}

    def pardo(step):  # the ParDo itself, under its composite
        parts = [n for n, t in by_name.items() if n.startswith(step + "/")
                 and t.spec.urn == "beam:transform:pardo:v1"]
        assert len(parts) == 1, parts
        return beam_runner_api_pb2.ParDoPayload.FromString(by_name[parts[0]].spec.payload)

    assert pardo("Read/ReadBlocks").restriction_coder_id  # what makes a ParDo splittable
    assert not pardo("ParseWithSpec").restriction_coder_id
    assert not dataflow_job["plan"].reshuffle and "SpreadBatches" not in by_name
