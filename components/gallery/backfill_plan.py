"""The backfill plan: which rows are re-extracted and how the new version is cut into shard jobs.

Planning reads stored data only (the source manifest, its provenance and, for the 'uncertainty'
ordering, its stored features), so choosing rows costs no forward pass, and the plan is a pure
function of the stored gallery and the arguments: a resumed run recomputes the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from hotswap.components.compat.transform import FeatureTransform
from hotswap.components.compat.transform import apply as apply_transform
from hotswap.components.core.configs import DEFAULT_SCORE, Ordering, UncertaintyScore
from hotswap.components.decision.ordering import backfill_order, backfilled_count, order_by_scores
from hotswap.components.gallery.provenance import feature_space, mapped_into, read_provenance
from hotswap.components.gallery.records import GalleryManifest, npy_bytes
from hotswap.components.gallery.shard_jobs import BackfillError, ShardJob
from hotswap.components.gallery.versions import GalleryStore

Mode = Literal["skip", "requantize", "partial", "full", "transform"]
MODES: tuple[str, ...] = ("skip", "requantize", "partial", "full", "transform")


@dataclass(frozen=True)
class BackfillPlan:
    """Which rows of the source get new features, how they are cut into shards, and provenance."""

    jobs: tuple[ShardJob, ...]
    models: tuple[str, ...]
    provenance: np.ndarray  # uint16 [N] index into models
    extracted: int
    already_new: int
    mapped: dict[str, int] = field(default_factory=dict)  # transform: rows mapped per source model

    @property
    def provenance_bytes(self) -> bytes:
        return npy_bytes(self.provenance.astype(np.uint16))


def check_fraction(mode: str, fraction: float | None) -> float:
    if mode == "full":
        return 1.0
    if mode == "requantize":
        return 0.0
    if mode == "transform" and fraction is None:  # transform(f): re-extract f, map the rest
        return 0.0
    if fraction is None:
        raise BackfillError("mode 'partial' needs a fraction in [0, 1]")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise BackfillError(f"fraction must lie in [0, 1], got {fraction}")
    return fraction


def _source_bounds(manifest: GalleryManifest) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([s.count for s in manifest.shards])]).astype(np.int64)


def _slices(bounds: np.ndarray, start: int, stop: int) -> tuple[tuple[int, int, int], ...]:
    """The (source shard, start, stop) pieces that make up global rows [start, stop)."""
    out = []
    first = int(np.searchsorted(bounds, start, side="right") - 1)
    for shard in range(first, len(bounds) - 1):
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        if lo >= stop:
            break
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            out.append((shard, a - lo, b - lo))
    return tuple(out)


def plan_backfill(
    galleries: GalleryStore,
    gallery: str,
    source: GalleryManifest,
    mode: Mode,
    target_model_version: str,
    *,
    fraction: float | None = None,
    ordering: Ordering = "uncertainty",
    prototypes: np.ndarray | None = None,
    score: UncertaintyScore = DEFAULT_SCORE,
    scale: float = 16.0,
    seed: int = 0,
    shard_size: int | None = None,
    transforms: Mapping[str, FeatureTransform] | None = None,
) -> BackfillPlan:
    """Decide, from stored data only, which rows are re-extracted and how shards are cut.

    ``partial``: the first ⌊fraction·n⌋ rows of the ordering (over the whole gallery) are chosen;
    rows whose features already come from ``target_model_version`` are not re-extracted again.
    ``shard_size=None`` keeps the source's shard layout. ``transform``: every row not
    re-extracted (the first ⌊fraction·n⌋, default none) and not already the target's is mapped by
    its provenance model's entry in ``transforms``; the 'transform_uncertainty' ordering ranks rows
    by those maps' predicted log-variance (most uncertain first).
    """
    fraction = check_fraction(mode, fraction)
    if mode in ("partial", "transform") and fraction > 0 and ordering == "uncertainty" and prototypes is None:
        raise BackfillError(
            "ordering 'uncertainty' needs the old model's class prototypes (prototypes=old_model.head.weight)"
        )
    n = source.num_items
    models, codes = read_provenance(galleries, source)
    if target_model_version not in models:
        models = [*models, target_model_version]
    target = models.index(target_model_version)
    already_new = codes == target
    chosen = np.zeros(n, dtype=bool)
    if mode == "full":
        chosen[:] = True
    elif mode in ("partial", "transform") and fraction > 0:
        count = backfilled_count(n, fraction)
        if ordering == "transform_uncertainty":
            order = order_by_scores(
                _transform_scores(galleries, gallery, source, models, codes, already_new, transforms or {})
            )
        elif ordering == "uncertainty":
            features = galleries.load_arrays(gallery, source.version).features
            if features is None:
                raise BackfillError(
                    f"gallery {gallery!r} version {source.version!r} stores no features; "
                    "the 'uncertainty' ordering needs them (use 'random')"
                )
            order = backfill_order(
                "uncertainty", features, prototypes=prototypes, score=score, scale=scale, seed=seed
            )
        else:
            order = backfill_order(ordering, np.empty((n, 1), dtype=np.float32), seed=seed)
        chosen[order[:count]] = True
    extract = chosen & ~already_new if mode != "full" else chosen
    provenance = codes.astype(np.uint16).copy()
    provenance[extract] = target
    mapped_from = np.full(n, "", dtype=object)
    if mode == "transform":
        mapped = ~extract & ~already_new
        # a row is mapped from the space it lives in, and keeps its lineage (provenance.py)
        for code in np.unique(codes[mapped]):
            rows = mapped & (codes == code)
            label = models[int(code)]
            mapped_from[rows] = feature_space(label)
            models = [*models, mapped_into(label, target_model_version)]
            provenance[rows] = len(models) - 1
        missing = sorted(set(mapped_from[mapped].tolist()) - set(transforms or {}))
        if missing:
            raise BackfillError(
                f"mode 'transform' needs a transformation for model version(s) {missing}; the maps "
                "into a model are trained by the refresh that trained it"
            )
    bounds = _source_bounds(source)
    if shard_size is None:
        cuts = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]
    else:
        if shard_size < 1:
            raise BackfillError(f"shard_size must be at least 1, got {shard_size}")
        cuts = [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)] or [(0, 0)]
    jobs = tuple(
        ShardJob(
            shard=i,
            extract=extract[a:b].copy(),
            source_slices=_slices(bounds, a, b),
            mapped_from=mapped_from[a:b].astype(str) if mode == "transform" else None,
        )
        for i, (a, b) in enumerate(cuts)
    )
    counts = {str(m): int((mapped_from == m).sum()) for m in sorted(set(mapped_from.tolist()) - {""})}
    return BackfillPlan(
        jobs, tuple(models), provenance, int(extract.sum()), int((chosen & already_new).sum()), counts
    )


def _transform_scores(
    galleries: GalleryStore,
    gallery: str,
    source: GalleryManifest,
    models: list[str],
    codes: np.ndarray,
    already_new: np.ndarray,
    transforms: Mapping[str, FeatureTransform],
) -> np.ndarray:
    """Each row's predicted log-variance under its provenance model's map (−inf: already new)."""
    features = galleries.load_arrays(gallery, source.version).features
    if features is None:
        raise BackfillError(f"gallery {gallery!r} version {source.version!r} stores no features to score")
    scores = np.full(len(codes), -np.inf)
    for index in np.unique(codes[~already_new]):
        model = feature_space(models[int(index)])
        transform = transforms.get(model)
        if transform is None or not transform.has_uncertainty:
            raise BackfillError(
                f"ordering 'transform_uncertainty' needs a transformation of v{model} "
                "with its uncertainty head"
            )
        rows = (codes == index) & ~already_new
        scores[rows] = apply_transform(transform, features[rows])[1]
    return scores
