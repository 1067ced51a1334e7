"""Answer a query against the live gallery: champion model for the query, live index for the gallery.

This is the serving path in miniature. The query is always embedded by the *champion*; the
gallery is whatever CURRENT names — possibly features of an older, compatible model, encoded
with that version's DPQ codebooks. The faiss index stores gallery row numbers as ids, which map
back to item ids through the version's shards.

A mixed version (after a skip or partial backfill) is searched through
components/gallery/search.py: one sub-index per provenance model, scores calibrated for the
champion (the calibration stored in the version for it), merged. A mixed version written before
calibrations existed has none: it is then served by raw scores, and the result says so.

A query by the id of a live item whose stored feature the champion itself produced uses that
feature (components/gallery/item_features.py): the same vector, without loading the model. The
registry is read through components/registry/sqlite_reader.py. So ``search --item-id`` imports
neither MLflow nor torch in that case; torch comes in only to embed an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.catalog import find_item, labels_by_id
from hotswap.components.data.images import DataError
from hotswap.components.data.query_image import query_pixels
from hotswap.components.gallery.item_features import stored_query_feature
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.records import CHAMPION
from hotswap.components.registry.sqlite_reader import registry_for_reading


class NoLiveGalleryError(RuntimeError):
    """Nothing is live yet: bootstrap first."""


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    label: str | None


@dataclass(frozen=True)
class SearchHits:
    model_version: str
    gallery_version: str
    results: list[Hit]
    calibration: str = "single-model"  # single-model | stored | missing (raw scores on a mixed gallery)


def query_input(
    settings: HotswapSettings, model: object, image: Path | None, item_id: str | None
) -> np.ndarray:
    """The query as ``model`` reads it ([1, C, H, W]): a file, or an item of the gallery or data,
    decoded as it is (RGB stays RGB) and put through the model's own preprocessing."""
    if image is not None:
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise DataError(f"query image {image}: cannot be read ({exc.strerror or exc})") from exc
        return query_pixels(model, data, where=f"query image {image}")  # type: ignore[arg-type]
    from hotswap.components.data.loading import model_inputs

    return model_inputs(find_item(settings, str(item_id)), model.preprocessing)  # type: ignore[attr-defined]


def embed_query(
    settings: HotswapSettings, model: object, image: Path | None, item_id: str | None
) -> np.ndarray:
    """The champion's embedding of the query ([1, d]): the path that needs torch."""
    import torch

    pixels = query_input(settings, model, image, item_id)
    with torch.no_grad():
        return model.eval().embed(torch.from_numpy(pixels)).numpy()  # type: ignore[attr-defined]


def search_live(
    settings: HotswapSettings, image: Path | None = None, item_id: str | None = None, k: int = 5
) -> SearchHits:
    """Top-``k`` live gallery items for one query image (a file, or an item of the dataset)."""
    registry = registry_for_reading(settings)
    info = registry.resolve(CHAMPION)
    galleries = GalleryStore(open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url))
    version = galleries.read_current(settings.gallery_name)
    if version is None:
        raise NoLiveGalleryError(
            f"gallery {settings.gallery_name!r} has no live version: run `hotswap bootstrap`"
        )
    if galleries.load_manifest(settings.gallery_name, version).index is None:
        raise NoLiveGalleryError(f"gallery {settings.gallery_name!r} version {version} has no index")
    searcher = GallerySearcher.from_version(
        galleries, settings.gallery_name, version, info.version, require_calibration=False
    )
    query = None
    if image is None and item_id is not None:
        query = stored_query_feature(galleries, settings.gallery_name, version, item_id, info.version)
    if query is None:
        query = embed_query(settings, registry.load_model(info), image, item_id)
    scores, ids = searcher.search(query, k=k)
    labels = labels_by_id(settings)
    results = [
        Hit(item_id=str(item), score=float(score), label=labels.get(str(item)))
        for item, score in zip(ids[0], scores[0], strict=True)
        if item != ""
    ]
    return SearchHits(
        model_version=info.version,
        gallery_version=version,
        results=results,
        calibration=searcher.calibration_source,
    )
