"""The skip-or-backfill decision: estimate every option's quality and cost, pick the cheapest good one.

DESIGN.md §7. Options, cheapest first:

- ``skip``: new-model queries search the gallery as it is (old features, old DPQ codes);
- ``requantize``: the stored old features re-encoded with the new codebooks (no forward pass);
- ``partial(f)``: the first f of the gallery in the configured ordering re-extracted with the new
  model, everything re-encoded with the new codebooks (a mixed gallery);
- ``full``: every item re-extracted and re-encoded.

Quality is estimated on *validation* data (never test), leave-one-out over the validation items
with new-model queries, searching what would be served: DPQ codes decoded (asymmetric search; the
query is not quantized). So skip = new→old cross-test through the old codebooks, requantize = the
requantized cross-test, partial(f) = the backfill curve at f, full = new/new through the new
codebooks. Float (unquantized) numbers are recorded beside them. An option's *relative quality* is
its metric divided by full's, the quality a full backfill would reach, so full always meets the
target and is the fallback. A partial option's mixed gallery is ranked by calibrated scores
(``DecisionConfig.calibration``, fitted on the same validation items), as search serves it.

Cost = items to extract × measured seconds per extracted item + items to encode × measured seconds
per encoded item (+ an optional per-item overhead for I/O), measured on a sample of validation
images with the new model and codebooks on this machine (``measure_costs``).

Policy: skip needs a blessing (the compatibility report says new queries may search old
features). Without a blessing no option that leaves old features in the gallery is safe, so the
decision is ``full`` or ``reject`` (configurable). With one, the cheapest option meeting
``quality_target`` wins (ties go to the simpler option). The record keeps the whole table with each
row's reason, so a person can see with numbers why re-extraction was or was not needed.

Against the live system (DESIGN.md §11; when the live gallery's composition is given, as every
refresh does): the "old" gallery is the validation split composed like the live gallery (each
item embedded by a model version drawn with the live shares, components/compat/served.py), and the
*live baseline* is the champion's queries against it, as served. An option *beats live* when its
metric exceeds that baseline by more than ``min_gain_over_live``. No option beats live ⇒
``reject`` (no backfill, no promotion). Not blessed but better — its new/new passed the gate's
``new_model`` check (not below the champion's) and a full backfill beats live — ⇒ ``full``
(better but incompatible); a model whose new/new falls below the champion's is rejected.
``policy='full'|'skip'`` forces an option (benchmark baselines); the
numbers are recorded all the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from hotswap.components.compat.calibration_fitting import fit_backfill_calibration
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.compat.served import assign_gallery_models, compose_gallery, served_metrics
from hotswap.components.core.configs import DecisionConfig
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import model_inputs
from hotswap.components.decision.ordering import (
    backfill_curve,
    backfill_order,
    backfilled_count,
)
from hotswap.components.lifecycle.live import LiveComposition
from hotswap.components.models.backbones import EmbeddingModel, require_same_dim
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Choice = Literal["skip", "requantize", "partial", "full", "reject"]
OptionMode = Literal["skip", "requantize", "partial", "full"]
MODE_ORDER = {"skip": 0, "requantize": 1, "partial": 2, "full": 3}
SCHEMA_VERSION = 1


class DecisionError(ValueError):
    """Inputs the decision cannot work with, or a stored record that does not parse."""


class CostModel(BaseModel):
    """Measured seconds per item on the machine that will run the backfill."""

    model_config = ConfigDict(extra="forbid")

    extract_seconds_per_item: float = Field(ge=0)
    encode_seconds_per_item: float = Field(ge=0)
    overhead_seconds_per_item: float = Field(0.0, ge=0)
    sample_size: int = Field(0, ge=0)
    device: str = "cpu"

    def seconds(self, extract: int, encode: int, touched: int) -> float:
        return (
            extract * self.extract_seconds_per_item
            + encode * self.encode_seconds_per_item
            + touched * self.overhead_seconds_per_item
        )


class BackfillOption(BaseModel):
    """One row of the decision table."""

    model_config = ConfigDict(extra="forbid")

    mode: OptionMode
    fraction: float = Field(ge=0, le=1, description="share of the gallery re-extracted")
    quality: dict[str, float] = Field(description="estimated metrics as served (validation data)")
    float_quality: dict[str, float] = Field(description="the same with float features (no quantization)")
    relative_quality: float = Field(description="quality[metric] / full's quality[metric]")
    items_to_extract: int = Field(ge=0)
    items_to_encode: int = Field(ge=0)
    estimated_seconds: float = Field(ge=0)
    meets_target: bool
    eligible: bool = Field(description="allowed at all (skip and mixed galleries need a blessing)")
    reason: str
    beats_live: bool | None = Field(None, description="beats the live system as served (None: not compared)")


class DecisionRecord(BaseModel):
    """The decision with the evidence behind it; stored beside the model version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    mode: Choice = Field(description="the chosen option: skip, requantize, partial, full, or reject")
    fraction: float | None = Field(description="share re-extracted by the chosen option (None for reject)")
    blessed: bool
    config: DecisionConfig
    reference_quality: float = Field(description="full backfill's metric: the 100 % of relative quality")
    gallery_items: int = Field(ge=0)
    options: list[BackfillOption]
    reasons: list[str]
    cost: CostModel
    curve: dict[str, list[float]] = Field(default_factory=dict, description="backfill curve as served")
    live_quality: dict[str, float] | None = Field(
        None, description="the live system as served: champion queries vs the composed gallery"
    )
    float_live_quality: dict[str, float] | None = Field(None, description="the same with float features")
    live_shares: dict[str, float] | None = Field(None, description="π_v of the live gallery decided on")
    better_than_champion: bool | None = Field(
        None, description="the gate's new_model checks passed (new/new not below the champion's)"
    )
    old_model_version: str | None = None
    new_model_version: str | None = None
    old_codebook_version: str | None = None
    new_codebook_version: str | None = None
    source_gallery_version: str | None = Field(None, description="the live gallery version decided on")
    gallery_version: str | None = Field(None, description="the version the decision was executed into")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def chosen_option(self) -> BackfillOption | None:
        for option in self.options:
            if option.mode == self.mode and option.fraction == self.fraction:
                return option
        return None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "decision record") -> DecisionRecord:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise DecisionError(
                f"{source} is not a valid decision record: {exc.errors()[0]['msg']}"
            ) from None

    def to_markdown(self) -> str:
        return decision_markdown(self)


