"""Every backfill option's quality, estimated on validation data before costs and policy are applied.

Quality is estimated on *validation* data (never test), leave-one-out over the validation items
with new-model queries, searching what would be served: DPQ codes decoded (asymmetric search; the
query is not quantized). So skip = new→old cross-test through the old codebooks, requantize = the
requantized cross-test, partial(f) = the backfill curve at f, full = new/new through the new
codebooks. Float (unquantized) numbers are recorded beside them. An option's *relative quality* is
its metric divided by full's, the quality a full backfill would reach, so full always meets the
target and is the fallback. A partial option's mixed gallery is ranked by calibrated scores
(``DecisionConfig.calibration``, fitted on the same validation items), as search serves it.

transform (when the maps are given): the validation gallery with every item of a model other than
the candidate mapped by its provenance model's h_v (components/compat/transform.py), re-encoded
with the new codebooks; its rows all live in the candidate's space, so raw scores rank them.
transform(f) re-extracts the first f of the maps' uncertainty ordering (most uncertain first) and
keeps the rest mapped: the backfill curve that starts from the mapped gallery.
"""

from __future__ import annotations

import numpy as np
from hotswap.components.compat.calibration_fitting import fit_backfill_calibration
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.compat.served import served_metrics
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.decision.ordering import backfill_curve, backfill_order, order_by_scores
from hotswap.components.decision.record import DecisionError
from hotswap.components.quant.dpq import DPQCodebooks
from pydantic import BaseModel, ConfigDict, Field


class QualityEstimate(BaseModel):
    """Served and float metrics of every option on validation data (before costs and policy)."""

    model_config = ConfigDict(extra="forbid")

    skip: dict[str, float]
    requantize: dict[str, float]
    full: dict[str, float]
    partial: dict[float, dict[str, float]]
    float_skip: dict[str, float]
    float_full: dict[str, float]
    float_partial: dict[float, dict[str, float]]
    curve: dict[str, list[float]] = Field(default_factory=dict)
    live: dict[str, float] | None = None
    float_live: dict[str, float] | None = None
    transform: dict[str, float] | None = None
    float_transform: dict[str, float] | None = None
    transform_partial: dict[float, dict[str, float]] = Field(default_factory=dict)
    float_transform_partial: dict[float, dict[str, float]] = Field(default_factory=dict)


def _roundtrip(codebooks: DPQCodebooks | None):
    if codebooks is None:
        return None
    return lambda feats: codebooks.decode(codebooks.encode(feats))


