"""The refresh's compatibility search: one mapped Prefect task per trial, one nested MLflow run each.

Runs only when the configured weights were not blessed. The loop, budget and selection live in
components/compat/search.py; here each wave of candidates becomes ``compat_trial.map(...)``, each
trial logs its model and selection-split scores as a run nested under the refresh's training
run (MLflow's ``mlflow.parentRunId`` tag), and the selected trial is registered as the new
challenger and gated on a split the selection never saw.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from hotswap.components.compat.report import CompatThresholds
from hotswap.components.core.configs import SEARCHED_KNOBS, CompatConfig, CompatSearchConfig
from hotswap.components.core.fingerprint import TAG_JOB, TAG_SETTINGS_HASH, TAG_STAGE
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import TAG_CLASSES, save_class_map, to_head_labels
from hotswap.components.lifecycle.refresh_progress import TAG_LIVE_GALLERY, TAG_SEARCHED_FROM
from hotswap.tasks.context import dataset, registry
from hotswap.tasks.refresh_progress import mark_superseded
from hotswap.tasks.reporting import publish_table
from hotswap.tasks.training import (
    _train_config,
    build_new_model,
    champion_vertices,
    compat_targets_for,
    register_challenger,
)
from hotswap.tasks.validation import validate_compatibility
from prefect import get_run_logger, task, unmapped
from prefect.cache_policies import NONE

if TYPE_CHECKING:
    from hotswap.components.compat.search import SearchOutcome, TrialResult

PARENT_RUN_TAG = "mlflow.parentRunId"  # what makes MLflow show a run nested under another
TRIAL_TAG = "hotswap.compat_trial"


def trial_from_dict(data: dict[str, Any], config: CompatConfig) -> TrialResult:
    from hotswap.components.compat.search import TrialResult

    score = data["score"]
    return TrialResult(
        index=data["index"],
        config=config,
        matrix=data["matrix"],
        score=float("-inf") if score is None else float(score),
        passed=bool(data["passed"]),
        seconds=float(data["seconds"]),
        skipped=bool(data["skipped"]),
        run_id=data["run_id"],
        reasons=list(data["reasons"]),
    )


@task(
    name="compat-trial", task_run_name="compatibility trial {index} against v{old_version}", cache_policy=NONE
)
def compat_trial(
    settings: HotswapSettings,
    old_version: str,
    index: int,
    config: dict[str, Any],
    parent_run_id: str,
    deadline: float,
    targets: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train one candidate config against the refresh's targets (the champion and the live
    gallery's other model versions, tasks/training.py), score it against the champion on the
    selection split, and log it as a nested MLflow run (model and class map included, so the
    winner is registered without retraining)."""
    from hotswap.components.compat.search import INIT_LOCK, TrialResult, skipped_trial, train_trial

    candidate = CompatConfig.model_validate(config)
    if time.time() >= deadline:
        return skipped_trial(index, candidate).as_dict()
    start = time.perf_counter()
    search = settings.compat_search
    reg = registry(settings)
    data = dataset(settings)
    train = data.split("train")
    plan, compat_targets, class_map = compat_targets_for(reg, old_version, targets, train)
    champion = next(
        t.model for t, p in zip(compat_targets, plan, strict=True) if p.version == str(old_version)
    )
    with INIT_LOCK:  # trials in threads side by side: seeded initial weights stay reproducible
        spec = build_new_model(
            settings,
            data,
            settings.training.new_arch,
            champion.embedding_dim,
            class_map,
            champion_vertices(settings, champion, str(old_version)),
        )
    model, history, matrix, score, passed, reasons = train_trial(
        compat_targets,
        spec,
        to_head_labels(train, class_map),
        data.split(search.selection_split),
        candidate,
        _train_config(settings),
        CompatThresholds.from_settings(settings.thresholds),
        champion=champion,
    )
    metrics = {
        f"{search.selection_split}.{pair}.{m}": v for pair, row in matrix.items() for m, v in row.items()
    }
    metrics.update({"search.score": score, "search.passed": float(passed)})
    run_id = reg.log_training_run(
        model,
        params={
            "method": candidate.method,
            "compat": candidate.model_dump(),
            "training": settings.training.model_dump(),
            "old_version": old_version,
            "seed": settings.seed,
            "selection_split": search.selection_split,
        },
        history=history,
        dataset_version=data.version,
        tags={PARENT_RUN_TAG: parent_run_id, TRIAL_TAG: index, "hotswap.old_version": old_version},
        metrics={k: v for k, v in metrics.items() if v == v and abs(v) != float("inf")},
        run_name=f"compat-trial-{index}",
    )
    save_class_map(reg, run_id, class_map)
    get_run_logger().info(
        "trial %d (%s): score %.4f, %s",
        index,
        ", ".join(f"{k}={getattr(candidate, k)}" for k in SEARCHED_KNOBS),
        score,
        "passes" if passed else "fails",
    )
    result = TrialResult(index, candidate, matrix, score, passed, time.perf_counter() - start, run_id=run_id)
    result.reasons = reasons
    return result.as_dict()


