"""What a frozen target model contributes to compatible training, computed once before it starts.

The class map (new head rows → the target's head rows), the old prototypes (class means of the
frozen model's features over the new training set) and BCT's synthesised old classifier are
constants of a training run: the loss terms (components/compat/loss_terms.py) read them every
batch, the objective (components/compat/objective.py) holds them per target.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import extract_features


class CompatibilityError(ValueError):
    """The old and new models (or the data) cannot be made compatible as asked."""


def identity_class_map(old_num_classes: int) -> dict[int, int]:
    """New label k is old label k for k < old_num_classes: the old classes keep their numbers."""
    return {k: k for k in range(old_num_classes)}


def class_map_lookup(class_map: Mapping[int, int], num_new: int, num_old: int) -> torch.Tensor:
    """A [num_new] int64 tensor: old label of each new label, -1 for classes the old model lacks."""
    lookup = torch.full((num_new,), -1, dtype=torch.int64)
    for new, old in class_map.items():
        if not 0 <= int(new) < num_new:
            raise CompatibilityError(f"class map: new label {new} outside the new model's 0..{num_new - 1}")
        if not 0 <= int(old) < num_old:
            raise CompatibilityError(f"class map: old label {old} outside the old model's 0..{num_old - 1}")
        lookup[int(new)] = int(old)
    return lookup


def old_prototypes(
    old_model: EmbeddingModel,
    data: ImageSet,
    num_classes: int,
    batch_size: int = 512,
    device: str = "cpu",
) -> torch.Tensor:
    """P: per-class means of the frozen old model's features over ``data`` (the new training set).

    One row per *new* class, so classes the old model never saw get a prototype too. The old
    model runs in eval mode with test transforms (none), as the paper's prototype extractor does.
    Rows are raw means (norm < 1); the losses decide whether to normalise them.
    """
    if len(data) == 0:
        raise CompatibilityError(f"{data.name}: no rows to compute prototypes from")
    labels = np.asarray(data.labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise CompatibilityError(
            f"{data.name}: labels must lie in 0..{num_classes - 1} for {num_classes} classes"
        )
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise CompatibilityError(
            f"{data.name}: no training items for class(es) {missing}; cannot build prototypes"
        )
    feats = extract_features(old_model, data, batch_size=batch_size, device=device)
    sums = np.zeros((num_classes, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, feats)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return torch.from_numpy((sums / counts).astype(np.float32))


def synthesised_classifier(
    old_model: EmbeddingModel, prototypes: torch.Tensor, lookup: torch.Tensor
) -> torch.Tensor:
    """BCT's old classifier extended to the new classes: W_o rows where the old model has the class,
    old-feature class means (prototypes) where it does not. Unit rows (the heads are cosine)."""
    old_rows = F.normalize(old_model.head.weight.detach(), dim=1)
    rows = F.normalize(prototypes.to(old_rows.device), dim=1).clone()
    known = lookup >= 0
    rows[known.to(rows.device)] = old_rows[lookup[known].to(old_rows.device)]
    return rows
