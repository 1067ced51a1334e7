"""Which interrupted refresh the next one resumes, and which it abandons
(components/lifecycle/refresh_progress.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hotswap.components.core.fingerprint import noop_reason
from hotswap.components.lifecycle.refresh_progress import (
    STAGES,
    plan_resume,
    reached,
    staged_gallery_versions,
)


@dataclass
class Info:
    version: str
    tags: dict[str, str] = field(default_factory=dict)


INPUTS = {"champion": "1", "data": "d1", "hash": "h1", "live": "v1-bootstrap"}


def challenger(version: str, stage: str | None, **changes: str) -> Info:
    tags = {
        "hotswap.job": "refresh",
        "hotswap.role": "challenger",
        "hotswap.old_version": changes.get("champion", INPUTS["champion"]),
        "data.version": changes.get("data", INPUTS["data"]),
        "hotswap.settings_hash": changes.get("hash", INPUTS["hash"]),
        "hotswap.refresh.live_gallery": changes.get("live", INPUTS["live"]),
    }
    if stage is not None:
        tags["hotswap.refresh.stage"] = stage
    if "decision" in changes:
        tags["backfill.decision"] = changes["decision"]
    return Info(version, tags)


def plan(*versions: Info):
    bootstrap = Info("1", {"hotswap.job": "bootstrap", "hotswap.role": "bootstrap"})
    return plan_resume(
        INPUTS["champion"], [bootstrap, *versions], INPUTS["data"], INPUTS["hash"], INPUTS["live"]
    )


def test_given_nothing_unfinished_when_planned_then_a_fresh_refresh_starts() -> None:
    result = plan(challenger("2", "staged", decision="full"))
    assert result.resume is None and result.abandon == {}


@pytest.mark.parametrize("stage", STAGES[:-1])
def test_given_an_interrupted_refresh_of_the_same_inputs_then_it_resumes_after_its_stage(stage: str) -> None:
    result = plan(challenger("2", stage))
    assert (result.resume, result.stage, result.abandon) == ("2", stage, {})


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"champion": "3"}, "champion version 3, now it is 1"),
        ({"data": "d0"}, "dataset version d0, now it is d1"),
        ({"hash": "h0"}, "settings hash h0, now it is h1"),
        ({"live": "v0-full"}, "live gallery version v0-full, now it is v1-bootstrap"),
    ],
)
def test_given_changed_inputs_then_the_interrupted_refresh_is_abandoned_and_says_why(
    change: dict[str, str], words: str
) -> None:
    result = plan(challenger("2", "decided", **change))
    assert result.resume is None
    assert words in result.abandon["2"]


def test_given_two_attempts_then_the_newest_resumes_and_the_older_is_abandoned() -> None:
    result = plan(challenger("2", "validated"), challenger("3", "trained"))
    assert (result.resume, result.stage) == ("3", "trained")
    assert "v3 is a later attempt" in result.abandon["2"]


def test_given_finished_abandoned_or_superseded_versions_then_they_are_left_alone() -> None:
    result = plan(
        challenger("2", "staged", decision="skip"),
        challenger("3", "abandoned"),
        challenger("4", "superseded"),
        Info("5", {"hotswap.job": "bootstrap"}),
    )
    assert result.resume is None and result.abandon == {}


def test_given_a_challenger_killed_before_its_first_stage_then_it_is_abandoned() -> None:
    result = plan(challenger("2", None))
    assert result.resume is None and "before its first stage" in result.abandon["2"]
    legacy = plan(challenger("2", None, decision="full"))  # an older, finished refresh: not touched
    assert legacy.abandon == {}


def test_the_champion_is_never_abandoned() -> None:
    champion = challenger("1", None)
    result = plan_resume("1", [champion], "d1", "h1", "v1-bootstrap")
    assert result.abandon == {}


def test_reached_orders_the_stages() -> None:
    assert not reached(None, "trained")
    assert reached("quantized", "validated") and reached("quantized", "quantized")
    assert not reached("quantized", "decided")


def test_staged_gallery_versions_are_the_ones_named_after_the_model_version() -> None:
    written = ["v1-bootstrap", "v2-full", "v2-partial-0500", "v12-full", "v20-skip"]
    assert staged_gallery_versions("2", written) == ["v2-full", "v2-partial-0500"]


def test_an_unfinished_refresh_is_not_a_noop_but_a_finished_one_is() -> None:
    champion = Info("1", {"hotswap.job": "bootstrap", "data.version": "d1", "hotswap.settings_hash": "h1"})
    unfinished = challenger("2", "decided", decision="full")
    assert noop_reason(champion, [champion, unfinished], "d1", "h1") is None
    finished = challenger("2", "staged", decision="full")
    assert "already trained" in noop_reason(champion, [champion, finished], "d1", "h1")
