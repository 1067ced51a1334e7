"""Live-system tasks: the live gallery's composition, the compatibility targets, the no-op check."""

from __future__ import annotations

import json
from typing import Any

from hotswap.components.core.fingerprint import noop_reason, settings_hash
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.lifecycle.live import LiveComposition, compatibility_targets, read_composition
from hotswap.tasks.context import dataset, gallery_store, registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


@task(name="read-live-composition", task_run_name="read the live gallery's composition", cache_policy=NONE)
def live_composition(settings: HotswapSettings) -> dict[str, Any]:
    """Items per model version of the live gallery version, and its codebook version."""
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap`")
    composition = read_composition(galleries, settings.gallery_name, live)
    get_run_logger().info(
        "live gallery %s: %s (codebooks v%s)",
        live,
        ", ".join(f"v{v} {100 * s:.1f} %" for v, s in composition.shares.items()),
        composition.codebook_version,
    )
    return composition.model_dump(mode="json")


@task(
    name="plan-targets",
    task_run_name="choose the compatibility targets against v{champion}",
    cache_policy=NONE,
)
def plan_targets(
    settings: HotswapSettings, champion: str, composition: dict[str, Any]
) -> list[dict[str, Any]]:
    """T = {champion} ∪ {v : π_v ≥ compat.target_min_share}, weights ∝ π_v·γ^age.

    The rule is components/lifecycle/live.py's ``compatibility_targets``.
    """
    targets = compatibility_targets(
        LiveComposition.model_validate(composition),
        champion,
        mode=settings.compat.targets,
        min_share=settings.compat.target_min_share,
        champion_floor=settings.compat.champion_floor_weight,
        age_decay=settings.compat.target_age_decay,
    )
    get_run_logger().info(
        "compatibility targets: %s", ", ".join(f"v{t.version} (weight {t.weight:.2f})" for t in targets)
    )
    return [t.model_dump(mode="json") for t in targets]


@task(name="check-noop", task_run_name="is there anything new since v{champion}?", cache_policy=NONE)
def check_noop(settings: HotswapSettings, champion: str) -> str | None:
    """The reason this refresh would only reproduce an existing model, or None (see fingerprint.py)."""
    reg = registry(settings)
    return noop_reason(
        reg.resolve(champion), reg.list_versions(), dataset(settings).version, settings_hash(settings)
    )


@task(name="record-noop", task_run_name="record the no-op refresh against v{champion}", cache_policy=NONE)
def record_noop(settings: HotswapSettings, champion: str, reason: str) -> str:
    """A record run in MLflow saying the refresh did nothing, and why; returns its run id."""
    data_version = dataset(settings).version
    digest = settings_hash(settings)
    record = {
        "champion": champion,
        "dataset_version": data_version,
        "settings_hash": digest,
        "reason": reason,
    }
    run_id = registry(settings).log_record_run(
        "refresh-noop",
        f"refresh-noop-vs-v{champion}",
        {"noop.json": json.dumps(record, indent=2).encode()},
        tags={
            "hotswap.refresh": "noop",
            "hotswap.old_version": champion,
            "hotswap.settings_hash": digest,
            "data.version": data_version,
            "hotswap.noop_reason": reason,
        },
        directory="refresh",
    )
    get_run_logger().info("refresh did nothing: %s", reason)
    return run_id
