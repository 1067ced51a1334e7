"""Tasks that write gallery versions: the first gallery, and backfilled versions from the live one.

Every version is written under a deterministic id, so rerunning an interrupted task resumes the
same staged version; each staged version is made searchable calibrated before anything publishes it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.gallery.calibration import ensure_calibration, fit_for_gallery
from hotswap.components.gallery.live_state import TAG_GALLERY_VERSION
from hotswap.components.lifecycle.live import read_composition
from hotswap.tasks.context import (
    gallery_items,
    gallery_store,
    loader_config,
    registry,
    served_validation,
)
from hotswap.tasks.quantization import load_codebooks
from hotswap.tasks.reporting import artifact_key
from hotswap.tasks.transforms import load_transforms
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

if TYPE_CHECKING:
    from hotswap.components.gallery.shard_jobs import ShardResult
    from hotswap.components.quant.dpq import DPQCodebooks


def _index_builder(codebooks: DPQCodebooks):
    """faiss ids are gallery row numbers; the version's shards map them back to item ids."""
    from hotswap.components.quant.index import build_flat_index, index_to_bytes

    def build(codes: np.ndarray, ids: np.ndarray) -> bytes:
        return index_to_bytes(
            build_flat_index(codebooks.codebooks, codes, np.arange(len(ids), dtype=np.int64))
        )

    return build


def _progress(key: str, description: str, total_shards: int):
    """A Prefect progress artifact (keyed, so the Artifacts page lists it) updated after every
    finished (or verified-and-skipped) shard."""
    artifact_id = create_progress_artifact(progress=0.0, key=artifact_key(key), description=description)
    lock = threading.Lock()
    done = [0]

    def on_shard(result: ShardResult) -> None:
        with lock:
            done[0] += 1
            progress = min(100.0, 100.0 * done[0] / max(total_shards, 1))
        update_progress_artifact(artifact_id=artifact_id, progress=progress)

    return on_shard


def _report_shares(runner: Any) -> None:
    """Which worker ran how many shards (the run's log; the Dask dashboard shows the tasks)."""
    if runner is not None and runner.shares:
        shares = ", ".join(f"{w or '?'}: {n}" for w, n in sorted(runner.shares.items()))
        get_run_logger().info("shards per Dask worker at %s: %s", runner.address, shares)


