"""Gallery tasks: build the first gallery, decide on a backfill, carry it out, switch CURRENT.

The decision record is stored beside the new model version (MLflow artifacts ``decision/``) and
summarised in the version's tags (``backfill.decision``, ``backfill.gallery_version``), so the
promote flow and ``hotswap status`` read it back instead of recomputing it.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import numpy as np
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.loading import SourceItemSource, model_inputs
from hotswap.components.decision.decide import (
    DECISION_PNG,
    DecisionConfig,
    DecisionRecord,
    decide,
    decision_plot_png,
    save_decision,
)
from hotswap.components.decision.decide import load_decision as read_decision
from hotswap.components.gallery.backfill import ShardResult, build_gallery_version, run_backfill
from hotswap.components.gallery.calibration import ensure_calibration, fit_for_gallery
from hotswap.components.gallery.live_state import TAG_GALLERY_VERSION
from hotswap.components.gallery.search import GallerySearcher
from hotswap.components.lifecycle.live import LiveComposition, read_composition
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.index import build_flat_index, index_from_bytes, index_to_bytes
from hotswap.components.registry.records import TAG_BACKFILL
from hotswap.tasks.context import dataset, gallery_items, gallery_store, loader_config, registry
from hotswap.tasks.links import artifact_link, links_markdown
from hotswap.tasks.quantization import load_codebooks
from hotswap.tasks.reporting import artifact_key, publish_markdown, publish_table
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.transactions import Transaction, get_transaction


def _index_builder(codebooks: DPQCodebooks):
    """faiss ids are gallery row numbers; the version's shards map them back to item ids."""

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


