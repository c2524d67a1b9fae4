"""Job specs, date templating, runs per date (real pipeline, local files), flex-template
launch against a loopback fake of the Dataflow API, generated scheduler / Airflow / metadata.
"""
import datetime as dt
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions,
                                                  StandardOptions, WorkerOptions)

from jobs.__main__ import main as jobs_main
from jobs.spec import (SpecError, from_dict, load_spec, pipeline_argv, pipeline_option_names,
                       render)
from jobs.template_metadata import render_metadata
from pipeline.options import BatchPredictOptions
from pipeline.provenance import parse_labels
from tests.gcs_emulator import deny_off_loopback, gcs, loopback_only  # noqa: F401
from tests.helpers import assert_close, by_key, expected_outputs, predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "jobs", "nightly_scores.yaml")
DAY = dt.date(2026, 3, 1)


# -- spec and templating ---------------------------------------------------------------------
def test_date_templates_render():
    assert render("gs://e/dt={date}/h={date-1d}/{date+2d}/{date-1d:%Y/%m/%d}", DAY) == \
        "gs://e/dt=2026-03-01/h=2026-02-28/2026-03-03/2026/02/28"
    assert render("gs://e/{date-366d:%Y%m%d}/x", dt.date(2024, 12, 31)) == "gs://e/20231231/x"


def test_example_spec_becomes_the_pipeline_options():
    spec = load_spec(EXAMPLE)
    options = PipelineOptions(pipeline_argv(spec, DAY))
    ours = options.view_as(BatchPredictOptions)
    assert (ours.model, ours.input, ours.output) == (
        "gs://example-models/ctr", "gs://example-events/dt=2026-02-28/part-*.tfrecord.gz",
        "gs://example-scores/ctr/dt=2026-02-28")
    assert (ours.batch_size, ours.max_error_rate, ours.overwrite) == (2048, 0.01, True)
    assert (ours.key_field, ours.output_format) == ("id", "jsonl")
    gcp = options.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location, gcp.job_name) == (
        "example-project", "europe-west1", "gs://example-dataflow/tmp", "nightly-scores-20260301")
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(WorkerOptions).machine_type == "n2-standard-4"
    assert options.view_as(WorkerOptions).max_num_workers == 20
    assert parse_labels(options) == {"job": "nightly-scores", "run_date": "2026-03-01"}
    assert spec.schedule.cron == "30 2 * * *" and spec.schedule.time_zone == "Europe/Berlin"


def _example_doc() -> dict:
    with open(EXAMPLE) as fh:
        return yaml.safe_load(fh)


