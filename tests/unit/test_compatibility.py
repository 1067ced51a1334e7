"""Compatible-training losses: what each term pulls on, and what it must leave alone.

Tiny random models on tiny images: the point is where gradients go, not how well anything trains.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, PAPER_PRESET, train_compatible
from hotswap.components.compat.loss_terms import n2o_loss, prototype_softmax_loss, prototype_triplet_loss
from hotswap.components.compat.objective import CompatObjective
from hotswap.components.compat.target_constants import (
    CompatibilityError,
    class_map_lookup,
    identity_class_map,
    old_prototypes,
    synthesised_classifier,
)
from hotswap.components.core.configs import CompatConfig
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import TrainConfig

SIZE, DIM, OLD_K, NEW_K = 12, 8, 3, 5


def _model(arch: str, classes: int, dim: int = DIM, seed: int = 0) -> EmbeddingModel:
    torch.manual_seed(seed)
    return build_model(BackboneSpec(arch=arch, embedding_dim=dim, num_classes=classes, image_size=SIZE))


@pytest.fixture
def pair() -> tuple[EmbeddingModel, EmbeddingModel]:
    """A frozen-to-be old model (small, 3 classes) and a new model of another architecture (5 classes)."""
    return _model("small", OLD_K).eval(), _model("large", NEW_K, seed=1)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(10, 1, SIZE, SIZE, generator=generator)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    return images, labels


def _only(term: str, **extra) -> CompatConfig:
    """Dual-Tuning with every weight zero except ``term`` (CE too), to isolate one loss."""
    weights = {"ce_weight": 0.0, "proto_weight": 0.0, "n2o_weight": 0.0, "o2n_weight": 0.0}
    weights[f"{term}_weight"] = 1.0
    return CompatConfig(**{"method": "dual_tuning", **weights, **extra})


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def _backward(old, new, config, images, labels, class_map=None) -> dict[str, torch.Tensor]:
    old.requires_grad_(False)
    protos = torch.randn(NEW_K, DIM, generator=torch.Generator().manual_seed(1))
    lookup = class_map_lookup(class_map or identity_class_map(OLD_K), NEW_K, OLD_K)
    objective = CompatObjective(old, config, protos, lookup)
    new.train()
    terms = objective(new, images, labels)
    torch.stack(list(terms.values())).sum().backward()
    return terms


def _trunk(model: EmbeddingModel) -> torch.nn.Module:
    return torch.nn.ModuleList([model.trunk, model.projection])


# --------------------------------------------------------------------------- gradient routing


def test_o2n_moves_only_the_new_classifier(pair, batch):
    old, new = pair
    terms = _backward(old, new, _only("o2n"), *batch)
    assert terms["o2n"].item() > 0
    assert _grad_norm(new.head) > 0, "O2N must train the new classifier"
    assert _grad_norm(_trunk(new)) == 0.0, "O2N must leave the new backbone's gradient at zero"
    assert all(p.grad is None for p in old.parameters())


@pytest.mark.parametrize("term", ["proto", "n2o"])
def test_feature_terms_move_the_backbone_not_the_new_head(pair, batch, term):
    old, new = pair
    _backward(old, new, _only(term), *batch)
    assert _grad_norm(_trunk(new)) > 0
    assert _grad_norm(new.head) == 0.0, f"{term} acts on features; the new head must get no gradient"
    assert all(p.grad is None for p in old.parameters())


def test_triplet_prototype_term_moves_the_backbone(pair, batch):
    old, new = pair
    _backward(old, new, _only("proto", proto_variant="triplet", margin=1.0), *batch)
    assert _grad_norm(_trunk(new)) > 0
    assert _grad_norm(new.head) == 0.0


def test_ce_moves_backbone_and_head(pair, batch):
    old, new = pair
    _backward(old, new, _only("ce"), *batch)
    assert _grad_norm(_trunk(new)) > 0 and _grad_norm(new.head) > 0


@pytest.mark.parametrize("method", ["l2", "bct"])
def test_baseline_terms_move_the_backbone_only(pair, batch, method):
    old, new = pair
    terms = _backward(old, new, CompatConfig(method=method, ce_weight=0.0), *batch)
    assert method in terms
    assert _grad_norm(_trunk(new)) > 0
    assert _grad_norm(new.head) == 0.0
    assert all(p.grad is None for p in old.parameters())


def test_full_objective_never_touches_the_old_model(pair, batch):
    old, new = pair
    before = {k: v.clone() for k, v in old.state_dict().items()}
    terms = _backward(old, new, DEFAULT_CONFIG, *batch)
    assert set(terms) == {"ce", "proto", "n2o", "o2n"}
    assert all(p.grad is None for p in old.parameters())
    assert not old.training, "the old model must stay in eval mode (BatchNorm statistics frozen)"
    for key, value in old.state_dict().items():
        assert torch.equal(value, before[key]), f"old model's {key} changed"


# --------------------------------------------------------------------------- term values


def test_softmax_prototype_loss_is_ce_over_scaled_cosines():
    generator = torch.Generator().manual_seed(2)
    feats = F.normalize(torch.randn(6, DIM, generator=generator), dim=1)
    protos = torch.randn(NEW_K, DIM, generator=generator) * 0.3
    labels = torch.tensor([0, 1, 2, 3, 4, 4])
    expected = F.cross_entropy(16.0 * feats @ F.normalize(protos, dim=1).T, labels)
    assert torch.allclose(prototype_softmax_loss(feats, labels, protos, 16.0, normalize=True), expected)
    raw = F.cross_entropy(16.0 * feats @ protos.T, labels)
    assert torch.allclose(prototype_softmax_loss(feats, labels, protos, 16.0, normalize=False), raw)


def test_triplet_prototype_loss_matches_the_formula():
    generator = torch.Generator().manual_seed(3)
    feats = F.normalize(torch.randn(4, DIM, generator=generator), dim=1)
    protos = torch.randn(NEW_K, DIM, generator=generator) * 0.5
    labels = torch.tensor([0, 2, 4, 1])
    margin = 0.3
    expected = []
    for f, y in zip(feats, labels.tolist(), strict=True):
        dist = [float(torch.linalg.norm(f - p)) for p in protos]
        others = [k for k in range(NEW_K) if k != y]
        weights = np.exp([-dist[k] for k in others])
        weights /= weights.sum()
        negative = sum(w * dist[k] for w, k in zip(weights, others, strict=True))
        expected.append(max(0.0, dist[y] - negative + margin))
    got = prototype_triplet_loss(feats, labels, protos, margin, normalize=False)
    assert float(got) == pytest.approx(float(np.mean(expected)), rel=1e-5)


def test_n2o_uses_only_old_class_samples_through_the_class_map(pair):
    old, _ = pair
    generator = torch.Generator().manual_seed(4)
    feats = F.normalize(torch.randn(6, DIM, generator=generator), dim=1)
    lookup = class_map_lookup({3: 0, 4: 2, 0: 1}, NEW_K, OLD_K)  # a non-identity map
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    with torch.no_grad():
        expected = F.cross_entropy(old.classify(feats[[0, 3, 4]]), torch.tensor([1, 0, 2]))
        assert torch.allclose(n2o_loss(feats, labels, old, lookup), expected)
        assert float(n2o_loss(feats[[1, 2, 5]], labels[[1, 2, 5]], old, lookup)) == 0.0


def test_bct_synthesises_rows_for_new_classes_from_prototypes(pair):
    old, _ = pair
    protos = torch.randn(NEW_K, DIM, generator=torch.Generator().manual_seed(5))
    rows = synthesised_classifier(old, protos, class_map_lookup(identity_class_map(OLD_K), NEW_K, OLD_K))
    assert torch.allclose(rows[:OLD_K], F.normalize(old.head.weight.detach(), dim=1))
    assert torch.allclose(rows[OLD_K:], F.normalize(protos[OLD_K:], dim=1))


# --------------------------------------------------------------------------- prototypes


def test_prototypes_equal_class_means_of_old_eval_features():
    data = make_synthetic(60, NEW_K, image_size=SIZE, seed=0)
    old = _model("small", OLD_K)
    old.train()  # the helper must switch to eval mode itself (BatchNorm running statistics)
    protos = old_prototypes(old, data, NEW_K)
    assert old.training, "the caller's mode is restored"
    old.eval()
    with torch.no_grad():
        feats = old.embed(torch.from_numpy(data.native_inputs()))
    expected = torch.stack([feats[torch.from_numpy(data.labels == k)].mean(0) for k in range(NEW_K)])
    assert protos.shape == (NEW_K, DIM)
    assert torch.allclose(protos, expected, atol=1e-6)


def test_prototypes_need_every_new_class():
    data = make_synthetic(40, 4, image_size=SIZE, seed=0)
    with pytest.raises(CompatibilityError, match=r"class\(es\) \[4\]"):
        old_prototypes(_model("small", OLD_K), data, NEW_K)


# --------------------------------------------------------------------------- config and checks


def test_paper_preset_and_ablation_switches():
    assert (PAPER_PRESET.ce_weight, PAPER_PRESET.proto_weight) == (1.0, 0.1)
    assert (PAPER_PRESET.n2o_weight, PAPER_PRESET.o2n_weight) == (0.2, 0.2)
    assert CompatConfig() == DEFAULT_CONFIG
    ablated = DEFAULT_CONFIG.without("o2n")
    assert ablated.o2n_weight == 0.0 and ablated.proto_weight == DEFAULT_CONFIG.proto_weight
    with pytest.raises(ValueError, match="unknown Dual-Tuning term"):
        DEFAULT_CONFIG.without("ce")
    with pytest.raises(ValueError):
        CompatConfig(proto_weight=-1.0)
    with pytest.raises(ValueError):
        CompatConfig(proto_wieght=1.0)  # typo: unknown fields are refused


def test_class_map_outside_either_model_is_refused():
    with pytest.raises(CompatibilityError, match="old label 7"):
        class_map_lookup({0: 7}, NEW_K, OLD_K)
    with pytest.raises(CompatibilityError, match="new label 9"):
        class_map_lookup({9: 0}, NEW_K, OLD_K)


def test_embedding_dims_must_match():
    data = make_synthetic(30, NEW_K, image_size=SIZE, seed=0)
    old = _model("small", OLD_K, dim=8)
    wrong = BackboneSpec(arch="large", embedding_dim=16, num_classes=NEW_K, image_size=SIZE)
    with pytest.raises(
        ValueError, match="embedding dimension mismatch: old model has d=8, new model has d=16"
    ):
        train_compatible(old, wrong, data, progress=False)


def test_old_and_new_models_each_read_their_own_view_of_the_data():
    """A new model may read another size and channels than the old one: each gets its own view."""
    data = make_synthetic(40, NEW_K, image_size=SIZE, seed=0)
    old = _model("small", OLD_K).eval()
    torch.manual_seed(1)
    spec = BackboneSpec(
        arch="large", embedding_dim=DIM, num_classes=NEW_K, image_size=SIZE + 4, in_channels=3
    )
    new = build_model(spec)
    assert old.preprocessing.key != new.preprocessing.key
    seen: dict[str, set[tuple[int, ...]]] = {"old": set(), "new": set()}

    def recorder(who: str):
        return lambda _module, args: seen[who].add(tuple(args[0].shape[1:]))

    hooks = [m.trunk.register_forward_pre_hook(recorder(who)) for who, m in (("old", old), ("new", new))]
    try:
        trained, history = train_compatible(
            old, new, data, train_config=TrainConfig(epochs=1, batch_size=20), progress=False
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert trained is new and set(history.final) == {"ce", "proto", "n2o", "o2n", "loss"}
    assert all(np.isfinite(v) for v in history.final.values())
    assert seen["old"] == {(1, SIZE, SIZE)}, seen  # prototypes and o2n: the old model's own view
    assert seen["new"] == {(3, SIZE + 4, SIZE + 4)}, seen
    # a d mismatch is still refused before anything trains, whatever the inputs
    wrong = BackboneSpec(**{**spec.model_dump(), "embedding_dim": 2 * DIM})
    with pytest.raises(
        ValueError, match=f"embedding dimension mismatch: old model has d={DIM}, new model has d={2 * DIM}"
    ):
        train_compatible(old, wrong, data, progress=False)


def test_train_compatible_keeps_the_old_model_frozen_and_restores_its_flags():
    data = make_synthetic(40, NEW_K, image_size=SIZE, seed=0)
    old = _model("small", OLD_K).eval()
    before = {k: v.clone() for k, v in old.state_dict().items()}
    spec = BackboneSpec(arch="large", embedding_dim=DIM, num_classes=NEW_K, image_size=SIZE)
    new, history = train_compatible(
        old, spec, data, train_config=TrainConfig(epochs=1, batch_size=20), progress=False
    )
    assert set(history.final) == {"ce", "proto", "n2o", "o2n", "loss"}
    assert new.spec.arch == "large" and not new.training
    assert all(p.grad is None for p in old.parameters()), "the old model must never receive a gradient"
    assert all(p.requires_grad for p in old.parameters()), "requires_grad flags are restored"
    for key, value in old.state_dict().items():
        assert torch.equal(value, before[key]), f"old model's {key} changed during compatible training"
