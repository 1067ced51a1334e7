"""backfill: rebuild the live gallery for a model version, standalone and resumable.

Rerunning after an interruption resumes the same staged version (its id is derived from the
model version, mode and fraction): finished shards are verified and skipped. With a Dask
scheduler address the flow runs on prefect-dask's DaskTaskRunner and the shards fan out over
that cluster.
"""

from __future__ import annotations

from typing import Any, Literal

from hotswap.components.registry.records import CHAMPION
from hotswap.tasks.context import settings_from
from hotswap.tasks.gallery_build import backfill_gallery
from hotswap.tasks.gallery_publish import publish_gallery
from hotswap.tasks.lock import lifecycle_lock
from hotswap.tasks.naming import backfill_run_name
from hotswap.tasks.registry import resolve_alias
from prefect import flow


class UnknownVersionError(LookupError):
    pass


@flow(name="backfill", log_prints=True, flow_run_name=backfill_run_name)
def backfill(
    overrides: dict[str, Any] | None = None,
    mode: Literal["requantize", "partial", "full"] = "full",
    fraction: float | None = None,
    version: str = "challenger",
    publish: bool = False,
    use_dask: bool = False,
) -> dict[str, Any]:
    """Write (or resume) the gallery version ``mode`` asks for; optionally make it live."""
    settings = settings_from(overrides)
    resolved = version if version.isdigit() else resolve_alias(settings, version)
    if resolved is None:
        raise UnknownVersionError(f"model {settings.model_name!r} has no version or alias {version!r}")
    with lifecycle_lock(settings, f"{mode} backfill"):
        champion = resolve_alias(settings, CHAMPION)
        old_version = champion if champion != resolved else None
        if use_dask:  # submitted, so it runs on the flow's DaskTaskRunner and can reach the cluster
            gallery_version = backfill_gallery.submit(
                settings, resolved, mode, fraction, old_version, True
            ).result()
        else:
            gallery_version = backfill_gallery(settings, resolved, mode, fraction, old_version)
        if publish:
            publish_gallery(settings, gallery_version)
    return {"version": resolved, "mode": mode, "gallery_version": gallery_version, "published": publish}


def backfill_on_dask(address: str, **parameters: Any) -> dict[str, Any]:
    """Run the backfill flow on an existing Dask cluster (scheduler ``address``) via prefect-dask."""
    from prefect_dask import DaskTaskRunner

    on_dask = backfill.with_options(task_runner=DaskTaskRunner(address=address))
    return on_dask(use_dask=True, **parameters)