def _record(settings: HotswapSettings, parent_run_id: str, outcome: SearchOutcome) -> None:
    """The whole search on the parent run (JSON + summary metrics) and as a Prefect table."""
    reg = registry(settings)
    reg.log_artifact_bytes(
        parent_run_id, "compat_search/search.json", json.dumps(outcome.as_dict(), indent=2).encode()
    )
    reg.log_metrics(
        parent_run_id,
        {
            "search.trials": float(sum(not t.skipped for t in outcome.trials)),
            "search.passed": float(outcome.passed),
            "search.seconds": outcome.seconds,
        },
    )
    rows = [
        {
            "trial": t.index,
            **{k: getattr(t.config, k) for k in SEARCHED_KNOBS},
            "score": None if t.skipped else round(t.score, 4),
            "passed": t.passed,
            "skipped": t.skipped,
            "run_id": t.run_id,
        }
        for t in outcome.trials
    ]
    publish_table(
        f"compat-search-{settings.model_name}",
        rows,
        f"Compatibility search: {outcome.stopped}; selected trial "
        f"{None if outcome.selected is None else outcome.selected.index}",
    )


def search_compatible(
    settings: HotswapSettings,
    champion: str,
    challenger: str,
    report: dict[str, Any],
    composition: dict[str, Any] | None = None,
    targets: list[dict[str, Any]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Search the compatibility knobs for a candidate that passes; returns (challenger, report).

    Called by the refresh flow only when ``challenger`` (the configured weights) was not blessed.
    Trials are scored on ``compat_search.selection_split``; the selected one is registered (alias
    ``challenger``) and gated on the gate split. With no trial passing on the selection split the
    original challenger and its report are returned unchanged.
    """
    from hotswap.components.compat.search import candidate_configs, run_search

    search: CompatSearchConfig = settings.compat_search
    logger = get_run_logger()
    reg = registry(settings)
    parent_run_id = reg.resolve(challenger).run_id
    candidates = candidate_configs(settings.compat, search)

    def run_wave(batch: list[tuple[int, CompatConfig]], deadline: float) -> list[TrialResult]:
        futures = compat_trial.map(
            unmapped(settings),
            unmapped(champion),
            [index for index, _ in batch],
            [config.model_dump() for _, config in batch],
            unmapped(parent_run_id),
            unmapped(deadline),
            unmapped(targets),
        )
        return [trial_from_dict(f.result(), config) for f, (_, config) in zip(futures, batch, strict=True)]

    outcome = run_search(candidates, search, run_wave, clock=time.time)
    _record(settings, parent_run_id, outcome)
    logger.info("compatibility search: %d trial(s), %s", len(outcome.trials), outcome.stopped)
    if not outcome.passed or outcome.selected is None or outcome.selected.run_id is None:
        logger.info("no searched config passed on %s; keeping v%s", search.selection_split, challenger)
        return challenger, report
    selected = outcome.selected
    original = reg.get_tags(challenger)
    # the inputs that identify this refresh, so the no-op check and a resume recognise the winner
    inherited = {
        k: original[k]
        for k in (TAG_CLASSES, "hotswap.targets", TAG_JOB, TAG_SETTINGS_HASH, TAG_LIVE_GALLERY)
        if k in original
    }
    version = register_challenger(
        settings,
        selected.run_id,
        champion,
        {**inherited, TAG_SEARCHED_FROM: challenger, TAG_STAGE: "trained", TRIAL_TAG: selected.index},
    )
    mark_superseded(settings, challenger, by=version)
    gate_split = settings.data.gate_split
    # the same as-served gate as the configured challenger, on the split selection never saw
    gated = validate_compatibility(settings, champion, version, composition, targets)
    logger.info(
        "searched challenger v%s (trial %d) on %s: %s",
        version,
        selected.index,
        gate_split,
        "blessed" if gated["blessed"] else "NOT blessed",
    )
    return version, gated
