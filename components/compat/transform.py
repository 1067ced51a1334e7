"""h_v: a learned map from a gallery model v's feature space into the candidate's (DESIGN.md §17).

Why: a stored gallery feature of model v can be brought into the candidate's space without
reading its image or running a backbone (FCT, Ramanujan et al. CVPR 2022, without side
information; FastFill, Jaeckle et al. ICLR 2023). The cost is a small MLP plus a re-encode, close
to requantize, and the quality can approach a re-extraction.

- Architecture (FCT's transformation, scaled down): an input layer Linear–BN–ReLU to ``hidden``,
  ``blocks`` residual blocks z ← z + ReLU(BN(Linear(z))), an output Linear back to the
  candidate's d, plus a linear residual path from the input (identity-initialised when the
  dimensions agree, so training starts at h(x) = x: compatible models are already close).
- Loss (FastFill without side information), per item i with h_i = h_v(φ_v(x_i)):
  ℓ_i = ‖φ_n(x_i) − h_i‖² + λ·CE_ε(W_n h_i, y_i); with the uncertainty head s_i (a Linear on
  the last hidden layer): L = mean_i[½·e^{−s_i}·ℓ_i + μ·s_i], otherwise L = mean_i ℓ_i.
  s_i is the predicted log-variance of the item's error: a backfill ordering (most uncertain
  first) that costs nothing at backfill time.
- W_n: the candidate's own classifier. The project's models carry a cosine head
  (components/models/backbones.py ``CosineClassifier``: logits = scale·cos(f, w_k)); Dual-Tuning
  trains it as the new head, so W_n is ``candidate.head.weight`` with its scale. Without a head
  (features only, e.g. in benches on stored features) the *reconstruction* used here is class
  prototypes of the candidate's features as a cosine classifier (:func:`class_prototypes`).
- Served features are unit-norm (every model of the project L2-normalises its embedding), so
  :func:`apply` returns h normalised to the unit sphere; the loss uses h as the MLP outputs it.
- BatchNorm statistics are frozen for the last ``freeze_bn_fraction`` of the epochs (FCT).

Stored as safetensors (weights) + JSON (config and facts) and loaded with ``safetensors`` only:
nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hotswap.components.core.configs import TransformConfig
from torch import nn

__all__ = [
    "FeatureTransform",
    "TransformConfig",
    "TransformError",
    "TransformNet",
    "apply",
    "class_prototypes",
    "fit_transform",
    "load_transform",
    "save_transform",
    "transform_from_files",
    "transform_to_files",
]

WEIGHTS_FILE = "transform.safetensors"
CONFIG_FILE = "transform.json"
FORMAT_VERSION = 1


class TransformError(ValueError):
    """Features, labels or stored files a transformation cannot be fitted on or loaded from."""


class _Block(nn.Module):
    """One residual block: z + ReLU(BN(Linear(z)))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + F.relu(self.norm(self.linear(z)))


