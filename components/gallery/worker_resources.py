"""What a Dask worker loads for itself, by reference: the model from the registry, the items from
the gallery's manifest (components/gallery/dask_shards.py ships only these references).

The references name immutable things (a registered model version) or carry the run's settings
(the gallery manifest, the data source, the S3 endpoint), so a worker anywhere that reaches the
registry, the store and the images builds exactly what the driver would have.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any

from hotswap.components.data.loading import LoaderConfig, SourceItemSource
from hotswap.components.gallery.dask_shards import DaskShards, Resource, WorkerSetup


def _load_model(tracking_uri: str, model_name: str, version: str) -> Any:
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    return ModelRegistry(tracking_uri, model_name).load_model(version).eval()


def registered_model(tracking_uri: str, model_name: str, version: str) -> Resource[Any]:
    """A registered model version: loaded once per worker, kept across runs (versions never change)."""
    return Resource(
        f"model:{tracking_uri}:{model_name}:{version}",
        functools.partial(_load_model, tracking_uri, model_name, str(version)),
    )


def _open_items(settings_data: dict[str, Any], preprocessing: Any, batch_size: int) -> SourceItemSource:
    from hotswap.components.core.settings import HotswapSettings
    from hotswap.components.data.catalog import gallery_items

    # model_validate takes the driver's settings as they are: no file or environment of the worker
    settings = HotswapSettings.model_validate(settings_data)
    # a worker reads its shard in its own thread: its parallelism is the cluster's workers
    return SourceItemSource(gallery_items(settings), preprocessing, LoaderConfig(batch_size, workers=0))


def gallery_item_source(settings: Any, preprocessing: Any) -> Resource[SourceItemSource]:
    """The gallery's items as ``preprocessing`` reads them, opened once per worker and driver run
    (the manifest may change between runs, e.g. by a gallery sync)."""
    return Resource(
        f"items:{uuid.uuid4().hex}",
        functools.partial(
            _open_items, settings.model_dump(mode="json"), preprocessing, settings.stream.batch_size
        ),
    )


def dask_shards(
    settings: Any, model_version: str, preprocessing: Any, *, extracts: bool = True
) -> DaskShards | None:
    """The cluster runner of ``dask.address`` for passes with ``model_version``; None = this machine.

    ``extracts=False`` (a requantize) ships no model and no items: workers only re-encode."""
    if settings.dask.address is None:
        return None
    setup = WorkerSetup(
        model=registered_model(settings.resolved_tracking_uri, settings.model_name, model_version)
        if extracts
        else None,
        items=gallery_item_source(settings, preprocessing) if extracts else None,
        batch_size=settings.backfill.batch_size,
        device=settings.device,
        torch_threads=settings.torch_threads,
    )
    return DaskShards(
        settings.dask.address,
        setup,
        retries=settings.dask.retries,
        connect_timeout_seconds=settings.dask.connect_timeout_seconds,
    )
