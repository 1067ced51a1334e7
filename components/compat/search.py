"""Bounded search over the compatibility knobs, for when the configured weights do not pass.

Why: the default Dual-Tuning weights were chosen on a few protocols; on a new data set they can
leave the new model just short of the old gallery (new/old ≤ old/old), and then every upgrade is
a full backfill. Before giving up, the refresh tries a few other strengths of the compatibility
terms and keeps the best one *on the selection split* (val). The gate then judges the selected
model on a split the selection never saw, so the search cannot bless a lucky draw.

Plain functions only (no Prefect): the candidates, the budget, the score of one trial, the
selection and the loop over waves of trials. ``tasks/compat_search.py`` runs each wave's trials as
mapped Prefect tasks and logs each as a nested MLflow run.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotswap.components.compat.cross_eval import compatibility_matrix
from hotswap.components.compat.dual_tuning import train_compatible
from hotswap.components.compat.report import CompatThresholds, build_report
from hotswap.components.core.configs import SEARCHED_KNOBS, CompatConfig, CompatSearchConfig
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import TrainConfig, TrainHistory


def candidate_configs(base: CompatConfig, search: CompatSearchConfig) -> list[CompatConfig]:
    """Every grid point as a full config on top of ``base`` (Dual-Tuning), ``base`` itself left out,
    in the search order. Knobs the grid does not name keep ``base``'s value."""
    base = base if base.method == "dual_tuning" else base.model_copy(update={"method": "dual_tuning"})
    grid = [
        dict(zip(SEARCHED_KNOBS, values, strict=True))
        for values in itertools.product(*(getattr(search, knob) for knob in SEARCHED_KNOBS))
    ]
    seen = {_key(base)}
    candidates = []
    for point in grid:
        config = base.model_copy(update=point)
        if _key(config) not in seen:
            seen.add(_key(config))
            candidates.append(config)
    if search.strategy in ("random", "nearest"):
        random.Random(search.seed).shuffle(candidates)
    if search.strategy == "nearest":  # stable sort: the shuffle orders candidates within a distance
        candidates.sort(key=lambda c: sum(getattr(c, k) != getattr(base, k) for k in SEARCHED_KNOBS))
    return candidates


def _key(config: CompatConfig) -> str:
    return config.model_dump_json()


@dataclass
class TrialResult:
    """One candidate config, trained and scored on the selection split."""

    index: int
    config: CompatConfig
    matrix: dict[str, dict[str, float]] | None
    score: float
    passed: bool
    seconds: float
    skipped: bool = False
    run_id: str | None = None
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "config": {k: getattr(self.config, k) for k in SEARCHED_KNOBS},
            "matrix": self.matrix,
            "score": None if math.isinf(self.score) else self.score,
            "passed": self.passed,
            "seconds": self.seconds,
            "skipped": self.skipped,
            "run_id": self.run_id,
            "reasons": self.reasons,
        }


def score_matrix(
    matrix: dict[str, dict[str, float]], thresholds: CompatThresholds, data_version: str = "selection"
) -> tuple[float, bool, list[str]]:
    """(score, passed, reasons) of one matrix under the gate's own checks.

    The score is the smallest slack over every check (candidate − bound); a config passes when
    every check does, i.e. exactly when the gate would bless it on this split. Maximising the
    worst slack prefers the config that passes with the most room on every metric.
    """
    report = build_report(
        matrix, old_version="old", new_version="new", data_version=data_version, thresholds=thresholds
    )
    deltas = [c.delta for c in report.checks]
    score = min((d if d is not None else -math.inf) for d in deltas) if deltas else -math.inf
    return score, report.blessed, report.reasons


# torch's default initialisers draw from the global RNG: build models one at a time so that
# trials running in threads side by side still get the same initial weights for the same seed.
INIT_LOCK = threading.Lock()


