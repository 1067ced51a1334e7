"""Answer a query against the live gallery: champion model for the query, live index for the gallery.

This is the serving path in miniature. The query is always embedded by the *champion*; the
gallery is whatever CURRENT names — possibly features of an older, compatible model, encoded
with that version's DPQ codebooks. The faiss index stores gallery row numbers as ids, which map
back to item ids through the version's shards.

A mixed version (after a skip or partial backfill) is searched through
components/gallery_search.py: one sub-index per provenance model, scores calibrated for the
champion (the calibration stored in the version for it), merged. A mixed version written before
calibrations existed has none: it is then served by raw scores, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hotswap.components.data import DataError, load_dataset
from hotswap.components.gallery import GalleryStore
from hotswap.components.gallery_search import GallerySearcher
from hotswap.components.preflight import check_query_size
from hotswap.components.query_image import ReadsPixels, query_pixels
from hotswap.components.registry import CHAMPION, ModelRegistry
from hotswap.components.settings import HotswapSettings
from hotswap.components.store import open_store


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


def _read_query_file(image: Path) -> bytes:
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        raise DataError(f"query image {image}: cannot be read ({exc.strerror or exc})") from exc


def _query_image(
    settings: HotswapSettings, model: ReadsPixels, image: Path | None, item_id: str | None
) -> np.ndarray:
    """A query file in the champion's own preprocessing; an item id from the in-memory dataset."""
    size = settings.data.image_size
    if image is not None:
        return query_pixels(model, _read_query_file(image), where=f"query image {image}")
    dataset = load_dataset(settings.data.source, seed=settings.data.split_seed, image_size=size)
    rows = np.flatnonzero(dataset.item_ids == item_id)
    if len(rows) == 0:
        raise DataError(f"item id {item_id!r} is not in data source {settings.data.source!r}")
    return dataset.images[rows[:1]]


def search_live(
    settings: HotswapSettings, image: Path | None = None, item_id: str | None = None, k: int = 5
) -> SearchHits:
    """Top-``k`` live gallery items for one query image (a file, or an item of the dataset)."""
    registry = ModelRegistry.from_settings(settings)
    info = registry.resolve(CHAMPION)
    model = registry.load_model(info)
    size = check_query_size(settings, model, info.version)  # queries are embedded at the champion's size
    settings = settings.model_copy(update={"data": settings.data.model_copy(update={"image_size": size})})
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
    streamed = settings.stream.enabled
    pixels = (
        _streamed_query(settings, model, image, item_id)
        if streamed
        else _query_image(settings, model, image, item_id)
    )
    with torch.no_grad():
        query = model.eval().embed(torch.from_numpy(pixels)).numpy()
    scores, ids = searcher.search(query, k=k)
    labels = _streamed_labels(settings) if streamed else _labels_by_id(settings)
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


def _manifests(settings: HotswapSettings) -> list:
    """The gallery manifest and the training manifest (rows only; nothing decoded)."""
    from hotswap.components.streaming import read_image_manifest

    out = []
    if settings.stream.gallery_manifest:
        out.append(
            read_image_manifest(settings.stream.gallery_manifest, require_labels=False, require_splits=False)
        )
    if settings.data.source.endswith((".csv", ".parquet")):
        out.append(read_image_manifest(settings.data.source, require_labels=False, require_splits=False))
    return out


def _streamed_query(
    settings: HotswapSettings, model: ReadsPixels, image: Path | None, item_id: str | None
) -> np.ndarray:
    """With streamed data: the query from its file or manifest row, in the model's own preprocessing."""
    from hotswap.components.streaming import ObjectReader

    if image is not None:
        return query_pixels(model, _read_query_file(image), where=f"query image {image}")
    where = f"item {item_id!r}"
    try:
        for manifest in _manifests(settings):
            rows = manifest.frame.index[manifest.frame["item_id"] == str(item_id)]
            if len(rows):
                uri = manifest.frame.loc[rows[0], "uri"]
                data = ObjectReader(settings.s3_endpoint_url).read(uri, manifest.base_dir)
                break
        else:
            raise DataError(f"item id {item_id!r} is in neither the gallery nor the training manifest")
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: cannot be read ({exc})") from exc
    return query_pixels(model, data, where)


def _streamed_labels(settings: HotswapSettings) -> dict[str, str]:
    labels: dict[str, str] = {}
    for manifest in reversed(_manifests(settings)):
        labels.update(
            {i: x for i, x in zip(manifest.frame["item_id"], manifest.frame["label"], strict=True) if x}
        )
    return labels


def _labels_by_id(settings: HotswapSettings) -> dict[str, str]:
    """Class names of gallery items when the configured dataset knows them (for display only)."""
    try:
        data = load_dataset(
            settings.data.source, seed=settings.data.split_seed, image_size=settings.data.image_size
        )
    except DataError:
        return {}
    names = data.class_names or tuple(str(i) for i in range(data.num_classes))
    return {str(i): names[label] for i, label in zip(data.item_ids, data.labels, strict=True)}
