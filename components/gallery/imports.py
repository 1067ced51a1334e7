"""Gallery versions from features that already exist: an adopted system's gallery, and the
add/remove of items between versions without a backfill.

A team adopting hotswap has gallery features its model extracted long ago; re-extracting millions
of images only to get the same numbers back would waste days. :func:`write_feature_version`
writes such features as an ordinary version (checksummed shards with DPQ codes, the faiss index,
provenance) through the same staged writer the backfill uses, so CURRENT still moves last.

Between model versions the gallery itself changes: :func:`sync_gallery` makes the next version
from the live one and a gallery manifest (components/data/objects.py) — ids that left the manifest are
absent, new ids are embedded by the champion and encoded with the live codebooks, everything else
keeps its stored features, codes and provenance. No existing item is re-extracted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import DEFAULT_LOADER, LoaderConfig, embed
from hotswap.components.gallery.provenance import PROVENANCE_FILE, feature_models
from hotswap.components.gallery.records import GalleryManifest, new_version_id, npy_bytes, sha256_hex
from hotswap.components.gallery.shard_jobs import BackfillError
from hotswap.components.gallery.sync_lineage import sync_record
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.quant.dpq import DPQCodebooks
from pydantic import JsonValue

IndexBuilder = Callable[[np.ndarray, np.ndarray], bytes]


def write_feature_version(
    galleries: GalleryStore,
    gallery: str,
    ids: np.ndarray,
    features: np.ndarray,
    codebooks: DPQCodebooks,
    *,
    model_version: str,
    codebook_version: str,
    provenance: Sequence[str] | np.ndarray | None = None,
    parent_version: str | None = None,
    version: str | None = None,
    shard_size: int = 1024,
    index_builder: IndexBuilder | None = None,
    metadata: dict[str, JsonValue] | None = None,
    codes: np.ndarray | None = None,
    publish: bool = False,
    expected_current: str | None = None,
    created_at: datetime | None = None,
) -> GalleryManifest:
    """Write ``ids``/``features`` (codes: given, else encoded with ``codebooks``) as a version.

    ``provenance`` names, per row, the model version that produced its features (default: all
    ``model_version``). Resumable with the same ``version``: finished shards are not rewritten.
    """
    ids = np.asarray(ids)
    if ids.dtype.kind == "O":  # pandas string columns
        ids = ids.astype(str)
    features = np.asarray(features, dtype=np.float32)
    if ids.ndim != 1 or len(ids) == 0 or features.shape[0] != len(ids):
        raise BackfillError(f"gallery {gallery!r}: {len(ids)} ids for features of shape {features.shape}")
    if features.shape[1] != codebooks.dim:
        raise BackfillError(f"features have d={features.shape[1]}, the codebooks d={codebooks.dim}")
    if shard_size < 1:
        raise BackfillError(f"shard_size must be at least 1, got {shard_size}")
    names = np.asarray(provenance if provenance is not None else [model_version] * len(ids)).astype(str)
    models, model_codes = np.unique(names, return_inverse=True)
    prov_bytes = npy_bytes(model_codes.astype(np.uint16))
    meta: dict[str, JsonValue] = {
        **(metadata or {}),
        "feature_models": [str(m) for m in models],
        "provenance": {"path": PROVENANCE_FILE, "sha256": sha256_hex(prov_bytes), "size": len(prov_bytes)},
    }
    version = version or new_version_id()
    starts = list(range(0, len(ids), shard_size))
    writer = galleries.begin_version(
        gallery,
        version,
        model_version=model_version,
        codebook_version=codebook_version,
        parent_version=parent_version,
        num_shards=len(starts),
        arrays=("ids", "features", "codes"),
        metadata=meta,
        created_at=created_at,
    )
    galleries.store.put_bytes(galleries.version_key(gallery, version, PROVENANCE_FILE), prov_bytes)
    for n, start in enumerate(starts):
        if writer.shard_done(n):
            continue
        stop = start + shard_size
        block = features[start:stop]
        shard_codes = codes[start:stop] if codes is not None else codebooks.encode(block)
        writer.write_shard(n, ids[start:stop], block, shard_codes)
    manifest = writer.finalize()
    if index_builder is not None:
        arrays = galleries.load_arrays(gallery, version)
        manifest = writer.finalize(index_bytes=index_builder(arrays.codes, arrays.ids))
    if publish:
        writer.publish(expected_current=expected_current)
    return manifest


def sync_gallery(
    galleries: GalleryStore,
    gallery: str,
    source_version: str,
    wanted: ImageSet,
    model: Any,
    codebooks: DPQCodebooks,
    *,
    model_version: str,
    loader: LoaderConfig = DEFAULT_LOADER,
    device: str = "cpu",
    version: str | None = None,
    shard_size: int = 1024,
    index_builder: IndexBuilder | None = None,
    publish: bool = False,
    embedder: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[GalleryManifest, dict[str, int]]:
    """The next version holding exactly ``wanted``'s ids: removed ids absent, added ids embedded with
    ``model`` (the champion, ``model_version``) and encoded with ``codebooks`` (the live ones).

    ``embedder(ids)`` (e.g. components/gallery/dask_shards.py ``DaskShards.embed`` on a cluster)
    embeds the added ids instead of this process; it must return their features in that order.

    Only the added images are read. Returns the manifest and counts {kept, added, removed}. The
    manifest records what it was synced from (components/gallery/sync_lineage.py), which is what keeps
    the champion and the new CURRENT one whole pair without touching the registry.
    """
    source = galleries.load_manifest(gallery, source_version)
    arrays = galleries.load_arrays(gallery, source_version)
    if arrays.features is None or arrays.codes is None:
        raise BackfillError(f"gallery {gallery!r} version {source_version!r} must store features and codes")
    old_ids = arrays.ids.astype(str)
    prov = feature_models(galleries, gallery, source_version)
    want = wanted.item_ids
    keep = np.isin(old_ids, want)
    added = want[~np.isin(want, old_ids)]
    counts = {"kept": int(keep.sum()), "added": int(len(added)), "removed": int((~keep).sum())}
    if not counts["kept"] and not counts["added"]:
        raise BackfillError(f"gallery manifest {wanted.name}: no items; a gallery cannot be emptied")
    new_feats = np.zeros((0, source.feature_dim or codebooks.dim), dtype=np.float32)
    if len(added) and embedder is not None:
        new_feats = np.asarray(embedder(added), dtype=np.float32)
    elif len(added):
        (new_feats,) = embed([model], wanted.with_ids(added), loader, device=device)
    ids = np.concatenate([old_ids[keep], added])
    features = np.concatenate([arrays.features[keep], new_feats])
    codes = np.concatenate([arrays.codes[keep], codebooks.encode(new_feats).astype(arrays.codes.dtype)])
    manifest = write_feature_version(
        galleries,
        gallery,
        ids,
        features,
        codebooks,
        model_version=model_version,
        codebook_version=source.codebook_version or model_version,
        provenance=np.concatenate([prov[keep], np.full(len(added), model_version)]),
        parent_version=source_version,
        version=version,
        shard_size=shard_size,
        index_builder=index_builder,
        codes=codes,
        metadata={"backfill": {**sync_record(galleries, gallery, source, model_version), **counts}},
        publish=publish,
        expected_current=source_version,  # never over a version published since this one was read
    )
    return manifest, counts
