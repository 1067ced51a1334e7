"""Which gallery versions belong to a champion after syncs: the descent a synced version records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.sync_lineage import belongs_to, newest_synced, sync_record, synced_from
from hotswap.components.gallery.versions import GalleryStore

GALLERY = "shop"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _version(
    galleries: GalleryStore,
    version: str,
    model: str,
    minutes: int,
    source: str | None = None,
    legacy: bool = False,
    publish: bool = True,
) -> None:
    """A small finalized version; with ``source`` it is a sync of that version made by ``model``."""
    metadata = {}
    if source is not None:
        record = sync_record(galleries, GALLERY, galleries.load_manifest(GALLERY, source), model)
        if legacy:  # written before the descent was recorded: only its source
            record = {"mode": "sync", "source_version": source}
        metadata = {"backfill": {**record, "kept": 1, "added": 1, "removed": 0}}
    writer = galleries.begin_version(
        GALLERY,
        version,
        model_version=model,
        parent_version=source,
        num_shards=1,
        arrays=("ids",),
        metadata=metadata,
        created_at=T0 + timedelta(minutes=minutes),
    )
    writer.write_shard(0, np.array([f"{version}-a", f"{version}-b"]))
    writer.finalize()
    if publish:
        galleries.publish(GALLERY, version)


def _store(tmp_path) -> GalleryStore:
    return GalleryStore(LocalObjectStore(tmp_path / "store", fsync=False))


def test_a_sync_of_a_sync_records_its_whole_descent_by_the_same_model(tmp_path) -> None:
    galleries = _store(tmp_path)
    _version(galleries, "g1", "1", 0)
    _version(galleries, "s1", "1", 1, source="g1")
    _version(galleries, "s2", "1", 2, source="s1")
    manifest = galleries.load_manifest(GALLERY, "s2")
    assert synced_from(galleries, GALLERY, manifest) == ["g1", "s1"]
    assert belongs_to(galleries, GALLERY, "s2", "1", "g1") and belongs_to(galleries, GALLERY, "s2", "1", "s1")
    assert belongs_to(galleries, GALLERY, "g1", "1", "g1")
    assert not belongs_to(galleries, GALLERY, "s2", "2", "g1")  # made by v1: not v2's gallery
    assert not belongs_to(galleries, GALLERY, "g1", "1", "s1")  # an ancestor is not a descendant
    assert synced_from(galleries, GALLERY, galleries.load_manifest(GALLERY, "g1")) == []


def test_another_models_sync_starts_a_new_descent(tmp_path) -> None:
    """v2 went live on s1 (a skip) and synced it: that version is v2's, and not v1's gallery g1's."""
    galleries = _store(tmp_path)
    _version(galleries, "g1", "1", 0)
    _version(galleries, "s1", "1", 1, source="g1")
    _version(galleries, "x1", "2", 2, source="s1")
    assert synced_from(galleries, GALLERY, galleries.load_manifest(GALLERY, "x1")) == ["s1"]
    assert belongs_to(galleries, GALLERY, "x1", "2", "s1")
    assert not belongs_to(galleries, GALLERY, "x1", "2", "g1")
    assert not belongs_to(galleries, GALLERY, "x1", "1", "g1")


def test_syncs_written_before_the_descent_was_recorded_are_followed_link_by_link(tmp_path) -> None:
    galleries = _store(tmp_path)
    _version(galleries, "g1", "1", 0)
    _version(galleries, "s1", "1", 1, source="g1", legacy=True)
    _version(galleries, "s2", "1", 2, source="s1", legacy=True)
    assert synced_from(galleries, GALLERY, galleries.load_manifest(GALLERY, "s2")) == ["g1", "s1"]
    assert belongs_to(galleries, GALLERY, "s2", "1", "g1")


def test_a_rollback_target_is_the_newest_published_sync_of_the_models_gallery(tmp_path) -> None:
    galleries = _store(tmp_path)
    _version(galleries, "g1", "1", 0)
    assert newest_synced(galleries, GALLERY, "1", "g1") == "g1"
    _version(galleries, "s1", "1", 1, source="g1")
    _version(galleries, "s2", "1", 2, source="s1")
    _version(galleries, "g2", "2", 3)  # the next champion's own gallery
    _version(galleries, "s3", "1", 4, source="s2", publish=False)  # staged, never live
    _version(galleries, "x1", "2", 5, source="g2")
    assert newest_synced(galleries, GALLERY, "1", "g1") == "s2"
    assert newest_synced(galleries, GALLERY, "2", "g2") == "x1"
