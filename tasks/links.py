"""Cross-links between the two UIs an operator reads: Prefect runs ↔ MLflow runs and versions.

MLflow runs and model versions get the Prefect flow run's id, name and URL as tags; Prefect
gets link artifacts (and markdown lines) pointing at the MLflow run and model version.
"""

from __future__ import annotations

import logging
import os

from hotswap.components.core.links import (
    LOCAL_PREFECT_API_ENV,
    mlflow_artifact_url,
    mlflow_run_url,
    model_version_url,
    prefect_ui_link,
)
from hotswap.components.core.settings import HotswapSettings
from hotswap.tasks.context import registry
from hotswap.tasks.reporting import artifact_key
from prefect.artifacts import create_link_artifact
from prefect.runtime import flow_run

TAG_FLOW_RUN_ID = "prefect.flow_run_id"
TAG_FLOW_RUN_NAME = "prefect.flow_run_name"
TAG_FLOW_RUN_URL = "prefect.flow_run_url"

logger = logging.getLogger(__name__)


def flow_run_ui_url() -> str | None:
    """The current flow run's page in the Prefect UI, or None when no UI serves it (a home's
    local API has none; without a UI URL Prefect would build "None/flow-runs/...")."""
    return prefect_ui_link(flow_run.get_flow_run_ui_url(), bool(os.environ.get(LOCAL_PREFECT_API_ENV)))


def prefect_run_tags() -> dict[str, str]:
    """Tags naming the flow run we are in (empty outside a flow run); the URL only with a UI."""
    run_id = flow_run.get_id()
    if run_id is None:
        return {}
    tags = {TAG_FLOW_RUN_ID: str(run_id), TAG_FLOW_RUN_NAME: flow_run.get_name() or ""}
    url = flow_run_ui_url()
    if url:
        tags[TAG_FLOW_RUN_URL] = url
    return tags


def version_links(settings: HotswapSettings, version: str) -> dict[str, str]:
    """``{"MLflow run": url-or-uri, "model version": url-or-uri}`` for a registered version."""
    reg = registry(settings)
    info = reg.resolve(version)
    ui = settings.resolved_mlflow_ui_url
    return {
        "MLflow run": mlflow_run_url(ui, reg.experiment_id, info.run_id) or f"runs:/{info.run_id}",
        "model version": model_version_url(ui, settings.model_name, info.version) or info.uri,
    }


def artifact_link(settings: HotswapSettings, version: str, path: str) -> str:
    """An artifact of a version's training run: a web address when MLflow has a UI, else runs:/."""
    run_id = registry(settings).resolve(version).run_id
    return mlflow_artifact_url(settings.resolved_mlflow_ui_url, run_id, path) or f"runs:/{run_id}/{path}"


def links_markdown(settings: HotswapSettings, version: str) -> str:
    """One markdown line with both links (plain URIs when MLflow has no UI)."""
    parts = []
    for label, target in version_links(settings, version).items():
        parts.append(f"[{label}]({target})" if target.startswith("http") else f"{label}: `{target}`")
    return "MLflow: " + " · ".join(parts)


def publish_version_links(settings: HotswapSettings, version: str) -> None:
    """Prefect link artifacts to the version's MLflow run and model-version pages (when MLflow has a UI)."""
    for label, target in version_links(settings, version).items():
        if target.startswith("http"):
            create_link_artifact(
                key=artifact_key(label, settings.model_name, f"v{version}"),
                link=target,
                link_text=f"{label} of {settings.model_name} v{version}",
                description=f"{label} of {settings.model_name} v{version} in MLflow",
            )


def tag_with_flow_run(settings: HotswapSettings, version: str) -> None:
    """The version and its training run carry the current Prefect flow run's id, name and URL."""
    tags = prefect_run_tags()
    if not tags:
        return
    reg = registry(settings)
    reg.set_tags(version, tags)
    reg.set_run_tags(reg.resolve(version).run_id, tags)


def rename_flow_run(name: str) -> None:
    """Give the running flow run a name that says what it turned out to do (best effort)."""
    run_id = flow_run.get_id()
    if run_id is None:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=name)
    except Exception as exc:  # a cosmetic change must never fail the lifecycle
        logger.warning("could not rename flow run %s to %r: %s", run_id, name, exc)
