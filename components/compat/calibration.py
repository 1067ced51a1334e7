"""Score calibration for mixed galleries: put every provenance model's scores on one scale.

After a skip or a partial backfill the gallery holds features of several model versions. A query
of model q scores an item embedded by model v with the raw inner product ⟨φ_q(x), φ_v(y)⟩, and
those numbers live on different scales per v: a query's own class may sit at 0.9 against q's own
features but at 0.6 against an older model's, while other classes sit at 0.2 against q's features
and 0.0 against the older ones. Ranked raw, re-extracted items of *wrong* classes then outrank
older items of the *right* class, and a partly backfilled gallery can be worse than not
backfilling at all (the backfill curve "dips").

A :class:`ScoreCalibration` is fitted for one query model against each gallery model v: an affine
map ``s ↦ scale_v · s + offset_v`` (scale > 0, so each segment's own ranking is untouched) from
validation statistics of q-query × v-gallery similarities of the same items (matched = same
label, non-matched = different labels, an item's own pair left out). Maps are expressed relative
to a *reference* segment (the query model's own, when the gallery holds it), which keeps its raw
scores: a calibrated score reads as "the score the reference features would give for the same
evidence of a match". A single-model gallery therefore gets the identity.

Rules (``CalibrationRule``), each a principled way to make scores of different segments mean the
same thing; bench/calibration.py compares them on validation data (docs/backfill.md):

- ``impostor`` — standardise by the non-matched ("impostor") distribution, Z-norm in biometrics:
  ``(s − μ_non) / σ_non``. A given calibrated score then has the same false-match rate in every
  segment, whatever the matched distribution looks like.
- ``two_point`` — map the non-matched mean to 0 and the matched mean to 1:
  ``(s − μ_non) / (μ_match − μ_non)``.
- ``logistic`` — fit P(match | s) = σ(a·s + b) per segment (class-balanced, a small ridge on a in
  standardised units, Newton's method) and rank by the log-odds ``a·s + b``: the probability
  ranking principle applied to the pair classifier. A segment whose scores carry no evidence
  (an incompatible model: matched scores not above non-matched ones) gets the smallest slope and
  lands at the base rate instead of failing.
- ``identity`` — no calibration (the contrast).

Calibrated scores are still inner products, of augmented vectors: ``[q, 1] · [scale_v·g, offset_v]``
(:meth:`ScoreCalibration.augment`), so any inner-product code path (the retrieval metrics, a flat
faiss index over float features) can rank a mixed gallery calibrated without being changed.

Fitting a calibration (the pair statistics and the rules) is components/compat/calibration_fitting.py;
this module is the fitted object: applying it to scores or vectors, and its JSON form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from hotswap.components.core.configs import CalibrationRule
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """A calibration cannot be fitted, parsed or applied; the message names the input."""


class AffineMap(BaseModel):
    """``s ↦ scale · s + offset``; ``scale`` is positive so a segment's own ranking never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(gt=0)
    offset: float

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"must be finite, got {value}")
        return value


IDENTITY = AffineMap(scale=1.0, offset=0.0)


