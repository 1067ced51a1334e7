"""Decision tasks: decide on a backfill, carry it out, check it is still current, review it.

The decision record is stored beside the new model version (MLflow artifacts ``decision/``) and
summarised in the version's tags (``backfill.decision``, ``backfill.gallery_version``), so the
promote flow and ``hotswap status`` read it back instead of recomputing it.
"""

from __future__ import annotations

import base64
from typing import Any

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.decision.promotability import with_promotability
from hotswap.components.decision.record import DecisionRecord, implied_fraction
from hotswap.components.decision.report import decision_plot_png
from hotswap.components.decision.storage import DECISION_PNG, save_decision
from hotswap.components.decision.storage import load_decision as read_decision
from hotswap.components.gallery.live_state import TAG_GALLERY_VERSION
from hotswap.components.gallery.provenance import extracted_by
from hotswap.components.lifecycle.live import LiveComposition, read_composition
from hotswap.components.registry.records import TAG_BACKFILL
from hotswap.tasks.context import gallery_store, registry, served_validation
from hotswap.tasks.gallery_build import _backfill, ensure_served_calibration
from hotswap.tasks.links import artifact_link, links_markdown
from hotswap.tasks.quantization import load_codebooks
from hotswap.tasks.reporting import publish_markdown, publish_table
from hotswap.tasks.transforms import gallery_versions, load_lineage_maps, load_transforms
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


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
    from hotswap.components.decision.decide import decide

    reg = registry(settings)
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap`")
    manifest = galleries.load_manifest(settings.gallery_name, live)
    old_codebook_version = manifest.codebook_version or old_version
    live_mix = (
        LiveComposition.model_validate(composition)
        if composition is not None
        else read_composition(galleries, settings.gallery_name, live)
    )
    # every model that extracted rows of the live gallery, mapped ones included (their lineage)
    extractors = set(live_mix.counts) | {extracted_by(label) for label in live_mix.lineages}
    others = {v: reg.load_model(v) for v in sorted(extractors - {str(old_version), str(new_version)})}
    transforms = (
        load_transforms(  # trained by train_transforms for this challenger (none: no transform option)
            settings,
            new_version,
            gallery_versions(old_version, new_version, live_mix.model_dump(mode="json")),
        )
    )
    record = decide(
        old_model=reg.load_model(old_version),
        new_model=reg.load_model(new_version),
        validation=served_validation(settings),
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
        transforms=transforms or None,
        lineage_maps=load_lineage_maps(settings, live_mix.lineages),
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
    get_run_logger().info(
        "decision for v%s: %s — %s; %s: %s",
        new_version,
        record.mode,
        "; ".join(record.reasons),
        "promotable" if record.promotable else "not promotable",
        record.promotable_reason,
    )
    return record.model_dump(mode="json")


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


@task(
    name="execute-backfill",
    task_run_name="carry out the backfill for v{new_version}",
    cache_policy=NONE,
    retries=1,
    retry_delay_seconds=5,
)
def execute_decision(settings: HotswapSettings, new_version: str, decision: dict[str, Any]) -> str | None:
    """Write the gallery version the decision asks for (resumable); returns it, unpublished.

    skip keeps the live version (returned as is); reject returns None. Called by ``refresh``
    when the gallery is built at once, or by ``promote`` on approval of a planned one
    (components/lifecycle/gallery_plan.py); the target version id is deterministic, so a build
    that was killed resumes shard by shard.
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
    new_fraction = implied_fraction(mode, fraction)
    updated = with_promotability(
        record.model_copy(
            update={
                "mode": mode,
                "fraction": new_fraction,
                "gallery_version": None,
                "reasons": [*record.reasons, f"overridden by the reviewer: {mode} instead of {record.mode}"],
            }
        )
    )
    store_decision(settings, version, updated)
    return updated
