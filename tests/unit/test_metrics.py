"""Retrieval metrics against hand-computed cases and a brute-force tie oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hotswap.components.compat.metrics import retrieval_metrics, update_gain


def _one_query(scores: list[float], relevant: list[bool], topk=(1, 5)):
    """Scores become 1-D features so that query·gallery equals the given score."""
    gallery = np.array(scores, dtype=np.float32)[:, None]
    labels = np.where(np.array(relevant), 1, 0)
    return retrieval_metrics(np.ones((1, 1), np.float32), np.array([1]), gallery, labels, topk=topk)


def _brute_force(scores: np.ndarray, relevant: np.ndarray, ks=(1, 2, 3)) -> tuple[float, dict[int, float]]:
    """Average AP and hit@k over every ordering of tied items (the definition, enumerated)."""
    groups = [np.flatnonzero(scores == v) for v in sorted(set(scores.tolist()), reverse=True)]
    aps, hits = [], {k: [] for k in ks}
    for perm in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate([np.array(p, dtype=int) for p in perm])
        rel = relevant[order]
        precision = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append(float((precision * rel).sum() / rel.sum()))
        for k in ks:
            hits[k].append(float(rel[:k].any()))
    return float(np.mean(aps)), {k: float(np.mean(v)) for k, v in hits.items()}


def test_average_precision_matches_hand_computed_value_without_ties():
    # Given relevant items at ranks 1 and 3 of four
    result = _one_query([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    # Then AP = (1/1 + 2/3) / 2 and the first hit is at rank 1
    assert result.map == pytest.approx((1 + 2 / 3) / 2)
    assert result.top1 == 1.0 and result.top5 == 1.0


def test_tied_pair_counts_as_the_average_of_both_orders():
    # Given a relevant and an irrelevant item with the same score
    result = _one_query([0.5, 0.5], [True, False])
    # Then AP is the mean of 1 (relevant first) and 1/2 (relevant second), top-1 is a coin flip
    assert result.map == pytest.approx(0.75)
    assert result.top1 == pytest.approx(0.5)


def test_first_relevant_at_rank_six_misses_top5():
    result = _one_query([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [False] * 5 + [True])
    assert result.top1 == 0.0 and result.top5 == 0.0
    assert result.map == pytest.approx(1 / 6)


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_metrics_equal_the_enumerated_expectation(seed):
    rng = np.random.default_rng(seed)
    n = 7
    scores = rng.integers(0, 3, size=n).astype(np.float32)  # heavy ties
    relevant = rng.random(n) < 0.4
    relevant[rng.integers(n)] = True
    expected_ap, expected_hits = _brute_force(scores, relevant)
    result = _one_query(scores.tolist(), relevant.tolist(), topk=(1, 2, 3))
    assert result.map == pytest.approx(expected_ap, abs=1e-9)
    for k, value in expected_hits.items():
        assert result.cmc[k] == pytest.approx(value, abs=1e-9)


def test_leave_one_out_excludes_the_query_itself():
    # Given two well-separated clusters of two items each
    feats = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    result = retrieval_metrics(feats, labels)
    # Then each query finds its only partner first (if it found itself, AP would count 2 items)
    assert result.map == pytest.approx(1.0)
    assert result.n_queries == 4


def test_blocked_evaluation_equals_one_block():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 5, size=300)
    whole = retrieval_metrics(feats, labels, block_size=10_000)
    blocked = retrieval_metrics(feats, labels, block_size=7)
    assert blocked.map == pytest.approx(whole.map)
    assert blocked.cmc == pytest.approx(whole.cmc)


def test_queries_without_relevant_items_are_skipped_and_counted():
    gallery = np.eye(3, dtype=np.float32)
    result = retrieval_metrics(gallery, np.array([0, 1, 9]), gallery, np.array([0, 1, 2]))
    assert result.n_queries == 2 and result.n_skipped == 1
    assert result.map == pytest.approx(1.0)


def test_random_features_score_near_chance():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1000, 16)).astype(np.float32)
    labels = rng.integers(0, 10, size=1000)
    result = retrieval_metrics(feats, labels)
    assert result.map == pytest.approx(0.1, abs=0.02)
    assert result.top1 == pytest.approx(0.1, abs=0.04)


def test_dimension_mismatch_between_query_and_gallery_is_a_clear_error():
    with pytest.raises(ValueError, match="embedding dimension mismatch.*d=8.*d=4"):
        retrieval_metrics(np.zeros((2, 8)), np.array([0, 1]), np.zeros((2, 4)), np.array([0, 1]))


def test_label_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="query: 2 feature rows but 3 labels"):
        retrieval_metrics(np.zeros((2, 8)), np.array([0, 1, 2]))


def test_update_gain():
    assert update_gain(old_old=0.5, new_old=0.6, new_new=0.9) == pytest.approx(0.25)
    assert np.isnan(update_gain(old_old=0.5, new_old=0.6, new_new=0.5))