# --------------------------------------------------------------------------- quality estimation


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
) -> QualityEstimate:
    """Every option's quality on validation items (leave-one-out, new-model queries).

    ``old_features``/``new_features`` are the same validation items embedded by each model;
    ``old_features`` may be a composed gallery (each row by its own model version, named in
    ``gallery_models``). ``prototypes`` the old model's class prototypes (needed for the
    'uncertainty' ordering). ``live_query_features`` (the champion's queries) add the live
    baseline. Without codebooks the served view is the float one.
    """
    old = np.asarray(old_features, dtype=np.float32)
    new = np.asarray(new_features, dtype=np.float32)
    if old.shape != new.shape or old.ndim != 2:
        raise DecisionError(f"old features {old.shape} and new features {new.shape} must be the same items")
    if len(labels) != len(old):
        raise DecisionError(f"{len(old)} validation items but {len(labels)} labels")
    fractions = config.fractions()
    order = backfill_order(
        config.ordering, old, prototypes=prototypes, score=config.uncertainty_score, seed=config.seed
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
    )


# --------------------------------------------------------------------------- cost measurement


def measure_costs(
    new_model: EmbeddingModel,
    new_codebooks: DPQCodebooks | None,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    repeats: int = 3,
    overhead_seconds_per_item: float = 0.0,
    encode_items: int = 8192,
    encode_chunk: int = 1024,
) -> CostModel:
    """Seconds per item of extraction and of DPQ encoding, timed on ``images`` (a sample).

    One warm-up pass first (allocations, lazy initialisation), then the fastest of ``repeats``
    runs: on a shared machine the fastest run is the one least disturbed by other load. Encoding
    is timed on the sample's features repeated to ``encode_items`` rows, in calls of
    ``encode_chunk`` rows (a shard's worth, as the backfill encodes): it is so cheap per item that
    a few hundred rows would measure mostly per-call overhead.
    """
    if len(images) == 0:
        raise DecisionError("measure_costs needs at least one image to time")
    extract_features(new_model, images[: min(len(images), 8)], batch_size=batch_size, device=device)
    best_extract, feats = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        feats = extract_features(new_model, images, batch_size=batch_size, device=device)
        best_extract = min(best_extract, time.perf_counter() - start)
    per_item_encode = 0.0
    if new_codebooks is not None:
        rows = np.resize(feats, (max(len(feats), encode_items), feats.shape[1]))
        new_codebooks.encode(rows[: min(len(rows), 256)])  # warm-up
        best_encode = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for begin in range(0, len(rows), max(1, encode_chunk)):
                new_codebooks.encode(rows[begin : begin + encode_chunk])
            best_encode = min(best_encode, time.perf_counter() - start)
        per_item_encode = best_encode / len(rows)
    return CostModel(
        extract_seconds_per_item=best_extract / len(images),
        encode_seconds_per_item=per_item_encode,
        overhead_seconds_per_item=overhead_seconds_per_item,
        sample_size=len(images),
        device=device,
    )


