"""Web addresses of MLflow records, so the Prefect UI can link to them (and people can click).

MLflow's UI routes runs as ``#/experiments/<experiment>/runs/<run>`` and model versions as
``#/models/<name>/versions/<n>``. Without a UI (an embedded SQLite store) there is no address:
callers fall back to the ``runs:/`` and ``models:/`` URIs, which the MLflow client resolves.

MLflow 3.17's UI opens experiments in its GenAI view unless told otherwise: the side bar's
"GenAI / Model training" switch is remembered per browser, and a ``workflowType`` query
parameter overrides it. Experiment and run links carry ``workflowType=machine_learning`` so
they open on the training runs (the experiment's ``mlflow.experimentKind`` tag, set by the
registry, is what the UI reads when that switch is not shown).
"""

from __future__ import annotations

from urllib.parse import quote

TRAINING_VIEW = "workflowType=machine_learning"
#: Set (to "1") in a process running on a home's local Prefect API (flows/local_api.py), which
#: serves no UI: flow-run links are then left out and the flow-run id alone is recorded.
LOCAL_PREFECT_API_ENV = "HOTSWAP_LOCAL_PREFECT_API"


def prefect_ui_link(url: str | None, local_api: bool) -> str | None:
    """A Prefect UI address worth writing down: an http(s) URL of a server with a UI, else None
    (Prefect builds ``"None/flow-runs/..."`` when no UI URL is known)."""
    if local_api or not url or not url.startswith(("http://", "https://")):
        return None
    return url


def mlflow_experiment_url(ui_url: str | None, experiment_id: str) -> str | None:
    """The experiment's runs in the MLflow UI (training view), or None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}?{TRAINING_VIEW}"


def mlflow_run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI (training view), or None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}?{TRAINING_VIEW}"


def model_version_url(ui_url: str | None, model_name: str, version: str) -> str | None:
    """The model version's page in the MLflow UI, or None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/models/{quote(model_name)}/versions/{quote(str(version))}"


def mlflow_artifact_url(ui_url: str | None, run_id: str, path: str) -> str | None:
    """A run artifact served by the MLflow server (images render in a browser), or None."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/get-artifact?path={quote(path)}&run_uuid={quote(run_id)}"
