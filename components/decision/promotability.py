"""Whether a decided option may go live: the promotion gate follows the chosen option (DESIGN.md §16).

Why: the compatibility report's ``blessed`` says that new-model queries may search features an
older model wrote. Only options that keep such features in the served gallery need that: skip,
requantize, partial (and any later option that keeps or maps stored features, such as transform).
A full backfill replaces every item, so the only question for it is whether the candidate's own
new/new, served through its own codebooks, beats what is live. Gating every option on the
blessing stalled long upgrade chains: a better but incompatible model got its full backfill
decided and was then refused by auto-promotion.

An option is *promotable* when

- the decision is not ``reject``, and the candidate's new/new is not below the champion's (the
  gate's ``new_model`` check, recorded as ``better_than_champion``);
- it keeps old features ⇒ the model is blessed;
- as served, it beats the live system by more than ``decision.min_gain_over_live`` on every
  ``decision.promotion_metrics`` (default: the decision's own ``metric``).

A record decided without the live system's quality (no live gallery to compose) falls back to the
blessing alone, the rule before this one. A reviewer's option the decision never measured (a
partial fraction outside the table) is judged on the compatibility rule alone, and says so.

Used by the decision (recorded as ``promotable`` / ``promotable_reason``), by ``refresh`` (auto
promotion promotes what is promotable) and by ``promote`` (components/decision/promotion_gate.py).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from hotswap.components.decision.record import BackfillOption, DecisionRecord

REPLACES_EVERY_ITEM = frozenset({"full"})
Blocker = Literal["reject", "worse", "incompatible"]


class Promotability(NamedTuple):
    """The verdict and its one-line reason; ``blocker`` names what stands in the way (None: nothing)."""

    promotable: bool
    reason: str
    blocker: Blocker | None = None


def keeps_old_features(mode: str) -> bool:
    """Every option except a full backfill serves features an older model wrote (kept, re-encoded or
    mapped), so it needs compatibility; a mode added later needs it too unless it replaces every item."""
    return mode not in REPLACES_EVERY_ITEM


def served_option(record: DecisionRecord, mode: str, fraction: float | None) -> BackfillOption | None:
    """The measured row for backfill ``mode`` at ``fraction`` (None: that option was not measured).

    Without a fraction, the mode's only row (skip, requantize, full, and any single-row option).
    """
    rows = [o for o in record.options if o.mode == mode]
    if fraction is None:
        return rows[0] if len(rows) == 1 else None
    return next((o for o in rows if abs(o.fraction - fraction) < 1e-9), None)


def _label(mode: str, fraction: float | None) -> str:
    return f"partial f = {fraction:.3f}" if mode == "partial" and fraction is not None else mode


def assess(record: DecisionRecord, mode: str | None = None, fraction: float | None = None) -> Promotability:
    """Whether the option ``mode``/``fraction`` (default: the decided one) is promotable (module doc)."""
    if mode is None:
        mode, fraction = record.mode, record.fraction
    if record.mode == "reject" or mode == "reject":  # a rejected upgrade is not promoted in any mode
        why = record.reasons[0] if record.reasons else "no option beats the live system"
        return Promotability(False, f"the decision is 'reject' ({why})", "reject")
    if record.better_than_champion is False:
        return Promotability(
            False,
            "its new/new falls below the champion's (the gate's new_model check): even a full backfill "
            "would serve a worse system",
            "worse",
        )
    label = _label(mode, fraction)
    keeps = keeps_old_features(mode)
    if keeps and not record.blessed:
        return Promotability(
            False,
            f"{label} keeps old features in the served gallery and v{record.new_model_version or '?'} is "
            "not blessed (its queries may not search them); a full backfill needs no compatibility",
            "incompatible",
        )
    compat = "blessed" if keeps else "a full backfill needs no compatibility"
    config = record.config
    live = record.live_quality if config.quantized else record.float_live_quality
    if live is None:
        if not record.blessed:
            return Promotability(
                False, f"no live measurement to compare {label} with, and not blessed", "incompatible"
            )
        return Promotability(True, f"blessed; no live measurement to compare {label} with")
    option = served_option(record, mode, fraction)
    if option is None:
        return Promotability(
            True, f"{label} was not measured as served; promotable on the rule alone: {compat}"
        )
    margin = config.min_gain_over_live
    wins = []
    for metric in config.promotion_metrics or (config.metric,):
        served, baseline = option.quality.get(metric), live.get(metric)
        if served is None or baseline is None:
            return Promotability(False, f"{metric} of {label} or of live was not measured", "worse")
        if not served > baseline + margin:
            return Promotability(
                False,
                f"served with {label} its {metric} {served:.4f} does not beat live {baseline:.4f} "
                f"by more than {margin:g}",
                "worse",
            )
        wins.append(f"{metric} {served:.4f} > live {baseline:.4f}")
    return Promotability(
        True, f"{label} as served beats live ({', '.join(wins)}, margin {margin:g}); {compat}"
    )


def with_promotability(record: DecisionRecord) -> DecisionRecord:
    """The record with its ``promotable`` verdict and reason for the decided option filled in."""
    verdict = assess(record)
    return record.model_copy(update={"promotable": verdict.promotable, "promotable_reason": verdict.reason})