# --------------------------------------------------------------------------- the policy


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def build_options(
    quality: QualityEstimate, cost: CostModel, gallery_items: int, blessed: bool, config: DecisionConfig
) -> tuple[list[BackfillOption], float]:
    """The table of options with costs, relative quality and eligibility; returns it and the reference."""
    metric = config.metric
    if not config.quantized:  # judge on float features: the served columns become the float ones
        quality = quality.model_copy(
            update={
                "skip": quality.float_skip,
                "requantize": quality.float_skip,
                "full": quality.float_full,
                "partial": quality.float_partial,
                "live": quality.float_live,
            }
        )
    reference = quality.full[metric]
    if not reference > 0:
        raise DecisionError(f"full backfill's {metric} is {reference}; cannot express relative quality")
    n = gallery_items
    rows: list[tuple[OptionMode, float, dict[str, float], dict[str, float], int, int]] = [
        ("skip", 0.0, quality.skip, quality.float_skip, 0, 0),
        ("requantize", 0.0, quality.requantize, quality.float_skip, 0, n),
    ]
    rows += [
        ("partial", f, quality.partial[f], quality.float_partial[f], backfilled_count(n, f), n)
        for f in config.fractions()
    ]
    rows.append(("full", 1.0, quality.full, quality.float_full, n, n))
    options = []
    live = None if quality.live is None else quality.live[metric]
    for mode, fraction, served, floats, extract, encode in rows:
        relative = served[metric] / reference
        meets = relative >= config.quality_target - 1e-12
        eligible = blessed or mode == "full"
        verdict = "meets" if meets else "below"
        reason = f"{metric} {served[metric]:.4f} = {_pct(relative)} of full, {verdict} the target"
        beats = None if live is None else bool(served[metric] > live + config.min_gain_over_live)
        if beats is not None:
            reason += f"; {'beats' if beats else 'does not beat'} live {live:.4f}"
        if not eligible:
            reason = "not blessed: new-model queries may not search old features; " + reason
        options.append(
            BackfillOption(
                mode=mode,
                fraction=fraction,
                quality=served,
                float_quality=floats,
                relative_quality=relative,
                items_to_extract=extract,
                items_to_encode=encode,
                estimated_seconds=cost.seconds(extract, encode, 0 if mode == "skip" else n),
                meets_target=meets,
                eligible=eligible,
                reason=reason,
                beats_live=beats,
            )
        )
    return options, reference


def _forced(options: Sequence[BackfillOption], config: DecisionConfig) -> tuple[Choice, float, list[str]]:
    mode = config.policy
    option = next(o for o in options if o.mode == mode)
    return mode, option.fraction, [
        f"decision.policy={mode!r} forces this option ({config.metric} {option.quality[config.metric]:.4f} "
        f"as served); the automatic rules were not applied"
    ]  # fmt: skip


