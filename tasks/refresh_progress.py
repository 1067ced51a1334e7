"""Refresh checkpoints: record each stage on the challenger, resume or clean up an interrupted one.

The plan is components/lifecycle/refresh_progress.py; these tasks read the registry and the gallery store
for it and carry it out. Both run inside the refresh's lifecycle lock, so an unfinished stage
found here belongs to a refresh that is no longer running (killed, or failed on an outage).
"""

from __future__ import annotations

from typing import Any

from hotswap.components.core.errors import StateError
from hotswap.components.core.faults import fault_point
from hotswap.components.core.fingerprint import TAG_STAGE, settings_hash
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.lifecycle.refresh_progress import (
    ABANDONED,
    FINISHED,
    SUPERSEDED,
    TAG_ABANDONED_WHY,
    TAG_LIVE_GALLERY,
    TAG_SEARCHED_FROM,
    plan_resume,
    staged_gallery_versions,
)
from hotswap.components.registry.records import CHALLENGER
from hotswap.tasks.context import dataset_version, gallery_store, registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


def _abandon(settings: HotswapSettings, version: str, why: str) -> str:
    """Delete the version's unpublished gallery versions, move the challenger alias off it, tag it."""
    reg, galleries, name = registry(settings), gallery_store(settings), settings.gallery_name
    live = galleries.read_current(name)
    removed = []
    written = galleries.list_versions(name, include_staged=True)
    for gallery_version in staged_gallery_versions(version, written):
        if gallery_version != live and not galleries.is_sealed(name, gallery_version):
            galleries.discard_version(name, gallery_version)
            removed.append(gallery_version)
    if reg.aliases().get(CHALLENGER) == version:
        reg.delete_alias(CHALLENGER)
    reg.set_tags(version, {TAG_STAGE: ABANDONED, TAG_ABANDONED_WHY: why})
    deleted = f"; deleted its staged gallery version(s) {', '.join(removed)}" if removed else ""
    return f"abandoned the unfinished refresh of v{version}: {why}{deleted}"


@task(
    name="resume-or-clean-up",
    task_run_name="look for an interrupted refresh against v{champion}",
    cache_policy=NONE,
)
def resume_or_clean_up(settings: HotswapSettings, champion: str) -> dict[str, Any]:
    """Plan what to do with unfinished refreshes (components/lifecycle/refresh_progress.py) and clean up.

    Returns ``version`` / ``stage`` of the refresh to resume (None: start afresh), whether that
    version came out of a compatibility search (it is not searched again), and ``actions``: one
    sentence per thing done, also logged.
    """
    reg = registry(settings)
    live = gallery_store(settings).read_current(settings.gallery_name)
    digest = settings_hash(settings)
    plan = plan_resume(champion, reg.list_versions(), dataset_version(settings), digest, live)
    actions = []
    for version, why in sorted(plan.abandon.items(), key=lambda item: int(item[0])):
        actions.append(_abandon(settings, version, why))
    if plan.resume is not None:
        actions.append(f"resuming the interrupted refresh of v{plan.resume} after its stage {plan.stage!r}")
    for line in actions:
        get_run_logger().warning(line)
    searched = plan.resume is not None and TAG_SEARCHED_FROM in reg.get_tags(plan.resume)
    return {"version": plan.resume, "stage": plan.stage, "searched": searched, "actions": actions}


@task(name="record-stage", task_run_name="v{version} reached {stage}", cache_policy=NONE, retries=2)
def record_stage(settings: HotswapSettings, version: str, stage: str) -> None:
    """The challenger's refresh stage; with the first one, the live gallery the refresh started on
    (read here, under the refresh's lock, so it is the gallery the challenger was planned for)."""
    tags = {TAG_STAGE: stage}
    if stage == "trained":
        tags[TAG_LIVE_GALLERY] = gallery_store(settings).read_current(settings.gallery_name)
    registry(settings).set_tags(version, tags)
    fault_point(f"refresh:{stage}")


def mark_superseded(settings: HotswapSettings, version: str, by: str) -> None:
    """The compatibility search registered ``by`` in the place of ``version``: never resume it."""
    registry(settings).set_tags(version, {TAG_STAGE: SUPERSEDED, "hotswap.refresh.superseded_by": by})


class UnfinishedRefreshError(StateError):
    """The version's refresh stopped before its gallery was staged, or was abandoned."""


@task(name="check-promotable", task_run_name="check v{version}'s refresh finished", cache_policy=NONE)
def check_promotable(settings: HotswapSettings, version: str) -> None:
    """Refuse, before anything is written, to promote a version whose refresh did not finish."""
    tags = registry(settings).get_tags(version)
    stage = tags.get(TAG_STAGE)
    if stage in (ABANDONED, SUPERSEDED):
        why = tags.get(TAG_ABANDONED_WHY) or f"replaced by v{tags.get('hotswap.refresh.superseded_by')}"
        raise UnfinishedRefreshError(f"v{version}'s refresh was {stage} ({why}); it cannot be promoted")
    if stage is not None and stage != FINISHED:
        raise UnfinishedRefreshError(
            f"v{version}'s refresh stopped after its stage {stage!r}: run `hotswap refresh` to resume it"
        )