@pytest.mark.parametrize("change, message", [
    ({"modle": "x"}, "unknown key(s) modle"),
    ({"name": "Nightly_Scores"}, "name 'Nightly_Scores' must be"),
    ({"input": "gs://e/dt={date-1}/*"}, "input: cannot read the date template '{date-1}'"),
    ({"options": {"keyfield": "id"}}, "options: unknown pipeline option(s) keyfield"),
    ({"options": {"overwrite": True}}, "options: overwrite are set by the spec's own keys"),
    ({"error_budget": 5}, "error_budget must be a fraction"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"runner": {"name": "DataflowRunner", "options": {"project": "p", "region": "r"}}},
     "runner.options: --runner DataflowRunner needs --temp_location"),
    ({"runner": {"name": "DataflowRunner", "options": {"project": "p", "region": "r",
                                                        "temp_location": "/tmp/t"}}},
     "runner.options: --temp_location /tmp/t must be a gs:// path for DataflowRunner"),
    ({"runner": {"name": "DataflowRunner", "options": {"project": "p", "region": "r",
                                                        "temp_location": "gs://t/tmp",
                                                        "max_num_worker": 20}}},
     "runner.options: unknown option --max_num_worker; did you mean --max_num_workers?"),
    ({"runner": {"name": "local", "options": {"direct_num_workers": "two"}}},
     "runner.options: --direct_num_workers: invalid int value: 'two'"),
    ({"options": {"key_dtype": "int32"}}, "options: --key_dtype: invalid choice: 'int32'"),
    ({"runner": "SparkRunner"}, "runner.name 'SparkRunner' is not one of"),
    ({"schedule": {"cron": "30 2 * *"}}, "schedule.cron '30 2 * *' must have 5 fields"),
    ({"schedule": {"cron": "30 2 * * *", "time_zone": "Mars/Olympus"}},
     "schedule.time_zone 'Mars/Olympus' is not an IANA time zone"),
])
def test_bad_specs_fail_with_one_message_naming_the_key(change, message):
    doc = _example_doc()
    doc.update(change)
    with pytest.raises(SpecError) as info:
        from_dict(doc)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_example_doc(), "error_budget": "lots"}))
    assert jobs_main(["run", str(bad), "--date", "2026-03-01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}: error_budget must be a fraction of records between 0 and 1 "
                   "(e.g. 0.01), got 'lots'"]


def test_metadata_json_is_exactly_the_pipeline_options():
    with open(os.path.join(REPO, "jobs", "flex_template", "metadata.json")) as fh:
        committed = fh.read()
    assert committed == render_metadata(), "regenerate: python -m jobs metadata > ..."
    params = json.loads(committed)["parameters"]
    assert {p["name"] for p in params} == pipeline_option_names()
    required = {p["name"] for p in params if not p["isOptional"]}
    assert required == {"model", "output"}  # input, or input_query
    assert all(p["helpText"] for p in params)


# -- running dates for real ------------------------------------------------------------------
@pytest.fixture(scope="module")
def dated_inputs(demo_data, tmp_path_factory):
    """Two run dates' worth of input: the demo's shard 0 for 03-01, shard 2 for 03-02."""
    root = tmp_path_factory.mktemp("events")
    rows = {}
    for day, shard in (("2026-03-01", 0), ("2026-03-02", 2)):
        os.makedirs(root / f"dt={day}")
        shutil.copy(demo_data["tfrecord"][shard], root / f"dt={day}" / "part-00000.tfrecord")
        rows[day] = demo_data["rows"][shard * 500:(shard + 1) * 500]
    return {"root": str(root), "rows": rows}


@pytest.fixture
def local_spec(tmp_path, demo_model_base, dated_inputs):
    spec = {"name": "local-scores", "model": demo_model_base,
            "input": f"{dated_inputs['root']}/dt={{date}}/part-*.tfrecord",
            "output": f"{tmp_path}/scores/dt={{date}}", "batch_size": 256,
            "error_budget": 0.0, "options": {"key_field": "id"}, "runner": {"name": "local"}}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(spec))
    return {"path": str(path), "out": f"{tmp_path}/scores"}


def _files(out_dir: str) -> dict[str, bytes]:
    return {os.path.relpath(p, out_dir): open(p, "rb").read()
            for p in glob.glob(os.path.join(out_dir, "**"), recursive=True)
            if os.path.isfile(p)}


def test_backfill_then_an_idempotent_rerun(local_spec, dated_inputs, demo_model, loopback_only):
    assert jobs_main(["run", local_spec["path"], "--backfill", "2026-03-01",
                      "2026-03-02"]) == 0
    for day, rows in dated_inputs["rows"].items():
        out = f"{local_spec['out']}/dt={day}"
        expected = expected_outputs(demo_model, rows)
        got = by_key(predictions(out))
        assert len(got) == len(rows)
        for i, row in enumerate(rows):
            assert_close(got[row["id"]]["score"], expected["score"][i])
        manifest = json.load(open(f"{out}/manifest.json"))
        assert manifest["run_date"] == day and manifest["job"] == "local-scores"
        src = os.path.join(dated_inputs["root"], f"dt={day}", "part-00000.tfrecord")
        assert manifest["inputs"] == [{"path": src, "bytes": os.path.getsize(src)}]
        assert manifest["counts"]["records_in"] == manifest["counts"]["predicted"] == 500
        assert manifest["model"]["version"] == "1700000000"
        assert manifest["code_version"].startswith("0.1.0")
        assert os.path.exists(f"{out}/_SUCCESS")

    first_out = f"{local_spec['out']}/dt=2026-03-01"
    before = _files(first_out)
    assert jobs_main(["run", local_spec["path"], "--date", "2026-03-01"]) == 0
    after = _files(first_out)
    assert set(after) == set(before)  # replaced, nothing left over, nothing added
    assert not glob.glob(os.path.join(first_out, ".tmp-*"))
    old_rows = [json.loads(line) for name, data in before.items()
                if name.startswith("predictions-") for line in data.splitlines()]
    new_rows = [json.loads(line) for name, data in after.items()
                if name.startswith("predictions-") for line in data.splitlines()]
    assert by_key(new_rows) == by_key(old_rows)
    assert json.loads(after["manifest.json"])["run_id"] != \
        json.loads(before["manifest.json"])["run_id"]


