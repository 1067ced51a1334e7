"""Quality as served: queries against a validation gallery composed like the live one.

The live gallery may hold features of several model versions (after skips and partial
backfills), all encoded with the live codebooks. Judging a candidate against the champion's
features alone measures a system nobody serves. Here the validation items form a gallery in
which each item is embedded by a model version drawn with the live shares (seeded, stratified by
class, so every class keeps the live mix) and encoded with the live codebooks; queries come from
the model under test, as floats (DESIGN.md §11):

- *candidate as served*: candidate queries against that composed gallery;
- *live* (today's quality): the champion's queries against the same composed gallery;
- *champion only*: the champion's queries against a gallery it embedded wholly — what a
  validation that ignored the mix would have used; recorded so the difference is visible.

Scores of a composed gallery go through :func:`served_metrics` only, which takes an optional
calibration object (``adjust(scores, gallery_models) -> scores``) for galleries whose models'
similarity scales differ. With a ``calibration_config`` the evaluation fits one calibration per
query model (candidate, champion) on the composed items, as the serving path would rank them
(components/compat/calibration.py); a single-model gallery needs none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from hotswap.components.compat.calibration_fitting import fit_calibration
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.core.configs import CalibrationConfig
from hotswap.components.lifecycle.live import LiveComposition, TargetWeight
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the record (ServedQuality) is read by status and report, which import no torch
    from hotswap.components.data.images import ImageSet
    from hotswap.components.models.backbones import EmbeddingModel
    from hotswap.components.quant.dpq import DPQCodebooks


class ServedError(ValueError):
    """A composed gallery cannot be built or scored from the given inputs."""


class ScoreCalibration(Protocol):
    """Maps raw scores of a mixed gallery onto one scale (one column per gallery item)."""

    def adjust(self, scores: np.ndarray, gallery_models: np.ndarray) -> np.ndarray: ...


def assign_gallery_models(labels: np.ndarray, shares: Mapping[str, float], seed: int = 0) -> np.ndarray:
    """For each item, the model version that embeds it, drawn with ``shares``, stratified by class.

    Within a class the items are shuffled (seeded) and cut at the cumulative shares, shifted by
    one random offset per class: every class holds each model within one item of its share,
    and small shares still reach some classes.
    """
    labels = np.asarray(labels)
    versions = [v for v, s in sorted(shares.items()) if s > 0]
    weights = np.array([shares[v] for v in versions], dtype=np.float64)
    if not versions or not np.isfinite(weights).all():
        raise ServedError(f"live shares {dict(shares)} hold no positive share")
    bounds = np.cumsum(weights / weights.sum())
    bounds[-1] = 1.0
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        positions = (np.arange(len(rows)) + rng.uniform()) / len(rows)
        out[rows] = np.asarray(versions, dtype=object)[np.searchsorted(bounds, positions, side="right")]
    return out.astype(str)


def compose_gallery(features: Mapping[str, np.ndarray], assignment: np.ndarray) -> np.ndarray:
    """Row i taken from the features of the model version ``assignment[i]`` (same items, row for row)."""
    missing = sorted(set(assignment.tolist()) - set(features))
    if missing:
        raise ServedError(f"no features of model version(s) {missing} for the composed gallery")
    dims = {f.shape for f in features.values()}
    if len(dims) != 1:
        raise ServedError(f"model features of different shapes {sorted(dims)} cannot form one gallery")
    out = np.empty(next(iter(dims)), dtype=np.float32)
    for version, feats in features.items():
        rows = assignment == version
        out[rows] = feats[rows]
    return out


def served_view(features: np.ndarray, codebooks: DPQCodebooks | None) -> np.ndarray:
    """What the index holds for ``features``: decoded DPQ codes, or the floats without codebooks."""
    if codebooks is None:
        return np.asarray(features, dtype=np.float32)
    return codebooks.decode(codebooks.encode(features))


def served_metrics(
    query_feats: np.ndarray,
    query_labels: np.ndarray,
    gallery_feats: np.ndarray,
    gallery_labels: np.ndarray,
    gallery_models: np.ndarray,
    calibration: ScoreCalibration | None = None,
    *,
    exclude_self: bool = False,
) -> dict[str, float]:
    """mAP and CMC of queries against a (possibly mixed) gallery, ranked by calibrated scores.

    ``gallery_models[j]`` names the model version that embedded gallery item j; a calibration
    (None: raw inner products) adjusts every score block with it. ``exclude_self`` is the
    leave-one-out protocol when the gallery holds the query items row for row.
    """
    gallery_models = np.asarray(gallery_models)
    if len(gallery_models) != len(gallery_feats):
        raise ServedError(f"{len(gallery_feats)} gallery items but {len(gallery_models)} provenance entries")
    adjust = None if calibration is None else (lambda scores: calibration.adjust(scores, gallery_models))
    return retrieval_metrics(
        query_feats,
        query_labels,
        gallery_feats,
        gallery_labels,
        exclude_self=exclude_self,
        score_adjust=adjust,
    ).as_dict()


class ServedQuality(BaseModel):
    """The as-served evaluation a refresh's gate reads (stored inside the compatibility report)."""

    model_config = ConfigDict(extra="forbid")

    candidate_version: str
    champion_version: str
    gallery_version: str = Field(description="the live gallery version whose composition was reproduced")
    codebook_version: str | None = Field(
        description="the live codebooks the composed gallery is encoded with"
    )
    split: str = Field(description="the data split the composed gallery and the queries come from")
    seed: int
    live_shares: dict[str, float] = Field(description="π_v of the live gallery")
    composed_counts: dict[str, int] = Field(description="items per model version in the composed gallery")
    targets: list[TargetWeight] = Field(default_factory=list, description="the candidate's training targets")
    candidate: dict[str, float] = Field(description="candidate queries vs the composed gallery")
    live: dict[str, float] = Field(description="champion queries vs the composed gallery: today's quality")
    champion_only: dict[str, float] = Field(description="champion queries vs a champion-only gallery")
    calibrated: bool = False


