"""Preflight tasks: check a command's inputs before its first write (components/core/preflight.py)."""

from __future__ import annotations

import numpy as np
from hotswap.components.core.preflight import check_bootstrap, check_refresh
from hotswap.components.core.settings import HotswapSettings
from hotswap.tasks.context import dataset, gallery_items, gallery_store, registry
from prefect import task
from prefect.cache_policies import NONE


@task(name="check-bootstrap-inputs", task_run_name="check the bootstrap inputs", cache_policy=NONE)
def check_bootstrap_inputs(settings: HotswapSettings) -> None:
    check_bootstrap(settings, dataset(settings))


@task(
    name="check-refresh-inputs",
    task_run_name="check the refresh inputs against v{champion}",
    cache_policy=NONE,
)
def check_refresh_inputs(settings: HotswapSettings, champion: str) -> None:
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    ids = np.array([], dtype=str)
    if live is not None:
        ids = galleries.load_ids(settings.gallery_name, live)
    check_refresh(
        settings,
        registry(settings).load_model(champion),
        champion,
        dataset(settings),
        ids,
        gallery_items(settings),
    )