def test_flex_entry_point_runs_the_pipeline_locally(demo_model_base, dated_inputs, tmp_path):
    """jobs/flex_template/main.py as the template launcher runs it: --name=value arguments,
    on/off options as true/false."""
    out = tmp_path / "flex_out"
    out.mkdir()
    (out / "predictions-00000-of-00001.jsonl").write_text('{"stale": true}\n')
    # as on the launcher VM: no TF_CPP_MIN_LOG_LEVEL of the user's
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", "flex_template", "main.py"),
         f"--model={demo_model_base}",
         f"--input={dated_inputs['root']}/dt=2026-03-02/part-*.tfrecord",
         f"--output={out}", "--overwrite=true", "--key_field=id", "--batch_size=500"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.exists(out / "_SUCCESS")
    rows = predictions(str(out))
    assert len(rows) == 500 and "stale" not in rows[0]
    from pipeline.run import TENSORFLOW_START_UP_CHATTER
    assert not [line for line in proc.stderr.splitlines()
                if "E0000" in line or any(c in line for c in TENSORFLOW_START_UP_CHATTER)]


# -- launching through the Dataflow API ------------------------------------------------------
class _FakeDataflow(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.calls.append({"path": self.path, "headers": dict(self.headers),
                                  "body": json.loads(body)})
        job = {"id": "2026-03-01_00_00_00-123", "projectId": "example-project",
               "name": json.loads(body)["launchParameter"]["jobName"],
               "location": "europe-west1"}
        data = json.dumps({"job": job}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_dataflow():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeDataflow)
    server.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_launch_sends_the_flex_template_request(fake_dataflow, loopback_only, capsys):
    endpoint = f"http://127.0.0.1:{fake_dataflow.server_address[1]}"
    assert jobs_main(["launch", EXAMPLE, "--date", "2026-03-01",
                      "--api_endpoint", endpoint]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "2026-03-01_00_00_00-123"
    [call] = fake_dataflow.calls
    assert call["path"].split("?")[0] == \
        "/v1b3/projects/example-project/locations/europe-west1/flexTemplates:launch"
    assert "Authorization" not in call["headers"]  # no token over plain http
    launch = call["body"]["launchParameter"]
    assert launch["jobName"] == "nightly-scores-20260301"
    assert launch["containerSpecGcsPath"] == \
        "gs://example-dataflow/templates/batch-predict-0.1.0.json"
    assert launch["parameters"] == {
        "model": "gs://example-models/ctr",
        "input": "gs://example-events/dt=2026-02-28/part-*.tfrecord.gz",
        "output": "gs://example-scores/ctr/dt=2026-02-28", "batch_size": "2048",
        "max_error_rate": "0.01", "overwrite": "true", "key_field": "id",
        "output_format": "jsonl"}
    assert set(launch["parameters"]) <= pipeline_option_names()
    env = launch["environment"]
    assert env["maxWorkers"] == 20 and env["machineType"] == "n2-standard-4"
    assert env["tempLocation"] == "gs://example-dataflow/tmp"
    assert env["additionalExperiments"] == ["use_runner_v2"]
    assert env["sdkContainerImage"].endswith("/batch-predict:0.1.0")
    assert env["additionalUserLabels"] == {"job": "nightly-scores", "run_date": "2026-03-01"}


def test_launch_needs_a_flex_template(tmp_path, capsys):
    doc = _example_doc()
    del doc["flex_template"]
    path = tmp_path / "noflex.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert jobs_main(["launch", str(path), "--date", "2026-03-01", "--print_request"]) == 2
    assert "flex_template.spec is needed to launch" in capsys.readouterr().err


# -- generated wiring ------------------------------------------------------------------------
def test_scheduler_definition_runs_the_same_launch(capsys):
    assert jobs_main(["schedule", EXAMPLE]) == 0
    definition = json.loads(capsys.readouterr().out)
    sched = definition["scheduler_job"]
    assert (sched["schedule"], sched["timeZone"]) == ("30 2 * * *", "Europe/Berlin")
    container = definition["cloud_run_job"]["template"]["template"]["containers"][0]
    assert container["args"] == ["-m", "jobs", "launch", "/template/jobs/nightly_scores.yaml",
                                 "--date", "today"]
    assert container["image"] == load_spec(EXAMPLE).flex_template.image
    assert sched["httpTarget"]["uri"] == (
        "https://run.googleapis.com/v2/projects/example-project/locations/europe-west1/jobs/"
        "nightly-scores-launcher:run")
    assert any(c.startswith("gcloud scheduler jobs create http nightly-scores ")
               for c in definition["gcloud"])


def test_airflow_dag_source_compiles(capsys):
    assert jobs_main(["airflow-dag", EXAMPLE, "--spec_dir", "/opt/airflow/specs"]) == 0
    source = capsys.readouterr().out
    compile(source, "batch_predict_dag.py", "exec")
    assert "python -m jobs launch /opt/airflow/specs/nightly_scores.yaml --date {{ ds }}" \
        in source
    assert "schedule='30 2 * * *'" in source


def test_flex_image_versions_match_setup_py():
    """Dockerfile (launcher = worker image) pins == setup.py pins == requirements.lock."""
    import re
    setup_src = open(os.path.join(REPO, "setup.py")).read()
    required = re.findall(r'"([A-Za-z0-9_.\-]+)(?:\[[a-z,]+\])?==([^"]+)"',
                          setup_src.split("TEST = [")[0])
    lock = dict(line.strip().split("==") for line in
                open(os.path.join(REPO, "requirements.lock")) if "==" in line)
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    for name, version in required:
        assert lock[name.lower().replace("_", "-")] == version, name
    dockerfile = open(os.path.join(REPO, "jobs", "flex_template", "Dockerfile")).read()
    beam = dict(required)["apache-beam"]
    assert f"ARG BEAM_VERSION={beam}" in dockerfile
    assert f"ARG PYTHON_VERSION={sys.version_info.major}.{sys.version_info.minor}" in dockerfile
    assert "pip install --no-cache-dir -r requirements.lock" in dockerfile
    assert 'FLEX_TEMPLATE_PYTHON_PY_FILE="${WORKDIR}/jobs/flex_template/main.py"' in dockerfile


def test_run_on_dataflow_builds_the_job_from_the_spec(gcs, demo_model_base, dated_inputs,
                                                      tmp_path):
    """`jobs run` with runner DataflowRunner: the real DataflowRunner builds the job offline
    (template file; staging on the GCS emulator) with the spec's rendered options."""
    gcs.upload_dir(demo_model_base, "gs://bp-jobs/model")
    gcs.upload_dir(os.path.join(dated_inputs["root"], "dt=2026-03-01"),
                   "gs://bp-jobs/events/dt=2026-02-28")
    gcs.create_bucket("bp-jobs-out")
    doc = _example_doc()
    del doc["runner"]["options"]["service_account_email"]
    doc.update({"model": "gs://bp-jobs/model",
                "input": "gs://bp-jobs/events/dt={date-1d}/part-*.tfrecord",
                "output": "gs://bp-jobs-out/scores/dt={date-1d}"})
    job_file = tmp_path / "job.json"
    doc["runner"]["options"].update({"temp_location": "gs://bp-jobs/tmp",
                                     "staging_location": "gs://bp-jobs/staging",
                                     "template_location": str(job_file)})
    path = tmp_path / "dataflow.yaml"
    path.write_text(yaml.safe_dump(doc))
    with deny_off_loopback() as attempts:
        assert jobs_main(["run", str(path), "--date", "2026-03-01"]) == 0
    assert not attempts
    job = json.loads(job_file.read_text())
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["input"] == "gs://bp-jobs/events/dt=2026-02-28/part-*.tfrecord"
    assert options["output"] == "gs://bp-jobs-out/scores/dt=2026-02-28"
    assert options["overwrite"] is True and options["max_error_rate"] == 0.01
    assert job["name"] == "nightly-scores-20260301"
    assert job["labels"] == {"job": "nightly-scores", "run_date": "2026-03-01"}
    assert job["environment"]["workerPools"][0]["autoscalingSettings"]["maxNumWorkers"] == 20
