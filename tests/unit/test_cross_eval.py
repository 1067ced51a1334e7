"""The compatibility matrix and the criterion, on hand-built features with known answers."""

from __future__ import annotations

import hotswap.components.compat.cross_eval as cross_eval
import numpy as np
import pytest
import torch
from hotswap.components.compat.cross_eval import (
    compatibility_criterion,
    compatibility_matrix,
    compatibility_matrix_from_features,
)
from hotswap.components.compat.metrics import RetrievalMetrics, retrieval_metrics
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.models.backbones import BackboneSpec, build_model


def _clustered(
    n_per_class: int, n_classes: int, dim: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    feats = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), labels


def test_cross_pairs_exclude_the_query_item_itself():
    """new == old features: new/old must equal old/old, not a perfect score from self-matches."""
    feats, labels = _clustered(10, 4, 16, noise=2.0, seed=0)
    matrix = compatibility_matrix_from_features({"old": feats, "new": feats.copy()}, labels)
    assert matrix["old/old"].top1 < 0.95, "noisy clusters: leave-one-out cannot be perfect"
    assert matrix["new/old"].map == pytest.approx(matrix["old/old"].map)
    assert matrix["new/old"].top1 == pytest.approx(matrix["old/old"].top1)
    assert set(matrix) == {"old/old", "new/new", "new/old", "old/new"}


def test_unrelated_spaces_score_near_chance_across_models():
    old, labels = _clustered(20, 5, 16, noise=0.3, seed=1)
    new, _ = _clustered(20, 5, 16, noise=0.3, seed=2)  # same labels, unrelated class centres
    matrix = compatibility_matrix_from_features({"old": old, "new": new}, labels)
    assert matrix["old/old"].map > 0.9 and matrix["new/new"].map > 0.9
    assert matrix["new/old"].map < 0.5


def test_explicit_gallery_matches_direct_metrics():
    q_old, q_labels = _clustered(5, 3, 8, noise=0.5, seed=3)
    g_old, g_labels = _clustered(7, 3, 8, noise=0.5, seed=3)
    q_new, g_new = q_old[:, ::-1].copy(), g_old[:, ::-1].copy()
    matrix = compatibility_matrix_from_features(
        {"old": q_old, "new": q_new}, q_labels, {"old": g_old, "new": g_new}, g_labels, pairs=("new/old",)
    )
    direct = retrieval_metrics(q_new, q_labels, g_old, g_labels)
    assert list(matrix) == ["new/old"]
    assert matrix["new/old"].map == pytest.approx(direct.map)


def test_bad_pairs_and_missing_features_are_named():
    feats, labels = _clustered(3, 2, 4, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="unknown model pair 'new/older'"):
        compatibility_matrix_from_features({"old": feats, "new": feats}, labels, pairs=("new/older",))
    with pytest.raises(ValueError, match="needs features of the 'new' model"):
        compatibility_matrix_from_features({"old": feats}, labels, pairs=("old/new",))
    with pytest.raises(ValueError, match="unknown model key"):
        compatibility_matrix_from_features({"old": feats, "newer": feats}, labels, pairs=("old/old",))


def test_matrix_extracts_features_once_per_model(monkeypatch):
    data = make_synthetic(40, 4, image_size=12, seed=0)
    torch.manual_seed(0)
    old = build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=2, image_size=12))
    new = build_model(BackboneSpec(arch="large", embedding_dim=8, num_classes=4, image_size=12))
    calls = []
    real = cross_eval.extract_features

    def counting(model, images, **kwargs):
        calls.append(model)
        return real(model, images, **kwargs)

    monkeypatch.setattr(cross_eval, "extract_features", counting)
    matrix = compatibility_matrix(old, new, data)
    assert len(calls) == 2 and {id(m) for m in calls} == {id(old), id(new)}
    old_feats, new_feats = real(old, data.native_inputs()), real(new, data.native_inputs())
    expected = compatibility_matrix_from_features({"old": old_feats, "new": new_feats}, data.labels)
    for pair, metrics in expected.items():
        assert matrix[pair].map == pytest.approx(metrics.map)


def _m(value: float) -> RetrievalMetrics:
    return RetrievalMetrics(map=value, cmc={1: value + 0.2, 5: value + 0.3})


def test_criterion_passes_fails_and_gain():
    matrix = {"old/old": _m(0.5), "new/old": _m(0.6), "new/new": _m(0.9)}
    checks = compatibility_criterion(matrix)
    assert checks["map"].passed and checks["top1"].passed
    assert checks["map"].gain == pytest.approx(0.25)  # (0.6 - 0.5) / (0.9 - 0.5)
    # Against an independent model's new/new: 0.9 is more than 1 point below 0.95.
    ref = compatibility_criterion(matrix, reference_new_new={"map": 0.95, "top1": 1.0})
    assert ref["map"].cross_passed and not ref["map"].new_new_passed and not ref["map"].passed
    assert ref["map"].gain == pytest.approx(0.1 / 0.45)
    assert ref["map"].reference == "independent new*/new*"
    worse = compatibility_criterion({**matrix, "new/old": _m(0.49)})
    assert not worse["map"].cross_passed and worse["map"].gain < 0
    margin = compatibility_criterion(matrix, cross_margin=0.2)
    assert not margin["map"].cross_passed


def test_criterion_needs_the_three_pairs():
    with pytest.raises(ValueError, match=r"\['new/new'\]"):
        compatibility_criterion({"old/old": _m(0.5), "new/old": _m(0.6)})


def test_exclude_self_needs_aligned_rows():
    feats, labels = _clustered(3, 2, 4, noise=0.1, seed=0)
    with pytest.raises(ValueError, match="row for row"):
        retrieval_metrics(feats, labels, feats[:-1], labels[:-1], exclude_self=True)
