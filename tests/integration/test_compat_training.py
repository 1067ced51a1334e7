"""Behaviour on real digits: compatibility must come from the training, not from chance.

The old model (small backbone, digits 0-4) is the shared session fixture. Two new models of the
larger backbone are trained on all ten digits for a short schedule: one independently, one with
Dual-Tuning (the tuned default). New-model queries are then searched against the old model's
gallery features, leave-one-out on the validation split.
"""

from __future__ import annotations

import pytest
from hotswap.components.compat.cross_eval import compatibility_criterion, compatibility_matrix
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.core.configs import CompatConfig
from hotswap.components.models.backbones import BackboneSpec
from hotswap.components.models.training import TrainConfig

PAIRS = ("old/old", "new/new", "new/old")
CHANCE_MAP = 0.1  # ten balanced classes: a random ranking has AP ≈ the share of relevant items
EPOCHS = 4


def _train_and_score(old_model, mnist, config: CompatConfig):
    spec = BackboneSpec(arch="large", embedding_dim=old_model.embedding_dim, num_classes=10)
    new, _ = train_compatible(
        old_model, spec, mnist.split("train"), config, TrainConfig(epochs=EPOCHS, seed=0), progress=False
    )
    return compatibility_matrix(old_model, new, mnist.split("val"), pairs=PAIRS)


@pytest.fixture(scope="module")
def independent(old_model, mnist):
    return _train_and_score(old_model, mnist, CompatConfig(method="independent"))


@pytest.fixture(scope="module")
def dual_tuning(old_model, mnist):
    return _train_and_score(old_model, mnist, DEFAULT_CONFIG)


@pytest.mark.slow
def test_independent_training_is_incompatible(independent):
    new_old, old_old = independent["new/old"], independent["old/old"]
    assert new_old.map < CHANCE_MAP + 0.15, f"independent new/old should be near chance: {new_old}"
    assert new_old.map < old_old.map / 2
    assert independent["new/new"].map > old_old.map + 0.3, "the new model itself must be much better"


@pytest.mark.slow
def test_dual_tuning_queries_beat_the_old_system_on_its_own_gallery(dual_tuning, independent):
    checks = compatibility_criterion(dual_tuning, metrics=("map",))
    assert checks["map"].cross_passed, (
        f"new/old {checks['map'].new_old:.3f} vs old/old {checks['map'].old_old:.3f}"
    )
    assert dual_tuning["new/old"].map > independent["new/old"].map + 0.25
    assert dual_tuning["new/new"].map >= independent["new/new"].map - 0.03, (
        "compatibility must not wreck new/new"
    )
