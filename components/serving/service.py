"""The query service without HTTP: one live-pair reference, a watcher that replaces it, a batcher.

:class:`LiveService` is what ``hotswap serve`` runs (components/serving/app.py puts FastAPI in
front of it). ``pair`` is the single reference to the live :class:`LivePair`; a request reads
it once and hands that pair to the batcher with its queries, so every answer comes wholly from
one pair and names it. Swapping is one assignment under a lock (the lock only orders swaps
against each other; readers never take it).
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import Future

import faiss
import numpy as np
import torch
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.catalog import find_item, gallery_items
from hotswap.components.data.images import DataError, ImageSet
from hotswap.components.data.loading import model_inputs
from hotswap.components.gallery.live_state import LiveTarget, read_live_target
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.components.serving.batching import QueryBatcher
from hotswap.components.serving.metrics import ServeMetrics
from hotswap.components.serving.pair import LivePair, build_pair, health_check, probe_items
from hotswap.components.serving.watcher import PairWatcher

log = logging.getLogger("hotswap.serve")


class NotLiveError(RuntimeError):
    """No pair is live yet (nothing promoted, or every load so far failed)."""


class VersionNotLiveError(ValueError):
    """A raw embedding names a model version that is not the live one."""


class UnknownItemError(LookupError):
    """An item id the configured dataset does not hold."""


class LiveService:
    def __init__(
        self,
        settings: HotswapSettings,
        registry: ModelRegistry | None = None,
        galleries: GalleryStore | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.serve
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.galleries = galleries or GalleryStore(
            open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url)
        )
        self.metrics = ServeMetrics()
        self.batcher = QueryBatcher(
            self.config.batch_size,
            self.config.max_wait_ms / 1000.0,
            self.config.queue_limit,
            on_batch=self.metrics.batch.observe,
        )
        self.watcher = PairWatcher(
            read_target=self.read_target,
            build=self.build,
            current=lambda: self.pair,
            swap=self.swap,
            on_failure=lambda target, exc: self.metrics.failed_loads.inc(),
            interval_s=self.config.poll_interval_s,
            retry_failed_s=self.config.retry_failed_s,
        )
        self.pair: LivePair | None = None
        self._lineage_memo: dict[tuple[str, str, str], bool] = {}
        self._swap_lock = threading.Lock()

    # lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Set thread counts, start the batcher, load what is live now, then follow changes."""
        torch.set_num_threads(self.config.torch_threads)
        faiss.omp_set_num_threads(self.config.faiss_threads)
        if self.config.switch_interval_ms is not None:
            sys.setswitchinterval(self.config.switch_interval_ms / 1000.0)
        self.batcher.start()
        self.watcher.poll_once()
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.batcher.stop()

    # following --------------------------------------------------------------

    def read_target(self) -> LiveTarget:
        return read_live_target(
            self.registry, self.galleries, self.settings.gallery_name, memo=self._lineage_memo
        )

    def build(self, target: LiveTarget) -> LivePair:
        """Build and health-check the pair ``target`` names, beside the live one."""
        gallery = self.settings.gallery_name
        pair = build_pair(
            self.registry,
            self.galleries,
            gallery,
            target.model_version,
            target.gallery_version,
            device=self.settings.torch_device,
        )
        features, ids = probe_items(
            self.galleries, gallery, target.gallery_version, self.config.health_probes
        )
        return health_check(
            pair,
            probe_images=self._probe_images(pair),
            probe_features=features if len(ids) else None,
            probe_ids=ids if len(ids) else None,
            k=self.config.health_k,
            min_self_hit=self.config.health_min_self_hit,
        )

    def swap(self, pair: LivePair) -> None:
        with self._swap_lock:
            self.pair = pair  # the one reference every request reads
            self.metrics.set_live(pair.model_version, pair.gallery_version, pair.load_seconds)

    def live_pair(self) -> LivePair:
        pair = self.pair
        if pair is None:
            reason = self.watcher.last_error or (
                self.watcher.last_target.reason if self.watcher.last_target else "starting"
            )
            raise NotLiveError(f"no model and gallery are live yet ({reason})")
        return pair

    # queries ----------------------------------------------------------------

    def _probe_images(self, pair: LivePair) -> np.ndarray | None:
        """A few gallery items as the pair's model reads them (None when the gallery cannot be read)."""
        try:
            items: ImageSet = gallery_items(self.settings)
            sample = items.subset(np.arange(min(len(items), self.config.health_probes)))
            return model_inputs(sample, pair.model.preprocessing)
        except DataError:
            return None

    def item_image(self, item_id: str, pair: LivePair) -> np.ndarray:
        """[1, C, H, W]: an item of the gallery or the data, as the pair's model reads it."""
        try:
            item = find_item(self.settings, item_id)
        except DataError as exc:
            raise UnknownItemError(str(exc)) from None
        return model_inputs(item, pair.model.preprocessing)

    def check_k(self, k: int | None) -> int:
        k = self.config.default_k if k is None else k
        if not 1 <= k <= self.config.max_k:
            raise ValueError(f"k must be between 1 and {self.config.max_k}, got {k}")
        return k

    def submit_images(self, pair: LivePair, images: np.ndarray, k: int) -> Future:
        if tuple(images.shape[1:]) != pair.input_shape:
            raise ValueError(
                f"query image of shape {tuple(images.shape[1:])} does not fit model v{pair.model_version}'s "
                f"input {pair.input_shape}"
            )
        return self.batcher.submit(pair, images=images, k=k)

    def submit_embedding(self, pair: LivePair, model_version: str, embedding: np.ndarray, k: int) -> Future:
        if str(model_version) != pair.model_version:
            raise VersionNotLiveError(
                f"embedding is from model v{model_version}, but v{pair.model_version} is live "
                f"(with gallery {pair.gallery_version}); re-embed with v{pair.model_version}"
            )
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != pair.dim:
            raise ValueError(
                f"embedding has {vector.shape[1]} values, model v{pair.model_version} gives {pair.dim}"
            )
        if not np.isfinite(vector).all():
            raise ValueError("embedding contains NaN or infinite values")
        return self.batcher.submit(pair, embeddings=vector, k=k)