def _against_live(
    options: Sequence[BackfillOption], blessed: bool, config: DecisionConfig, live: float, better: bool | None
) -> tuple[Choice, float | None, list[str]]:
    """The rules when the live system's served quality is known (see the module doc)."""
    metric = config.metric
    beating = [o for o in options if o.beats_live]
    best = max(options, key=lambda o: o.quality[metric])
    if not beating:
        return "reject", None, [
            f"no option beats the live system as served ({metric} {live:.4f}): the best, {best.mode}"
            + (f" f = {best.fraction:.3f}" if best.mode == "partial" else "")
            + f", reaches {best.quality[metric]:.4f}; no backfill, no promotion"
        ]  # fmt: skip
    full = next(o for o in options if o.mode == "full")
    if not blessed:
        if better is False:
            return "reject", None, [
                "not blessed, and not better: its new/new falls below the champion's (the gate's new_model "
                "check failed), so even a full backfill would be a downgrade of the fully backfilled "
                "system; no backfill, no promotion"
            ]  # fmt: skip
        if full.beats_live and config.unblessed_action == "full":
            return "full", 1.0, [
                f"better but incompatible: not blessed, and a full backfill ({metric} "
                f"{full.quality[metric]:.4f}) beats the live system ({live:.4f}): re-extract every item"
            ]  # fmt: skip
        why = (
            "unblessed_action='reject'"
            if full.beats_live
            else f"a full backfill ({full.quality[metric]:.4f}) does not beat live ({live:.4f})"
        )
        return (
            "reject",
            None,
            [f"not blessed (compatibility checks failed) and {why}: the upgrade is refused"],
        )
    candidates = [o for o in beating if o.eligible and o.meets_target] or [o for o in beating if o.eligible]
    chosen = min(candidates, key=lambda o: (o.estimated_seconds, MODE_ORDER[o.mode], o.fraction))
    reasons = [
        f"blessed; live system as served: {metric} {live:.4f}; "
        f"target: {metric} ≥ {_pct(config.quality_target)} of a full backfill's and above live",
        f"cheapest option meeting it: {chosen.mode}"
        + (f" at f = {chosen.fraction:.3f}" if chosen.mode == "partial" else "")
        + f" ({chosen.quality[metric]:.4f}, {_pct(chosen.relative_quality)} of full, "
        f"est. {chosen.estimated_seconds:.1f} s)",
    ]
    return chosen.mode, chosen.fraction, reasons


def choose(
    options: Sequence[BackfillOption],
    blessed: bool,
    config: DecisionConfig,
    live: float | None = None,
    better: bool | None = None,
) -> tuple[Choice, float | None, list[str]]:
    """The policy: cheapest eligible option meeting the target; unblessed ⇒ full or reject.

    With the ``live`` system's served metric, only options beating it count, and an unblessed
    model gets a full backfill only when it is ``better`` (new/new not below the champion's).
    """
    if config.policy != "auto":
        return _forced(options, config)
    if live is not None:
        return _against_live(options, blessed, config, live, better)
    if not blessed:
        if config.unblessed_action == "reject":
            return "reject", None, [
                "the model is not blessed (compatibility checks failed) and unblessed_action='reject': "
                "no backfill, the upgrade is refused"
            ]  # fmt: skip
        return "full", 1.0, [
            "the model is not blessed (compatibility checks failed): its queries cannot search old "
            "features, so every item must be re-extracted (full backfill)"
        ]  # fmt: skip
    candidates = [o for o in options if o.eligible and o.meets_target]
    best = min(candidates, key=lambda o: (o.estimated_seconds, MODE_ORDER[o.mode], o.fraction))
    reasons = [
        f"blessed; target: {config.metric} ≥ {_pct(config.quality_target)} of a full backfill's",
        f"cheapest option meeting it: {best.mode}"
        + (f" at f = {best.fraction:.3f}" if best.mode == "partial" else "")
        + f" ({_pct(best.relative_quality)} of full, est. {best.estimated_seconds:.1f} s)",
    ]
    cheaper = [o for o in options if o.estimated_seconds < best.estimated_seconds and not o.meets_target]
    if cheaper:
        worst = max(cheaper, key=lambda o: o.relative_quality)
        reasons.append(
            f"cheaper options fall short: best of them is {worst.mode}"
            + (f" f = {worst.fraction:.3f}" if worst.mode == "partial" else "")
            + f" at {_pct(worst.relative_quality)}"
        )
    return best.mode, best.fraction, reasons


