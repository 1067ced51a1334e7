"""The long-chain knobs of compatible training: RACT's new-to-new negatives, the fixed d-simplex
classifier and target weights by share and age (each off by default, ablated in docs/benchmarks.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hotswap.components.compat.dual_tuning import train_compatible
from hotswap.components.compat.loss_terms import ract_loss
from hotswap.components.core.configs import CompatConfig
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.lifecycle.live import LiveComposition, compatibility_targets
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.simplex_head import (
    SimplexHeadError,
    assign_vertices,
    fix_simplex_head,
    simplex_vertices,
    vertices_of,
)
from hotswap.components.models.training import TrainConfig, train_model

# --------------------------------------------------------------------------- RACT


def test_ract_counts_new_to_new_negatives_and_pulls_only_the_new_features():
    # given: a batch of two classes whose new features match their old ones
    labels = torch.tensor([0, 0, 1, 1])
    old = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]]), dim=1)
    aligned = old.clone()
    # when: the new features of class 1 move next to class 0's new features (a negative flip in a
    # mixed gallery), while each still sits nearest to its own old feature among the old ones
    flipped = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.7], [0.85, 0.75]]), dim=1)
    flipped.requires_grad_(True)
    # then: the contrast is higher for the flip, and its gradient reaches the new features only
    assert ract_loss(flipped, old, labels, 0.1) > ract_loss(aligned, old, labels, 0.1)
    old_leaf = old.clone().requires_grad_(True)
    ract_loss(flipped, old_leaf, labels, 0.1).backward()
    assert flipped.grad is not None and flipped.grad.abs().sum() > 0
    assert old_leaf.grad is None


def test_ract_without_the_new_to_new_block_would_miss_the_flip():
    # given: each new feature ranks its own class's old feature first (new-to-old looks fine)...
    labels = torch.tensor([0, 1])
    old = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    new = F.normalize(torch.tensor([[0.75, 0.66], [0.6, 0.8]]), dim=1)
    new_old = new @ old.T
    assert (new_old.argmax(dim=1) == labels).all()
    # ...but a new item of the other class is nearer than the own old item (a flip in a mixed gallery)
    assert float(new[0] @ new[1]) > float(new_old[1, 1])
    # then: the contrast with new-to-new negatives sees it; one over new-to-old negatives alone does not
    tau = 0.05
    without = F.cross_entropy(
        torch.stack([new_old.diagonal(), new_old.flip(1).diagonal()], dim=1) / tau,
        torch.zeros(2, dtype=torch.long),
    )
    assert ract_loss(new, old, labels, tau) > without + 1.0


# --------------------------------------------------------------------------- d-simplex


@pytest.mark.parametrize("dim", [2, 8, 64])
def test_simplex_vertices_are_unit_equiangular_and_centred(dim: int):
    v = simplex_vertices(dim)
    assert v.shape == (dim + 1, dim)
    gram = v @ v.T
    assert torch.allclose(gram.diagonal(), torch.ones(dim + 1), atol=1e-5)
    off = gram[~torch.eye(dim + 1, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1.0 / dim), atol=1e-5)
    assert torch.allclose(v.sum(dim=0), torch.zeros(dim), atol=1e-5)


def test_classes_keep_their_vertex_and_new_ones_take_free_vertices():
    first = assign_vertices(["cat", "dog"], {}, dim=4)
    assert first == [0, 1]
    # a later version lists its classes in another order and knows one more
    later = assign_vertices(["bird", "dog", "cat"], {"cat": 0, "dog": 1}, dim=4)
    assert later == [2, 1, 0]
    with pytest.raises(SimplexHeadError, match="6 classes do not fit a 4-d simplex"):
        assign_vertices([str(i) for i in range(6)], {}, dim=4)


def test_a_fixed_simplex_head_stays_put_through_training_and_is_read_back():
    data = make_synthetic(96, 3, image_size=12, seed=0).split("train")
    spec = BackboneSpec(arch="small", embedding_dim=8, num_classes=3, image_size=12)
    model = build_model(spec, seed=0)
    fix_simplex_head(model, [4, 0, 2])
    before = model.head.weight.detach().clone()
    train_model(model, data, TrainConfig(epochs=1, batch_size=32, seed=0), progress=False)
    assert torch.equal(model.head.weight, before)
    assert vertices_of(model, ["a", "b", "c"]) == {"a": 4, "b": 0, "c": 2}
    learned = build_model(spec, seed=0)
    assert vertices_of(learned, ["a", "b", "c"]) == {}  # a learned head sits on no vertex


def test_compatible_training_keeps_the_challengers_simplex_head_frozen():
    data = make_synthetic(96, 3, image_size=12, seed=0).split("train")
    spec = BackboneSpec(arch="small", embedding_dim=8, num_classes=3, image_size=12)
    old, new = build_model(spec, seed=0), build_model(spec, seed=1)
    for model in (old, new):
        fix_simplex_head(model, [0, 1, 2])
    train_compatible(
        old, new, data, CompatConfig(ract_weight=1.0), TrainConfig(epochs=1, batch_size=32), progress=False
    )
    assert torch.equal(new.head.weight, old.head.weight)


# --------------------------------------------------------------------------- target weights by age


def _mix(**counts: int) -> LiveComposition:
    return LiveComposition(
        gallery_version="g", codebook_version="4", counts={k[1:]: v for k, v in counts.items()}
    )


def test_age_decay_one_is_weighting_by_share_alone():
    mix = _mix(v1=40, v2=30, v3=20, v4=10)
    plain = compatibility_targets(mix, "4", min_share=0.05, champion_floor=0.0)
    same = compatibility_targets(mix, "4", min_share=0.05, champion_floor=0.0, age_decay=1.0)
    assert [t.weight for t in plain] == pytest.approx([t.weight for t in same])
    assert {t.version: t.weight for t in plain} == pytest.approx({"4": 0.1, "3": 0.2, "2": 0.3, "1": 0.4})


def test_age_decay_lets_older_versions_pull_less():
    mix = _mix(v1=40, v2=30, v3=20, v4=10)
    weights = {
        t.version: t.weight
        for t in compatibility_targets(mix, "4", min_share=0.05, champion_floor=0.0, age_decay=0.5)
    }
    # w_v ∝ π_v·γ^age: v3 is one version older than the champion, v2 two, v1 three
    raw = {"4": 0.1, "3": 0.2 * 0.5, "2": 0.3 * 0.25, "1": 0.4 * 0.125}
    total = sum(raw.values())
    assert weights == pytest.approx({v: w / total for v, w in raw.items()})
    assert sum(weights.values()) == pytest.approx(1.0)


def test_the_setting_fixes_the_head_of_every_new_model_and_keeps_the_champions_vertices():
    from hotswap.components.core.settings import HotswapSettings
    from hotswap.tasks.training import build_new_model

    data = make_synthetic(60, 3, image_size=12, seed=0)
    settings = HotswapSettings(compat={"simplex_head": True}, training={"embedding_dim": 8})
    first = build_new_model(settings, data, "small", 8, ["0", "1"])
    assert not first.head.weight.requires_grad
    assert vertices_of(first, ["0", "1"]) == {"0": 0, "1": 1}
    later = build_new_model(settings, data, "small", 8, ["2", "1", "0"], vertices_of(first, ["0", "1"]))
    assert vertices_of(later, ["2", "1", "0"]) == {"2": 2, "1": 1, "0": 0}
    learned = build_new_model(HotswapSettings(), data, "small", 8, ["0", "1"])
    assert learned.head.weight.requires_grad and vertices_of(learned, ["0", "1"]) == {}
