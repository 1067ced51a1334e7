"""Backfill orderings (random, uncertainty from stored old features) and the backfill curve."""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.decision.ordering import (
    backfill_curve,
    backfill_fractions,
    backfill_order,
    backfilled_count,
    mixed_gallery,
    order_by_scores,
    random_order,
    uncertainty_scores,
)

PROTOS = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def test_uncertainty_ranks_ambiguous_items_before_clear_ones() -> None:
    feats = np.array(
        [
            [1.0, 0.0, 0.0],  # on a prototype: certain
            [1.0, 1.0, 0.0],  # exactly between two prototypes: most uncertain by margin
            [1.0, 0.2, 0.0],  # leaning to one prototype
            [1.0, 1.0, 1.0],  # equally close to all three: most uncertain by entropy / max similarity
        ],
        dtype=np.float32,
    )
    margin = uncertainty_scores(feats, PROTOS, "margin")
    assert margin[0] < margin[2] < margin[1]
    assert margin[1] == pytest.approx(margin[3])  # both have a zero gap between the top two
    for score in ("max_similarity", "entropy"):
        values = uncertainty_scores(feats, PROTOS, score)
        assert values[0] < values[2] < values[1] < values[3]
    # Scores depend on directions only: stored features and head weights need not be unit-norm.
    np.testing.assert_allclose(uncertainty_scores(5 * feats, 3 * PROTOS, "margin"), margin, rtol=1e-6)


def test_uncertainty_order_is_reproducible_and_stable_on_ties() -> None:
    feats = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 1, 0]], dtype=np.float32)
    order = backfill_order("uncertainty", feats, prototypes=PROTOS, score="margin")
    assert order.tolist() == [0, 2, 1, 3]  # two tied ambiguous rows keep their stored order
    np.testing.assert_array_equal(order_by_scores(np.zeros(5)), np.arange(5))


def test_random_order_is_a_seeded_permutation() -> None:
    a, b, c = random_order(50, seed=1), random_order(50, seed=1), random_order(50, seed=2)
    assert sorted(a.tolist()) == list(range(50))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: uncertainty_scores(np.ones((2, 4)), PROTOS), "prototypes have dimension 3"),
        (lambda: uncertainty_scores(np.ones((2, 3)), PROTOS, "vibes"), "unknown"),
        (lambda: uncertainty_scores(np.full((2, 3), np.nan), PROTOS), "NaN"),
        (lambda: uncertainty_scores(np.ones((2, 3)), PROTOS[:1]), "at least 2 classes"),
        (lambda: backfill_order("uncertainty", np.ones((2, 3))), "needs the old model's class prototypes"),
        (lambda: backfill_order("alphabetical", np.ones((2, 3))), "unknown"),
        (lambda: backfilled_count(10, 1.2), r"\[0, 1\]"),
        (lambda: backfill_fractions(1), "at least 2"),
    ],
)
def test_bad_inputs_get_clear_errors(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_curve_has_22_equally_spaced_points_and_exact_counts() -> None:
    fractions = backfill_fractions()
    assert len(fractions) == 22 and fractions[0] == 0 and fractions[-1] == 1
    np.testing.assert_allclose(np.diff(fractions), 1 / 21)
    n = 21 * 7
    assert [backfilled_count(n, f) for f in fractions] == [7 * i for i in range(22)]
    assert backfilled_count(10, 0.3) == 3  # float error must not lose an item


def test_mixed_gallery_replaces_exactly_the_first_items_of_the_order() -> None:
    old, new = np.zeros((5, 2), dtype=np.float32), np.ones((5, 2), dtype=np.float32)
    mixed = mixed_gallery(old, new, np.array([3, 1, 4, 0, 2]), 2)
    assert mixed[:, 0].tolist() == [0, 1, 0, 1, 0]
    assert old.sum() == 0  # inputs untouched


def _toy_upgrade(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels, new features (clean clusters), old features where the 'broken' half is noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), 20)
    centres = rng.standard_normal((6, 16)).astype(np.float32)
    new = centres[labels] + 0.3 * rng.standard_normal((len(labels), 16)).astype(np.float32)
    old = new + 0.1 * rng.standard_normal(new.shape).astype(np.float32)
    broken = rng.permutation(len(labels))[: len(labels) // 2]
    old[broken] = rng.standard_normal((len(broken), 16)).astype(np.float32)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return labels, norm(new), norm(old), broken


def test_curve_endpoints_are_cross_test_and_new_new_and_auc_is_the_mean() -> None:
    labels, new, old, _ = _toy_upgrade()
    curve = backfill_curve(new, labels, old, new, random_order(len(labels), 0))
    cross = retrieval_metrics(new, labels, old, labels, exclude_self=True)
    full = retrieval_metrics(new, labels)
    assert curve.points[0]["map"] == pytest.approx(cross.map)
    assert curve.points[-1]["map"] == pytest.approx(full.map)
    assert curve.auc("top1") == pytest.approx(np.mean([p["top1"] for p in curve.points]))
    assert curve.at(1.0) == pytest.approx(full.map)
    assert set(curve.as_dict()["auc"]) == {"map", "top1", "top5"}


def test_repairing_broken_items_first_beats_random_and_the_reverse() -> None:
    labels, new, old, broken = _toy_upgrade()
    first = np.concatenate([broken, np.setdiff1d(np.arange(len(labels)), broken)])
    auc = {
        name: backfill_curve(new, labels, old, new, order).auc()
        for name, order in {
            "broken first": first,
            "random": random_order(len(labels), 3),
            "reverse": first[::-1],
        }.items()
    }
    assert auc["broken first"] > auc["random"] > auc["reverse"]


def test_transform_is_what_gets_searched() -> None:
    labels, new, old, _ = _toy_upgrade()
    crush = lambda x: np.sign(x).astype(np.float32)  # noqa: E731 — a 1-bit "quantizer"
    curve = backfill_curve(
        new, labels, old, new, random_order(len(labels)), transform=crush, fractions=[0, 1]
    )
    assert curve.points[-1]["map"] == pytest.approx(
        retrieval_metrics(new, labels, crush(new), labels, exclude_self=True).map
    )
    assert curve.points[0]["map"] == pytest.approx(
        retrieval_metrics(new, labels, crush(old), labels, exclude_self=True).map
    )


def test_explicit_gallery_mode_needs_no_self_exclusion() -> None:
    labels, new, old, _ = _toy_upgrade()
    queries, query_labels = new[:30], labels[:30]
    curve = backfill_curve(
        queries, query_labels, old, new, random_order(len(labels)), gallery_labels=labels, fractions=[1.0]
    )
    assert curve.points[0]["map"] == pytest.approx(retrieval_metrics(queries, query_labels, new, labels).map)
