"""The gate and the decision judged against the live system as served (synthetic features)."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.gate import build_report
from hotswap.components.compat.report import CompatibilityReport
from hotswap.components.compat.served import ServedQuality
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.decision.decide import decide_from_features
from hotswap.components.decision.record import CostModel, DecisionRecord, implied_fraction

N_CLASSES, PER_CLASS, DIM = 8, 25, 16
COST = CostModel(extract_seconds_per_item=2e-3, encode_seconds_per_item=1e-5)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def feats() -> dict[str, np.ndarray]:
    """'live': today's features (noisy clusters); 'better': cleaner clusters in the same space;
    'worse': noisier ones in the same space; 'foreign': clean clusters in an unrelated space."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    centres = rng.standard_normal((N_CLASSES, DIM))

    def around(c: np.ndarray, noise: float) -> np.ndarray:
        return _unit(c[labels] + noise * rng.standard_normal((len(labels), DIM)))

    return {
        "labels": labels,
        "centres": _unit(centres),
        "live": around(centres, 0.6),
        "better": around(centres, 0.3),
        "worse": around(centres, 1.2),
        "foreign": around(rng.standard_normal((N_CLASSES, DIM)), 0.3),
    }


def _decide(feats, new: str, blessed: bool, better: bool | None = None, **config) -> DecisionRecord:
    return decide_from_features(
        feats["live"],
        feats[new],
        feats["labels"],
        gallery_items=10_000,
        blessed=blessed,
        cost=COST,
        prototypes=feats["centres"],
        config=DecisionConfig(partial_fractions=(0.25, 0.5), quantized=False, **config),
        live_query_features=feats["live"],
        gallery_models=np.where(np.arange(len(feats["labels"])) % 3 == 0, "1", "2"),
        live_shares={"1": 1 / 3, "2": 2 / 3},
        better=better,
    )


def test_no_option_beats_live_means_reject_with_no_backfill(feats):
    record = _decide(feats, "worse", blessed=True)
    assert record.mode == "reject" and record.fraction is None
    assert record.live_quality is not None and all(o.beats_live is False for o in record.options)
    assert "no option beats the live system" in record.reasons[0]


def test_better_but_incompatible_gets_full_and_a_compatible_better_model_skips(feats):
    incompatible = _decide(feats, "foreign", blessed=False)
    assert incompatible.mode == "full" and "better but incompatible" in incompatible.reasons[0]
    # ... unless its new/new is below the champion's (the gate's new_model check failed)
    worse_new_new = _decide(feats, "foreign", blessed=False, better=False)
    assert worse_new_new.mode == "reject" and "not better" in worse_new_new.reasons[0]
    assert worse_new_new.better_than_champion is False
    compatible = _decide(feats, "better", blessed=True, better=True, quality_target=0.5)
    assert compatible.mode == "skip"
    assert compatible.chosen_option.beats_live is True


def test_unblessed_and_not_better_than_live_is_rejected(feats):
    record = _decide(feats, "worse", blessed=False)
    assert record.mode == "reject" and "no option beats" in record.reasons[0]


def test_forced_policies_keep_the_numbers(feats):
    skip = _decide(feats, "worse", blessed=False, policy="skip")
    full = _decide(feats, "worse", blessed=True, policy="full")
    assert (skip.mode, skip.fraction, full.mode, full.fraction) == ("skip", 0.0, "full", 1.0)
    assert skip.live_quality == full.live_quality and len(skip.options) == len(full.options)
    assert "decision.policy='skip'" in skip.reasons[0]
    assert DecisionRecord.from_json(skip.to_json()).live_shares == pytest.approx({"1": 1 / 3, "2": 2 / 3})


MATRIX = {
    "old/old": {"map": 0.50, "top1": 0.75},
    "new/new": {"map": 0.75, "top1": 0.875},
    "new/old": {"map": 0.625, "top1": 0.8125},
    "old/new": {"map": 0.5625, "top1": 0.78125},
}


def _served(candidate: float, live: float) -> ServedQuality:
    return ServedQuality(
        candidate_version="3",
        champion_version="2",
        gallery_version="v2-partial-0500",
        codebook_version="2",
        split="test",
        seed=0,
        live_shares={"1": 0.5, "2": 0.5},
        composed_counts={"1": 100, "2": 100},
        candidate={"map": candidate, "top1": 0.9},
        live={"map": live, "top1": 0.8},
        champion_only={"map": 0.5, "top1": 0.75},
    )