class TransformNet(nn.Module):
    """h_v and the log-variance head s (see the module doc)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, blocks: int, uncertainty: bool) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(hidden) for _ in range(blocks)])
        self.out = nn.Linear(hidden, out_dim)
        self.residual = nn.Linear(in_dim, out_dim, bias=False)
        self.sigma = nn.Linear(hidden, 1) if uncertainty else None
        with torch.no_grad():  # start at h(x) ≈ residual(x): identity when the spaces share d
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()
            if in_dim == out_dim:
                self.residual.weight.copy_(torch.eye(in_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.blocks(self.inp(x))
        s = None if self.sigma is None else self.sigma(z).squeeze(1)
        return self.residual(x) + self.out(z), s


@dataclass
class FeatureTransform:
    """A fitted h_v with its config and the facts needed to use it safely (dims, models)."""

    net: TransformNet
    config: TransformConfig
    in_dim: int
    out_dim: int
    source_model: str | None = None
    target_model: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def has_uncertainty(self) -> bool:
        return self.net.sigma is not None


def _features(x: np.ndarray, role: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] < 1 or not np.issubdtype(a.dtype, np.floating):
        raise TransformError(f"{role} must be floating point [N, d], got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise TransformError(f"{role} contain NaN or infinite values")
    return np.ascontiguousarray(a, dtype=np.float32)


def class_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Unit class means [K, d] of the candidate's features: the reconstruction of W_n used when the
    candidate's classifier is not at hand (a class with no item gets a zero row, never the target)."""
    feats = _features(features, "features")
    labels = np.asarray(labels, dtype=np.int64)
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    sums = np.zeros((k, feats.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, feats)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def _per_item_loss(
    mapped: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    classifier: torch.Tensor,
    scale: float,
    config: TransformConfig,
) -> torch.Tensor:
    """ℓ_i = ‖φ_n − h‖² + λ·CE_ε(scale·cos(h, W_n), y) per item."""
    loss = ((target - mapped) ** 2).sum(dim=1)
    if config.ce_weight > 0:
        logits = scale * F.linear(F.normalize(mapped, dim=1), classifier)
        ce = F.cross_entropy(logits, labels, reduction="none", label_smoothing=config.label_smoothing)
        loss = loss + config.ce_weight * ce
    return loss


def _objective(per_item: torch.Tensor, s: torch.Tensor | None, config: TransformConfig) -> torch.Tensor:
    if s is None:
        return per_item.mean()
    return (0.5 * torch.exp(-s) * per_item + config.uncertainty_weight * s).mean()


def fit_transform(
    old_feats: np.ndarray,
    new_feats: np.ndarray,
    labels: np.ndarray,
    config: TransformConfig | None = None,
    *,
    classifier: np.ndarray | None = None,
    classifier_scale: float = 16.0,
    source_model: str | None = None,
    target_model: str | None = None,
    device: str = "cpu",
) -> FeatureTransform:
    """Fit h_v on training items embedded by frozen model v (``old_feats``) and by the candidate.

    ``labels`` are the candidate's head rows (0..K−1). ``classifier`` is W_n [K, d] (the
    candidate's cosine-head weights, used normalised with ``classifier_scale``); None uses the
    reconstruction :func:`class_prototypes` of ``new_feats``.
    """
    config = config or TransformConfig()
    old = _features(old_feats, "old features")
    new = _features(new_feats, "new features")
    y = np.asarray(labels, dtype=np.int64)
    if len(old) != len(new) or len(y) != len(old):
        raise TransformError(
            f"{len(old)} old rows, {len(new)} new rows and {len(y)} labels must be the same items"
        )
    if len(old) < 2:
        raise TransformError(f"fitting a transformation needs at least 2 items, got {len(old)}")
    if (y < 0).any():
        raise TransformError("labels must be the candidate's head rows (non-negative)")
    reconstructed = classifier is None
    weights = class_prototypes(new, y) if reconstructed else _features(classifier, "classifier")
    if weights.shape[1] != new.shape[1] or int(y.max()) >= len(weights):
        raise TransformError(
            f"classifier {weights.shape} does not fit features of d={new.shape[1]} "
            f"and labels up to {int(y.max())}"
        )
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net = TransformNet(old.shape[1], new.shape[1], config.hidden, config.blocks, config.uncertainty).to(
        device
    )
    w = F.normalize(torch.from_numpy(weights).to(device), dim=1)
    x_all, t_all, y_all = (torch.from_numpy(a).to(device) for a in (old, new, y))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(old) // config.batch_size)  # drop a last batch too small for BatchNorm
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    freeze_from = config.epochs - math.floor(config.freeze_bn_fraction * config.epochs)
    batch = min(config.batch_size, len(old))
    history: list[float] = []
    for epoch in range(config.epochs):
        net.train()
        if epoch >= freeze_from:  # FCT: BatchNorm statistics fixed for the last part of training
            for m in net.modules():
                if isinstance(m, nn.BatchNorm1d):
                    m.eval()
        order = torch.randperm(len(old), generator=generator).to(device)
        total = 0.0
        for step in range(steps_per_epoch):
            rows = order[step * batch : (step + 1) * batch]
            mapped, s = net(x_all[rows])
            loss = _objective(
                _per_item_loss(mapped, t_all[rows], y_all[rows], w, classifier_scale, config), s, config
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        history.append(total / steps_per_epoch)
    net.eval()
    return FeatureTransform(
        net=net.cpu(),
        config=config,
        in_dim=old.shape[1],
        out_dim=new.shape[1],
        source_model=source_model,
        target_model=target_model,
        facts={
            "train_items": len(old),
            "classes": len(weights),
            "classifier": "class prototypes of the candidate's features (reconstruction)"
            if reconstructed
            else "the candidate's cosine head",
            "classifier_scale": classifier_scale,
            "final_loss": history[-1],
            "first_loss": history[0],
        },
    )


@torch.no_grad()
def apply(
    transform: FeatureTransform, feats: np.ndarray, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray | None]:
    """Map stored features of the source model: (unit-norm mapped float32 [N, d'], s float64 [N] or None).

    s is the predicted log-variance of each item's error (higher = less trustworthy); None when
    the transformation was trained without the uncertainty head.
    """
    x = _features(feats, "features") if len(feats) else np.zeros((0, transform.in_dim), dtype=np.float32)
    if x.shape[1] != transform.in_dim:
        raise TransformError(f"the transformation maps d={transform.in_dim} features, got d={x.shape[1]}")
    net = transform.net.eval()
    mapped = np.empty((len(x), transform.out_dim), dtype=np.float32)
    scores = np.empty(len(x), dtype=np.float64) if transform.has_uncertainty else None
    for begin in range(0, len(x), batch_size):
        h, s = net(torch.from_numpy(x[begin : begin + batch_size]))
        mapped[begin : begin + len(h)] = F.normalize(h, dim=1).numpy()
        if scores is not None:
            scores[begin : begin + len(h)] = s.double().numpy()
    return mapped, scores


# --------------------------------------------------------------------------- storage (no pickle)


def transform_to_files(transform: FeatureTransform) -> dict[str, bytes]:
    """{weights file: safetensors bytes, config file: JSON bytes}."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in transform.net.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "config": transform.config.model_dump(mode="json"),
        "in_dim": transform.in_dim,
        "out_dim": transform.out_dim,
        "source_model": transform.source_model,
        "target_model": transform.target_model,
        "facts": transform.facts,
    }
    return {WEIGHTS_FILE: save(state), CONFIG_FILE: json.dumps(meta, indent=2, sort_keys=True).encode()}


def transform_from_files(files: dict[str, bytes], source: str = "transformation") -> FeatureTransform:
    """The inverse of :func:`transform_to_files`; weights are read with safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        meta = json.loads(files[CONFIG_FILE])
        config = TransformConfig.model_validate(meta["config"])
        in_dim, out_dim = int(meta["in_dim"]), int(meta["out_dim"])
        state = load(bytes(files[WEIGHTS_FILE]))
    except KeyError as exc:
        raise TransformError(f"{source}: missing {exc.args[0]!r}") from None
    except (ValueError, TypeError, SafetensorError) as exc:
        raise TransformError(f"{source}: not a stored transformation ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise TransformError(
            f"{source}: format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    net = TransformNet(in_dim, out_dim, config.hidden, config.blocks, config.uncertainty)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise TransformError(f"{source}: weights do not match its config ({exc})") from None
    return FeatureTransform(
        net=net.eval(),
        config=config,
        in_dim=in_dim,
        out_dim=out_dim,
        source_model=meta.get("source_model"),
        target_model=meta.get("target_model"),
        facts=dict(meta.get("facts") or {}),
    )


def save_transform(transform: FeatureTransform, directory: str | Path) -> Path:
    """Write the weights (safetensors) and config (JSON) into ``directory``; returns it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in transform_to_files(transform).items():
        (path / name).write_bytes(data)
    return path


def load_transform(directory: str | Path) -> FeatureTransform:
    path = Path(directory)
    files = {
        name: (path / name).read_bytes() for name in (WEIGHTS_FILE, CONFIG_FILE) if (path / name).exists()
    }
    return transform_from_files(files, source=str(path))