def _shards(items: int, shard_size: int) -> int:
    return -(-items // shard_size)


@task(name="build-first-gallery", task_run_name="build the first gallery with v{version}", cache_policy=NONE)
def build_first_gallery(settings: HotswapSettings, version: str) -> str:
    """Embed and encode every gallery item with the first model; a staged (unpublished) version."""
    reg = registry(settings)
    model = reg.load_model(version)
    codebooks = load_codebooks(settings, version)
    items = gallery_items(settings).item_ids
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
    reg.set_tags(version, {TAG_GALLERY_VERSION: manifest.version})
    return manifest.version


def store_decision(settings: HotswapSettings, version: str, record: DecisionRecord) -> None:
    reg = registry(settings)
    save_decision(reg, version, record)
    tags = {TAG_BACKFILL: record.mode}
    if record.gallery_version:
        tags[TAG_GALLERY_VERSION] = record.gallery_version
    reg.set_tags(version, tags)


@task(name="decide-backfill", task_run_name="decide the backfill for v{new_version}", cache_policy=NONE)
def decide_backfill(
    settings: HotswapSettings,
    old_version: str,
    new_version: str,
    report: dict[str, Any],
    composition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Estimate every option's quality (validation data) and cost, pick one, record why.

    The validation gallery is composed like the live one (its provenance) and every option is
    judged against the live system as served; none beats it ⇒ reject.
    """
    reg = registry(settings)
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap`")
    manifest = galleries.load_manifest(settings.gallery_name, live)
    old_codebook_version = manifest.codebook_version or old_version
    data = dataset(settings)
    live_mix = (
        LiveComposition.model_validate(composition)
        if composition is not None
        else read_composition(galleries, settings.gallery_name, live)
    )
    others = {v: reg.load_model(v) for v in live_mix.counts if v not in (str(old_version), str(new_version))}
    record = decide(
        old_model=reg.load_model(old_version),
        new_model=reg.load_model(new_version),
        validation=data.split(settings.data.validation_split),
        gallery_items=manifest.num_items,
        blessed=bool(report["blessed"]),
        old_codebooks=load_codebooks(settings, old_codebook_version),
        new_codebooks=load_codebooks(settings, new_version),
        config=settings.decision,
        device=settings.torch_device,
        old_model_version=old_version,
        new_model_version=new_version,
        old_codebook_version=old_codebook_version,
        new_codebook_version=new_version,
        source_gallery_version=live,
        composition=live_mix,
        gallery_models=others,
        better=all(c["passed"] for c in report.get("checks", []) if c["name"] == "new_model"),
    )
    store_decision(settings, new_version, record)
    publish_table(
        f"decision-{settings.model_name}-v{new_version}",
        [
            {
                "mode": o.mode,
                "fraction": round(o.fraction, 3),
                "relative quality": round(o.relative_quality, 4),
                "est. seconds": round(o.estimated_seconds, 2),
                "meets target": o.meets_target,
                "eligible": o.eligible,
                "chosen": o is record.chosen_option,
            }
            for o in record.options
        ],
        f"Backfill options for v{new_version}; chosen: {record.mode}",
    )
    publish_markdown(
        f"decision-report-{settings.model_name}-v{new_version}",
        decision_markdown_with_plot(settings, new_version, record),
        f"Backfill decision for v{new_version}: {record.mode}",
    )
    get_run_logger().info("decision for v%s: %s — %s", new_version, record.mode, "; ".join(record.reasons))
    return record.model_dump(mode="json")


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
            dataset(settings).split(settings.data.validation_split),
            books,
            settings.decision.calibration,
            batch_size=settings.backfill.batch_size,
            device=settings.torch_device,
            fitted_on={"gallery_version": gallery_version, "codebook_version": manifest.codebook_version},
        )

    _, how = ensure_calibration(galleries, name, gallery_version, query_version, fit)
    return how


def decision_markdown_with_plot(settings: HotswapSettings, version: str, record: DecisionRecord) -> str:
    """The decision's markdown with its plot (curve and option costs) inline and the MLflow links.

    The plot is embedded as a data URI, so the Prefect UI shows it without access to MLflow's
    artifact store; the same PNG is logged to MLflow as ``decision/decision.png``.
    """
    png = base64.b64encode(decision_plot_png(record)).decode()
    plot = f"![backfill curve and option costs](data:image/png;base64,{png})"
    source = artifact_link(settings, version, DECISION_PNG)
    where = f"[{DECISION_PNG}]({source})" if source.startswith("http") else f"`{source}`"
    return "\n\n".join(
        [record.to_markdown(), plot, f"Plot in MLflow: {where}", links_markdown(settings, version)]
    )


def _target_version_id(new_version: str, mode: str, fraction: float | None) -> str:
    """Deterministic, so rerunning an interrupted backfill resumes the same staged version."""
    suffix = f"-{round(1000 * fraction):04d}" if mode == "partial" and fraction is not None else ""
    return f"v{new_version}-{mode}{suffix}"


def _item_source(settings: HotswapSettings, model: Any) -> Any:
    """The gallery's items by id, read through the data source in ``model``'s preprocessing."""
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
    executor: Any | None = None,
) -> str:
    """Write the target gallery version for ``new_version`` (resumes an interrupted run)."""
    reg = registry(settings)
    old_model = reg.load_model(old_version) if old_version else None
    codebooks = load_codebooks(settings, new_version)
    new_model = reg.load_model(new_version)
    manifest = run_backfill(
        gallery_store(settings),
        settings.gallery_name,
        source_version,
        mode,
        new_model,
        codebooks,
        _item_source(settings, new_model),
        fraction=fraction,
        ordering=config.ordering,
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
    )
    return manifest.version


@task(
    name="execute-backfill",
    task_run_name="carry out the backfill for v{new_version}",
    cache_policy=NONE,
    retries=1,
    retry_delay_seconds=5,
)
def execute_decision(settings: HotswapSettings, new_version: str, decision: dict[str, Any]) -> str | None:
    """Write the gallery version the decision asks for (resumable); returns it, unpublished.

    skip keeps the live version (returned as is); reject returns None.
    """
    record = DecisionRecord.model_validate(decision)
    if record.mode == "reject":
        return None
    if record.mode == "skip":
        target = record.source_gallery_version
    else:
        target = _backfill(
            settings,
            new_version,
            record.source_gallery_version,
            record.mode,
            record.fraction,
            record.config,
            record.old_model_version,
            record.gallery_items,
        )
    ensure_served_calibration(settings, target, new_version)
    store_decision(settings, new_version, record.model_copy(update={"gallery_version": target}))
    return target


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
    use_dask: bool = False,
) -> str:
    """A standalone backfill from the live gallery (no decision needed); resumable by rerunning.

    With ``use_dask`` (the flow runs on prefect-dask's DaskTaskRunner) the shards fan out over
    the same Dask cluster through its client.
    """
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap`")
    items = galleries.load_manifest(settings.gallery_name, live).num_items
    if not use_dask:
        target = _backfill(settings, new_version, live, mode, fraction, settings.decision, old_version, items)
    else:
        from prefect_dask import get_dask_client

        with get_dask_client() as client:
            target = _backfill(
                settings, new_version, live, mode, fraction, settings.decision, old_version, items, client
            )
    ensure_served_calibration(settings, target, new_version)
    return target


class StaleDecisionError(RuntimeError):
    """The live gallery moved after the decision was made: its evidence no longer describes it."""


@task(
    name="check-decision-is-current",
    task_run_name="check v{version}'s decision is current",
    cache_policy=NONE,
)
def check_decision_is_current(settings: HotswapSettings, version: str, record: DecisionRecord) -> None:
    """Refuse to act on a decision taken against a gallery that is no longer live (another run
    switched it meanwhile, e.g. while this promotion waited for its reviewer)."""
    live = gallery_store(settings).read_current(settings.gallery_name)
    if record.source_gallery_version is not None and live != record.source_gallery_version:
        raise StaleDecisionError(
            f"v{version}'s decision was made against gallery {record.source_gallery_version}, but "
            f"{live} is live now: run `hotswap refresh` for a decision against what is live"
        )


@task(name="load-decision", task_run_name="load the decision of v{version}", retries=2, cache_policy=NONE)
def load_decision(settings: HotswapSettings, version: str) -> DecisionRecord:
    return read_decision(registry(settings), version)


@task(
    name="override-decision",
    task_run_name="record the reviewer's backfill choice for v{version}",
    cache_policy=NONE,
)
def override_decision(
    settings: HotswapSettings, version: str, record: DecisionRecord, mode: str, fraction: float | None
) -> DecisionRecord:
    """A reviewer chose another mode: keep the evidence, change the choice, say who and why."""
    if mode == "partial" and fraction is None:
        raise ValueError("a partial backfill needs a fraction (0 < f < 1)")
    new_fraction = {"skip": 0.0, "requantize": 0.0, "full": 1.0}.get(mode, fraction)
    updated = record.model_copy(
        update={
            "mode": mode,
            "fraction": new_fraction,
            "gallery_version": None,
            "reasons": [*record.reasons, f"overridden by the reviewer: {mode} instead of {record.mode}"],
        }
    )
    store_decision(settings, version, updated)
    return updated


_PREVIOUS = "previous_gallery"
_SETTINGS = "settings"


@task(name="publish-gallery", task_run_name="switch the live gallery to {gallery_version}", cache_policy=NONE)
def publish_gallery(settings: HotswapSettings, gallery_version: str) -> str | None:
    """Point CURRENT at ``gallery_version`` (written last, checksums verified); undone on rollback."""
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    txn = get_transaction()
    if txn is not None:
        txn.set(_PREVIOUS, live)
        txn.set(_SETTINGS, settings.model_dump(mode="json"))
    if live != gallery_version:
        galleries.publish(
            settings.gallery_name, gallery_version, expected_current=live, verify_checksums=True
        )
    return live


@publish_gallery.on_rollback
def _restore_gallery(transaction: Transaction) -> None:
    settings = HotswapSettings.model_validate(transaction.get(_SETTINGS))
    gallery_store(settings).set_current(settings.gallery_name, transaction.get(_PREVIOUS))


@task(
    name="check-live-gallery", task_run_name="health-check v{version} on {gallery_version}", cache_policy=NONE
)
def check_live_gallery(settings: HotswapSettings, version: str, gallery_version: str) -> dict[str, Any]:
    """After a switch: the champion and CURRENT are what we set, and the live index answers."""
    reg = registry(settings)
    galleries = gallery_store(settings)
    champion = reg.resolve("champion").version
    live = galleries.read_current(settings.gallery_name)
    if champion != version or live != gallery_version:
        raise RuntimeError(
            f"switch did not take: champion is v{champion} (expected v{version}), "
            f"CURRENT is {live} (expected {gallery_version})"
        )
    manifest = galleries.load_manifest(settings.gallery_name, live)
    index_bytes = galleries.load_index(settings.gallery_name, live)
    if index_bytes is None:
        raise RuntimeError(f"live gallery {live} has no index")
    index = index_from_bytes(index_bytes)
    if index.ntotal != manifest.num_items:
        raise RuntimeError(f"live index holds {index.ntotal} items, the manifest {manifest.num_items}")
    # as served: a mixed live gallery must carry a calibration for the new champion, or this raises
    searcher = GallerySearcher.from_version(galleries, settings.gallery_name, live, version)
    model = reg.load_model(version)
    items = gallery_items(settings)  # a few gallery images as queries, in the model's own preprocessing
    sample = items.subset(np.arange(min(8, len(items))))
    probe = extract_features(model, model_inputs(sample, model.preprocessing), device=settings.torch_device)
    _, found = searcher.search(probe, k=min(5, index.ntotal))
    if (found == "").any():
        raise RuntimeError(f"live index {live} returned empty results")
    return {
        "champion": champion,
        "gallery_version": live,
        "items": int(index.ntotal),
        "calibration": searcher.calibration_source,
    }
