"""A LivePair: one model version and the gallery version it is served with, immutable once built.

Every query is answered by exactly one pair, and the answer names it. The service holds a single
reference to the live pair; a request reads that reference once and uses only what it got, so a
swap (one attribute assignment) can never mix the model of one pair with the gallery of another.

A pair is built beside the live one and health-checked before it may go live (:func:`health_check`):
the model must embed into the index's dimension with finite values, the searcher must answer
with valid ids and ordered finite scores, and stored gallery features must find their own items
(the share that must is a setting; the share found is always reported).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import torch
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.components.serving.searcher import open_searcher


class PairUnhealthyError(RuntimeError):
    """A freshly built pair failed its health check; the message says which check."""


@dataclass(frozen=True, eq=False)
class LivePair:
    """(model version, model, gallery version, searcher, id map); never mutated after building."""

    model_version: str
    model: EmbeddingModel
    gallery_version: str
    searcher: GallerySearcher
    device: str = "cpu"
    built_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_seconds: float = 0.0
    health: dict[str, float] = field(default_factory=dict)
    _forward_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def item_ids(self) -> np.ndarray:
        """The id map: faiss row → item id."""
        return self.searcher.item_ids

    @property
    def dim(self) -> int:
        return self.searcher.dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        spec = self.model.spec
        return (spec.in_channels, spec.image_size, spec.image_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Query features [n, d] float32 for images [n, C, H, W] already in the model's own
        preprocessing (components/data/query_image.py), in one forward pass."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images of shape {tuple(images.shape)} do not fit model v{self.model_version}'s "
                f"input [n, {', '.join(map(str, self.input_shape))}]"
            )
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with self._forward_lock, torch.inference_mode():
            return self.model.embed(batch).cpu().numpy()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [n, k], item ids [n, k]) of query features in this pair's gallery."""
        return self.searcher.search(queries, k)

    def describe(self) -> dict[str, object]:
        return {
            "model_version": self.model_version,
            "gallery_version": self.gallery_version,
            "items": self.searcher.ntotal,
            "dim": self.dim,
            "built_at": self.built_at.isoformat(),
            "load_seconds": round(self.load_seconds, 3),
            "health": self.health,
        }


def build_pair(
    registry: ModelRegistry,
    galleries: GalleryStore,
    gallery: str,
    model_version: str,
    gallery_version: str,
    device: str = "cpu",
) -> LivePair:
    """Load the model and the gallery of one pair (not yet health-checked)."""
    start = time.perf_counter()
    searcher = open_searcher(galleries, gallery, gallery_version, query_model=str(model_version))
    model = registry.load_model(model_version).to(device).eval()
    if model.embedding_dim != searcher.dim:
        raise PairUnhealthyError(
            f"model v{model_version} embeds into d = {model.embedding_dim}, "
            f"gallery {gallery_version} holds d = {searcher.dim}"
        )
    return LivePair(
        model_version=str(model_version),
        model=model,
        gallery_version=gallery_version,
        searcher=searcher,
        device=device,
        load_seconds=time.perf_counter() - start,
    )


def _check_answer(pair: LivePair, scores: np.ndarray, ids: np.ndarray, what: str) -> None:
    where = f"model v{pair.model_version} + gallery {pair.gallery_version}: {what}"
    if not np.isfinite(scores).all():
        raise PairUnhealthyError(f"{where} returned non-finite scores")
    if (np.diff(scores, axis=1) > 1e-5).any():
        raise PairUnhealthyError(f"{where} returned scores out of order")
    if (ids == "").any():
        raise PairUnhealthyError(f"{where} returned empty item ids")


def health_check(
    pair: LivePair,
    probe_images: np.ndarray | None = None,
    probe_features: np.ndarray | None = None,
    probe_ids: np.ndarray | None = None,
    k: int = 10,
    min_self_hit: float = 0.0,
) -> LivePair:
    """Self-queries through the whole path; returns the pair with its health figures, or raises.

    ``probe_images`` go through the model (a blank image when None); ``probe_features`` with
    ``probe_ids`` are stored gallery features that should find their own items in the top ``k``.
    """
    images = probe_images if probe_images is not None else np.zeros((1, *pair.input_shape), np.float32)
    features = pair.embed(images)
    if features.shape != (len(images), pair.dim) or not np.isfinite(features).all():
        raise PairUnhealthyError(
            f"model v{pair.model_version}: probe embeddings have shape {features.shape} "
            f"(expected {(len(images), pair.dim)}) or non-finite values"
        )
    scores, ids = pair.search(features, k)
    _check_answer(pair, scores, ids, "image probes")
    health = {"image_probes": float(len(images))}
    if probe_features is not None and probe_ids is not None and len(probe_ids):
        scores, ids = pair.search(probe_features, k)
        _check_answer(pair, scores, ids, "self-queries")
        hit = float(np.mean([want in row for want, row in zip(probe_ids.astype(str), ids, strict=True)]))
        health.update(self_queries=float(len(probe_ids)), self_hit=hit)
        if hit < min_self_hit:
            raise PairUnhealthyError(
                f"model v{pair.model_version} + gallery {pair.gallery_version}: only {hit:.0%} of "
                f"{len(probe_ids)} gallery items find themselves in their top {k} (need {min_self_hit:.0%})"
            )
    return replace(pair, health=health)


def probe_items(
    galleries: GalleryStore, gallery: str, version: str, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """(stored features, ids) of up to ``count`` items of the version's first shard, for self-queries.

    Empty arrays when the version stores codes only (its items can then only be probed by image).
    """
    arrays = galleries.load_shard(gallery, version, 0)
    if arrays.features is None:
        return np.empty((0, 0), np.float32), np.empty(0, str)
    rows = np.linspace(0, len(arrays.ids) - 1, num=min(count, len(arrays.ids))).round().astype(int)
    rows = np.unique(rows)
    return arrays.features[rows].astype(np.float32), arrays.ids[rows].astype(str)
