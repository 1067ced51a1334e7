"""What every task needs from the settings: the registry, the gallery store and the data.

Tasks receive settings (a validated pydantic object, JSON-serialisable as a Prefect parameter)
and ids/versions, never tensors: each task loads what it needs, so a task can be retried, cached
by its ids or run on another worker. The data comes from one place for every source
(components/data/catalog.py): the labelled data, restricted to ``data.classes``, and the gallery's
own items.

A flow module imports its tasks, and the CLI imports the flow module before the run starts, so
task modules import at their top only what loads fast (settings, records, Prefect). Components
that load torch, faiss or MLflow are imported inside the task that uses them: every run starts
without waiting for them, and a refresh that has nothing to do never loads torch or faiss
(tests/unit/test_import_cost.py holds the line).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hotswap.components.core.service_timeouts import apply_service_timeouts
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.core.threads import limit_torch_threads
from hotswap.components.data.catalog import current_data, gallery_items, labelled_data, loader_config
from hotswap.components.data.images import ImageSet
from hotswap.components.data.sources import forget_decoded_images
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore

if TYPE_CHECKING:
    from hotswap.components.registry.mlflow_registry import ModelRegistry

__all__ = [
    "dataset",
    "dataset_version",
    "gallery_items",
    "gallery_store",
    "loader_config",
    "registry",
    "with_dask",
]


def settings_from(overrides: dict[str, Any] | None = None) -> HotswapSettings:
    """Settings from file + environment, with a flow's parameter overrides on top."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    settings = HotswapSettings(**(overrides or {}))
    forget_decoded_images()  # a flow run reads its images afresh, then as often as it likes
    apply_service_timeouts(settings)
    limit_torch_threads(settings.torch_threads)
    return settings


def with_dask(overrides: dict[str, Any] | None, address: str | None) -> dict[str, Any] | None:
    """A flow's ``dask_address`` parameter on top of its overrides (the ``dask.address`` setting)."""
    if not address:
        return overrides
    merged = dict(overrides or {})
    merged["dask"] = {**dict(merged.get("dask") or {}), "address": address}
    return merged


def registry(settings: HotswapSettings) -> ModelRegistry:
    """The MLflow registry (MLflow is imported by the first task that needs it)."""
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    return ModelRegistry.from_settings(settings)


def gallery_store(settings: HotswapSettings) -> GalleryStore:
    s3 = settings.resolved_store_uri.startswith("s3://")
    options = {"timeout_seconds": settings.service_timeout_seconds} if s3 else {}
    return GalleryStore(
        open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url, **options)
    )


def dataset(settings: HotswapSettings) -> ImageSet:
    """The labelled data as it is now, restricted to ``data.classes`` when set (rows only for
    object sources: images are read when a pass needs them)."""
    return current_data(settings)


def served_validation(settings: HotswapSettings) -> ImageSet:
    """The validation items options are judged on as served (``decision.validation_classes``):
    every labelled class by default, because the live gallery holds items of classes the models
    were not trained on; only ``data.classes`` with 'trained'."""
    data = labelled_data(settings) if settings.decision.validation_classes == "gallery" else dataset(settings)
    return data.split(settings.data.validation_split)


def dataset_version(settings: HotswapSettings) -> str:
    """The configured data's version: rows plus pixel hashes, S3 ETags or file hashes (nothing decoded)."""
    return dataset(settings).version