def decide_from_features(
    old_features: np.ndarray,
    new_features: np.ndarray,
    labels: np.ndarray,
    *,
    gallery_items: int,
    blessed: bool,
    cost: CostModel,
    old_codebooks: DPQCodebooks | None = None,
    new_codebooks: DPQCodebooks | None = None,
    prototypes: np.ndarray | None = None,
    config: DecisionConfig | None = None,
    versions: dict[str, str | None] | None = None,
    live_query_features: np.ndarray | None = None,
    gallery_models: np.ndarray | None = None,
    live_shares: dict[str, float] | None = None,
    better: bool | None = None,
) -> DecisionRecord:
    """The decision from precomputed validation features and a cost model (pure; no models).

    With ``live_query_features`` (the champion's features of the same items) options are judged
    against the live system; ``old_features`` may then be a composed gallery (``gallery_models``).
    """
    config = config or DecisionConfig()
    if gallery_items < 1:
        raise DecisionError(f"gallery_items must be at least 1, got {gallery_items}")
    quality = estimate_quality(
        old_features,
        new_features,
        labels,
        old_codebooks=old_codebooks,
        new_codebooks=new_codebooks,
        prototypes=prototypes,
        config=config,
        live_query_features=live_query_features,
        gallery_models=gallery_models,
    )
    options, reference = build_options(quality, cost, gallery_items, blessed, config)
    live = quality.live if config.quantized else quality.float_live
    chosen, fraction, reasons = choose(
        options, blessed, config, None if live is None else live[config.metric], better
    )
    return DecisionRecord(
        mode=chosen,
        fraction=fraction,
        blessed=blessed,
        config=config,
        reference_quality=reference,
        gallery_items=gallery_items,
        options=options,
        reasons=reasons,
        cost=cost,
        curve=quality.curve,
        live_quality=quality.live,
        float_live_quality=quality.float_live,
        live_shares=live_shares,
        better_than_champion=better,
        **(versions or {}),
    )


