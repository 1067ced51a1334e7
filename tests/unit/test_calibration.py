"""Score calibration of mixed galleries: the maps, their application, and the backfill curve they fix."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.calibration import AffineMap, CalibrationError, ScoreCalibration
from hotswap.components.compat.calibration_fitting import (
    CALIBRATION_RULES,
    fit_backfill_calibration,
    fit_calibration,
    pair_scores,
)
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.core.configs import DEFAULT_RULE, CalibrationConfig, DecisionConfig
from hotswap.components.decision.ordering import (
    backfill_curve,
    backfill_order,
    backfilled_count,
    mixed_gallery,
    random_order,
)
from hotswap.components.decision.quality import estimate_quality


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def scale_mismatch(seed: int = 0, per_class: int = 40, classes: int = 10, dim: int = 32):
    """Old and new features of the same items where the two models' scores live on different scales.

    Both models place class y near prototype p_y (the new one compatible and tighter), but every
    new feature also carries a shared direction u: new-query × new-item scores of *other* classes
    (≈ 0.6) then exceed new-query × old-item scores of the *same* class (≈ 0.45), the situation
    in which raw scores rank a partly backfilled gallery below the un-backfilled one.
    """
    rng = np.random.default_rng(seed)
    protos = _unit(rng.normal(size=(classes, dim)))
    shared = _unit(rng.normal(size=(1, dim)))[0]
    labels = np.repeat(np.arange(classes), per_class)
    old = _unit(protos[labels] + 0.25 * rng.normal(size=(len(labels), dim)))
    new = _unit(1.2 * shared + protos[labels] + 0.05 * rng.normal(size=(len(labels), dim)))
    return old, new, labels, protos


def leave_one_out_map(queries, labels, gallery, calibration=None, models=None) -> float:
    if calibration is not None:
        queries, gallery = calibration.augment(queries, gallery, models)
    return retrieval_metrics(queries, labels, gallery, labels, exclude_self=True).map


# --------------------------------------------------------------------------- the constructed case


def test_calibration_keeps_a_five_percent_backfilled_gallery_at_or_above_skip() -> None:
    old, new, labels, _ = scale_mismatch()
    calibration = fit_backfill_calibration(new, labels, old, new)
    assert calibration.rule == DEFAULT_RULE
    order = random_order(len(old), seed=0)
    count = backfilled_count(len(old), 0.05)
    mixed = mixed_gallery(old, new, order, count)
    models = np.array(["old"] * len(old), dtype=object)
    models[order[:count]] = "new"
    skip = leave_one_out_map(new, labels, old)
    raw = leave_one_out_map(new, labels, mixed)
    calibrated = leave_one_out_map(new, labels, mixed, calibration, models.astype(str))
    assert raw < skip - 0.1, "the constructed case must show the raw-score dip, else it proves nothing"
    assert calibrated >= skip


@pytest.mark.parametrize("ordering", ["random", "uncertainty"])
def test_calibrated_curve_never_falls_below_skip(ordering: str) -> None:
    old, new, labels, protos = scale_mismatch(seed=1)
    order = backfill_order(ordering, old, prototypes=protos, seed=0)
    raw = backfill_curve(new, labels, old, new, order)
    calibrated = backfill_curve(
        new, labels, old, new, order, calibration=fit_backfill_calibration(new, labels, old, new)
    )
    skip = calibrated.values()[0]
    assert raw.values()[0] == pytest.approx(skip)  # f = 0: one segment, calibration changes nothing
    assert len(calibrated.values()) == 22
    assert min(calibrated.values()) >= skip - 1e-9
    assert min(raw.values()) < skip - 0.1  # the uncalibrated contrast dips
    assert calibrated.auc() > raw.auc()


def test_decision_estimates_partial_options_with_calibration() -> None:
    old, new, labels, protos = scale_mismatch(seed=2)
    fractions = (1 / 21, 0.5)

    def partial(enabled: bool) -> dict[float, dict[str, float]]:
        config = DecisionConfig(
            partial_fractions=fractions, ordering="random", calibration=CalibrationConfig(enabled=enabled)
        )
        return estimate_quality(
            old, new, labels, old_codebooks=None, new_codebooks=None, prototypes=protos, config=config
        ).float_partial

    skip = leave_one_out_map(new, labels, old)
    assert all(partial(True)[f]["map"] >= skip for f in fractions)
    assert partial(False)[1 / 21]["map"] < skip - 0.1


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize("rule", [r for r in CALIBRATION_RULES if r != "identity"])
def test_every_rule_fixes_the_constructed_dip(rule: str) -> None:
    old, new, labels, _ = scale_mismatch(seed=3)
    order = random_order(len(old), seed=0)
    cal = fit_backfill_calibration(new, labels, old, new, CalibrationConfig(rule=rule))
    curve = backfill_curve(new, labels, old, new, order, calibration=cal)
    assert min(curve.values()) >= curve.values()[0] - 1e-9
    assert cal.maps["new"] == AffineMap(scale=1.0, offset=0.0)  # the query model's segment is the reference
    assert cal.maps["old"].scale > 0


def test_impostor_rule_equalises_the_non_matched_distributions() -> None:
    old, new, labels, _ = scale_mismatch(seed=4)
    cal = fit_backfill_calibration(new, labels, old, new, CalibrationConfig(rule="impostor"))
    stats = []
    for model, gallery in (("old", old), ("new", new)):
        _, nonmatched = pair_scores(new, labels, gallery)
        m = cal.maps[model]
        adjusted = m.scale * nonmatched + m.offset
        stats.append((adjusted.mean(), adjusted.std()))
    assert stats[0] == pytest.approx(stats[1], rel=1e-6)


def test_logistic_rule_orders_segments_by_match_evidence() -> None:
    old, new, labels, _ = scale_mismatch(seed=5)
    cal = fit_backfill_calibration(new, labels, old, new, CalibrationConfig(rule="logistic"))
    old_matched, _ = pair_scores(new, labels, old)
    _, new_nonmatched = pair_scores(new, labels, new)
    # raw: other-class new items outscore same-class old items; calibrated: the reverse
    assert np.median(new_nonmatched) > np.median(old_matched)
    m = cal.maps["old"]
    assert np.median(m.scale * old_matched + m.offset) > np.median(new_nonmatched)


def test_single_model_gallery_gets_the_identity() -> None:
    old, new, labels, _ = scale_mismatch(seed=6)
    cal = fit_calibration("2", new, labels, {"1": old})
    assert cal.is_identity and cal.reference_model == "1"
    scores = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_array_equal(cal.adjust(scores, np.array(["1"] * 5)), scores)
    assert ScoreCalibration.identity("2", ["1"]).is_identity


def test_disabled_config_fits_the_identity() -> None:
    old, new, labels, _ = scale_mismatch(seed=7)
    cal = fit_backfill_calibration(new, labels, old, new, CalibrationConfig(enabled=False))
    assert cal.rule == "identity" and cal.is_identity


def test_fit_rejects_bad_inputs() -> None:
    old, new, labels, _ = scale_mismatch(seed=8)
    with pytest.raises(CalibrationError, match="row for row"):
        fit_calibration("new", new, labels, {"old": old[:-1]})
    with pytest.raises(CalibrationError, match="matched"):
        fit_calibration("new", new, np.zeros(len(new)), {"old": old})
    with pytest.raises(CalibrationError, match="reference model"):
        fit_calibration("new", new, labels, {"old": old}, reference="nope")
    bad = old.copy()
    bad[0, 0] = np.nan
    with pytest.raises(CalibrationError, match="NaN"):
        fit_calibration("new", new, labels, {"old": bad})


# --------------------------------------------------------------------------- applying and storing


def two_maps() -> ScoreCalibration:
    return ScoreCalibration(
        query_model="3",
        reference_model="3",
        rule="logistic",
        maps={"3": AffineMap(scale=1.0, offset=0.0), "1": AffineMap(scale=2.0, offset=0.5)},
    )


def test_adjust_applies_each_columns_map() -> None:
    cal = two_maps()
    scores = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, -np.inf]], dtype=np.float32)
    out = cal.adjust(scores, np.array(["3", "1", "1"]))
    np.testing.assert_allclose(out, [[0.1, 0.9, 1.1], [0.4, 1.5, -np.inf]], rtol=1e-6)
    assert out.dtype == np.float32
    per_cell = cal.adjust(scores, np.array([["1", "3", "3"], ["3", "3", "1"]]))  # a top-k result
    np.testing.assert_allclose(per_cell, [[0.7, 0.2, 0.3], [0.4, 0.5, -np.inf]], rtol=1e-6)


def test_adjust_names_what_is_wrong() -> None:
    cal = two_maps()
    scores = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(CalibrationError, match="no map for gallery model '2'"):
        cal.adjust(scores, np.array(["3", "2", "1"]))
    with pytest.raises(CalibrationError, match="gallery_models must have shape"):
        cal.adjust(scores, np.array(["3", "1"]))
    with pytest.raises(CalibrationError, match="2-D float"):
        cal.adjust(np.zeros(3), np.array(["3", "1", "1"]))


def test_augmented_inner_products_are_the_calibrated_scores() -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(7, 6)).astype(np.float32)
    models = np.array(["1", "3", "1", "3", "3", "1", "1"])
    cal = two_maps()
    qa, ga = cal.augment(q, g, models)
    np.testing.assert_allclose(qa @ ga.T, cal.adjust(q @ g.T, models), rtol=1e-5, atol=1e-6)


def test_json_round_trip_and_corruption() -> None:
    old, new, labels, _ = scale_mismatch(seed=9)
    cal = fit_backfill_calibration(new, labels, old, new)
    back = ScoreCalibration.from_json(cal.to_json())
    assert back == cal
    with pytest.raises(CalibrationError, match="not a valid score calibration"):
        ScoreCalibration.from_json('{"query_model": "2"}', source="calibration/2.json")
    text = cal.to_json().replace('"scale": 1.0', '"scale": -1.0', 1)
    with pytest.raises(CalibrationError, match="scale"):
        ScoreCalibration.from_json(text)
