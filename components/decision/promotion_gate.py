"""The promotion gate a reviewer's approval passes through: only a promotable option, unless forced.

The refresh records its verdict with the challenger: the compatibility report (the gate's checks)
and the backfill decision, whose options are judged as served against the live system (DESIGN.md
§11, §16). A reviewer who approves without reading them must not put a worse model live by
accident, so ``promote`` asks :func:`refusal` first. It applies the same rule as auto-promotion
(components/decision/promotability.py) to the option that would go live (as decided, or the
reviewer's backfill mode), so a challenger is refused when

- its decision is ``reject`` (no option beats the live system, or not blessed and not better);
- its new/new quality falls below the champion's (the report's gating ``new_model`` check, or
  the decision's ``better_than_champion``): even a full backfill would be a downgrade;
- the option keeps old features in the gallery (skip, requantize, partial, …) and the model is not
  blessed: a full backfill needs no compatibility, those options do;
- the option was measured as served and does not beat the live system by the margin.

``--force`` (the form's ``force``) overrides it; the promotion then records why it was forced.
"""

from __future__ import annotations

from hotswap.components.compat.report import CompatibilityReport
from hotswap.components.core.errors import StateError
from hotswap.components.decision.promotability import assess
from hotswap.components.decision.record import DecisionRecord, implied_fraction


class WorseThanLiveError(StateError):
    """The challenger is not promotable with the chosen option and the promotion was not forced."""


def refusal(
    report: CompatibilityReport,
    decision: DecisionRecord,
    mode: str = "as-decided",
    fraction: float | None = None,
) -> str | None:
    """Why this challenger must not go live with backfill ``mode``; None when it may.

    The answer starts with what is wrong ("it is worse than the live system", "it is not
    compatible"), so the refusal reads as one sentence.
    """
    worse = [c for c in report.checks if c.name == "new_model" and c.gating and not c.passed]
    if worse and decision.mode != "reject":
        c = worse[0]
        return "it is worse than the live system — " + (
            f"its new/new {c.metric} {c.candidate:.4f} falls below the champion's {c.baseline:.4f} "
            "(the gate's new_model check): even a full backfill would serve a worse system"
            if c.candidate is not None and c.baseline is not None
            else f"the gate's new_model check failed ({c.message})"
        )
    if mode == "as-decided":
        verdict = assess(decision)
    else:
        verdict = assess(decision, mode, implied_fraction(mode, fraction))
    if verdict.promotable:
        return None
    if verdict.blocker == "incompatible":
        return f"it is not compatible with the gallery it would be served on — {verdict.reason}"
    if verdict.blocker == "reject":
        return f"it is worse than the live system — its backfill {verdict.reason.removeprefix('the ')}"
    return f"it is worse than the live system — {verdict.reason}"


def refuse(version: str, why: str) -> WorseThanLiveError:
    """The one line a refused promotion ends with: what is wrong and how to override it."""
    return WorseThanLiveError(f"v{version} was not promoted: {why}; rerun with --force to promote it anyway")
