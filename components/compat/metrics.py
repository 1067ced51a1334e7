"""Retrieval metrics: tie-aware mAP over the full ranking and CMC top-k.

Scores are inner products (embeddings are unit-norm, so this is cosine similarity; a decoded
quantized gallery is scored the same way, which is exactly asymmetric quantizer search).

Ties are common — at 8-bit codes only 256 distinct gallery vectors exist — so both metrics are
the *expected* value over a uniformly random order of tied items (McSherry & Najork, ECIR 2008),
not whatever order a sort happened to produce. For a tie group occupying ranks t+1..t+n with r
relevant items and R_prev relevant items ranked above it, position p contributes

    (r/n) · (R_prev + 1 + (p - t - 1)(r - 1)/(n - 1)) / p

to the sum of precisions. CMC top-k is the probability that a relevant item lands in the first
k ranks. Queries with no relevant gallery item are left out and counted.

Queries are scored in blocks, so a 50k x 50k evaluation never holds more than
``block_size`` x N scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RetrievalMetrics:
    map: float
    cmc: dict[int, float] = field(default_factory=dict)
    n_queries: int = 0
    n_skipped: int = 0

    @property
    def top1(self) -> float:
        return self.cmc[1]

    @property
    def top5(self) -> float:
        return self.cmc[5]

    def as_dict(self) -> dict[str, float]:
        return {"map": self.map, **{f"top{k}": v for k, v in self.cmc.items()}}


def _check_inputs(
    feats: np.ndarray, labels: np.ndarray, role: str, dim: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats)
    labels = np.asarray(labels)
    if feats.ndim != 2:
        raise ValueError(f"{role} features must be 2-D [N, d], got shape {feats.shape}")
    if len(labels) != len(feats):
        raise ValueError(f"{role}: {len(feats)} feature rows but {len(labels)} labels")
    if dim is not None and feats.shape[1] != dim:
        raise ValueError(
            f"embedding dimension mismatch: queries have d={dim}, {role} has d={feats.shape[1]}; "
            "query and gallery must come from models with the same embedding size"
        )
    if not np.isfinite(feats).all():
        raise ValueError(f"{role} features contain NaN or infinite values")
    return np.ascontiguousarray(feats, dtype=np.float32), labels


def _tie_aware_block(
    scores: np.ndarray, relevant: np.ndarray, topk: Sequence[int], harmonic: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Expected AP and CMC hits for a block of queries (rows) against one gallery.

    The sum over a tie group's positions has a closed form: with B = (r-1)/(n-1) and
    A = R_prev + 1 - (t+1)·B, the group adds (r/n)·(A·(H[t+n] - H[t]) + B·n), H being harmonic
    numbers. So only one pass over sorted rows is needed, and only groups holding a relevant
    item cost anything. Sorting need not be stable: tie order is averaged out analytically.
    """
    b, n = scores.shape
    order = np.argsort(-scores, axis=1)
    s = np.take_along_axis(scores, order, axis=1)
    rel = np.take_along_axis(relevant, order, axis=1)
    n_rel = rel.sum(axis=1)

    # Tie groups, numbered across the whole block (row-major) so bincount handles all rows.
    new_group = np.ones((b, n), dtype=bool)
    new_group[:, 1:] = s[:, 1:] != s[:, :-1]
    flat_new = new_group.ravel()
    starts = np.flatnonzero(flat_new)
    gid = np.cumsum(flat_new) - 1
    row = starts // n
    t = starts % n  # items ranked before the group in its row
    size = np.diff(np.append(starts, b * n))
    r = np.bincount(gid, weights=rel.ravel(), minlength=len(starts))
    r_prev = (np.cumsum(rel, axis=1) - rel).ravel()[starts]
    has_rel = r > 0
    t, size, r, r_prev, row = t[has_rel], size[has_rel], r[has_rel], r_prev[has_rel], row[has_rel]
    slope = np.where(size > 1, (r - 1) / np.maximum(size - 1, 1), 0.0)
    intercept = r_prev + 1 - (t + 1) * slope
    group_sum = (r / size) * (intercept * (harmonic[t + size] - harmonic[t]) + slope * size)
    ap = np.bincount(row, weights=group_sum, minlength=b) / np.maximum(n_rel, 1)

    # CMC: the best-scoring relevant item decides; ties with it are broken at random.
    best = np.where(rel, s, -np.inf).max(axis=1, keepdims=True)
    above = (s > best).sum(axis=1)
    tied = (s == best).sum(axis=1)
    tied_rel = ((s == best) & rel).sum(axis=1)
    hits = []
    for k in topk:
        slots = np.clip(k - above, 0, None)
        p_miss = np.ones(b)
        for i in range(int(slots.max(initial=0))):
            active = i < slots
            num = np.clip(tied - tied_rel - i, 0, None)
            den = np.maximum(tied - i, 1)
            p_miss = np.where(active, p_miss * num / den, p_miss)
        hits.append(1.0 - p_miss)
    return ap, n_rel, np.stack(hits, axis=1)