def served_evaluation(
    *,
    candidate: EmbeddingModel,
    champion: EmbeddingModel,
    gallery_models: Mapping[str, EmbeddingModel],
    data: ImageSet,
    composition: LiveComposition,
    codebooks: DPQCodebooks | None,
    candidate_version: str,
    champion_version: str,
    seed: int = 0,
    targets: Sequence[TargetWeight] = (),
    calibration: ScoreCalibration | None = None,
    calibration_config: CalibrationConfig | None = None,
    batch_size: int = 512,
    device: str = "cpu",
    features: Mapping[str, np.ndarray] | None = None,
) -> ServedQuality:
    """Candidate and champion served against ``data`` composed in the live shares (see module doc).

    ``gallery_models`` holds a loaded model for every version of the composition. ``features``
    may hold already extracted features of ``data`` per model version (e.g. the champion's and
    the candidate's from the pairwise matrix), which are then not extracted again.
    ``calibration_config`` (when ``calibration`` is None and the composed gallery is mixed) fits
    a calibration per query model from every segment model's features of all items.
    """
    if len(data) < 2:
        raise ServedError(f"{data.name}: the as-served evaluation needs at least two items")
    assignment = assign_gallery_models(data.labels, composition.shares, seed=seed)

    from hotswap.components.models.training import extract_features

    def embed(model: EmbeddingModel, rows: np.ndarray | None = None) -> np.ndarray:
        images = data if rows is None else data.subset(rows)
        return extract_features(model, images, batch_size=batch_size, device=device)

    given = dict(features or {})
    champion_feats = given.get(str(champion_version))
    champion_feats = embed(champion) if champion_feats is None else champion_feats
    candidate_feats = given.get(str(candidate_version))
    candidate_feats = embed(candidate) if candidate_feats is None else candidate_feats
    if champion_feats.shape[0] != len(data) or candidate_feats.shape[0] != len(data):
        raise ServedError(f"precomputed features must hold the {len(data)} items of {data.name}")
    per_model: dict[str, np.ndarray] = {}
    for version in sorted(set(assignment.tolist())):
        if version == str(champion_version):
            per_model[version] = champion_feats
            continue
        if version == str(candidate_version):
            per_model[version] = candidate_feats
            continue
        if version not in gallery_models:
            raise ServedError(
                f"the live gallery holds items of v{version}, but no model v{version} was given"
            )
        rows = assignment == version
        feats = np.zeros_like(champion_feats)
        feats[rows] = embed(gallery_models[version], rows)
        per_model[version] = feats
    gallery = served_view(compose_gallery(per_model, assignment), codebooks)
    labels = data.labels

    segment_models = sorted(per_model)
    fitted: dict[str, ScoreCalibration | None] = {"candidate": calibration, "live": calibration}
    if calibration is None and calibration_config is not None and len(segment_models) > 1:
        whole = {
            v: served_view(
                candidate_feats
                if v == str(candidate_version)
                else champion_feats
                if v == str(champion_version)
                else embed(gallery_models[v]),
                codebooks,
            )
            for v in segment_models
        }
        fitted = {
            role: fit_calibration(version, queries, labels, whole, config=calibration_config)
            for role, version, queries in (
                ("candidate", str(candidate_version), candidate_feats),
                ("live", str(champion_version), champion_feats),
            )
        }

    def score(
        queries: np.ndarray, items: np.ndarray, models: np.ndarray, role: str | None = None
    ) -> dict[str, float]:
        cal = fitted[role] if role is not None else None
        return served_metrics(queries, labels, items, labels, models, cal, exclude_self=True)

    only = np.full(len(data), str(champion_version))
    versions, counts = np.unique(assignment, return_counts=True)
    return ServedQuality(
        candidate_version=str(candidate_version),
        champion_version=str(champion_version),
        gallery_version=composition.gallery_version,
        codebook_version=composition.codebook_version,
        split=data.name.rsplit("/", 1)[-1],
        seed=seed,
        live_shares=composition.shares,
        composed_counts={str(v): int(c) for v, c in zip(versions, counts, strict=True)},
        targets=list(targets),
        candidate=score(candidate_feats, gallery, assignment, "candidate"),
        live=score(champion_feats, gallery, assignment, "live"),
        champion_only=score(champion_feats, served_view(champion_feats, codebooks), only),
        calibrated=fitted["candidate"] is not None,
    )
