"""Model behaviour: real training on real digits, evaluated with retrieval metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model

OLD_CLASSES = range(5)


@pytest.fixture(scope="module")
def old_model_and_history(mnist):
    model = build_model(BackboneSpec(arch="small", embedding_dim=32, num_classes=5))
    history = train_model(
        model, mnist.split("train").with_classes(OLD_CLASSES), TrainConfig(epochs=3), progress=False
    )
    return model, history


def test_model_trained_on_digits_0_to_4_retrieves_them_far_better_than_chance(mnist, old_model_and_history):
    model, _ = old_model_and_history
    test = mnist.split("test").with_classes(OLD_CLASSES)
    result = retrieval_metrics(extract_features(model, test), test.labels)
    chance = 1 / 5
    assert result.map > chance + 0.5, result
    assert result.top1 > 0.9, result


def test_loss_decreases_over_epochs(old_model_and_history):
    _, history = old_model_and_history
    losses = [epoch["loss"] for epoch in history.epochs]
    assert losses[-1] < losses[0]


def test_training_is_deterministic_for_a_seed(mnist):
    data = mnist.split("train").with_classes([0, 1]).subset(np.arange(200))
    weights = []
    for _ in range(2):
        model = build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=2), seed=5)
        train_model(model, data, TrainConfig(epochs=1, seed=5), progress=False)
        weights.append(model.state_dict())
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name


def test_labels_outside_the_model_head_are_a_clear_error(mnist):
    model = build_model(BackboneSpec(arch="small", embedding_dim=8, num_classes=2))
    with pytest.raises(ValueError, match="label 9 does not fit a model with 2 classes"):
        train_model(model, mnist.split("val"), TrainConfig(epochs=1), progress=False)