def retrieval_metrics(
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    gallery_feats: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    topk: Sequence[int] = (1, 5),
    block_size: int = 256,
    exclude_self: bool = False,
    score_adjust: Callable[[np.ndarray], np.ndarray] | None = None,
) -> RetrievalMetrics:
    """mAP and CMC top-k of queries against a gallery.

    With ``gallery_feats=None`` the evaluation is leave-one-out: every query searches all other
    query items (it is excluded from its own ranking). ``exclude_self=True`` is the same protocol
    across two models (e.g. new-model queries against the old model's features of the same items):
    gallery row i is query i's own item and is excluded from its ranking. ``score_adjust`` maps
    each block of raw inner products [queries, all gallery items] to the scores that rank (e.g. a
    per-provenance-model calibration of a mixed gallery); None ranks by the raw scores.
    """
    query_feats, query_labels = _check_inputs(query_feats, query_labels, "query")
    leave_one_out = gallery_feats is None
    if leave_one_out:
        gallery_feats, gallery_labels = query_feats, query_labels
    elif gallery_labels is None:
        raise ValueError("gallery_labels are required when gallery_feats are given")
    gallery_feats, gallery_labels = _check_inputs(
        gallery_feats, gallery_labels, "gallery", dim=query_feats.shape[1]
    )
    if len(gallery_feats) == 0 or len(query_feats) == 0:
        raise ValueError("retrieval needs at least one query and one gallery item")
    if exclude_self and len(gallery_feats) != len(query_feats):
        raise ValueError(
            f"exclude_self needs the gallery to hold the query items row for row, got "
            f"{len(query_feats)} queries and {len(gallery_feats)} gallery items"
        )
    leave_one_out = leave_one_out or exclude_self

    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, len(gallery_feats) + 1))])
    ap_sum, hit_sum, counted, skipped = 0.0, np.zeros(len(topk)), 0, 0
    for begin in range(0, len(query_feats), block_size):
        stop = min(begin + block_size, len(query_feats))
        scores = query_feats[begin:stop] @ gallery_feats.T
        if score_adjust is not None:
            scores = np.array(score_adjust(scores), dtype=np.float32)
            if scores.shape != (stop - begin, len(gallery_feats)):
                raise ValueError(f"score_adjust changed the score block's shape to {scores.shape}")
        relevant = query_labels[begin:stop, None] == gallery_labels[None, :]
        if leave_one_out:
            rows = np.arange(stop - begin)
            scores[rows, rows + begin] = -np.inf
            relevant[rows, rows + begin] = False
        ap, n_rel, hits = _tie_aware_block(scores, relevant, topk, harmonic)
        keep = n_rel > 0
        ap_sum += float(ap[keep].sum())
        hit_sum += hits[keep].sum(axis=0)
        counted += int(keep.sum())
        skipped += int((~keep).sum())
    if counted == 0:
        raise ValueError("no query has a relevant item in the gallery; metrics are undefined")
    return RetrievalMetrics(
        map=clamp_score(ap_sum / counted),
        cmc={k: clamp_score(float(h / counted)) for k, h in zip(topk, hit_sum, strict=True)},
        n_queries=counted,
        n_skipped=skipped,
    )


#: Summing per-query APs in floating point can land a hair outside [0, 1] (1.0000000000000007 on a
#: perfectly separable set); anything within this of the interval is rounding, not a wrong score.
SCORE_ROUNDING = 1e-9


def clamp_score(value: float) -> float:
    """``value`` clipped to [0, 1] when it lies outside by rounding only; NaN and real excess stay."""
    if -SCORE_ROUNDING <= value < 0.0:
        return 0.0
    if 1.0 < value <= 1.0 + SCORE_ROUNDING:
        return 1.0
    return value


def update_gain(old_old: float, new_old: float, new_new: float) -> float:
    """BCT's update gain: the share of the full upgrade's gain obtained without backfilling.

    (M(new→old) − M(old,old)) / (M(new,new) − M(old,old)); NaN when the new model brings no gain.
    """
    denominator = new_new - old_old
    if denominator <= 0:
        return float("nan")
    return (new_old - old_old) / denominator
