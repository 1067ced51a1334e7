"""The decision table and the policy that picks one option from it.

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

Choosing is not promoting: whether the chosen option may go live by itself is judged per option
by components/decision/promotability.py (a full backfill needs no blessing, only to beat live).
"""

from __future__ import annotations

from collections.abc import Sequence

from hotswap.components.core.configs import DecisionConfig
from hotswap.components.decision.ordering import backfilled_count
from hotswap.components.decision.promotability import keeps_old_features
from hotswap.components.decision.quality import QualityEstimate
from hotswap.components.decision.record import (
    MODE_ORDER,
    BackfillOption,
    Choice,
    CostModel,
    DecisionError,
    OptionMode,
    pct,
)


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
                "transform": quality.float_transform,
                "transform_partial": quality.float_transform_partial,
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
    rows += _transform_rows(quality, n, config)
    options = []
    live = None if quality.live is None else quality.live[metric]
    for mode, fraction, served, floats, extract, encode in rows:
        relative = served[metric] / reference
        meets = relative >= config.quality_target - 1e-12
        eligible = blessed or not keeps_old_features(mode)
        verdict = "meets" if meets else "below"
        reason = f"{metric} {served[metric]:.4f} = {pct(relative)} of full, {verdict} the target"
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
                estimated_seconds=cost.seconds(extract, encode, 0 if mode == "skip" else n)
                + (cost.transform_seconds_per_item * (n - extract) if mode == "transform" else 0.0),
                meets_target=meets,
                eligible=eligible,
                reason=reason,
                beats_live=beats,
            )
        )
    return options, reference


def _transform_rows(
    quality: QualityEstimate, n: int, config: DecisionConfig
) -> list[tuple[OptionMode, float, dict[str, float], dict[str, float], int, int]]:
    """transform (every kept item mapped by its model's h_v) and transform(f) (the first f of the
    maps' uncertainty ordering re-extracted, the rest mapped), when the maps were measured."""
    if quality.transform is None or quality.float_transform is None:
        return []
    rows: list[tuple[OptionMode, float, dict[str, float], dict[str, float], int, int]] = [
        ("transform", 0.0, quality.transform, quality.float_transform, 0, n)
    ]
    rows += [
        (
            "transform",
            f,
            quality.transform_partial[f],
            quality.float_transform_partial[f],
            backfilled_count(n, f),
            n,
        )
        for f in config.fractions()
        if f in quality.transform_partial
    ]
    return rows


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
    """The rules when the live system's served quality is known (see this module's doc)."""
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
        f"target: {metric} ≥ {pct(config.quality_target)} of a full backfill's and above live",
        f"cheapest option meeting it: {chosen.mode}"
        + (
            f" at f = {chosen.fraction:.3f}"
            if chosen.fraction and chosen.mode in ("partial", "transform")
            else ""
        )
        + f" ({chosen.quality[metric]:.4f}, {pct(chosen.relative_quality)} of full, "
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
        f"blessed; target: {config.metric} ≥ {pct(config.quality_target)} of a full backfill's",
        f"cheapest option meeting it: {best.mode}"
        + (f" at f = {best.fraction:.3f}" if best.fraction and best.mode in ("partial", "transform") else "")
        + f" ({pct(best.relative_quality)} of full, est. {best.estimated_seconds:.1f} s)",
    ]
    cheaper = [o for o in options if o.estimated_seconds < best.estimated_seconds and not o.meets_target]
    if cheaper:
        worst = max(cheaper, key=lambda o: o.relative_quality)
        reasons.append(
            f"cheaper options fall short: best of them is {worst.mode}"
            + (f" f = {worst.fraction:.3f}" if worst.mode == "partial" else "")
            + f" at {pct(worst.relative_quality)}"
        )
    return best.mode, best.fraction, reasons
