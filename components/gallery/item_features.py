"""A gallery item's stored feature, when it is exactly the query a model would compute for it.

``hotswap search --item-id`` embeds the item's image with the champion. When the item is in the
live gallery and its stored feature was produced by that same model version (the per-item
provenance, components/gallery/provenance.py), the stored feature *is* that embedding: the same
model, the same preprocessing, the same image (measured: they agree to ~1e-7, printed scores do
not change). Reading it back needs neither the model nor torch, which keeps ``search`` fast;
in every other case (an item of another model's features, an item not in the gallery, a version
without stored features) the caller embeds the image as before.
"""

from __future__ import annotations

import numpy as np
from hotswap.components.gallery.provenance import feature_models
from hotswap.components.gallery.versions import GalleryStore


def stored_query_feature(
    galleries: GalleryStore, gallery: str, version: str, item_id: str, model_version: str
) -> np.ndarray | None:
    """The stored feature of ``item_id`` as a [1, d] float32 query, or None unless it is live in
    ``version`` and was embedded by ``model_version`` (then the caller embeds the image itself)."""
    manifest = galleries.load_manifest(gallery, version)
    ids = galleries.load_ids(gallery, version)
    rows = np.flatnonzero(ids == str(item_id))
    if not len(rows):
        return None
    row = int(rows[0])
    if str(feature_models(galleries, gallery, version)[row]) != str(model_version):
        return None
    start = 0
    for n, shard in enumerate(manifest.shards):
        if row < start + shard.count:
            if "features" not in shard.files:
                return None
            features = galleries.load_shard(gallery, version, n, manifest).features
            return np.asarray(features[row - start], dtype=np.float32)[None, :]
        start += shard.count
    return None