def _shards(items: int, shard_size: int) -> int:
    return -(-items // shard_size)


@task(name="build-first-gallery", task_run_name="build the first gallery with v{version}", cache_policy=NONE)
def build_first_gallery(settings: HotswapSettings, version: str) -> str:
    """Embed and encode every gallery item with the first model; a staged (unpublished) version."""
    from hotswap.components.gallery.backfill import build_gallery_version
    from hotswap.components.gallery.worker_resources import dask_shards

    reg = registry(settings)
    model = reg.load_model(version)
    codebooks = load_codebooks(settings, version)
    items = gallery_items(settings).item_ids
    runner = dask_shards(settings, version, model.preprocessing)
    manifest = build_gallery_version(
        gallery_store(settings),
        settings.gallery_name,
        model,
        codebooks,
        _item_source(settings, model),
        items,
        model_version=version,
        codebook_version=version,
        version=f"v{version}-bootstrap",
        shard_size=settings.backfill.shard_size,
        executor=runner,
        workers=settings.backfill.workers,
        compute_slots=settings.backfill.compute_slots,
        batch_size=settings.backfill.batch_size,
        device=settings.torch_device,
        index_builder=_index_builder(codebooks),
        on_shard=_progress(
            f"gallery-progress-{settings.gallery_name}-v{version}-bootstrap",
            f"first gallery ({len(items)} items)",
            _shards(len(items), settings.backfill.shard_size),
        ),
    )
    _report_shares(runner)
    reg.set_tags(version, {TAG_GALLERY_VERSION: manifest.version})
    return manifest.version


def ensure_served_calibration(settings: HotswapSettings, gallery_version: str, query_version: str) -> str:
    """Make sure ``query_version`` can search ``gallery_version`` calibrated (fits one if mixed and missing).

    Called for every version a decision stages, skip included: after a skip onto an already-mixed
    version the query model changes while the gallery does not, so the new model's calibration is
    added to that version (components/gallery/calibration.py). Returns how it was obtained.
    """
    galleries = gallery_store(settings)
    name = settings.gallery_name

    def fit(models: list[str]):
        reg = registry(settings)
        manifest = galleries.load_manifest(name, gallery_version)
        books = load_codebooks(settings, manifest.codebook_version) if manifest.codebook_version else None
        return fit_for_gallery(
            query_version,
            {v: reg.load_model(v) for v in {*models, query_version}},
            served_validation(settings),
            books,
            settings.decision.calibration,
            batch_size=settings.backfill.batch_size,
            device=settings.torch_device,
            fitted_on={"gallery_version": gallery_version, "codebook_version": manifest.codebook_version},
        )

    _, how = ensure_calibration(galleries, name, gallery_version, query_version, fit)
    return how


def _target_version_id(new_version: str, mode: str, fraction: float | None) -> str:
    """Deterministic, so rerunning an interrupted backfill resumes the same staged version."""
    partial = mode == "partial" or (mode == "transform" and fraction)
    suffix = f"-{round(1000 * fraction):04d}" if partial and fraction is not None else ""
    return f"v{new_version}-{mode}{suffix}"


def _item_source(settings: HotswapSettings, model: Any) -> Any:
    """The gallery's items by id, read through the data source in ``model``'s preprocessing."""
    from hotswap.components.data.loading import SourceItemSource

    return SourceItemSource(gallery_items(settings), model.preprocessing, loader_config(settings))


def _backfill(
    settings: HotswapSettings,
    new_version: str,
    source_version: str,
    mode: str,
    fraction: float | None,
    config: DecisionConfig,
    old_version: str | None,
    gallery_items: int,
) -> str:
    """Write the target gallery version for ``new_version`` (resumes an interrupted run).

    With ``dask.address`` set the shards run as tasks on that cluster (this machine plans,
    reports progress and finishes the version); otherwise on ``backfill.workers`` threads here.
    """
    from hotswap.components.gallery.backfill import run_backfill
    from hotswap.components.gallery.worker_resources import dask_shards

    reg = registry(settings)
    old_model = reg.load_model(old_version) if old_version else None
    codebooks = load_codebooks(settings, new_version)
    new_model = reg.load_model(new_version)
    transforms = None
    if mode == "transform" or config.ordering == "transform_uncertainty":  # maps of the source's models
        source = read_composition(gallery_store(settings), settings.gallery_name, source_version)
        transforms = load_transforms(settings, new_version, sorted(set(source.counts) - {str(new_version)}))
    ordering = config.ordering
    if (
        mode == "transform"
        and fraction
        and transforms
        and all(t.has_uncertainty for t in transforms.values())
    ):
        ordering = "transform_uncertainty"  # transform(f) was measured in the maps' own order
    extracts = mode not in ("requantize", "transform") or bool(mode == "transform" and fraction)
    executor = dask_shards(settings, new_version, new_model.preprocessing, extracts=extracts)
    manifest = run_backfill(
        gallery_store(settings),
        settings.gallery_name,
        source_version,
        mode,
        new_model,
        codebooks,
        _item_source(settings, new_model),
        fraction=fraction,
        ordering=ordering,
        shard_size=settings.backfill.shard_size,
        executor=executor,
        on_shard=_progress(
            f"gallery-progress-{settings.gallery_name}-{_target_version_id(new_version, mode, fraction)}",
            f"{mode} backfill for v{new_version}",
            _shards(gallery_items, settings.backfill.shard_size),
        ),
        model_version=new_version,
        codebook_version=new_version,
        version=_target_version_id(new_version, mode, fraction),
        prototypes=old_model.head.weight.detach().cpu().numpy() if old_model is not None else None,
        score=config.uncertainty_score,
        seed=config.seed,
        workers=settings.backfill.workers,
        compute_slots=settings.backfill.compute_slots,
        batch_size=settings.backfill.batch_size,
        device=settings.torch_device,
        index_builder=_index_builder(codebooks),
        transforms=transforms,
    )
    _report_shares(executor)
    return manifest.version


@task(
    name="backfill-gallery",
    task_run_name="{mode} backfill of the live gallery for v{new_version}",
    cache_policy=NONE,
    retries=1,
    retry_delay_seconds=5,
)
def backfill_gallery(
    settings: HotswapSettings,
    new_version: str,
    mode: str,
    fraction: float | None = None,
    old_version: str | None = None,
) -> str:
    """A standalone backfill from the live gallery (no decision needed); resumable by rerunning.

    With ``dask.address`` set its shards run as tasks on that Dask cluster.
    """
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap`")
    items = galleries.load_manifest(settings.gallery_name, live).num_items
    target = _backfill(settings, new_version, live, mode, fraction, settings.decision, old_version, items)
    ensure_served_calibration(settings, target, new_version)
    return target
