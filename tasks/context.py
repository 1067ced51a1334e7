"""What every task needs from the settings: the registry, the gallery store and the dataset.

Tasks receive settings (a validated pydantic object, JSON-serialisable as a Prefect parameter)
and ids/versions, never tensors: each task loads what it needs, so a task can be retried, cached
by its ids or run on another worker.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from hotswap.components.classes import check_classes
from hotswap.components.data import ImageDataset, load_dataset
from hotswap.components.gallery import GalleryStore
from hotswap.components.registry import ModelRegistry
from hotswap.components.service_timeouts import apply_service_timeouts
from hotswap.components.settings import HotswapSettings
from hotswap.components.store import open_store


def settings_from(overrides: dict[str, Any] | None = None) -> HotswapSettings:
    """Settings from file + environment, with a flow's parameter overrides on top."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    settings = HotswapSettings(**(overrides or {}))
    apply_service_timeouts(settings)
    torch.set_num_threads(settings.torch_threads)
    return settings


def registry(settings: HotswapSettings) -> ModelRegistry:
    return ModelRegistry.from_settings(settings)


def gallery_store(settings: HotswapSettings) -> GalleryStore:
    s3 = settings.resolved_store_uri.startswith("s3://")
    options = {"timeout_seconds": settings.service_timeout_seconds} if s3 else {}
    return GalleryStore(
        open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url, **options)
    )


def gallery_dataset(settings: HotswapSettings) -> ImageDataset:
    """The images gallery items are read from: the whole data source, never restricted to
    ``data.classes``. The classes a model is trained on grow from refresh to refresh; the gallery
    holds items of every class from the start, and a backfill must find all of them."""
    return load_dataset(
        settings.data.source, seed=settings.data.split_seed, image_size=settings.data.image_size
    )


def dataset_version(settings: HotswapSettings) -> str:
    """The configured data's version: a hash of the manifest's rows when streamed (nothing is
    decoded), else of the decoded dataset (restricted to ``data.classes``)."""
    if settings.stream.enabled:
        from hotswap.tasks.streaming import dataset_version as streamed_version

        return streamed_version(settings)
    return dataset(settings).version


def dataset(settings: HotswapSettings) -> ImageDataset:
    """The configured dataset as it is now (decoded once per process per manifest version),
    restricted to ``data.classes`` when set (the dataset version then names that subset)."""
    data = load_dataset(
        settings.data.source, seed=settings.data.split_seed, image_size=settings.data.image_size
    )
    classes = check_classes("data.classes", settings.data.classes, np.unique(data.labels))
    if classes is None:
        return data
    restricted = data.with_classes(classes)
    return replace(restricted, name=data.name)
