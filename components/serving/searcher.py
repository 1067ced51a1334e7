"""The gallery side of a live pair: a gallery version's faiss index and its item-id map.

This module is the one place the service turns a gallery version into something it can search
(:func:`open_searcher`), always as the searcher of components/gallery/search.py: a mixed version
with one affine map per provenance model (DESIGN.md §11), a single-model version with the
identity on its one index. Its interface: ``search(queries [nq, d] float32, k) -> (scores [nq, k],
item_ids [nq, k] str)`` plus ``dim``, ``ntotal`` and ``item_ids`` (in their stored dtype).

Everything read is checked: the index bytes and every ids file against the manifest's sha256,
the index size against the manifest's item count, and faiss's ids against the id map, so a
broken version fails here, before it can go live.
"""

from __future__ import annotations

import numpy as np
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.gallery.records import GalleryError, ManifestError, npy_load, sha256_hex
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.gallery.store import ObjectNotFoundError
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.quant.index import index_from_bytes


class GalleryLoadError(RuntimeError):
    """A gallery version cannot be served (missing, corrupt or inconsistent); the message says why."""


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
    from hotswap.components.gallery.provenance import feature_spaces

    return sorted(set(feature_spaces(galleries, gallery, version).tolist()))


def open_searcher(
    galleries: GalleryStore, gallery: str, version: str, query_model: str | None = None
) -> GallerySearcher:
    """Load a gallery version for serving; :class:`GalleryLoadError` (one line) when it cannot be.

    A mixed version (items of several models) is served by the calibrated searcher of
    components/gallery/search.py for queries of ``query_model``: its stored calibration is
    required, so a mixed version without one cannot go live. A single-model version is read
    without its features (only the checked index and ids files) and searched with the identity.
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
            searcher = GallerySearcher.from_version(galleries, gallery, version, str(query_model))
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
    model = models[0] if models else str(manifest.model_version)
    identity = ScoreCalibration.identity(str(query_model or model), [model])
    return GallerySearcher(
        index, ids, model, identity, gallery_version=version, calibration_source="single model: identity"
    )