def train_trial(
    old_model: EmbeddingModel | Sequence[Any],
    new_spec: BackboneSpec | Any,
    train: ImageSet,
    selection: ImageSet,
    config: CompatConfig,
    train_config: TrainConfig,
    thresholds: CompatThresholds,
    class_map: dict[int, int] | None = None,
    champion: EmbeddingModel | None = None,
) -> tuple[EmbeddingModel, TrainHistory, dict[str, dict[str, float]], float, bool, list[str]]:
    """Train one candidate against the frozen old model(s) and score it on ``selection``.

    ``new_spec`` is a built-in spec or a freshly built model. ``old_model`` is one frozen model or
    a list of targets (as :func:`train_compatible` takes them); the selection matrix is scored
    against ``champion`` (default: ``old_model`` itself).
    Returns (model, history, matrix, score, passed, reasons).
    """
    reference = champion if champion is not None else old_model
    if isinstance(reference, Sequence):
        raise ValueError("train_trial: give the champion when training against several targets")
    if isinstance(new_spec, BackboneSpec):
        with INIT_LOCK:
            model = build_model(new_spec, seed=train_config.seed)
    else:  # an already built, untrained model (e.g. the team's architecture)
        model = new_spec
    model, history = train_compatible(
        old_model, model, train, config, train_config, class_map=class_map, progress=False
    )
    matrix = {
        pair: m.as_dict()
        for pair, m in compatibility_matrix(reference, model, selection, device=train_config.device).items()
    }
    score, passed, reasons = score_matrix(matrix, thresholds)
    return model, history, matrix, score, passed, reasons


@dataclass
class SearchOutcome:
    """Every trial (tried or skipped), the selected one and why the search stopped."""

    trials: list[TrialResult]
    selected: TrialResult | None
    stopped: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.selected is not None and self.selected.passed

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": [t.as_dict() for t in self.trials],
            "selected": None if self.selected is None else self.selected.index,
            "passed": self.passed,
            "stopped": self.stopped,
            "seconds": self.seconds,
        }


def select_trial(trials: Sequence[TrialResult]) -> TrialResult | None:
    """The tried trial with the highest score (ties: the earlier one); None if nothing ran."""
    tried = [t for t in trials if not t.skipped and t.matrix is not None]
    if not tried:
        return None
    return max(tried, key=lambda t: (t.score, -t.index))


WaveRunner = Callable[[list[tuple[int, CompatConfig]], float], list[TrialResult]]


def run_search(
    candidates: Sequence[CompatConfig],
    search: CompatSearchConfig,
    run_wave: WaveRunner,
    clock: Callable[[], float] = time.monotonic,
) -> SearchOutcome:
    """Try candidates in waves of ``search.parallel`` within the budget; select on the scores.

    ``run_wave(batch, deadline)`` trains and scores each (index, config) of a wave — one mapped
    Prefect task per trial in the flow, a plain loop in tests — and returns their results; a
    trial that would start after ``deadline`` (a ``clock()`` value) comes back ``skipped``.
    No wave starts once ``max_trials`` trials ran or ``max_seconds`` passed.
    """
    start = clock()
    deadline = start + search.max_seconds
    pending = list(enumerate(candidates[: search.max_trials]))
    trials: list[TrialResult] = []
    stopped = "no candidates" if not pending else "all candidates tried"
    while pending:
        if clock() >= deadline:
            stopped = f"time budget of {search.max_seconds:g} s spent"
            break
        batch, pending = pending[: search.parallel], pending[search.parallel :]
        results = run_wave(batch, deadline)
        trials.extend(results)
        if search.stop_on_pass and any(t.passed for t in results):
            stopped = "a trial passed on the selection split"
            break
    else:
        if len(candidates) > search.max_trials and trials:
            stopped = f"trial budget of {search.max_trials} spent"
    if any(t.skipped for t in trials):
        stopped = f"time budget of {search.max_seconds:g} s spent"
    return SearchOutcome(
        trials=trials, selected=select_trial(trials), stopped=stopped, seconds=clock() - start
    )


def skipped_trial(index: int, config: CompatConfig) -> TrialResult:
    """A trial that did not start because the time budget was spent."""
    return TrialResult(
        index, config, None, -math.inf, False, 0.0, skipped=True, reasons=["time budget spent"]
    )
