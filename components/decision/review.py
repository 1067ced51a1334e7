"""The short summary a reviewer reads in the promotion form.

The Prefect form's description column is narrow: the full report and decision tables (a dozen
columns) get clipped there. The form therefore carries only narrow tables (the compatibility
matrix, the options that matter) plus the verdict and reasons, and points to the promotion
request artifact and MLflow for everything else.
"""

from __future__ import annotations

from hotswap.components.compat.report import PAIRS, CompatibilityReport
from hotswap.components.decision.record import GALLERY_PLANNED, DecisionRecord

KEY_PARTIAL_POINTS = (0.1, 0.25, 0.5, 0.75)


def _shown_options(decision: DecisionRecord) -> list:
    """skip, requantize, full, the chosen option and a few partial fractions (not all twenty)."""
    chosen = decision.chosen_option
    shown = []
    for o in decision.options:
        near_key = o.mode == "partial" and any(abs(o.fraction - p) < 0.026 for p in KEY_PARTIAL_POINTS)
        if o.mode != "partial" or near_key or o is chosen:
            shown.append(o)
    return shown


def review_summary(
    report: CompatibilityReport, decision: DecisionRecord, links: str, request_key: str
) -> str:
    """Markdown for the form: verdict, matrix, decision, a narrow options table, where to read more."""
    verdict = "**blessed**" if report.blessed else "**NOT blessed**"
    against = "first model" if report.old_version is None else f"against v{report.old_version}"
    lines = [
        f"### v{report.new_version} {against}: {verdict}",
        *[f"- {reason}" for reason in report.reasons],
        "",
        "| query/gallery | mAP | top-1 |",
        "|---|---:|---:|",
    ]
    for pair in PAIRS:
        if pair in report.matrix:
            m = report.matrix[pair]
            lines.append(f"| {pair} | {m.get('map', float('nan')):.3f} | {m.get('top1', float('nan')):.3f} |")
    metric = decision.config.metric
    lines += [
        "",
        f"### Backfill decision: **{decision.mode}**",
        *[f"- {reason}" for reason in decision.reasons],
        f"- promotable: **{'yes' if decision.promotable else 'no'}** — {decision.promotable_reason}",
        f"- gallery: {decision.gallery_state}"
        + (
            " (approving builds it; an interrupted build resumes)"
            if decision.gallery_state == GALLERY_PLANNED
            else ""
        ),
        "",
        f"| option | re-extracted | {metric} | of full | est. s |",
        "|---|---:|---:|---:|---:|",
    ]
    chosen = decision.chosen_option
    for o in _shown_options(decision):
        mark = " ←" if o is chosen else ""
        lines.append(
            f"| {o.mode}{mark} | {o.fraction:.0%} | {o.quality[metric]:.3f} | {o.relative_quality:.0%} "
            f"| {o.estimated_seconds:.1f} |"
        )
    lines += [
        "",
        f"Full report, every option and the backfill plot: artifact `{request_key}` of this run. {links}",
    ]
    return "\n".join(lines) + "\n"
