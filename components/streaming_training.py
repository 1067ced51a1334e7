"""Training on streamed manifests: plain, compatible (Dual-Tuning & co.) and the adopted old head.

Same objectives as components/training.py and components/compatibility.py, fed from a DataLoader
(components/streaming.py) instead of an in-memory array: each batch is
``{preprocessing key: tensor}``, and every model reads its own view, so the frozen old model and the
new one may read different sizes and channels of the same decoded images. The compatibility
objective itself (:class:`~components.compatibility.CompatObjective`) is reused unchanged.

The old classifier an adopted model lacks (Dual-Tuning's N2O term and BCT need W_o; the backfill's
uncertainty ordering uses its rows as prototypes) is fitted by :func:`fit_cosine_head`: a cosine
classifier on the *frozen* old features of the labelled training rows, initialised at the
normalised class means and refined by full-batch cross-entropy. The old model never moves.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hotswap.components.compatibility import (
    DEFAULT_CONFIG,
    CompatConfig,
    CompatibilityError,
    CompatObjective,
    class_map_lookup,
)
from hotswap.components.data import DataError
from hotswap.components.streaming import (
    DEFAULT_LOADER,
    ImageManifest,
    LoaderConfig,
    ObjectReader,
    batches,
    extract_manifest,
    make_loader,
)
from hotswap.components.training import (
    EpochCallback,
    Objective,
    TrainConfig,
    TrainHistory,
    cross_entropy_objective,
    optimisation_step,
    resolve_device,
)
from tqdm.auto import tqdm


def _labelled(manifest: ImageManifest) -> np.ndarray:
    labels = manifest.labels
    if (labels < 0).any() or not len(labels):
        raise DataError(f"{manifest.name}: training needs a label on every row")
    return labels


def train_streaming(
    model: Any,
    manifest: ImageManifest,
    reader: ObjectReader,
    config: TrainConfig,
    objective: Objective | None = None,
    loader: LoaderConfig = DEFAULT_LOADER,
    extra_views: Sequence[Any] = (),
    progress: bool = False,
    on_epoch_end: EpochCallback | None = None,
) -> TrainHistory:
    """Train ``model`` in place with Adam + cosine LR on every row of ``manifest`` (pass a split).

    ``extra_views`` are the preprocessings other models in the objective read (the old model's).
    """
    labels_all = torch.from_numpy(_labelled(manifest))
    if int(labels_all.max()) >= model.spec.num_classes:
        raise DataError(
            f"{manifest.name}: label {int(labels_all.max())} does not fit {model.spec.num_classes} classes"
        )
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model.to(device).train()
    objective = objective or cross_entropy_objective(config.label_smoothing)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    transforms = [model.preprocessing, *extra_views]
    data = make_loader(
        manifest,
        transforms,
        reader,
        LoaderConfig(config.batch_size, loader.workers, loader.prefetch_factor, loader.start_method),
        shuffle=True,
        seed=config.seed,
        persistent=config.epochs > 1,
    )
    history = TrainHistory()
    start = time.perf_counter()
    bar = tqdm(
        total=config.epochs * len(manifest), unit="img", disable=not progress, desc="train", leave=False
    )
    for epoch in range(config.epochs):
        sums: dict[str, float] = {}
        for rows, views in batches(data):
            x = {k: v.to(device, non_blocking=True) for k, v in views.items()}
            y = labels_all[torch.from_numpy(rows)].to(device)
            optimisation_step(model, objective, optimizer, x, y, sums)
            bar.update(len(rows))
        scheduler.step()
        means = {name: total / len(manifest) for name, total in sums.items()}
        history.epochs.append(means)
        if on_epoch_end is not None:
            on_epoch_end(epoch, means)
    bar.close()
    history.seconds = time.perf_counter() - start
    history.images_per_second = config.epochs * len(manifest) / max(history.seconds, 1e-9)
    model.eval()
    return history


def class_map_by_name(old_classes: Sequence[str], new_classes: Sequence[str]) -> dict[int, int]:
    """New label → old label for every class name both models know (names, not positions, match)."""
    old = {name: i for i, name in enumerate(old_classes)}
    return {k: old[name] for k, name in enumerate(new_classes) if name in old}


def prototypes_from_features(
    features: np.ndarray, labels: np.ndarray, num_classes: int, where: str
) -> torch.Tensor:
    """Per-class means of (frozen old) features; every class must have a row."""
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise CompatibilityError(
            f"{where}: no training items for class(es) {missing}; cannot build prototypes"
        )
    sums = np.zeros((num_classes, features.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, features)
    counts = np.bincount(labels, minlength=num_classes)[:, None]
    return torch.from_numpy((sums / counts).astype(np.float32))


def train_compatible_streaming(
    old_model: Any,
    new_model: Any,
    manifest: ImageManifest,
    reader: ObjectReader,
    config: CompatConfig = DEFAULT_CONFIG,
    train_config: TrainConfig | None = None,
    class_map: dict[int, int] | None = None,
    loader: LoaderConfig = DEFAULT_LOADER,
    progress: bool = False,
) -> TrainHistory:
    """Compatible training of ``new_model`` (in place) against the frozen ``old_model`` on streamed
    rows. The two may read different preprocessings; they must share d. Prototypes are class means
    of the old model's features over these rows (one streamed pass, old view only)."""
    train_config = train_config or TrainConfig()
    if old_model is new_model:
        raise CompatibilityError("the new model must be a separate module from the frozen old model")
    if old_model.embedding_dim != new_model.embedding_dim:
        raise CompatibilityError(
            f"embedding dimension mismatch: old model has d={old_model.embedding_dim}, new model "
            f"d={new_model.embedding_dim}; a compatible model must use the old model's d"
        )
    labels = _labelled(manifest)
    num_new, num_old = new_model.spec.num_classes, old_model.spec.num_classes
    if class_map is None:
        class_map = {k: k for k in range(min(num_old, num_new))}
    lookup = class_map_lookup(class_map, num_new, num_old)
    device = resolve_device(train_config.device)
    flags = [p.requires_grad for p in old_model.parameters()]
    old_model.to(device).eval().requires_grad_(False)
    try:
        needs_protos = config.method == "bct" or (config.method == "dual_tuning" and config.proto_weight > 0)
        prototypes = None
        if needs_protos:
            (old_feats,) = extract_manifest([old_model], manifest, reader, loader, device=train_config.device)
            prototypes = prototypes_from_features(old_feats, labels, num_new, manifest.name)
        objective = CompatObjective(
            old_model, config, prototypes, lookup, label_smoothing=train_config.label_smoothing
        ).to(device)
        return train_streaming(
            new_model,
            manifest,
            reader,
            train_config,
            objective,
            loader,
            extra_views=[old_model.preprocessing],
            progress=progress,
        )
    finally:
        for param, flag in zip(old_model.parameters(), flags, strict=True):
            param.requires_grad_(flag)
        old_model.eval()


def fit_cosine_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    scale: float = 16.0,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
) -> torch.Tensor:
    """The old classifier W_o for an adopted model: rows on the unit sphere, fitted by label-smoothed
    CE of ``scale·cos(f, w_k)`` on frozen features, starting from the normalised class means."""
    if len(features) != len(labels) or not len(labels):
        raise DataError(f"fit_cosine_head: {len(features)} features for {len(labels)} labels")
    feats = F.normalize(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), dim=1)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    init = prototypes_from_features(feats.numpy(), y.numpy(), num_classes, "old classifier")
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(F.normalize(init, dim=1).clone())
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        logits = scale * feats @ F.normalize(weight, dim=1).T
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return F.normalize(weight.detach(), dim=1)