class SegmentStats(BaseModel):
    """Validation statistics of query-model × segment-model similarities (kept for audit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    matched_mean: float
    matched_std: float
    nonmatched_mean: float
    nonmatched_std: float
    matched_pairs: int = Field(ge=0)
    nonmatched_pairs: int = Field(ge=0)


class ScoreCalibration(BaseModel):
    """Affine maps of one query model's scores against each gallery model's segment.

    ``maps[v]`` applies to scores of items whose features model v produced. ``adjust`` is the one
    entry point every score comparison goes through; ``augment`` does the same for code that only
    computes inner products.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    query_model: str = Field(min_length=1)
    reference_model: str = Field(min_length=1)
    rule: CalibrationRule
    maps: dict[str, AffineMap]
    stats: dict[str, SegmentStats] = Field(default_factory=dict)
    fitted_on: dict[str, JsonValue] = Field(default_factory=dict, description="data, split, view")

    @field_validator("maps")
    @classmethod
    def _some_maps(cls, value: dict[str, AffineMap]) -> dict[str, AffineMap]:
        if not value:
            raise ValueError("a calibration needs a map for at least one gallery model")
        return value

    # construction -------------------------------------------------------

    @classmethod
    def identity(cls, query_model: str, models: Sequence[str]) -> ScoreCalibration:
        """No change for any of ``models`` (a single-model gallery, or calibration switched off)."""
        models = [str(m) for m in models]
        if not models:
            raise CalibrationError("identity calibration needs at least one gallery model")
        reference = str(query_model) if str(query_model) in models else models[0]
        return cls(
            query_model=str(query_model),
            reference_model=reference,
            rule="identity",
            maps={m: IDENTITY for m in models},
        )

    # reading --------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.maps)

    @property
    def is_identity(self) -> bool:
        return all(m == IDENTITY for m in self.maps.values())

    def covers(self, models: Sequence[str] | np.ndarray) -> bool:
        """Whether every model in ``models`` has a map here."""
        return set(np.unique(np.asarray(models, dtype=str)).tolist()) <= set(self.maps)

    def map_for(self, model: str) -> AffineMap:
        model = str(model)
        try:
            return self.maps[model]
        except KeyError:
            raise CalibrationError(
                f"calibration for queries of model {self.query_model!r} has no map for gallery model "
                f"{model!r} (it covers {sorted(self.maps)}); fit one for this gallery"
            ) from None

    def _coefficients(self, gallery_models: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        models = np.asarray(gallery_models)
        if models.dtype.kind not in "UO":
            models = models.astype(str)
        unique, inverse = np.unique(models.astype(str), return_inverse=True)
        maps = [self.map_for(m) for m in unique]
        scale = np.array([m.scale for m in maps], dtype=np.float64)[inverse].reshape(models.shape)
        offset = np.array([m.offset for m in maps], dtype=np.float64)[inverse].reshape(models.shape)
        return scale, offset

    # applying -------------------------------------------------------------

    def adjust(self, scores: np.ndarray, gallery_models: np.ndarray) -> np.ndarray:
        """Calibrated scores: ``scale_v · s + offset_v`` for each column's provenance model v.

        ``scores`` [nq, ng] (all items) or [nq, k] (a top-k result); ``gallery_models`` the model
        version of each column, shape [ng] (shared by all rows) or the same shape as ``scores``
        (a top-k result, where each row has its own columns). Non-finite scores (padding) stay as
        they are. Returns float32 for float32 input, else float64.
        """
        s = np.asarray(scores)
        if s.ndim != 2 or not np.issubdtype(s.dtype, np.floating):
            raise CalibrationError(f"scores must be a 2-D float array [nq, ng], got {s.dtype} {s.shape}")
        models = np.asarray(gallery_models)
        if models.shape not in ((s.shape[1],), s.shape):
            raise CalibrationError(
                f"gallery_models must have shape ({s.shape[1]},) or {s.shape} to match scores "
                f"{s.shape}, got {models.shape}"
            )
        if models.size == 0:
            return s.copy()
        scale, offset = self._coefficients(models)
        out = scale * s.astype(np.float64) + offset
        out = np.where(np.isfinite(s), out, s)
        return out.astype(np.float32) if s.dtype == np.float32 else out

    def augment(
        self, queries: np.ndarray, gallery: np.ndarray, gallery_models: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors whose inner products are the calibrated scores (float32, one extra dimension).

        ``[q, 1] · [scale_v · g, offset_v] = scale_v · ⟨q, g⟩ + offset_v``.
        """
        q = np.asarray(queries, dtype=np.float32)
        g = np.asarray(gallery, dtype=np.float32)
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise CalibrationError(f"queries {q.shape} and gallery {g.shape} must be [n, d] with one d")
        models = np.asarray(gallery_models)
        if models.shape != (len(g),):
            raise CalibrationError(f"gallery_models must have shape ({len(g)},), got {models.shape}")
        scale, offset = self._coefficients(models)
        q_aug = np.hstack([q, np.ones((len(q), 1), dtype=np.float32)])
        g_aug = np.hstack([g * scale[:, None].astype(np.float32), offset[:, None].astype(np.float32)])
        return q_aug, g_aug

    # JSON -----------------------------------------------------------------

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "calibration") -> ScoreCalibration:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ()))
            raise CalibrationError(
                f"{source} is not a valid score calibration: {loc + ': ' if loc else ''}{err['msg']}"
            ) from None
