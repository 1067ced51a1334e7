"""backfill: rebuild the live gallery for a model version, standalone and resumable.

Rerunning after an interruption resumes the same staged version (its id is derived from the
model version, mode and fraction): finished shards are verified and skipped. With a Dask
scheduler address (``dask_address``, or the ``dask.address`` setting) the flow stays here and
orchestrates while the shards run as tasks on that cluster.
"""

from __future__ import annotations

from typing import Any, Literal

from hotswap.components.registry.records import CHAMPION
from hotswap.tasks.context import settings_from, with_dask
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
    mode: Literal["requantize", "transform", "partial", "full"] = "full",
    fraction: float | None = None,
    version: str = "challenger",
    publish: bool = False,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Write (or resume) the gallery version ``mode`` asks for; optionally make it live.

    ``transform`` uses the maps the version's refresh trained, one per model version of the live
    gallery; a gallery model without one is refused in one line (run `hotswap refresh` first).

    ``dask_address`` (default: the ``dask.address`` setting) runs the shards on that Dask cluster.
    """
    settings = settings_from(with_dask(overrides, dask_address))
    resolved = version if version.isdigit() else resolve_alias(settings, version)
    if resolved is None:
        raise UnknownVersionError(f"model {settings.model_name!r} has no version or alias {version!r}")
    with lifecycle_lock(settings, f"{mode} backfill"):
        champion = resolve_alias(settings, CHAMPION)
        old_version = champion if champion != resolved else None
        gallery_version = backfill_gallery(settings, resolved, mode, fraction, old_version)
        if publish:
            publish_gallery(settings, gallery_version)
    return {"version": resolved, "mode": mode, "gallery_version": gallery_version, "published": publish}
