"""What is live right now: aliases, the live gallery (and which model versions its items come
from), the challenger's report and the last decision; and one version's record from MLflow.

Read through components/registry/sqlite_reader.py (MLflow's own database, read-only: nothing to go
stale, and no MLflow or torch import for the embedded default), so ``hotswap status`` answers in
about the time of ``--help``."""

from __future__ import annotations

from typing import Any

import numpy as np
from hotswap.components.core.fingerprint import TAG_STAGE
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.decision.storage import load_decision
from hotswap.components.gallery.provenance import feature_models
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.records import CHALLENGER, CHAMPION, PREVIOUS, RegistryError
from hotswap.components.registry.sqlite_reader import registry_for_reading


def system_status(settings: HotswapSettings) -> dict[str, Any]:
    """A JSON-able summary for ``hotswap status`` (and the demo's closing screen)."""
    registry = registry_for_reading(settings)
    aliases = registry.aliases()
    galleries = GalleryStore(open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url))
    live = galleries.read_current(settings.gallery_name)
    status: dict[str, Any] = {
        "model": settings.model_name,
        "champion": aliases.get(CHAMPION),
        "challenger": aliases.get(CHALLENGER),
        "previous": aliases.get(PREVIOUS),
        "gallery": settings.gallery_name,
        "live_gallery_version": live,
    }
    if live is not None:
        manifest = galleries.load_manifest(settings.gallery_name, live)
        arrays = galleries.load_shard(settings.gallery_name, live, 0)
        status["live_gallery"] = {
            "items": manifest.num_items,
            "built_with_model": manifest.model_version,
            "codebooks_of": manifest.codebook_version,
            "backfill": manifest.metadata.get("backfill"),
        }
        status["example_item"] = str(arrays.ids[0])
        models, counts = np.unique(feature_models(galleries, settings.gallery_name, live), return_counts=True)
        status["live_gallery"]["composition"] = {
            f"v{model}": {"items": int(n), "share": round(float(n) / max(manifest.num_items, 1), 4)}
            for model, n in zip(models.tolist(), counts.tolist(), strict=True)
        }
        status["gallery_manifest"] = manifest_difference(
            settings, galleries.load_ids(settings.gallery_name, live)
        )
    latest = aliases.get(CHALLENGER) or aliases.get(CHAMPION)
    if latest is not None:
        info = registry.resolve(latest)
        status["latest_version_tags"] = {k: v for k, v in info.tags.items() if "." in k}
        if aliases.get(CHALLENGER) is not None:  # where its refresh stands (refresh_progress.py)
            status["challenger_stage"] = info.tags.get(TAG_STAGE)
        try:
            record = load_decision(registry, latest)
            status["last_decision"] = {
                "version": latest,
                "mode": record.mode,
                "reasons": record.reasons,
                "promotable": record.promotable,
                "promotable_reason": record.promotable_reason,
                "gallery": record.gallery_state,  # "planned, built on approval" until promote builds it
            }
            status["last_decision_markdown"] = record.to_markdown()
        except RegistryError:
            status["last_decision"] = None
            status["last_decision_markdown"] = "no backfill decision recorded yet"
    for alias in (CHAMPION, CHALLENGER):
        if aliases.get(alias) is not None:
            try:
                status[f"{alias}_report"] = registry.load_report(aliases[alias]).model_dump(mode="json")
            except RegistryError:
                status[f"{alias}_report"] = None
    return status


def manifest_difference(settings: HotswapSettings, live_ids: np.ndarray) -> dict[str, Any]:
    """How the gallery's own manifest and the live gallery differ (a sync, or a refresh with
    ``gallery.sync_on_refresh``, brings them in line); ``error`` when the manifest cannot be read."""
    from hotswap.components.data.catalog import gallery_items
    from hotswap.components.data.images import DataError
    from hotswap.components.gallery.difference import gallery_difference

    source = settings.gallery.manifest or f"{settings.data.source} ({settings.data.gallery_split} split)"
    try:
        diff = gallery_difference(live_ids, gallery_items(settings).item_ids)
    except DataError as exc:
        return {"source": source, "error": str(exc)}
    return {
        "source": source,
        "missing_from_live": len(diff["added"]),
        "only_in_live": len(diff["removed"]),
        "examples": {"missing_from_live": diff["added"][:3], "only_in_live": diff["removed"][:3]},
    }


def version_record(settings: HotswapSettings, version: str) -> dict[str, Any]:
    """A version's report and decision as MLflow holds them (``hotswap report VERSION``): no
    gallery, no Prefect, nothing recomputed."""
    registry = registry_for_reading(settings)
    info = registry.resolve(version)
    record: dict[str, Any] = {
        "model": settings.model_name,
        "version": info.version,
        "aliases": list(info.aliases),
        "tags": dict(sorted(info.tags.items())),
        "report": registry.load_report(info.version),
    }
    try:
        record["decision"] = load_decision(registry, info.version)
    except RegistryError:
        record["decision"] = None
    return record
