"""Where an interrupted refresh stopped, so that the next refresh resumes it or cleans it up.

A refresh records its stage on the challenger's model version (tag ``hotswap.refresh.stage``)
after each step that stores something:

    trained → validated → quantized → decided → staged

``staged`` means the upgrade is staged for promotion: its decision is recorded and, when the
refresh builds at once (components/lifecycle/gallery_plan.py), its gallery version is written; a
decision that waits for a reviewer is staged as a plan whose gallery ``promote`` builds on
approval (resumable on its own, so nothing of it is left for a refresh to resume).

A refresh that is killed (or fails on an outage) leaves its challenger at an unfinished stage.
The next refresh, holding the gallery's lease, so no other refresh can still be working on it,
reads the stages of every version and plans (:func:`plan_resume`):

- **resume** the newest unfinished challenger trained against the *same* champion on the same
  dataset version with the same settings hash: training is deterministic, so training again
  would only reproduce it; the rerun continues after its recorded stage (a backfill resumes its
  staged gallery version shard by shard);
- **abandon** every other unfinished challenger (the champion, the data or the settings have
  changed since, so its work no longer applies): its unpublished gallery versions are deleted,
  the ``challenger`` alias leaves it, and its stage becomes ``abandoned`` with the reason.

Finished stages (``staged``), and the terminal ``abandoned`` / ``superseded`` (a compatibility
search registered a better trial in its place), are never touched. Versions without a stage
tag (the bootstrap, adopted models) are not refresh challengers and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hotswap.components.core.fingerprint import (
    JOB_REFRESH,
    TAG_DATA_VERSION,
    TAG_DECISION,
    TAG_JOB,
    TAG_SETTINGS_HASH,
    TAG_STAGE,
    TAG_TRAINED_AGAINST,
)

TAG_ABANDONED_WHY = "hotswap.refresh.abandoned"
TAG_LIVE_GALLERY = "hotswap.refresh.live_gallery"  # the live gallery version the refresh started on
TAG_SEARCHED_FROM = "hotswap.searched_from"  # set on a compatibility search's registered winner
STAGES = ("trained", "validated", "quantized", "decided", "staged")
FINISHED = "staged"
ABANDONED = "abandoned"
SUPERSEDED = "superseded"
UNFINISHED = frozenset(STAGES[:-1])


def reached(stage: str | None, wanted: str) -> bool:
    """Whether a refresh at ``stage`` has already done ``wanted`` (None: nothing done yet)."""
    if stage is None:
        return False
    return STAGES.index(stage) >= STAGES.index(wanted)


@dataclass(frozen=True)
class ResumePlan:
    """What the next refresh does with the unfinished refreshes it finds."""

    resume: str | None = None
    stage: str | None = None
    abandon: dict[str, str] = field(default_factory=dict)  # version -> why


def _mismatch(tags: dict[str, str], now: dict[str, str | None]) -> str | None:
    """Why an unfinished refresh no longer applies (the first input that changed), or None."""
    for tag, what in _INPUTS.items():
        if tags.get(tag) != now[tag]:
            return f"it was started with {what} {tags.get(tag)}, now it is {now[tag]}"
    return None


_INPUTS = {
    TAG_TRAINED_AGAINST: "champion version",
    TAG_DATA_VERSION: "dataset version",
    TAG_SETTINGS_HASH: "settings hash",
    TAG_LIVE_GALLERY: "live gallery version",
}


def plan_resume(
    champion: str,
    versions: Iterable[Any],
    dataset_version: str,
    settings_digest: str,
    live_gallery: str | None,
) -> ResumePlan:
    """Which unfinished refresh to resume and which to abandon (``versions``: ``.version``, ``.tags``).

    A refresh challenger with neither a stage nor a decision was killed between its registration
    and its first recorded stage: nothing says what it was started on, so it is abandoned.
    """
    now = {
        TAG_TRAINED_AGAINST: str(champion),
        TAG_DATA_VERSION: dataset_version,
        TAG_SETTINGS_HASH: settings_digest,
        TAG_LIVE_GALLERY: live_gallery,
    }
    resumable: list[tuple[int, str, str]] = []
    abandon: dict[str, str] = {}
    for info in versions:
        tags = info.tags
        if tags.get(TAG_JOB) != JOB_REFRESH or str(info.version) == str(champion):
            continue
        stage = tags.get(TAG_STAGE)
        if stage is None and TAG_DECISION not in tags and tags.get("hotswap.role") == "challenger":
            abandon[str(info.version)] = "it was interrupted before its first stage was recorded"
        if stage not in UNFINISHED:
            continue
        why = _mismatch(tags, now)
        if why is None:
            resumable.append((int(info.version), str(info.version), tags[TAG_STAGE]))
        else:
            abandon[str(info.version)] = why
    if not resumable:
        return ResumePlan(abandon=abandon)
    resumable.sort()
    *older, (_, version, stage) = resumable
    for _, old, _stage in older:
        abandon[old] = f"v{version} is a later attempt at the same refresh"
    return ResumePlan(resume=version, stage=stage, abandon=abandon)


def staged_gallery_versions(version: str, gallery_versions: Iterable[str]) -> list[str]:
    """The gallery versions a refresh of model ``version`` writes (``v<version>-<mode>[-<fraction>]``)."""
    prefix = f"v{version}-"
    return [g for g in gallery_versions if g.startswith(prefix)]
