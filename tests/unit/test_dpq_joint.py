"""End-to-end DPQ: the quantization loss reaches the backbone; codebooks keep their own optimizer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hotswap.components.core.configs import DPQConfig
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.training import TrainConfig, extract_features
from hotswap.components.quant.dpq_joint import finetune_with_dpq
from hotswap.components.quant.dpq_training import train_dpq


def distortion(features: np.ndarray, codebooks) -> float:
    return float(((features - codebooks.decode(codebooks.encode(features))) ** 2).sum(1).mean())


def test_the_quantization_loss_pulls_features_onto_the_codebooks():
    """Same start, same data, same seeds: only the weight of the DPQ loss on the backbone differs."""
    data = make_synthetic(320, 4, image_size=16, seed=0)
    torch.manual_seed(0)
    start = build_model(BackboneSpec(arch="small", embedding_dim=16, num_classes=4, image_size=16))
    features = extract_features(start, data)
    codebooks = train_dpq(features, data.labels, start.head, DPQConfig(n_blocks=2, n_codewords=16, epochs=2))
    before_books = codebooks.codebooks.copy()
    keys = set(start.state_dict())

    results = {}
    for weight in (0.0, 20.0):
        model = copy.deepcopy(start)
        tuned, history = finetune_with_dpq(
            model, data, codebooks, TrainConfig(epochs=3, batch_size=64, lr=1e-3), quant_weight=weight
        )
        results[weight] = distortion(extract_features(model, data), tuned)
        assert set(model.state_dict()) == keys  # nothing left attached to the model
        assert not torch.equal(model.projection.weight, start.projection.weight)
    assert results[20.0] < 0.5 * results[0.0], results  # the backbone moved towards the codes
    assert not np.array_equal(tuned.codebooks, before_books)  # codebooks trained too …
    np.testing.assert_array_equal(codebooks.codebooks, before_books)  # … as a copy
    assert {"ce", "dpq_hard", "dpq_label"} <= set(history.epochs[-1])
    assert len(tuned.history) == len(codebooks.history) + 3


def test_dimension_mismatch_is_rejected():
    data = make_synthetic(64, 2, image_size=16, seed=0)
    model = build_model(BackboneSpec(arch="small", embedding_dim=16, num_classes=2, image_size=16))
    rng = np.random.default_rng(0)
    other = train_dpq(
        rng.standard_normal((64, 8)).astype(np.float32), config=DPQConfig(n_blocks=1, n_codewords=16)
    )
    with pytest.raises(ValueError, match="d=8.*d=16"):
        finetune_with_dpq(model, data, other, TrainConfig(epochs=1))
