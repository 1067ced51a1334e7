"""adopt: take over a running system — its model as v1, its gallery features as the live gallery."""

from __future__ import annotations

from typing import Any

from hotswap.components.registry.records import CHAMPION
from hotswap.flows.bootstrap import AlreadyBootstrappedError
from hotswap.flows.switch import switch_live
from hotswap.tasks.adopt import (
    import_gallery,
    record_adopt_report,
    register_adopted_model,
    sync_gallery_items,
    train_gallery_codebooks,
)
from hotswap.tasks.context import settings_from, with_dask
from hotswap.tasks.lock import lifecycle_lock
from hotswap.tasks.registry import resolve_alias
from hotswap.tasks.validation import rubber_stamp
from prefect import flow


@flow(name="adopt", log_prints=True)
def adopt(
    spec: dict[str, Any],
    weights: str,
    gallery_features: str,
    gallery_ids: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Register the team's model, import its gallery features, train DPQ on them, go live, report.

    ``spec``: ModelSpec fields (arch, kwargs, format, embedding_dim, image_size, channels, mean,
    std, projection); ``weights``: safetensors state_dict or a .pt2 program. ``data.source`` holds
    the labelled training data the old classifier is fitted on; ``gallery.manifest`` the gallery.
    """
    settings = settings_from(overrides)
    champion = resolve_alias(settings, CHAMPION)
    if champion is not None:
        raise AlreadyBootstrappedError(
            f"model {settings.model_name!r} already has a champion (v{champion}); run `hotswap refresh`"
        )
    model = register_adopted_model(settings, spec, weights)
    version = model["version"]
    self_test = rubber_stamp(settings, version, force=force)  # refuses a model at chance
    codebooks = train_gallery_codebooks(settings, version, gallery_features, gallery_ids)
    gallery = import_gallery(settings, version, gallery_features, gallery_ids)
    live = switch_live(settings, version, gallery["gallery_version"])
    report = record_adopt_report(settings, version, weights, model, self_test, codebooks, gallery)
    return {"version": version, "report": report, **live}


@flow(name="gallery-sync", log_prints=True)
def gallery_sync(
    overrides: dict[str, Any] | None = None, publish: bool = True, dask_address: str | None = None
) -> dict[str, Any]:
    """Add the gallery manifest's new items (embedded by the champion) and drop the removed ones.

    Holds the gallery's lifecycle lock: a switch or backfill in between could otherwise publish
    over the synced version, or the sync over theirs. ``dask_address`` (default: the
    ``dask.address`` setting) embeds the new items on that Dask cluster.
    """
    settings = settings_from(with_dask(overrides, dask_address))
    with lifecycle_lock(settings, "gallery sync"):
        return sync_gallery_items(settings, publish)
