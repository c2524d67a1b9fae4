"""Cloud Scheduler wiring, generated from the job spec: `python -m jobs schedule SPEC`.

Cloud Scheduler sends a fixed request body, but every run needs its own date in the pipeline's
paths. So the scheduler does not call flexTemplates:launch itself: it runs a Cloud Run job
(the flex template image, which holds this package and the specs) whose command is the very
same `python -m jobs launch SPEC --date today`, with "today" taken in the schedule's time zone.
The output is the Cloud Run job and the Cloud Scheduler job as API resources, plus the gcloud
commands that create them.
"""
from __future__ import annotations

import base64
import json
import os
import shlex

from jobs.spec import JobSpec, SpecError

__all__ = ["SPEC_DIR_IN_IMAGE", "scheduler_definition", "format_definition"]

SPEC_DIR_IN_IMAGE = "/template/jobs"  # where the Dockerfile copies jobs/ (WORKDIR /template)


def _launcher_args(spec: JobSpec) -> list[str]:
    spec_file = os.path.basename(spec.source or f"{spec.name}.yaml")
    return ["-m", "jobs", "launch", f"{SPEC_DIR_IN_IMAGE}/{spec_file}", "--date", "today"]


def scheduler_definition(spec: JobSpec, service_account: str | None = None) -> dict:
    if spec.schedule is None:
        raise SpecError(f"{spec.source or spec.name}: no schedule (add schedule.cron)")
    if spec.flex_template is None or not spec.flex_template.image:
        raise SpecError(f"{spec.source or spec.name}: flex_template.image is needed: the "
                        "scheduled launcher runs in the flex template image")
    project, region = spec.runner_option("project"), spec.runner_option("region")
    if not (project and region):
        raise SpecError("runner.options.project and runner.options.region are needed")
    account = service_account or spec.runner_option("service_account_email")
    run_job = f"{spec.name}-launcher"
    run_job_resource = {
        "name": f"projects/{project}/locations/{region}/jobs/{run_job}",
        "template": {"template": {
            "containers": [{"image": spec.flex_template.image, "command": ["python"],
                            "args": _launcher_args(spec)}],
            "maxRetries": 1, "timeout": "600s",
            **({"serviceAccount": account} if account else {}),
        }},
    }
    uri = f"https://run.googleapis.com/v2/projects/{project}/locations/{region}/jobs/{run_job}:run"
    scheduler_job = {
        "name": f"projects/{project}/locations/{region}/jobs/{spec.name}",
        "description": f"batch-predict {spec.name}: {spec.description}".strip(": "),
        "schedule": spec.schedule.cron, "timeZone": spec.schedule.time_zone,
        "httpTarget": {"uri": uri, "httpMethod": "POST",
                       "body": base64.b64encode(b"{}").decode(),
                       "headers": {"Content-Type": "application/json"},
                       **({"oauthToken": {"serviceAccountEmail": account}} if account else {})},
        "retryConfig": {"retryCount": 1},
    }
    q = shlex.quote
    commands = [
        f"gcloud run jobs create {run_job} --project {q(project)} --region {q(region)} "
        f"--image {q(spec.flex_template.image)} --command python "
        f"--args={q(','.join(_launcher_args(spec)))} --max-retries 1 --task-timeout 600s"
        + (f" --service-account {q(account)}" if account else ""),
        f"gcloud scheduler jobs create http {spec.name} --project {q(project)} "
        f"--location {q(region)} --schedule {q(spec.schedule.cron)} "
        f"--time-zone {q(spec.schedule.time_zone)} --uri {q(uri)} --http-method POST "
        f"--message-body '{{}}'"
        + (f" --oauth-service-account-email {q(account)}" if account else ""),
    ]
    return {"cloud_run_job": run_job_resource, "scheduler_job": scheduler_job,
            "gcloud": commands}


def format_definition(definition: dict) -> str:
    return json.dumps(definition, indent=2)
