"""Rollback tasks: which (model, gallery) pair a rollback makes live again."""

from __future__ import annotations

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.gallery.live_state import rollback_target
from hotswap.tasks.context import gallery_store, registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


@task(
    name="find-rollback-target", task_run_name="find the previous champion and its gallery", cache_policy=NONE
)
def find_rollback_target(settings: HotswapSettings) -> dict[str, str]:
    """The previous champion and the gallery version recorded for it (components/gallery/live_state.py)."""
    version, gallery_version = rollback_target(
        registry(settings), gallery_store(settings), settings.gallery_name
    )
    get_run_logger().info("rolling back to v%s + gallery %s", version, gallery_version)
    return {"version": version, "gallery_version": gallery_version}
