"""Which gallery versions belong to a champion: the one its promotion named, and the syncs of it.

A promotion binds a model version to one gallery version (the tag ``backfill.gallery_version``,
components/gallery/live_state.py), and the query service serves the pair only when CURRENT names that
gallery. ``gallery-sync`` then makes the next version from the live one: ids the gallery manifest
lost are absent, new ids are embedded by the champion (components/gallery/imports.py). That
version belongs to the champion just as much as the one it was synced from.

Why the pairing accepts a sync instead of the sync moving the champion's tag: a sync changes one
system only, the gallery store, and its single commit point is the atomic CURRENT write
(compare-and-swap against the version it was synced from). Before that write nothing is visible;
after it the pair is whole, because the new version carries its own proof of descent. Moving the
tag as well would add a second write to a second system (MLflow) with no transaction between
them: a crash between the two would leave a pair that is not whole — a running service that
never follows and a restarted one that never becomes healthy — until a recovery step repaired it.
Here there is no such window, so there is nothing to recover.

The proof is in the synced version's manifest (``metadata.backfill``): ``mode = "sync"``, the
``source_version`` and ``synced_from``, every version it descends from through syncs by the same
model, oldest first. A version belongs to ``(model, bound)`` when it *is* ``bound``, or when it
is a sync made by ``model`` whose ``synced_from`` holds ``bound``. Reading it costs one manifest.
"""

from __future__ import annotations

from hotswap.components.gallery.records import GalleryManifest, ManifestError
from hotswap.components.gallery.versions import GalleryStore
from pydantic import JsonValue

SYNC_MODE = "sync"
#: How far a sync written before ``synced_from`` existed is followed through its sources.
_MAX_LEGACY_LINKS = 64


def _backfill(manifest: GalleryManifest) -> dict[str, JsonValue]:
    record = manifest.metadata.get("backfill")
    return record if isinstance(record, dict) else {}


def is_sync(manifest: GalleryManifest) -> bool:
    return _backfill(manifest).get("mode") == SYNC_MODE


def synced_from(galleries: GalleryStore, gallery: str, manifest: GalleryManifest) -> list[str]:
    """The versions ``manifest`` descends from through syncs by its own model, oldest first ([] if
    it is not a sync). A sync written before the list was recorded is followed link by link."""
    record = _backfill(manifest)
    if record.get("mode") != SYNC_MODE:
        return []
    recorded = record.get("synced_from")
    if isinstance(recorded, list):
        return [str(v) for v in recorded]
    lineage: list[str] = []
    current = manifest
    while is_sync(current) and len(lineage) < _MAX_LEGACY_LINKS:
        source = str(_backfill(current).get("source_version") or current.parent_version or "")
        if not source or source in lineage:
            break
        lineage.insert(0, source)
        parent = galleries.load_manifest(gallery, source)
        if not is_sync(parent) or parent.model_version != manifest.model_version:
            break
        current = parent
    return lineage


def sync_record(
    galleries: GalleryStore, gallery: str, source: GalleryManifest, model_version: str
) -> dict[str, JsonValue]:
    """``metadata.backfill`` of a version synced from ``source`` by ``model_version`` (counts go beside)."""
    lineage = (
        synced_from(galleries, gallery, source)
        if is_sync(source) and source.model_version == str(model_version)
        else []
    )
    return {"mode": SYNC_MODE, "source_version": source.version, "synced_from": [*lineage, source.version]}


def belongs_to(galleries: GalleryStore, gallery: str, version: str, model_version: str, bound: str) -> bool:
    """Whether ``version`` is ``bound`` or a sync of it made by ``model_version`` (ManifestError if
    ``version``'s manifest cannot be read)."""
    if version == bound:
        return True
    manifest = galleries.load_manifest(gallery, version)
    return manifest.model_version == str(model_version) and bound in synced_from(galleries, gallery, manifest)


def newest_synced(galleries: GalleryStore, gallery: str, model_version: str, bound: str) -> str:
    """The newest published version that belongs to ``(model_version, bound)``: what a rollback to
    that model makes live, so items synced while it was champion stay added (or removed)."""
    best, best_at = bound, None
    for version in galleries.list_versions(gallery):
        if version == bound or not galleries.is_sealed(gallery, version):
            continue
        try:
            manifest = galleries.load_manifest(gallery, version)
            if manifest.model_version != str(model_version) or not is_sync(manifest):
                continue
            lineage = synced_from(galleries, gallery, manifest)
        except ManifestError:  # a damaged version is never a rollback target
            continue
        if bound in lineage and (best_at is None or manifest.created_at > best_at):
            best, best_at = version, manifest.created_at
    return best
