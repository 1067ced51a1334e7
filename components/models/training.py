"""A plain, seeded supervised trainer and batched feature extraction.

The trainer knows nothing about compatibility: what it minimises is an *objective*, a callable
that returns named loss terms for one batch. Plain training uses :func:`cross_entropy_objective`;
compatible training (components/compat/objective.py) passes its own. Every term is logged per
epoch, so a run's history shows which term pulled how hard.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hotswap.components.core.faults import fault_point
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import DEFAULT_LOADER, Batches, LoaderConfig, embed
from hotswap.components.data.preprocess import Preprocessing
from hotswap.components.models.backbones import EmbeddingModel
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

Objective = Callable[[EmbeddingModel, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
EpochCallback = Callable[[int, dict[str, float]], None]


class TrainConfig(BaseModel):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    device: str = "cpu"


@dataclass
class TrainHistory:
    """Per-epoch means of every loss term, plus timing."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def resolve_device(device: str) -> torch.device:
    """'auto' means a GPU when one is present; anything else is taken literally."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
    return torch.device(device)


def cross_entropy_objective(label_smoothing: float = 0.1) -> Objective:
    """L_ce: label-smoothed cross-entropy of the model's own head."""

    def objective(
        model: EmbeddingModel, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        _, logits = model(images)
        return {"ce": F.cross_entropy(logits, labels, label_smoothing=label_smoothing)}

    return objective


def optimisation_step(
    model: torch.nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: Any,
    y: torch.Tensor,
    sums: dict[str, float],
) -> None:
    """One step on the sum of the objective's named terms; adds each term × batch size to ``sums``
    (the epoch's per-item means are logged from them)."""
    terms = objective(model, x, y)
    loss = torch.stack(list(terms.values())).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    for name, value in {**terms, "loss": loss}.items():
        sums[name] = sums.get(name, 0.0) + float(value.detach()) * len(y)


def train_model(
    model: EmbeddingModel,
    data: ImageSet,
    config: TrainConfig,
    objective: Objective | None = None,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    extra_views: Sequence[Preprocessing] = (),
    loader: LoaderConfig = DEFAULT_LOADER,
) -> TrainHistory:
    """Train ``model`` in place with Adam + cosine LR on every row of ``data`` (pass a split).

    Labels must be head rows (components/data/classes.py ``to_head_labels``). Each batch holds
    the model's own view of the images and ``extra_views`` (what other models in the objective
    read, e.g. the frozen old model's preprocessing). Seeded: the same seed, data and config give
    the same weights on CPU.
    """
    if len(data) == 0:
        raise ValueError(f"{data.name}: no training rows")
    if int(data.labels.min()) < 0:
        raise ValueError(f"{data.name}: training needs a label on every row")
    if int(data.labels.max()) >= model.spec.num_classes:
        raise ValueError(
            f"{data.name}: label {int(data.labels.max())} does not fit a model with "
            f"{model.spec.num_classes} classes"
        )
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model.to(device).train()
    objective = objective or cross_entropy_objective(config.label_smoothing)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    labels = torch.from_numpy(data.labels)
    batches = Batches(
        data,
        [model.preprocessing, *extra_views],
        LoaderConfig(config.batch_size, loader.workers, loader.prefetch_factor, loader.start_method),
        shuffle=True,
        seed=config.seed,
        persistent=config.epochs > 1,
    )
    history = TrainHistory()
    start = time.perf_counter()
    bar = tqdm(total=config.epochs * len(data), unit="img", disable=not progress, desc="train", leave=False)
    for epoch in range(config.epochs):
        sums: dict[str, float] = {}
        for rows, views in batches:
            x = {k: v.to(device, non_blocking=True) for k, v in views.items()}
            y = labels[torch.from_numpy(rows)].to(device)
            optimisation_step(model, objective, optimizer, x, y, sums)
            bar.update(len(rows))
        scheduler.step()
        means = {name: total / len(data) for name, total in sums.items()}
        history.epochs.append(means)
        bar.set_postfix(loss=f"{means['loss']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, means)
        fault_point(f"training:epoch-{epoch + 1}")
    bar.close()
    history.seconds = time.perf_counter() - start
    history.images_per_second = config.epochs * len(data) / max(history.seconds, 1e-9)
    model.eval()
    return history


@torch.no_grad()
def extract_features(
    model: EmbeddingModel,
    images: np.ndarray | ImageSet,
    batch_size: int = 512,
    device: str = "cpu",
    progress: bool = False,
    loader: LoaderConfig | None = None,
) -> np.ndarray:
    """Embed in eval mode, returning float32 [N, d].

    ``images`` is an :class:`ImageSet` (each model reads it through its own preprocessing) or an
    array already in the model's input form (a query, a sample of a shard).
    """
    if isinstance(images, ImageSet):
        config = loader or LoaderConfig(batch_size=batch_size, workers=DEFAULT_LOADER.workers)
        (features,) = embed([model], images, config, device=str(resolve_device(device)))
        return features
    expected = (model.spec.in_channels, model.spec.image_size, model.spec.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images of shape {images.shape} do not fit the model's input [N, {expected}]")
    torch_device = resolve_device(device)
    was_training = model.training
    model.to(torch_device).eval()
    out = np.empty((len(images), model.embedding_dim), dtype=np.float32)
    for begin in tqdm(range(0, len(images), batch_size), disable=not progress, desc="extract", leave=False):
        batch = torch.from_numpy(np.ascontiguousarray(images[begin : begin + batch_size])).to(torch_device)
        out[begin : begin + len(batch)] = model.embed(batch).cpu().numpy()
    model.train(was_training)
    return out