def decide(
    *,
    old_model: EmbeddingModel,
    new_model: EmbeddingModel,
    validation: ImageSet,
    gallery_items: int,
    blessed: bool,
    old_codebooks: DPQCodebooks | None = None,
    new_codebooks: DPQCodebooks | None = None,
    config: DecisionConfig | None = None,
    device: str = "cpu",
    old_model_version: str | None = None,
    new_model_version: str | None = None,
    old_codebook_version: str | None = None,
    new_codebook_version: str | None = None,
    source_gallery_version: str | None = None,
    composition: LiveComposition | None = None,
    gallery_models: dict[str, EmbeddingModel] | None = None,
    better: bool | None = None,
) -> DecisionRecord:
    """Embed the validation split with both models, measure costs, and decide (see module doc).

    ``blessed`` is the compatibility report's verdict (downstream steps never recompute it);
    ``gallery_items`` is the size of the live gallery the costs scale to. With the live gallery's
    ``composition`` (and a loaded model for each of its versions other than the champion in
    ``gallery_models``) the old gallery is composed like the live one and options are judged
    against the live system. ``better`` is whether the gate's new_model checks passed.
    """
    config = config or DecisionConfig()
    require_same_dim(old_model, new_model)
    if len(validation) < 2:
        raise DecisionError(f"{validation.name}: the decision needs validation items, got {len(validation)}")
    old_feats = extract_features(old_model, validation, batch_size=config.batch_size, device=device)
    new_feats = extract_features(new_model, validation, batch_size=config.batch_size, device=device)
    champion_feats = gallery_feats = assignment = None
    if composition is not None:
        champion_feats = old_feats
        assignment = assign_gallery_models(validation.labels, composition.shares, seed=config.seed)
        per_model = {str(old_model_version): old_feats}
        for version in sorted(set(assignment.tolist()) - {str(old_model_version)}):
            if version == str(new_model_version):
                per_model[version] = new_feats
                continue
            if not gallery_models or version not in gallery_models:
                raise DecisionError(
                    f"the live gallery holds items of v{version}, but no model v{version} was given"
                )
            per_model[version] = extract_features(
                gallery_models[version], validation, batch_size=config.batch_size, device=device
            )
        gallery_feats = compose_gallery(per_model, assignment)
    sample = np.random.default_rng(config.seed).permutation(len(validation))[: config.timing_sample]
    cost = measure_costs(
        new_model,
        new_codebooks,
        model_inputs(validation.subset(np.sort(sample)), new_model.preprocessing),
        batch_size=config.batch_size,
        device=device,
        repeats=config.timing_repeats,
        overhead_seconds_per_item=config.overhead_seconds_per_item,
    )
    return decide_from_features(
        old_feats if gallery_feats is None else gallery_feats,
        new_feats,
        validation.labels,
        gallery_items=gallery_items,
        blessed=blessed,
        cost=cost,
        old_codebooks=old_codebooks,
        new_codebooks=new_codebooks,
        prototypes=old_model.head.weight.detach().cpu().numpy(),
        config=config,
        versions={
            "old_model_version": old_model_version,
            "new_model_version": new_model_version,
            "old_codebook_version": old_codebook_version,
            "new_codebook_version": new_codebook_version,
            "source_gallery_version": source_gallery_version,
        },
        live_query_features=champion_feats,
        gallery_models=assignment,
        live_shares=None if composition is None else composition.shares,
        better=better,
    )


# --------------------------------------------------------------------------- markdown


def _shares(shares: dict[str, float] | None) -> str:
    if not shares:
        return ""
    return ": " + ", ".join(f"v{v} {100 * x:.1f} %" for v, x in shares.items())


def decision_markdown(record: DecisionRecord) -> str:
    """A human-readable report: the verdict, its reasons, and the table of options."""
    cfg = record.config
    chosen = record.mode + (f" (f = {record.fraction:.3f})" if record.mode == "partial" else "")
    lines = [
        f"# Backfill decision: **{chosen}**",
        "",
        f"- models: {record.old_model_version or '?'} → {record.new_model_version or '?'}; "
        f"codebooks: {record.old_codebook_version or '?'} → {record.new_codebook_version or '?'}",
        f"- blessed: {'yes' if record.blessed else 'no'}; target: {cfg.metric} ≥ {_pct(cfg.quality_target)} "
        f"of full backfill ({record.reference_quality:.4f}); quality judged "
        f"{'as served (DPQ codes)' if cfg.quantized else 'on float features'}, validation split",
        f"- gallery: {record.gallery_items} items; measured cost per item: extract "
        f"{1e3 * record.cost.extract_seconds_per_item:.3f} ms, "
        f"encode {1e3 * record.cost.encode_seconds_per_item:.4f} ms "
        f"({record.cost.device}, sample {record.cost.sample_size})",
        *(
            [
                f"- live system as served (champion queries vs the validation gallery composed like the "
                f"live one{_shares(record.live_shares)}): {cfg.metric} {record.live_quality[cfg.metric]:.4f}"
                + (f"; policy forced: {cfg.policy}" if cfg.policy != "auto" else "")
            ]
            if record.live_quality
            else []
        ),
        "",
        "Reasons:",
        *[f"- {reason}" for reason in record.reasons],
        "",
        f"| option | fraction | {cfg.metric} | float {cfg.metric} | top1 | relative | extract | encode "
        "| est. seconds | meets target | chosen | reason |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---|",
    ]
    for o in record.options:
        is_chosen = o.mode == record.mode and o.fraction == record.fraction
        lines.append(
            f"| {o.mode} | {o.fraction:.3f} | {o.quality[cfg.metric]:.4f} "
            f"| {o.float_quality[cfg.metric]:.4f} | {o.quality.get('top1', float('nan')):.4f} "
            f"| {_pct(o.relative_quality)} | {o.items_to_extract} "
            f"| {o.items_to_encode} | {o.estimated_seconds:.2f} | {'yes' if o.meets_target else 'no'} "
            f"| {'**←**' if is_chosen else ''} | {o.reason} |"
        )
    return "\n".join(lines) + "\n"


