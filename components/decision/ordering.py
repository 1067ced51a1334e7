"""Which gallery items to re-extract first, and the backfill curve that judges an ordering.

A partial backfill re-extracts only a fraction f of the gallery with the new model. Which items
it picks matters: an ordering is good when quality rises fast at small f. Two orderings:

- ``random``: a seeded permutation (the baseline of every backfilling paper).
- ``uncertainty``: items the *old* space represents worst go first. It is computed from the
  features already stored in the gallery and the old model's class prototypes (its cosine-head
  weights), so choosing the order costs no forward pass of either model (RACT's "uncertainty-based
  backfilling"; FastFill's σ ordering needs a trained side head, which we do not have). Scores,
  higher = more uncertain, from the cosine similarities s_k = ⟨f_o, p_k⟩ of a stored old feature
  to the K old prototypes:

  * ``margin``: −(s_(1) − s_(2)), a small gap between the two nearest prototypes means the old
    model could not decide;
  * ``max_similarity``: −s_(1), far from every old class (typical of classes the old model never
    saw);
  * ``entropy`` (default): the entropy of softmax(scale·s), the old classifier's own confidence.

  On MNIST-5k (bench/backfill.py) all three beat random with the project's default Dual-Tuning
  model, entropy by a hair on the *validation* split, hence the default. With a less calibrated
  compatible model (new/old similarities far below new/new ones) every uncertainty score lost to
  random: a mixed gallery then first gets worse than both ends, and re-extracted boundary items
  intrude into neighbouring classes' rankings. docs/backfill.md has the numbers.
- ``transform_uncertainty``: FastFill's σ ordering. The feature transformation h_v
  (components/compat/transform.py) predicts each stored item's log-variance s from its stored
  features; items with the highest s (the map trusts itself least) are re-extracted first. It
  needs the trained maps, so it is offered where they exist (a refresh that trained them, a
  ``transform`` backfill) and the scores are passed in (``transform_scores``).

Backfill curve (Jaeckle et al., FastFill, following Apple's ml-fct evaluation): with an ordering π
of the n gallery items, for i = 0 … B+1 (B = 20, so 22 points) the first ⌊i·n/(B+1)⌋ items of π
carry new-model features and the rest old ones; the metric is computed at each point, and the
AUC is the arithmetic mean of the 22 values (0 % and 100 % included).

A partly backfilled gallery mixes two similarity scales (new-query × old-feature and
new-query × new-feature scores); ``backfill_curve(calibration=...)`` ranks each point's mixed
gallery by calibrated scores (components/compat/calibration.py), as search serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.core.configs import DEFAULT_SCORE, Ordering, UncertaintyScore

ORDERINGS: tuple[str, ...] = ("random", "uncertainty", "transform_uncertainty")
UNCERTAINTY_SCORES: tuple[str, ...] = ("margin", "max_similarity", "entropy")
CURVE_POINTS = 22
Transform = Callable[[np.ndarray], np.ndarray]


def _features(array: np.ndarray, role: str) -> np.ndarray:
    x = np.asarray(array)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{role} must be 2-D [N, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{role} must be floating point, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{role} contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def normalized_prototypes(prototypes: np.ndarray) -> np.ndarray:
    """Unit rows [K, d] from old-class prototypes or the old cosine head's weights (``head.weight``)."""
    p = _features(prototypes, "prototypes")
    if len(p) < 2:
        raise ValueError(f"prototypes need at least 2 classes (rows), got {len(p)}")
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("prototypes contain an all-zero row; cannot normalise it")
    return p / norms


