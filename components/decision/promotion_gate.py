"""The promotion gate a reviewer's approval passes through: never a model worse than live, unless forced.

The refresh records its verdict with the challenger: the compatibility report (the gate's checks)
and the backfill decision, whose options are judged as served against the live system (DESIGN.md
§11, §16). A reviewer who approves without reading them must not put a worse model live by
accident, so ``promote`` asks :func:`refusal` first. A challenger is refused when

- its decision is ``reject`` (no option beats the live system, or not blessed and not better);
- its new/new quality falls below the champion's (the report's gating ``new_model`` check, or
  the decision's ``better_than_champion``): even a full backfill would be a downgrade;
- the option that would go live (as decided, or the reviewer's backfill mode) was measured as
  served and does not beat the live system.

``--force`` (the form's ``force``) overrides it; the promotion then records why it was forced.
"""

from __future__ import annotations

from hotswap.components.compat.report import CompatibilityReport
from hotswap.components.core.errors import StateError
from hotswap.components.decision.record import BackfillOption, DecisionRecord

_FRACTION = {"skip": 0.0, "requantize": 0.0, "full": 1.0}


class WorseThanLiveError(StateError):
    """The challenger does not beat the live system and the promotion was not forced."""


def _going_live(decision: DecisionRecord, mode: str, fraction: float | None) -> BackfillOption | None:
    """The measured option a promotion with backfill ``mode`` would serve (None: not measured)."""
    if mode == "as-decided":
        mode, fraction = decision.mode, decision.fraction
    fraction = _FRACTION.get(mode, fraction)
    if fraction is None:
        return None
    return next(
        (o for o in decision.options if o.mode == mode and abs(o.fraction - fraction) < 1e-9),
        None,
    )


def refusal(
    report: CompatibilityReport,
    decision: DecisionRecord,
    mode: str = "as-decided",
    fraction: float | None = None,
) -> str | None:
    """Why this challenger must not go live with backfill ``mode``; None when it may."""
    if decision.mode == "reject":
        why = decision.reasons[0] if decision.reasons else "no option beats the live system"
        return f"its backfill decision is 'reject' ({why})"
    worse = [c for c in report.checks if c.name == "new_model" and c.gating and not c.passed]
    if worse:
        c = worse[0]
        return (
            f"its new/new {c.metric} {c.candidate:.4f} falls below the champion's {c.baseline:.4f} "
            "(the gate's new_model check): even a full backfill would serve a worse system"
            if c.candidate is not None and c.baseline is not None
            else f"the gate's new_model check failed ({c.message})"
        )
    if decision.better_than_champion is False:
        return "its new/new falls below the champion's (the gate's new_model check)"
    option = _going_live(decision, mode, fraction)
    if option is not None and option.beats_live is False:
        metric = decision.config.metric
        live = (decision.live_quality or {}).get(metric)
        against = f" {live:.4f}" if live is not None else ""
        return (
            f"served with a {option.mode} backfill its {metric} {option.quality[metric]:.4f} does not "
            f"beat the live system's{against}"
        )
    return None


def refuse(version: str, why: str) -> WorseThanLiveError:
    """The one line a refused promotion ends with: what is wrong and how to override it."""
    return WorseThanLiveError(
        f"v{version} was not promoted: it is worse than the live system — {why}; "
        "rerun with --force to promote it anyway"
    )
