"""The loss terms of compatible training, one function per term (Dual-Tuning's and the baselines').

Each is a plain function of one batch's features, labels and the target's constants, so a test
can check what a term pulls on and what it must leave alone; components/compat/objective.py
weights and sums them. The formulas, and which are reconstructions, are in
components/compat/dual_tuning.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hotswap.components.models.backbones import EmbeddingModel


def prototype_softmax_loss(
    features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, scale: float, normalize: bool
) -> torch.Tensor:
    """L_proto = CE(s·⟨f, p_k⟩, y): pulls each new feature towards its class's old prototype and
    away from the others. Prototypes are constants; the gradient reaches only ``features``."""
    protos = F.normalize(prototypes, dim=1) if normalize else prototypes
    return F.cross_entropy(scale * features @ protos.detach().T, labels)


def prototype_triplet_loss(
    features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, margin: float, normalize: bool
) -> torch.Tensor:
    """max(0, ‖f−p_y‖ − Σ_{k≠y} w_k‖f−p_k‖ + m), w = softmax_{k≠y}(−‖f−p_k‖): the soft-weighted
    nearest wrong prototype must be ``margin`` farther away than the right one."""
    protos = (F.normalize(prototypes, dim=1) if normalize else prototypes).detach()
    dist = torch.cdist(features, protos)  # [B, K]
    positive = dist.gather(1, labels[:, None]).squeeze(1)
    own = F.one_hot(labels, num_classes=protos.shape[0]).bool()
    weights = torch.softmax((-dist).masked_fill(own, float("-inf")), dim=1)
    negative = (weights * dist.masked_fill(own, 0.0)).sum(dim=1)
    return F.relu(positive - negative + margin).mean()


def n2o_loss(
    features: torch.Tensor, labels: torch.Tensor, old_model: EmbeddingModel, lookup: torch.Tensor
) -> torch.Tensor:
    """L_n2o = CE(W_o φ_n(x), n2o(y)) over samples of old classes only; zero for a batch without any."""
    old_labels = lookup.to(labels.device)[labels]
    valid = old_labels >= 0
    if not bool(valid.any()):
        return features.sum() * 0.0
    return F.cross_entropy(old_model.classify(features[valid]), old_labels[valid])


def o2n_loss(old_features: torch.Tensor, labels: torch.Tensor, new_model: EmbeddingModel) -> torch.Tensor:
    """L_o2n = CE(W_n sg[φ_o(x)], y): the new head must also separate the old features.
    The stop-gradient means only W_n moves; it then constrains φ_n through the shared head."""
    return F.cross_entropy(new_model.classify(old_features.detach()), labels)


def l2_loss(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """‖φ_n(x) − φ_o(x)‖², summed over dimensions, averaged over the batch."""
    return (features - old_features.detach()).pow(2).sum(dim=1).mean()


def bct_influence_loss(
    features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, scale: float
) -> torch.Tensor:
    """BCT: CE(s_o·cos(φ_n(x), W̃_o), y) with the synthesised old classifier W̃_o (all samples)."""
    return F.cross_entropy(scale * F.normalize(features, dim=1) @ classifier.detach().T, labels)


def ract_loss(
    features: torch.Tensor, old_features: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """RACT's contrast: CE over [n_i·o_i ; n_i·o_j ; n_i·n_j] / τ (j of another class), positive first.

    n = unit-normalised new features, o = sg[old features] of the same batch. The new-to-new
    negatives are the point: in a gallery where old and new features mix, a new item of another
    class must not sit closer to a new query than the old item of its own class (a "negative
    flip"). Same-class pairs other than i itself are left out of the negatives.
    """
    n = F.normalize(features, dim=1)
    o = F.normalize(old_features.detach(), dim=1)
    other = labels[:, None] != labels[None, :]
    positive = (n * o).sum(dim=1, keepdim=True)
    new_old = (n @ o.T).masked_fill(~other, float("-inf"))
    new_new = (n @ n.T).masked_fill(~other, float("-inf"))
    logits = torch.cat([positive, new_old, new_new], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=labels.device))
