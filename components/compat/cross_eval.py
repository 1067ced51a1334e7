"""Cross-model retrieval: the compatibility matrix and BCT's empirical criterion.

M(q, g) is a retrieval metric with queries embedded by model q and the gallery by model g. The
matrix holds the four pairs an upgrade cares about: "old/old" (today's system), "new/new" (after
a full backfill), "new/old" (new queries against the old gallery — the no-backfill case) and
"old/new" (old clients against a re-extracted gallery). Features are extracted once per model
and data set, then every pair is scored from them.

Protocol: leave-one-out on one split by default (query = every item, gallery = the rest; in a
cross pair the query's own item is excluded from the other model's gallery too), or explicit
query and gallery sets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from hotswap.components.compat.metrics import RetrievalMetrics, retrieval_metrics, update_gain
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import EmbeddingModel, require_same_dim
from hotswap.components.models.training import extract_features

PAIRS = ("old/old", "new/new", "new/old", "old/new")
CRITERION_METRICS = ("map", "top1")


def _parse_pair(pair: str) -> tuple[str, str]:
    if pair not in PAIRS:
        raise ValueError(f"unknown model pair {pair!r}; expected one of {PAIRS}")
    query, gallery = pair.split("/")
    return query, gallery


def compatibility_matrix_from_features(
    query_feats: Mapping[str, np.ndarray],
    query_labels: np.ndarray,
    gallery_feats: Mapping[str, np.ndarray] | None = None,
    gallery_labels: np.ndarray | None = None,
    pairs: Sequence[str] = PAIRS,
    topk: Sequence[int] = (1, 5),
) -> dict[str, RetrievalMetrics]:
    """Score every pair from precomputed features, keyed by model ("old", "new").

    Without a gallery the evaluation is leave-one-out over the query items for every pair
    (row i of each model's features must be the same item).
    """
    for role, feats in (("query", query_feats), ("gallery", gallery_feats or {})):
        unknown = set(feats) - {"old", "new"}
        if unknown:
            raise ValueError(f"{role} features: unknown model key(s) {sorted(unknown)}; use 'old' and 'new'")
    result: dict[str, RetrievalMetrics] = {}
    for pair in pairs:
        q_model, g_model = _parse_pair(pair)
        if q_model not in query_feats:
            raise ValueError(f"pair {pair!r} needs query features of the {q_model!r} model")
        if gallery_feats is None:
            if g_model not in query_feats:
                raise ValueError(f"pair {pair!r} needs features of the {g_model!r} model")
            if q_model == g_model:
                result[pair] = retrieval_metrics(query_feats[q_model], query_labels, topk=topk)
            else:
                result[pair] = retrieval_metrics(
                    query_feats[q_model],
                    query_labels,
                    query_feats[g_model],
                    query_labels,
                    topk=topk,
                    exclude_self=True,
                )
        else:
            if g_model not in gallery_feats:
                raise ValueError(f"pair {pair!r} needs gallery features of the {g_model!r} model")
            result[pair] = retrieval_metrics(
                query_feats[q_model], query_labels, gallery_feats[g_model], gallery_labels, topk=topk
            )
    return result


def compatibility_matrix(
    old_model: EmbeddingModel,
    new_model: EmbeddingModel,
    data: ImageSet,
    gallery: ImageSet | None = None,
    pairs: Sequence[str] = PAIRS,
    topk: Sequence[int] = (1, 5),
    batch_size: int = 512,
    device: str = "cpu",
) -> dict[str, RetrievalMetrics]:
    """Extract features once per model and score every pair (leave-one-out on ``data`` unless a
    separate ``gallery`` is given)."""
    require_same_dim(old_model, new_model)
    needed = {m for pair in pairs for m in _parse_pair(pair)}
    models = {"old": old_model, "new": new_model}

    def features(images: ImageSet) -> dict[str, np.ndarray]:
        return {
            name: extract_features(models[name], images, batch_size=batch_size, device=device)
            for name in sorted(needed)
        }

    gallery_feats = features(gallery) if gallery is not None else None
    return compatibility_matrix_from_features(
        features(data),
        data.labels,
        gallery_feats,
        gallery.labels if gallery is not None else None,
        pairs=pairs,
        topk=topk,
    )


@dataclass(frozen=True)
class CriterionCheck:
    """BCT's empirical compatibility criterion for one metric.

    ``cross_passed``: M(new→old) > M(old,old) + cross_margin (the new model may serve queries
    against the old gallery). ``new_new_passed``: M(new,new) ≥ reference − new_new_tolerance, where
    the reference is an independently trained new model's M(new*,new*) when one is given, else
    M(old,old) (the upgrade must not make the fully backfilled system worse). ``gain`` is the
    update gain against the same reference.
    """

    metric: str
    old_old: float
    new_old: float
    new_new: float
    reference_new_new: float
    reference: str
    cross_passed: bool
    new_new_passed: bool
    gain: float

    @property
    def passed(self) -> bool:
        return self.cross_passed and self.new_new_passed

    def as_dict(self) -> dict[str, float | bool | str | None]:
        data = asdict(self)
        data["passed"] = self.passed
        data["gain"] = None if math.isnan(self.gain) else self.gain
        return data


def compatibility_criterion(
    matrix: Mapping[str, RetrievalMetrics],
    metrics: Sequence[str] = CRITERION_METRICS,
    reference_new_new: Mapping[str, float] | None = None,
    new_new_tolerance: float = 0.01,
    cross_margin: float = 0.0,
) -> dict[str, CriterionCheck]:
    """Pass/fail per metric and the update gain, from a matrix holding old/old, new/old, new/new."""
    missing = [p for p in ("old/old", "new/old", "new/new") if p not in matrix]
    if missing:
        raise ValueError(f"the criterion needs pairs {missing} in the matrix")
    checks: dict[str, CriterionCheck] = {}
    for metric in metrics:
        values = {pair: matrix[pair].as_dict() for pair in ("old/old", "new/old", "new/new")}
        if any(metric not in v for v in values.values()):
            raise ValueError(
                f"metric {metric!r} is not in the matrix; available: {sorted(values['old/old'])}"
            )
        old_old, new_old, new_new = (values[p][metric] for p in ("old/old", "new/old", "new/new"))
        if reference_new_new is not None:
            if metric not in reference_new_new:
                raise ValueError(f"reference_new_new lacks metric {metric!r}")
            reference, kind = float(reference_new_new[metric]), "independent new*/new*"
        else:
            reference, kind = old_old, "old/old"
        checks[metric] = CriterionCheck(
            metric=metric,
            old_old=old_old,
            new_old=new_old,
            new_new=new_new,
            reference_new_new=reference,
            reference=kind,
            cross_passed=new_old > old_old + cross_margin,
            new_new_passed=new_new >= reference - new_new_tolerance,
            gain=update_gain(old_old, new_old, reference if reference_new_new is not None else new_new),
        )
    return checks
