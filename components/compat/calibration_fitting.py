"""Fitting a score calibration: pair statistics of validation items and the calibration rules.

For one query model and each gallery model v, the matched (same label) and non-matched scores of
the same validation items give the segment's statistics; a rule (``impostor``, ``two_point``,
``logistic``, ``identity``; what each means is in components/compat/calibration.py) turns them
into an affine map, expressed relative to the reference segment.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from hotswap.components.compat.calibration import (
    IDENTITY,
    AffineMap,
    CalibrationError,
    ScoreCalibration,
    SegmentStats,
)
from hotswap.components.core.configs import CalibrationConfig, CalibrationRule
from pydantic import JsonValue

CALIBRATION_RULES: tuple[str, ...] = ("identity", "impostor", "two_point", "logistic")
MIN_SLOPE = 1e-3  # in standardised units: what a segment without match evidence gets (see _logistic)


# --------------------------------------------------------------------------- statistics


def pair_scores(
    query_features: np.ndarray,
    labels: np.ndarray,
    gallery_features: np.ndarray,
    *,
    exclude_self: bool = True,
    max_pairs: int = 2_000_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Matched and non-matched scores of queries against the same items in another embedding.

    Row i of ``query_features`` and ``gallery_features`` is the same item (embedded by the query
    model and by the gallery model); with ``exclude_self`` an item's pair with itself is left out.
    When rows × items exceeds ``max_pairs`` a seeded sample of query rows is used.
    """
    q = _features(query_features, "query features")
    g = _features(gallery_features, "gallery features")
    y = np.asarray(labels)
    if g.shape != q.shape or len(y) != len(q):
        raise CalibrationError(
            f"query features {q.shape}, gallery features {g.shape} and {len(y)} labels must describe "
            "the same items row for row"
        )
    if len(q) < 2:
        raise CalibrationError(f"calibration needs at least 2 validation items, got {len(q)}")
    rows = np.arange(len(q))
    if len(q) * len(g) > max_pairs:
        keep = max(1, max_pairs // len(g))
        rows = np.sort(np.random.default_rng(seed).choice(len(q), size=keep, replace=False))
    scores = (q[rows] @ g.T).astype(np.float64)
    same = y[rows, None] == y[None, :]
    valid = np.ones_like(same)
    if exclude_self:
        valid[np.arange(len(rows)), rows] = False
    matched = scores[same & valid]
    nonmatched = scores[~same & valid]
    if len(matched) == 0 or len(nonmatched) == 0:
        raise CalibrationError(
            "calibration needs both matched (same-label) and non-matched pairs among the validation "
            f"items; got {len(matched)} matched and {len(nonmatched)} non-matched"
        )
    return matched, nonmatched


def segment_stats(matched: np.ndarray, nonmatched: np.ndarray) -> SegmentStats:
    return SegmentStats(
        matched_mean=float(matched.mean()),
        matched_std=float(matched.std()),
        nonmatched_mean=float(nonmatched.mean()),
        nonmatched_std=float(nonmatched.std()),
        matched_pairs=len(matched),
        nonmatched_pairs=len(nonmatched),
    )


def _features(array: np.ndarray, role: str) -> np.ndarray:
    x = np.asarray(array)
    if x.ndim != 2 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.floating):
        raise CalibrationError(f"{role} must be a 2-D float array [N, d], got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise CalibrationError(f"{role} contain NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------- rules


def _logistic(matched: np.ndarray, nonmatched: np.ndarray, ridge: float) -> tuple[float, float]:
    """Class-balanced logistic regression of match on score; returns (a, b) of the log-odds a·s + b.

    Fitted on standardised scores with a ridge on the slope (separable segments would otherwise
    send it to infinity), by Newton's method on the two parameters.
    """
    s = np.concatenate([matched, nonmatched])
    y = np.concatenate([np.ones(len(matched)), np.zeros(len(nonmatched))])
    w = np.concatenate(
        [np.full(len(matched), 0.5 / len(matched)), np.full(len(nonmatched), 0.5 / len(nonmatched))]
    )
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    z = (s - mu) / sd
    theta = np.zeros(2)  # slope, intercept (standardised units)
    for _ in range(100):
        logit = np.clip(theta[0] * z + theta[1], -50.0, 50.0)
        p = 1.0 / (1.0 + np.exp(-logit))
        r = w * (p - y)
        grad = np.array([(r * z).sum() + ridge * theta[0], r.sum()])
        h = w * p * (1 - p)
        hess = np.array([[(h * z * z).sum() + ridge, (h * z).sum()], [(h * z).sum(), h.sum() + 1e-12]])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    if not theta[0] > MIN_SLOPE:
        # no evidence that a higher score means a match (an incompatible segment): rank the segment
        # at the base rate, keeping its own order with the smallest allowed slope
        theta = np.array([MIN_SLOPE, 0.0])
    slope, intercept = theta[0] / sd, theta[1] - theta[0] * mu / sd
    return float(slope), float(intercept)


def _absolute_map(
    rule: CalibrationRule, matched: np.ndarray, nonmatched: np.ndarray, ridge: float
) -> tuple[float, float]:
    """(a, b) of the rule's map to the common scale, before expressing it relative to the reference."""
    mu_n, sd_n, mu_m = float(nonmatched.mean()), float(nonmatched.std()), float(matched.mean())
    if rule == "identity":
        return 1.0, 0.0
    if rule == "impostor":
        if not sd_n > 0:
            raise CalibrationError("impostor calibration: non-matched scores have zero spread")
        return 1.0 / sd_n, -mu_n / sd_n
    if rule == "two_point":
        # a segment whose matched mean is not above its non-matched mean carries no evidence: floor
        gap = max(mu_m - mu_n, MIN_SLOPE * float(np.concatenate([matched, nonmatched]).std()) or 1e-12)
        return 1.0 / gap, -mu_n / gap
    if rule == "logistic":
        return _logistic(matched, nonmatched, ridge)
    raise CalibrationError(f"calibration rule {rule!r} is unknown; expected one of {CALIBRATION_RULES}")


def fit_calibration(
    query_model: str,
    query_features: np.ndarray,
    labels: np.ndarray,
    gallery_features: Mapping[str, np.ndarray],
    *,
    config: CalibrationConfig | None = None,
    rule: CalibrationRule | None = None,
    reference: str | None = None,
    exclude_self: bool = True,
    fitted_on: dict[str, JsonValue] | None = None,
) -> ScoreCalibration:
    """Fit one affine map per gallery model from validation items embedded by every model.

    ``query_features`` [n, d]: the items embedded by the query model; ``gallery_features[v]``
    [n, d]: the same items embedded by gallery model v (and, for the served view, passed through
    the gallery's DPQ codebooks: encode then decode), row for row; ``labels`` [n]. ``reference``
    (default: the query model if it is a gallery model, else the first key) keeps its raw scores.
    ``rule`` overrides ``config.rule``; a config with ``enabled=False`` gives the identity.
    """
    config = config or CalibrationConfig()
    rule = rule or config.rule
    if rule not in CALIBRATION_RULES:
        raise CalibrationError(f"calibration rule {rule!r} is unknown; expected one of {CALIBRATION_RULES}")
    models = [str(m) for m in gallery_features]
    if not models:
        raise CalibrationError("gallery_features must name at least one gallery model")
    query_model = str(query_model)
    reference = (
        str(reference) if reference is not None else (query_model if query_model in models else models[0])
    )
    if reference not in models:
        raise CalibrationError(f"reference model {reference!r} is not one of the gallery models {models}")
    if not config.enabled:
        rule = "identity"
    stats, absolute = {}, {}
    for model in models:
        matched, nonmatched = pair_scores(
            query_features,
            labels,
            gallery_features[model],
            exclude_self=exclude_self,
            max_pairs=config.max_pairs,
            seed=config.seed,
        )
        stats[model] = segment_stats(matched, nonmatched)
        absolute[model] = _absolute_map(rule, matched, nonmatched, config.ridge)
    a_ref, b_ref = absolute[reference]
    maps = {m: AffineMap(scale=a / a_ref, offset=(b - b_ref) / a_ref) for m, (a, b) in absolute.items()}
    maps[reference] = IDENTITY  # exactly, not up to rounding
    return ScoreCalibration(
        query_model=query_model,
        reference_model=reference,
        rule=rule,
        maps=maps,
        stats=stats,
        fitted_on=fitted_on or {},
    )


def fit_backfill_calibration(
    query_features: np.ndarray,
    labels: np.ndarray,
    old_features: np.ndarray,
    new_features: np.ndarray,
    config: CalibrationConfig | None = None,
    *,
    old_model: str = "old",
    new_model: str = "new",
) -> ScoreCalibration:
    """The calibration of a two-model backfill (old segment, new segment), new-model queries.

    ``old_features``/``new_features`` are the validation items as the gallery would hold them
    (through the codebooks for the served view); ``query_features`` the new model's float ones.
    This is what the backfill curve and the decision's estimates rank mixed galleries with.
    """
    return fit_calibration(
        new_model,
        query_features,
        labels,
        {old_model: old_features, new_model: new_features},
        config=config,
    )
