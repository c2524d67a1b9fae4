"""`python -m jobs launch SPEC --date D`: start the flex template through the Dataflow API.

The request carries exactly the pipeline's own options for that date (as the flex template's
parameters, see flex_template/metadata.json) plus the runtime environment from the spec's
runner options. It is sent with `google-cloud-dataflow-client` (REST). Credentials are the
ambient Google credentials; they are never logged. A plain-http endpoint (a local fake or
emulator) gets anonymous credentials: tokens are never sent over plain http.
"""
from __future__ import annotations

import datetime as dt
import logging

from jobs.spec import JobSpec, SpecError, dataflow_job_name, pipeline_parameters, run_labels

__all__ = ["launch_request", "make_client", "launch"]

_LOG = logging.getLogger(__name__)

# runner option -> FlexTemplateRuntimeEnvironment field
_ENVIRONMENT_FIELDS = {
    "temp_location": "temp_location", "staging_location": "staging_location",
    "machine_type": "machine_type", "max_num_workers": "max_workers",
    "num_workers": "num_workers", "service_account_email": "service_account_email",
    "network": "network", "subnetwork": "subnetwork", "zone": "worker_zone",
    "worker_region": "worker_region", "dataflow_kms_key": "kms_key_name",
    "disk_size_gb": "disk_size_gb", "sdk_container_image": "sdk_container_image",
}
_NOT_ENVIRONMENT = {"project", "region", "experiments", "job_name", "setup_file",
                    "dataflow_endpoint"}


def _param_value(value) -> str:
    if value is True:
        return "true"
    return str(value)


def launch_request(spec: JobSpec, day: dt.date) -> dict:
    """The LaunchFlexTemplateRequest for one run date, as a plain dict."""
    if spec.flex_template is None:
        raise SpecError(f"{spec.source or spec.name}: flex_template.spec is needed to launch "
                        "(the gs:// path written by `gcloud dataflow flex-template build`)")
    if not spec.is_dataflow:
        raise SpecError(f"{spec.source or spec.name}: launch needs runner.name DataflowRunner "
                        "(with its project, region and temp_location)")
    opts = spec.runner_options
    unknown = sorted(set(opts) - set(_ENVIRONMENT_FIELDS) - _NOT_ENVIRONMENT)
    if unknown:
        raise SpecError(f"runner.options {', '.join(unknown)} cannot be set on a flex template "
                        f"launch; supported: {', '.join(sorted(_ENVIRONMENT_FIELDS))}, "
                        "experiments")
    environment = {field: opts[key] for key, field in _ENVIRONMENT_FIELDS.items()
                   if key in opts}
    if "max_workers" in environment:
        environment["max_workers"] = int(environment["max_workers"])
    if "num_workers" in environment:
        environment["num_workers"] = int(environment["num_workers"])
    if spec.flex_template.image and "sdk_container_image" not in environment:
        environment["sdk_container_image"] = spec.flex_template.image  # workers = launcher
    experiments = opts.get("experiments") or []
    if experiments:
        environment["additional_experiments"] = list(experiments)
    environment["additional_user_labels"] = run_labels(spec, day)
    parameters = {k: _param_value(v) for k, v in pipeline_parameters(spec, day).items()
                  if v is not None and v is not False}
    return {
        "project_id": opts["project"], "location": opts["region"],
        "launch_parameter": {
            "job_name": dataflow_job_name(spec, day),
            "container_spec_gcs_path": spec.flex_template.spec_path,
            "parameters": parameters,
            "environment": environment,
        },
    }


def make_client(api_endpoint: str | None = None):
    from google.api_core.client_options import ClientOptions
    from google.cloud import dataflow_v1beta3
    kwargs = {"transport": "rest"}
    if api_endpoint:
        kwargs["client_options"] = ClientOptions(api_endpoint=api_endpoint)
        if api_endpoint.startswith("http://"):
            from google.auth.credentials import AnonymousCredentials
            kwargs["credentials"] = AnonymousCredentials()
    return dataflow_v1beta3.FlexTemplatesServiceClient(**kwargs)


def launch(spec: JobSpec, day: dt.date, api_endpoint: str | None = None, client=None,
           validate_only: bool = False) -> dict:
    """Send the launch request; returns the created job (id, name, ...) as a dict."""
    from google.cloud import dataflow_v1beta3
    body = launch_request(spec, day)
    body["validate_only"] = validate_only
    request = dataflow_v1beta3.LaunchFlexTemplateRequest(body)
    client = client or make_client(api_endpoint)
    _LOG.info("launching %s for %s from %s", body["launch_parameter"]["job_name"], day,
              spec.flex_template.spec_path)
    response = client.launch_flex_template(request=request)
    return type(response.job).to_dict(response.job)
