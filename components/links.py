"""Web addresses of MLflow records, so the Prefect UI can link to them (and people can click).

MLflow's UI routes runs as ``#/experiments/<experiment>/runs/<run>`` and model versions as
``#/models/<name>/versions/<n>``. Without a UI (an embedded SQLite store) there is no address:
callers fall back to the ``runs:/`` and ``models:/`` URIs, which the MLflow client resolves.
"""

from __future__ import annotations

from urllib.parse import quote


def mlflow_run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, or None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(experiment_id)}/runs/{quote(run_id)}"


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
