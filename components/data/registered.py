"""Registered dataset versions: what new data a refresh may be started for, recorded in MLflow.

Registering a data source computes its content version (components/data/images.py) and records it once as
an MLflow run of kind ``dataset`` (tags ``data.version``, ``data.source``). Registering the same
content again finds that record and reports it as known, so callers emit nothing new.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.sources import open_source
from hotswap.components.registry.records import TAG_DATA_VERSION

DATASET_KIND = "dataset"
TAG_DATA_SOURCE = "data.source"


@dataclass(frozen=True)
class DatasetRegistration:
    version: str
    source: str
    items: int
    classes: int
    new: bool
    run_id: str


def register_dataset(settings: HotswapSettings, source: str) -> DatasetRegistration:
    """Compute ``source``'s dataset version and record it unless that version is already known.

    A local path is recorded absolute, so a worker started elsewhere reads the same files.
    """
    from hotswap.components.registry.mlflow_registry import ModelRegistry  # MLflow: only when it runs

    if Path(source).exists():
        source = str(Path(source).resolve())
    data = open_source(source, seed=settings.data.split_seed, endpoint_url=settings.s3_endpoint_url)
    registry = ModelRegistry.from_settings(settings)
    known = registry.find_runs(DATASET_KIND, {TAG_DATA_VERSION: data.version})
    if known:
        return DatasetRegistration(
            data.version, source, len(data), data.num_classes, new=False, run_id=known[0].info.run_id
        )
    summary = {"version": data.version, "source": source, "items": len(data), "classes": data.num_classes}
    run_id = registry.log_record_run(
        DATASET_KIND,
        f"dataset-{data.version[:6]}",
        {"dataset.json": json.dumps(summary, indent=2).encode()},
        metrics={"items": len(data), "classes": data.num_classes},
        tags={TAG_DATA_VERSION: data.version, TAG_DATA_SOURCE: source},
        directory="dataset",
    )
    return DatasetRegistration(data.version, source, len(data), data.num_classes, new=True, run_id=run_id)
