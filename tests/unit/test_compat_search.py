"""The compatibility search's plain parts: candidates, budget, scoring and selection; the step floor."""

from __future__ import annotations

import math

import pytest
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG
from hotswap.components.compat.report import CompatThresholds
from hotswap.components.compat.search import (
    CompatSearchConfig,
    TrialResult,
    candidate_configs,
    run_search,
    score_matrix,
    select_trial,
    skipped_trial,
)
from hotswap.components.core.configs import CompatConfig
from hotswap.components.core.settings import HotswapSettings
from pydantic import ValidationError

SMALL = {
    "proto_weight": [4.0, 8.0],
    "margin": [0.15],
    "o2n_weight": [1.0, 2.0],
    "anchor_weight": [0.0],
    "min_epoch_steps": [44],
}


def _matrix(old_old: float, new_old: float, new_new: float) -> dict[str, dict[str, float]]:
    row = lambda v: {"map": v, "top1": v, "top5": v}  # noqa: E731
    return {"old/old": row(old_old), "new/old": row(new_old), "new/new": row(new_new), "old/new": row(0.1)}


def test_candidates_cover_the_grid_without_the_configured_config():
    search = CompatSearchConfig(strategy="grid", **SMALL)
    candidates = candidate_configs(DEFAULT_CONFIG, search)
    # 2 x 2 grid points; (8.0, 1.0) is the default itself and is left out
    assert [(c.proto_weight, c.o2n_weight) for c in candidates] == [(4.0, 1.0), (4.0, 2.0), (8.0, 2.0)]
    assert all(c.n2o_weight == DEFAULT_CONFIG.n2o_weight for c in candidates)  # unsearched knobs kept
    shuffled = candidate_configs(DEFAULT_CONFIG, CompatSearchConfig(strategy="random", seed=3, **SMALL))
    again = candidate_configs(DEFAULT_CONFIG, CompatSearchConfig(strategy="random", seed=3, **SMALL))
    assert shuffled == again and sorted(map(str, shuffled)) == sorted(map(str, candidates))
    nearest = candidate_configs(DEFAULT_CONFIG, CompatSearchConfig(strategy="nearest", **SMALL))
    # one knob changed before two
    assert {(c.proto_weight, c.o2n_weight) for c in nearest[:2]} == {(4.0, 1.0), (8.0, 2.0)}
    assert (nearest[2].proto_weight, nearest[2].o2n_weight) == (4.0, 2.0)


def test_the_gate_split_must_differ_from_the_selection_split():
    with pytest.raises(ValidationError, match="never saw"):
        CompatSearchConfig(selection_split="val", gate_split="val")
    assert CompatSearchConfig().resolve_gate_split() == "test"
    assert (
        CompatSearchConfig().resolve_gate_split("val") == "test"
    )  # a gate split equal to selection is moved
    assert CompatSearchConfig(gate_split="train").resolve_gate_split("test") == "train"
    assert HotswapSettings(compat_search={"max_trials": 2}).compat_search.max_trials == 2


def test_score_is_the_worst_slack_of_the_gate_checks():
    thresholds = CompatThresholds(metrics=["map", "top1"])
    score, passed, _ = score_matrix(_matrix(0.60, 0.70, 0.90), thresholds)
    assert passed and score == pytest.approx(0.10)
    score, passed, reasons = score_matrix(_matrix(0.60, 0.55, 0.90), thresholds)
    assert not passed and score == pytest.approx(-0.05) and reasons


def _fake_trials(
    scores: dict[int, float], calls: list[list[int]], clock: list[float], per_trial: float = 10.0
):
    def run_wave(batch, deadline):
        calls.append([i for i, _ in batch])
        out = []
        for index, config in batch:
            if clock[0] >= deadline:
                out.append(skipped_trial(index, config))
                continue
            clock[0] += per_trial
            s = scores.get(index, -0.1)
            out.append(TrialResult(index, config, _matrix(0.5, 0.5 + s, 0.9), s, s > 0, per_trial))
        return out

    return run_wave


