"""The gallery side of a live pair: a gallery version's faiss index and its item-id map.

This module is the one place the service turns a gallery version into something it can search
(:func:`open_searcher`). A single-model version gets this module's :class:`GallerySearcher`
(raw inner products from the version's serialized index); a mixed version gets the calibrated
searcher of components/gallery_search.py (one affine map per provenance model, DESIGN.md §11),
which has the same interface: ``search(queries [nq, d] float32, k) -> (scores [nq, k], item_ids [nq, k] str)``
plus ``dim``, ``ntotal`` and ``item_ids``.

Everything read is checked: the index bytes and every ids file against the manifest's sha256,
the index size against the manifest's item count, and faiss's ids against the id map, so a
broken version fails here, before it can go live.
"""

from __future__ import annotations

import numpy as np
from hotswap.components.gallery import GalleryError, GalleryStore, ManifestError
from hotswap.components.gallery_records import npy_load, sha256_hex
from hotswap.components.gallery_search import GallerySearcher as CalibratedSearcher
from hotswap.components.index import index_from_bytes, search
from hotswap.components.store import ObjectNotFoundError


class GalleryLoadError(RuntimeError):
    """A gallery version cannot be served (missing, corrupt or inconsistent); the message says why."""


class GallerySearcher:
    """Top-k item ids of a gallery version by inner product with float queries."""

    def __init__(self, gallery_version: str, index: object, item_ids: np.ndarray) -> None:
        self.gallery_version = gallery_version
        self.index = index
        self.item_ids = item_ids
        self.dim = int(index.d)
        self.ntotal = int(index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [nq, k] descending, item ids [nq, k] str); k is capped at the gallery size."""
        k = max(1, min(int(k), self.ntotal))
        found = search(self.index, np.ascontiguousarray(queries, dtype=np.float32), k=k)
        rows = found.ids
        if (rows < 0).any() or (rows >= len(self.item_ids)).any():
            raise GalleryLoadError(
                f"gallery {self.gallery_version}: the index returned rows outside its id map "
                f"(0..{len(self.item_ids) - 1})"
            )
        return found.scores, self.item_ids[rows].astype(str)


def _load_ids(galleries: GalleryStore, gallery: str, version: str, manifest) -> np.ndarray:
    """Only the ids files of every shard (not the features), each checked against its sha256."""
    parts = []
    for shard in manifest.shards:
        entry = shard.files["ids"]
        key = galleries.version_key(gallery, version, entry.path)
        try:
            data = galleries.store.get_bytes(key)
        except ObjectNotFoundError:
            raise GalleryLoadError(
                f"gallery {gallery!r} version {version!r}: {entry.path} is missing"
            ) from None
        if len(data) != entry.size or sha256_hex(data) != entry.sha256:
            raise GalleryLoadError(
                f"gallery {gallery!r} version {version!r}: {entry.path} fails its checksum"
            )
        parts.append(npy_load(data))
    # kept in their stored dtype: converting a million int64 ids to str holds the GIL for ~1 s,
    # which would stall every query while a new pair loads; only returned ids are converted
    return np.concatenate(parts)


def _provenance_models(galleries: GalleryStore, gallery: str, version: str) -> list[str]:
    from hotswap.components.backfill import feature_models

    return sorted(set(feature_models(galleries, gallery, version).tolist()))


def open_searcher(
    galleries: GalleryStore, gallery: str, version: str, query_model: str | None = None
) -> GallerySearcher | CalibratedSearcher:
    """Load a gallery version for serving; :class:`GalleryLoadError` (one line) when it cannot be.

    A mixed version (items of several models) is served by the calibrated searcher of
    components/gallery_search.py for queries of ``query_model``: its stored calibration is
    required, so a mixed version without one cannot go live. A single-model version keeps the
    plain searcher here (no per-segment split, ids left in their stored dtype).
    """
    where = f"gallery {gallery!r} version {version!r}"
    try:
        models = _provenance_models(galleries, gallery, version)
    except (ManifestError, GalleryError, ObjectNotFoundError) as exc:
        raise GalleryLoadError(f"{where}: {exc}") from exc
    if len(models) > 1:
        if query_model is None:
            raise GalleryLoadError(f"{where} is mixed ({models}): a query model is needed to calibrate it")
        try:
            searcher = CalibratedSearcher.from_version(galleries, gallery, version, str(query_model))
        except (ValueError, GalleryError, ObjectNotFoundError) as exc:
            raise GalleryLoadError(f"{where}: {exc}") from exc
        return searcher
    try:
        manifest = galleries.load_manifest(gallery, version)
        data = galleries.load_index(gallery, version)
    except (ManifestError, GalleryError) as exc:
        raise GalleryLoadError(str(exc)) from exc
    if data is None:
        raise GalleryLoadError(f"{where} has no index")
    try:
        index = index_from_bytes(data)
    except ValueError as exc:
        raise GalleryLoadError(f"{where}: index.faiss is broken: {exc}") from exc
    ids = _load_ids(galleries, gallery, version, manifest)
    if not index.ntotal == manifest.num_items == len(ids):
        raise GalleryLoadError(
            f"{where}: the index holds {index.ntotal} items, the manifest {manifest.num_items}, "
            f"the id map {len(ids)}"
        )
    return GallerySearcher(version, index, ids)