def test_the_gate_compares_with_the_live_system_and_keeps_the_pairwise_rows_for_audit():
    # new/old beats old/old, but the live (mixed) system is better than the candidate as served
    report = build_report(MATRIX, "2", "3", "data", served=_served(candidate=0.60, live=0.62))
    assert not report.blessed
    failed = report.failed_checks
    assert [(c.name, c.metric) for c in failed] == [("as_served", "map")]
    assert "live system 0.6200" in failed[0].message
    audit = [c for c in report.checks if not c.gating]
    assert {c.name for c in audit} == {"cross_test"} and all(c.passed for c in audit)
    blessed = build_report(MATRIX, "2", "3", "data", served=_served(candidate=0.64, live=0.62))
    assert blessed.blessed
    assert "As served" in blessed.to_markdown() and "(audit only)" in blessed.to_markdown()
    assert blessed.flat_metrics()["served.live.map"] == 0.62
    again = CompatibilityReport.from_json(blessed.to_json())
    assert again.served == blessed.served


def test_reports_stored_before_the_served_gate_still_read():
    old = build_report(MATRIX, "1", "2", "data").model_dump(mode="json")
    old.pop("served")
    for check in old["checks"]:
        check.pop("gating")
    report = CompatibilityReport.model_validate(old)
    assert report.served is None and all(c.gating for c in report.checks) and report.blessed


def test_a_better_but_incompatible_full_backfill_is_promotable_and_a_worse_model_never_is(feats):
    # given a model whose features live in another space (not blessed) but whose new/new beats live
    incompatible = _decide(feats, "foreign", blessed=False)
    # then its full backfill is promotable: a full backfill needs no compatibility, only to beat live
    assert incompatible.mode == "full" and incompatible.promotable is True
    assert "needs no compatibility" in incompatible.promotable_reason
    assert "beats live" in incompatible.promotable_reason
    # and the same holds when a benchmark forces the full backfill
    forced = _decide(feats, "foreign", blessed=False, policy="full")
    assert forced.promotable is True
    # given a worse model, whatever option is decided or forced, it is never promotable
    for record in (
        _decide(feats, "worse", blessed=True),
        _decide(feats, "worse", blessed=True, policy="full"),
        _decide(feats, "worse", blessed=True, policy="skip"),
    ):
        assert record.promotable is False, record.mode
    assert "does not beat live" in _decide(feats, "worse", blessed=True, policy="full").promotable_reason
    # and a margin the full backfill does not clear makes it wait for a reviewer
    strict = _decide(feats, "foreign", blessed=False, min_gain_over_live=0.9, policy="full")
    assert strict.promotable is False and "by more than 0.9" in strict.promotable_reason
    stored = DecisionRecord.from_json(incompatible.to_json())
    assert (stored.promotable, stored.promotable_reason) == (True, incompatible.promotable_reason)


def test_options_that_keep_old_features_need_the_blessing(feats):
    # given a better model that is not blessed, forced onto a skip (old features stay in the gallery)
    record = _decide(feats, "better", blessed=False, policy="skip")
    # then skip beats live as served, yet it is not promotable: its queries may not search old features
    assert record.chosen_option.beats_live is True
    assert record.promotable is False and "keeps old features" in record.promotable_reason
    # while a blessed model's skip that beats live is promotable
    blessed = _decide(feats, "better", blessed=True, better=True, quality_target=0.5)
    assert blessed.mode == "skip" and blessed.promotable is True and "blessed" in blessed.promotable_reason
    # and every named promotion metric must beat live: here live top-1 is already 1.0, so naming it
    # leaves the decided skip for a reviewer (why the default is the decision's metric alone)
    both = _decide(feats, "better", blessed=True, better=True, promotion_metrics=("map", "top1"))
    assert both.float_live_quality["top1"] == 1.0
    assert both.promotable is False and "top1" in both.promotable_reason


def test_promote_applies_the_same_rule_to_the_option_a_reviewer_picks(feats):
    from hotswap.components.decision.promotion_gate import refusal

    # given a better but incompatible model (not blessed: the cross-test fails)
    matrix = {**MATRIX, "new/old": {"map": 0.1, "top1": 0.1}}
    report = build_report(matrix, "2", "3", "data")
    assert not report.blessed
    record = _decide(feats, "foreign", blessed=False)
    # then approving its full backfill passes, and a skip or a partial backfill is refused
    assert refusal(report, record) is None and refusal(report, record, "full") is None
    assert refusal(report, record, "skip").startswith("it is not compatible")
    assert "keeps old features" in refusal(report, record, "partial", 0.5)
    # and a worse model is refused as worse than live
    worse = _decide(feats, "worse", blessed=True, policy="full")
    why = refusal(build_report(MATRIX, "2", "3", "data"), worse)
    assert why.startswith("it is worse than the live system")


@pytest.mark.parametrize(
    ("mode", "given", "implied"),
    [
        ("skip", None, 0.0),
        ("requantize", 0.4, 0.0),
        ("full", None, 1.0),
        ("transform", None, 0.0),
        ("transform", 0.25, 0.25),  # transform(f): the reviewer's f is kept, not reset to 0
        ("partial", 0.5, 0.5),
        ("partial", None, None),
    ],
)
def test_a_backfill_mode_implies_the_share_it_re_extracts(mode, given, implied) -> None:
    assert implied_fraction(mode, given) == implied