def decision_plot_png(record: DecisionRecord, dpi: int = 100) -> bytes:
    """Left: the backfill curve (quality as served vs share re-extracted), every option marked and
    the chosen one ringed, the target as a line. Right: each option's estimated seconds."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = record.config.metric
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    curve_ax, cost_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    fractions = record.curve.get("fractions", [])
    if fractions and metric in record.curve:
        curve_ax.plot(
            fractions,
            record.curve[metric],
            color="tab:blue",
            label=f"backfill curve ({record.config.ordering})",
        )
    target = record.config.quality_target * record.reference_quality
    curve_ax.axhline(
        target,
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label=f"target ({_pct(record.config.quality_target)} of full)",
    )
    styles = {  # skip and requantize sit at the same x (nothing re-extracted): skip drawn hollow, larger
        "skip": {"marker": "o", "s": 110, "facecolors": "none", "edgecolors": "tab:purple", "linewidths": 2},
        "requantize": {"marker": "s", "s": 40, "color": "tab:orange"},
        "partial": {"marker": ".", "s": 40, "color": "tab:green"},
        "full": {"marker": "D", "s": 40, "color": "tab:red"},
    }
    for mode, style in styles.items():
        opts = [o for o in record.options if o.mode == mode]
        if opts:
            curve_ax.scatter(
                [o.fraction for o in opts], [o.quality[metric] for o in opts], label=mode, zorder=3, **style
            )
    chosen = record.chosen_option
    if chosen is not None:
        curve_ax.scatter(
            [chosen.fraction],
            [chosen.quality[metric]],
            s=220,
            facecolors="none",
            edgecolors="black",
            linewidths=2,
            zorder=4,
            label=f"chosen: {record.mode}",
        )
    curve_ax.set_xlabel("share of the gallery re-extracted")
    curve_ax.set_ylabel(f"{metric} as served (validation)")
    curve_ax.set_title("quality of each option")
    curve_ax.legend(fontsize=7, loc="lower right")
    labels = [o.mode if o.mode != "partial" else f"{o.fraction:.0%}" for o in record.options]
    colours = [
        "black" if o is chosen else ("tab:green" if o.meets_target and o.eligible else "tab:gray")
        for o in record.options
    ]
    cost_ax.bar(range(len(labels)), [o.estimated_seconds for o in record.options], color=colours)
    cost_ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    cost_ax.set_ylabel(f"estimated seconds ({record.gallery_items:,} items)")
    cost_ax.set_title("cost (black: chosen, green: meets target)")
    fig.suptitle(f"backfill decision v{record.new_model_version or '?'}: {record.mode}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# --------------------------------------------------------------------------- storage beside a model version

DECISION_JSON = "decision/decision.json"
DECISION_MD = "decision/decision.md"
DECISION_PNG = "decision/decision.png"


def save_decision(registry: Any, version: str, record: DecisionRecord) -> None:
    """Store the record (JSON for machines, markdown and a plot for people) in the version's MLflow run."""
    run_id = registry.resolve(version).run_id
    registry.log_artifact_bytes(run_id, DECISION_JSON, record.to_json().encode())
    registry.log_artifact_bytes(run_id, DECISION_MD, record.to_markdown().encode())
    registry.log_artifact_bytes(run_id, DECISION_PNG, decision_plot_png(record))


def load_decision(registry: Any, version: str) -> DecisionRecord:
    """The decision recorded for ``version``, read back (never recomputed)."""
    data = registry.load_artifact_bytes(version, DECISION_JSON)
    return DecisionRecord.from_json(data, source=f"decision of v{version}")