def test_search_respects_the_trial_budget_and_selects_the_best_score():
    candidates = [DEFAULT_CONFIG.model_copy(update={"proto_weight": float(w)}) for w in range(1, 9)]
    calls: list[list[int]] = []
    clock = [0.0]
    search = CompatSearchConfig(max_trials=5, parallel=2, stop_on_pass=False)
    outcome = run_search(
        candidates, search, _fake_trials({1: 0.02, 3: 0.05}, calls, clock), clock=lambda: clock[0]
    )
    assert calls == [[0, 1], [2, 3], [4]]
    assert outcome.selected.index == 3 and outcome.passed
    assert outcome.stopped == "trial budget of 5 spent"


def test_search_stops_after_the_first_passing_wave_and_on_the_time_budget():
    candidates = [DEFAULT_CONFIG.model_copy(update={"proto_weight": float(w)}) for w in range(1, 9)]
    calls: list[list[int]] = []
    clock = [0.0]
    outcome = run_search(
        candidates,
        CompatSearchConfig(max_trials=8, parallel=2),
        _fake_trials({2: 0.01}, calls, clock),
        lambda: clock[0],
    )
    assert calls == [[0, 1], [2, 3]] and outcome.selected.index == 2
    calls.clear()
    clock[0] = 0.0
    timed = CompatSearchConfig(max_trials=8, parallel=2, max_seconds=25)
    outcome = run_search(candidates, timed, _fake_trials({}, calls, clock), lambda: clock[0])
    # 10 s per trial: waves start at 0 s and 20 s; the second wave's second trial would start at 30 s
    assert calls == [[0, 1], [2, 3]]
    assert [t.skipped for t in outcome.trials] == [False, False, False, True]
    assert not outcome.passed and outcome.selected.index in (0, 1, 2)
    assert outcome.stopped.startswith("time budget")


def test_select_ignores_skipped_trials():
    skipped = skipped_trial(0, DEFAULT_CONFIG)
    assert select_trial([skipped]) is None
    tried = TrialResult(1, DEFAULT_CONFIG, _matrix(0.5, 0.4, 0.9), -0.1, False, 1.0)
    assert select_trial([skipped, tried]) is tried and math.isinf(skipped.score)


@pytest.mark.parametrize(
    ("items", "epochs", "floor", "expected"),
    [
        (3000, 8, 44, 8),  # MNIST-5k train: 47 steps per epoch, unchanged
        (1078, 8, 44, 21),  # sklearn digits train: 17 steps per epoch
        (750, 8, 44, 30),  # a quarter of MNIST-5k train: 12 steps per epoch
        (1078, 8, 0, 8),  # the floor switched off
        (3000, 3, 44, 3),  # short runs stay short
    ],
)
def test_the_step_floor_raises_epochs_only_for_short_epochs(items, epochs, floor, expected):
    assert CompatConfig(min_epoch_steps=floor).training_epochs(items, 64, epochs) == expected


def test_train_compatible_runs_the_raised_epochs():
    from hotswap.components.compat.dual_tuning import train_compatible
    from hotswap.components.data.bundled import make_synthetic
    from hotswap.components.models.backbones import BackboneSpec, build_model
    from hotswap.components.models.training import TrainConfig

    data = make_synthetic(48, 3, image_size=8, seed=0)
    old = build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=2, image_size=8), seed=0)
    spec = BackboneSpec(arch="small", embedding_dim=8, num_classes=3, image_size=8)
    config = CompatConfig(min_epoch_steps=3, anchor_weight=1.0)  # 48 items, batch 64: 1 step/epoch
    _, history = train_compatible(old, spec, data, config, TrainConfig(epochs=1), progress=False)
    assert len(history.epochs) == 3
    assert history.final["anchor"] > 0  # the instance anchor is a logged term of its own
