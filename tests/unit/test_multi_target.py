"""Dual-Tuning against several frozen models: one target is exactly the single-model loss.

Tiny random models on tiny images; what matters is that the loss is the formula of DESIGN.md §11.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.compat.loss_terms import n2o_loss, o2n_loss, prototype_triplet_loss
from hotswap.components.compat.objective import CompatTarget
from hotswap.components.compat.target_constants import CompatibilityError, class_map_lookup
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import TrainConfig

SIZE, DIM = 12, 8


def _model(classes: int, seed: int, arch: str = "small") -> EmbeddingModel:
    torch.manual_seed(seed)
    return build_model(
        BackboneSpec(arch=arch, embedding_dim=DIM, num_classes=classes, image_size=SIZE)
    ).eval()


def _data(classes: int = 4):
    return make_synthetic(48, classes, image_size=SIZE, seed=3).split("train")


def _formula(old, new, protos, lookup, images, labels, config=DEFAULT_CONFIG) -> dict[str, torch.Tensor]:
    """The single-old-model loss written out term by term (the reference)."""
    features, logits = new(images)
    with torch.no_grad():
        old_feats = old.embed(images)
    return {
        "ce": config.ce_weight * F.cross_entropy(logits, labels, label_smoothing=0.1),
        "proto": config.proto_weight
        * prototype_triplet_loss(features, labels, protos, config.margin, config.proto_normalize),
        "n2o": config.n2o_weight * n2o_loss(features, labels, old, lookup),
        "o2n": config.o2n_weight * o2n_loss(old_feats, labels, new),
    }


def _objective(targets, new_classes: int):
    from hotswap.components.compat.objective import CompatObjective, _TargetState

    states = [
        _TargetState(
            model,
            weight,
            class_map_lookup(cmap, new_classes, model.spec.num_classes),
            torch.randn(new_classes, DIM, generator=torch.Generator().manual_seed(i)),
            DEFAULT_CONFIG,
            f"t{i}",
        )
        for i, (model, weight, cmap) in enumerate(targets)
    ]
    return CompatObjective(None, DEFAULT_CONFIG, targets=states), states


def test_one_target_of_weight_one_is_exactly_todays_loss():
    old, new = _model(3, 0), _model(4, 1, "large")
    images = torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    objective, (state,) = _objective([(old, 1.0, {0: 0, 1: 1, 2: 2})], 4)
    terms = objective(new, images, labels)
    expected = _formula(old, new, state.prototypes, state.lookup, images, labels)
    assert set(terms) == set(expected)
    for name in expected:
        assert torch.equal(terms[name], expected[name]), name


def test_several_targets_sum_their_terms_weighted_by_share():
    old_a, old_b, new = _model(3, 0), _model(2, 5), _model(4, 1, "large")
    images = torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    # old_b knows new classes 1 and 3 as its rows 0 and 1: a recorded, non-identity class map
    objective, (a, b) = _objective([(old_a, 0.7, {0: 0, 1: 1, 2: 2}), (old_b, 0.3, {1: 0, 3: 1})], 4)
    terms = objective(new, images, labels)
    ref_a = _formula(old_a, new, a.prototypes, a.lookup, images, labels)
    ref_b = _formula(old_b, new, b.prototypes, b.lookup, images, labels)
    assert torch.allclose(terms["ce"], ref_a["ce"])
    for name in ("proto", "n2o", "o2n"):
        assert torch.allclose(terms[name], 0.7 * ref_a[name] + 0.3 * ref_b[name]), name
    assert b.lookup.tolist() == [-1, 0, -1, 1]


def test_a_list_with_one_target_trains_the_same_weights_as_the_single_model_call():
    data = _data()
    old = _model(3, 0)
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=4, image_size=SIZE)
    config = TrainConfig(epochs=1, batch_size=16, seed=2)
    single, _ = train_compatible(old, spec, data, train_config=config, progress=False)
    listed, history = train_compatible([(old, 1.0, None)], spec, data, train_config=config, progress=False)
    for (name, x), (_, y) in zip(single.state_dict().items(), listed.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert {"ce", "proto", "n2o", "o2n"} <= set(history.final)


def test_two_targets_train_and_leave_both_frozen():
    data = _data()
    old_a, old_b = _model(3, 0), _model(4, 4)
    before = [p.detach().clone() for p in (*old_a.parameters(), *old_b.parameters())]
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=4, image_size=SIZE)
    targets = [CompatTarget(old_a, 0.6, {0: 0, 1: 1, 2: 2}), CompatTarget(old_b, 0.4, None)]
    _, history = train_compatible(
        targets, spec, data, train_config=TrainConfig(epochs=1, seed=0), progress=False
    )
    after = [p.detach() for p in (*old_a.parameters(), *old_b.parameters())]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert history.final["proto"] > 0


def test_targets_are_validated():
    old = _model(3, 0)
    spec = BackboneSpec(arch="small", embedding_dim=DIM, num_classes=4, image_size=SIZE)
    with pytest.raises(CompatibilityError, match="at least one target"):
        train_compatible([], spec, _data(), progress=False)
    with pytest.raises(CompatibilityError, match="listed twice"):
        train_compatible([(old, 0.5, None), (old, 0.5, None)], spec, _data(), progress=False)
    with pytest.raises(CompatibilityError, match="weight must be"):
        train_compatible([(old, -1.0, None)], spec, _data(), progress=False)
