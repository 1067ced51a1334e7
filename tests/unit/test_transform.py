"""The feature transformation h_v (FCT / FastFill without side information) on synthetic features.

Features are built so that the truth is known: classes are points in a latent space, the
candidate embeds an item's latent cleanly, and each older model v embeds it through its own
rotation with its own noise (noisier on the classes it never learned). A map that undoes the
rotation is what a transform should find; a skip leaves the rotation in the gallery.
"""

from __future__ import annotations

import numpy as np
import pytest
from hotswap.components.compat.transform import (
    TransformConfig,
    TransformError,
    apply,
    fit_transform,
    load_transform,
    save_transform,
)
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.decision.decide import decide_from_features
from hotswap.components.decision.ordering import backfill_curve, order_by_scores, random_order
from hotswap.components.decision.record import CostModel

DIM, CLASSES = 16, 10
FAST = TransformConfig(epochs=20, hidden=64, ce_weight=0.1, lr=2e-3)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rotation(seed: int, strength: float) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((DIM, DIM))
    q, r = np.linalg.qr(np.eye(DIM) + strength * (g - g.T) / 2)
    return q * np.sign(np.diag(r))  # the rotation nearest the perturbed identity (no sign flips)


class World:
    """Class means, item latents, and every model's features of the same items."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.means = np.random.default_rng(0).standard_normal((CLASSES, DIM)) * 1.2
        self.labels = np.arange(n) % CLASSES
        self.latent = self.means[self.labels] + 0.6 * rng.standard_normal((n, DIM))
        self.rng = rng

    def candidate(self) -> np.ndarray:
        return _unit(self.latent)

    def old(self, model_seed: int, strength: float, noise: float, unlearned_noise: float) -> np.ndarray:
        """Model v: its own rotation of the latent, noisier on the upper half of the classes."""
        scale = np.where(self.labels >= CLASSES // 2, unlearned_noise, noise)[:, None]
        noisy = self.latent + scale * self.rng.standard_normal(self.latent.shape)
        return _unit(noisy @ _rotation(model_seed, strength).T)


def _fit(train: World, model_seed: int, strength: float, noise: float, unlearned: float, config=FAST):
    return fit_transform(
        train.old(model_seed, strength, noise, unlearned), train.candidate(), train.labels, config
    )


def test_given_a_fitted_map_when_saved_and_loaded_then_outputs_are_identical_and_no_pickle(tmp_path) -> None:
    train = World(800, seed=1)
    transform = _fit(train, 7, 1.5, 0.1, 0.1)
    feats = World(64, seed=2).old(7, 1.5, 0.1, 0.1)

    folder = save_transform(transform, tmp_path / "h")
    loaded = load_transform(folder)

    assert sorted(p.name for p in folder.iterdir()) == ["transform.json", "transform.safetensors"]
    mapped, s = apply(transform, feats)
    mapped2, s2 = apply(loaded, feats)
    np.testing.assert_array_equal(mapped, mapped2)
    np.testing.assert_array_equal(s, s2)
    assert loaded.config == transform.config and loaded.facts == transform.facts
    np.testing.assert_allclose(np.linalg.norm(mapped, axis=1), 1.0, atol=1e-5)


def test_given_a_weights_file_that_does_not_match_its_config_when_loaded_then_refused(tmp_path) -> None:
    folder = save_transform(_fit(World(200, seed=1), 7, 1.5, 0.1, 0.1, TransformConfig(epochs=1)), tmp_path)
    other = save_transform(
        _fit(World(200, seed=1), 7, 1.5, 0.1, 0.1, TransformConfig(epochs=1, hidden=32)), tmp_path / "o"
    )
    (folder / "transform.safetensors").write_bytes((other / "transform.safetensors").read_bytes())
    with pytest.raises(TransformError, match="do not match"):
        load_transform(folder)


def test_given_a_mixed_gallery_of_two_model_versions_when_decided_then_transform_beats_skip_as_served() -> (
    None
):
    train, val = World(2000, seed=1), World(600, seed=2)
    versions = {"1": (11, 0.8), "2": (12, 0.6)}  # two older models, each with its own rotation
    maps = {v: _fit(train, seed, strength, 0.15, 0.15) for v, (seed, strength) in versions.items()}
    per_model = {v: val.old(seed, strength, 0.15, 0.15) for v, (seed, strength) in versions.items()}
    assignment = np.where(np.arange(len(val.labels)) % 3 == 0, "2", "1")  # v1 two thirds, v2 one third
    gallery = np.where((assignment == "1")[:, None], per_model["1"], per_model["2"]).astype(np.float32)
    mapped = gallery.copy()
    for v, transform in maps.items():
        mapped[assignment == v] = apply(transform, per_model[v][assignment == v])[0]

    record = decide_from_features(
        gallery,
        val.candidate(),
        val.labels,
        gallery_items=len(val.labels),
        blessed=True,
        cost=CostModel(extract_seconds_per_item=1e-2, encode_seconds_per_item=1e-5),
        config=DecisionConfig(partial_fractions=(0.25, 0.5), ordering="random"),
        transformed_features=mapped,
    )

    by_mode = {(o.mode, o.fraction): o for o in record.options}
    skip, transform, full = by_mode[("skip", 0.0)], by_mode[("transform", 0.0)], by_mode[("full", 1.0)]
    assert transform.quality["map"] > skip.quality["map"] + 0.1
    assert transform.relative_quality > 0.9  # most of the full upgrade's quality without reading an image
    assert transform.items_to_extract == 0 and transform.estimated_seconds < full.estimated_seconds
    assert ("transform", 0.5) in by_mode  # partial(f) with the rest transformed, as its own rows


def test_given_noisier_unlearned_classes_when_ordered_by_uncertainty_then_auc_beats_random() -> None:
    train, val = World(3000, seed=1), World(600, seed=2)
    transform = _fit(train, 5, 1.0, 0.05, 1.6, TransformConfig(epochs=30, hidden=64, ce_weight=0.1, lr=2e-3))
    old_val = val.old(5, 1.0, 0.05, 1.6)
    mapped, s = apply(transform, old_val)
    new = val.candidate()

    def auc(order: np.ndarray) -> float:
        return backfill_curve(new, val.labels, mapped, new, order).auc("map")

    by_sigma = auc(order_by_scores(s))
    by_random = [auc(random_order(len(new), seed)) for seed in range(3)]

    assert (
        s[val.labels >= CLASSES // 2].mean() > s[val.labels < CLASSES // 2].mean()
    )  # knows what it does not know
    assert by_sigma > max(by_random) + 0.01


def test_given_features_and_labels_of_different_items_when_fitting_then_refused() -> None:
    world = World(100, seed=1)
    with pytest.raises(TransformError, match="same items"):
        fit_transform(world.candidate(), world.candidate()[:50], world.labels, FAST)
