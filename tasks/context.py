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


def apply_service_timeouts(settings: HotswapSettings) -> None:
    """Bound every wait on MLflow and S3 by ``service_timeout_seconds`` (unless set explicitly).

    MLflow's HTTP client otherwise waits 120 s per request and retries 7 times with backoff
    (minutes before a stopped server is reported); S3 clients read the same variable.
    """
    timeout = settings.service_timeout_seconds
    os.environ.setdefault("HOTSWAP_SERVICE_TIMEOUT_SECONDS", str(timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # Prefect's API client waits 60 s per request by default; its server can be slow on a busy
    # machine (SQLite), so it gets a longer bound than MLflow and S3, but still a bound.
    os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", str(max(30.0, 3 * timeout)))


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