def estimate_quality(
    old_features: np.ndarray,
    new_features: np.ndarray,
    labels: np.ndarray,
    *,
    old_codebooks: DPQCodebooks | None,
    new_codebooks: DPQCodebooks | None,
    prototypes: np.ndarray | None,
    config: DecisionConfig,
    live_query_features: np.ndarray | None = None,
    gallery_models: np.ndarray | None = None,
    transformed_features: np.ndarray | None = None,
    transform_scores: np.ndarray | None = None,
) -> QualityEstimate:
    """Every option's quality on validation items (leave-one-out, new-model queries).

    ``old_features``/``new_features`` are the same validation items embedded by each model;
    ``old_features`` may be a composed gallery (each row by its own model version, named in
    ``gallery_models``). ``prototypes`` the old model's class prototypes (needed for the
    'uncertainty' ordering). ``live_query_features`` (the champion's queries) add the live
    baseline. Without codebooks the served view is the float one. ``transformed_features`` (the
    same gallery with each non-candidate row mapped by its model's h_v) add the transform option;
    ``transform_scores`` (the maps' log-variance per row) order its transform(f) variant and the
    'transform_uncertainty' ordering.
    """
    old = np.asarray(old_features, dtype=np.float32)
    new = np.asarray(new_features, dtype=np.float32)
    if old.shape != new.shape or old.ndim != 2:
        raise DecisionError(f"old features {old.shape} and new features {new.shape} must be the same items")
    if len(labels) != len(old):
        raise DecisionError(f"{len(old)} validation items but {len(labels)} labels")
    fractions = config.fractions()
    order = backfill_order(
        config.ordering,
        old,
        prototypes=prototypes,
        score=config.uncertainty_score,
        seed=config.seed,
        transform_scores=transform_scores,
    )
    curve_points = np.concatenate([[0.0], fractions, [1.0]])

    def metrics(gallery: np.ndarray) -> dict[str, float]:
        return retrieval_metrics(new, labels, gallery, labels, exclude_self=True).as_dict()

    served_old = _roundtrip(old_codebooks)
    served_new = _roundtrip(new_codebooks)
    # partial options rank a mixed gallery by calibrated scores, as served (compat/calibration.py)
    float_cal = fit_backfill_calibration(new, labels, old, new, config.calibration)
    float_curve = backfill_curve(
        new, labels, old, new, order, fractions=curve_points, name=config.ordering, calibration=float_cal
    )
    served_curve = (
        backfill_curve(
            new,
            labels,
            old,
            new,
            order,
            fractions=curve_points,
            transform=served_new,
            name=config.ordering,
            calibration=fit_backfill_calibration(
                new, labels, served_new(old), served_new(new), config.calibration
            ),
        )
        if served_new is not None
        else float_curve
    )
    skip = metrics(served_old(old)) if served_old is not None else float_curve.points[0]
    live = float_live = None
    if live_query_features is not None:
        models = np.full(len(old), "old") if gallery_models is None else np.asarray(gallery_models)
        champion = np.asarray(live_query_features, dtype=np.float32)
        if champion.shape != old.shape:
            raise DecisionError(f"live query features {champion.shape} must match the gallery {old.shape}")
        float_live = served_metrics(champion, labels, old, labels, models, exclude_self=True)
        live = (
            served_metrics(champion, labels, served_old(old), labels, models, exclude_self=True)
            if served_old is not None
            else float_live
        )
    mapped = _transform_quality(
        new, labels, transformed_features, transform_scores, order, curve_points, served_new
    )
    by_fraction = dict(zip(curve_points.tolist(), served_curve.points, strict=True))
    float_by_fraction = dict(zip(curve_points.tolist(), float_curve.points, strict=True))
    return QualityEstimate(
        skip=skip,
        requantize=served_curve.points[0],
        full=served_curve.points[-1],
        partial={f: by_fraction[f] for f in fractions},
        float_skip=float_curve.points[0],
        float_full=float_curve.points[-1],
        float_partial={f: float_by_fraction[f] for f in fractions},
        curve={"fractions": served_curve.fractions, **{m: served_curve.values(m) for m in ("map", "top1")}},
        live=live,
        float_live=float_live,
        **mapped,
    )


def _transform_quality(
    new: np.ndarray,
    labels: np.ndarray,
    transformed: np.ndarray | None,
    scores: np.ndarray | None,
    fallback_order: np.ndarray,
    curve_points: np.ndarray,
    served_new,
) -> dict:
    """transform and transform(f), served and float: curves starting from the mapped gallery."""
    if transformed is None:
        return {}
    mapped = np.asarray(transformed, dtype=np.float32)
    if mapped.shape != new.shape:
        raise DecisionError(f"transformed features {mapped.shape} must match the gallery {new.shape}")
    order = fallback_order if scores is None else order_by_scores(np.asarray(scores, dtype=np.float64))
    float_curve = backfill_curve(new, labels, mapped, new, order, fractions=curve_points, name="transform")
    served_curve = (
        backfill_curve(
            new, labels, mapped, new, order, fractions=curve_points, transform=served_new, name="transform"
        )
        if served_new is not None
        else float_curve
    )
    inner = curve_points[1:-1].tolist()
    return {
        "transform": served_curve.points[0],
        "float_transform": float_curve.points[0],
        "transform_partial": dict(zip(inner, served_curve.points[1:-1], strict=True)),
        "float_transform_partial": dict(zip(inner, float_curve.points[1:-1], strict=True)),
    }