def uncertainty_scores(
    old_features: np.ndarray,
    prototypes: np.ndarray,
    score: UncertaintyScore = DEFAULT_SCORE,
    scale: float = 16.0,
    chunk: int = 65536,
) -> np.ndarray:
    """Per-item uncertainty of the old space (higher = re-extract sooner), float64 [N].

    ``old_features`` are the gallery's stored old-model features; ``prototypes`` the old model's
    class prototypes [K, d] (normalised here). ``scale`` is the cosine head's logit scale and
    matters only for ``entropy``.
    """
    if score not in UNCERTAINTY_SCORES:
        raise ValueError(f"uncertainty score {score!r} is unknown; expected one of {UNCERTAINTY_SCORES}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    feats = _features(old_features, "old features")
    protos = normalized_prototypes(prototypes)
    if protos.shape[1] != feats.shape[1]:
        raise ValueError(
            f"prototypes have dimension {protos.shape[1]}, the old features {feats.shape[1]}; "
            "use the prototypes of the model that produced the stored features"
        )
    norms = np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(feats), dtype=np.float64)
    for begin in range(0, len(feats), chunk):
        sims = (feats[begin : begin + chunk] / norms[begin : begin + chunk]) @ protos.T
        if score == "entropy":
            logits = scale * sims.astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            value = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
        else:
            top2 = -np.partition(-sims, 1, axis=1)[:, :2]
            value = -top2[:, 0] if score == "max_similarity" else -(top2[:, 0] - top2[:, 1])
        out[begin : begin + len(value)] = value
    return out


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of 0..n-1 (int64)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def order_by_scores(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties keep their stored order so the plan is reproducible."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    return np.argsort(-scores, kind="stable").astype(np.int64)


def backfill_order(
    ordering: Ordering,
    old_features: np.ndarray,
    *,
    prototypes: np.ndarray | None = None,
    score: UncertaintyScore = DEFAULT_SCORE,
    scale: float = 16.0,
    seed: int = 0,
    transform_scores: np.ndarray | None = None,
) -> np.ndarray:
    """Row indices of ``old_features`` in the order a partial backfill re-extracts them.

    ``transform_scores`` (the maps' predicted log-variance per row) drive 'transform_uncertainty'.
    """
    if ordering == "random":
        return random_order(len(old_features), seed)
    if ordering == "transform_uncertainty":
        if transform_scores is None or len(transform_scores) != len(old_features):
            raise ValueError(
                "ordering 'transform_uncertainty' needs the transformation's per-item log-variance "
                "(transform_scores, one per row)"
            )
        return order_by_scores(transform_scores)
    if ordering == "uncertainty":
        if prototypes is None:
            raise ValueError(
                "ordering 'uncertainty' needs the old model's class prototypes (e.g. old_model.head.weight)"
            )
        return order_by_scores(uncertainty_scores(old_features, prototypes, score, scale))
    raise ValueError(f"ordering {ordering!r} is unknown; expected one of {ORDERINGS}")


def backfill_fractions(points: int = CURVE_POINTS) -> np.ndarray:
    """``points`` equally spaced fractions from 0 to 1 inclusive (i / (points − 1))."""
    if points < 2:
        raise ValueError(f"a backfill curve needs at least 2 points, got {points}")
    return np.arange(points) / (points - 1)


def backfilled_count(n: int, fraction: float) -> int:
    """⌊fraction · n⌋ items, robust to float error (0.3 · 10 must give 3, not 2)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    return min(n, int(np.floor(fraction * n + 1e-9)))


def mixed_gallery(old: np.ndarray, new: np.ndarray, order: np.ndarray, count: int) -> np.ndarray:
    """Old rows, with the first ``count`` rows of ``order`` replaced by the new rows."""
    out = old.copy()
    chosen = order[:count]
    out[chosen] = new[chosen]
    return out


def mixed_provenance(
    old_models: str | np.ndarray, new_model: str, n: int, order: np.ndarray, count: int
) -> np.ndarray:
    """Provenance of :func:`mixed_gallery`'s rows: ``old_models`` (one id or per row), ``new_model``
    for the first ``count`` rows of ``order``."""
    out = np.empty(n, dtype=object)
    out[:] = np.broadcast_to(np.asarray(old_models, dtype=object), (n,))
    out[order[:count]] = new_model
    return out.astype(str)


def _curve_segments(
    calibration: ScoreCalibration, old_models: str | np.ndarray | None, new_model: str | None
) -> tuple[str | np.ndarray, str]:
    new_model = calibration.query_model if new_model is None else new_model
    if old_models is None:
        others = [m for m in calibration.models if m != new_model]
        if len(others) != 1:
            raise ValueError(
                f"the calibration covers models {list(calibration.models)}: name the old gallery's "
                "provenance with old_models"
            )
        old_models = others[0]
    return old_models, new_model


@dataclass
class BackfillCurve:
    """A metric per backfill fraction; the AUC of a metric is the mean over the points."""

    ordering: str
    fractions: list[float]
    points: list[dict[str, float]] = field(default_factory=list)

    def values(self, metric: str = "map") -> list[float]:
        if self.points and metric not in self.points[0]:
            raise ValueError(f"metric {metric!r} is not on the curve; available: {sorted(self.points[0])}")
        return [point[metric] for point in self.points]

    def auc(self, metric: str = "map") -> float:
        return float(np.mean(self.values(metric)))

    def at(self, fraction: float, metric: str = "map") -> float:
        """The value at a fraction that is one of the curve's points."""
        for f, point in zip(self.fractions, self.points, strict=True):
            if abs(f - fraction) < 1e-9:
                return point[metric]
        raise ValueError(f"fraction {fraction} is not a point of this curve ({self.fractions})")

    def as_dict(self) -> dict:
        metrics = sorted(self.points[0]) if self.points else []
        return {
            "ordering": self.ordering,
            "fractions": self.fractions,
            "points": self.points,
            "auc": {m: self.auc(m) for m in metrics},
        }


def backfill_curve(
    query_features: np.ndarray,
    query_labels: np.ndarray,
    old_gallery: np.ndarray,
    new_gallery: np.ndarray,
    order: np.ndarray,
    *,
    gallery_labels: np.ndarray | None = None,
    fractions: Sequence[float] | None = None,
    transform: Transform | None = None,
    topk: Sequence[int] = (1, 5),
    name: str = "ordering",
    calibration: ScoreCalibration | None = None,
    old_models: str | np.ndarray | None = None,
    new_model: str | None = None,
) -> BackfillCurve:
    """Retrieval quality of new-model queries as the gallery is backfilled in ``order``.

    ``old_gallery`` / ``new_gallery`` are the same items' old and new features, row for row.
    Without ``gallery_labels`` the queries *are* the gallery items (leave-one-out: each query's
    own item is excluded, whichever model's feature it currently holds). ``transform`` maps
    features to what is searched, e.g. DPQ encode+decode for the quantized serving view; it is
    applied row-wise, so it runs once on each side instead of once per point.

    ``calibration`` (for queries of the new model) ranks each mixed gallery by calibrated scores:
    rows of ``old_gallery`` come from ``old_models`` (one model id, or one per row; default the
    calibration's only other model), re-extracted rows from ``new_model`` (default the
    calibration's query model). Without it raw inner products are ranked.
    """
    q = _features(query_features, "query features")
    old = _features(old_gallery, "old gallery features")
    new = _features(new_gallery, "new gallery features")
    if old.shape != new.shape:
        raise ValueError(f"old gallery {old.shape} and new gallery {new.shape} must hold the same items")
    order = np.asarray(order, dtype=np.int64)
    if sorted(order.tolist()) != list(range(len(old))):
        raise ValueError(f"order must be a permutation of the {len(old)} gallery rows")
    leave_one_out = gallery_labels is None
    if leave_one_out and len(q) != len(old):
        raise ValueError(
            f"without gallery_labels the queries must be the gallery items: "
            f"{len(q)} queries, {len(old)} items"
        )
    labels_g = query_labels if leave_one_out else gallery_labels
    if transform is not None:
        old, new = _features(transform(old), "transformed old"), _features(transform(new), "transformed new")
    fracs = backfill_fractions() if fractions is None else np.asarray(fractions, dtype=np.float64)
    if calibration is not None:
        old_models, new_model = _curve_segments(calibration, old_models, new_model)
    curve = BackfillCurve(ordering=name, fractions=[float(f) for f in fracs])
    for fraction in fracs:
        count = backfilled_count(len(old), float(fraction))
        gallery, queries = mixed_gallery(old, new, order, count), q
        if calibration is not None:
            models = mixed_provenance(old_models, new_model, len(old), order, count)
            queries, gallery = calibration.augment(q, gallery, models)
        metrics = retrieval_metrics(
            queries, query_labels, gallery, labels_g, topk=topk, exclude_self=leave_one_out
        )
        curve.points.append(metrics.as_dict())
    return curve
