"""refresh: the whole model-update lifecycle, from the live champion to a decided, staged upgrade."""

from __future__ import annotations

from typing import Any

from prefect import flow

from components.registry import CHAMPION
from flows.switch import switch_live
from tasks.context import settings_from
from tasks.gallery import decide_backfill, execute_decision
from tasks.quantization import train_codebooks
from tasks.registry import resolve_alias
from tasks.streaming import (
    decide_backfill_streaming,
    train_challenger_streaming,
    train_codebooks_streaming,
    validate_compatibility_streaming,
)
from tasks.training import train_challenger
from tasks.validation import validate_compatibility


class NoChampionError(RuntimeError):
    """refresh upgrades a live model; without one there is nothing to be compatible with."""


@flow(name="refresh", log_prints=True)
def refresh(overrides: dict[str, Any] | None = None, auto_promote: bool | None = None) -> dict[str, Any]:
    """Train a compatible challenger, validate it, retrain codebooks, decide and stage the backfill.

    With ``auto_promote`` (default: the ``auto_promote`` setting) a blessed challenger goes live
    at once; otherwise it waits for the ``promote`` flow.
    """
    settings = settings_from(overrides)
    auto_promote = settings.auto_promote if auto_promote is None else auto_promote
    champion = resolve_alias(settings, CHAMPION)
    if champion is None:
        raise NoChampionError(f"model {settings.model_name!r} has no champion: run `hotswap bootstrap` first")

    if settings.stream.enabled:  # the team's manifests, read lazily; each model its own preprocessing
        challenger = train_challenger_streaming(settings, champion)
        report = validate_compatibility_streaming(settings, champion, challenger)
        train_codebooks_streaming(settings, challenger)
        decision = decide_backfill_streaming(settings, champion, challenger, report)
    else:
        challenger = train_challenger(settings, champion)
        report = validate_compatibility(settings, champion, challenger)
        train_codebooks(settings, challenger)
        decision = decide_backfill(settings, champion, challenger, report)
    gallery_version = execute_decision(settings, challenger, decision)

    summary: dict[str, Any] = {
        "champion": champion,
        "challenger": challenger,
        "blessed": report["blessed"],
        "decision": decision["mode"],
        "gallery_version": gallery_version,
        "promoted": False,
    }
    if auto_promote and report["blessed"] and gallery_version is not None:
        switch_live(settings, challenger, gallery_version)
        summary["promoted"] = True
    return summary
