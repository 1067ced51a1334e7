"""How a CompatibilityReport is shown to people: the markdown table and the metric heatmap.

Kept apart from the record (components/compat/report.py) and the gate (components/compat/gate.py):
rendering never decides anything, and matplotlib is only imported when a heatmap is drawn.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from hotswap.components.compat.report import METRIC_LABELS, METRICS, PAIRS

if TYPE_CHECKING:
    from hotswap.components.compat.report import CompatibilityReport
    from hotswap.components.compat.served import ServedQuality


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_markdown(report: CompatibilityReport) -> str:
    """The ml-fct style table (pairs × Top-1/Top-5/mAP, in %), the checks, then verdict and reasons."""
    against = "first model, no baseline" if report.old_version is None else f"vs v{report.old_version}"
    title = report.model_name or "model"
    lines = [
        f"# Compatibility report: {title} v{report.new_version} ({against})",
        "",
        f"Data version: `{report.data_version}` · created {report.created_at.isoformat(timespec='seconds')}",
        "",
        "| Case (query/gallery) | Top-1 (%) | Top-5 (%) | mAP (%) |",
        "|---|---:|---:|---:|",
    ]
    for pair in PAIRS:
        if pair in report.matrix:
            values = report.matrix[pair]
            lines.append(f"| {pair} | " + " | ".join(_pct(values.get(m)) for m in METRICS) + " |")
    if report.update_gain:
        gains = ", ".join(f"{METRIC_LABELS[m]} {_pct(g)}%" for m, g in report.update_gain.items())
        lines += ["", f"Update gain: {gains}"]
    if report.served is not None:
        lines += ["", *served_markdown(report.served)]
    lines += ["", "## Checks", ""]
    if report.checks:
        lines += ["| Check | Metric | Value | Bound | Delta | Result |", "|---|---|---:|---:|---:|---|"]
        for c in report.checks:
            value = "n/a" if c.candidate is None else f"{c.candidate:.4f}"
            delta = "n/a" if c.delta is None else f"{c.delta:+.4f}"
            lines.append(
                f"| {c.name} ({c.pair}) | {METRIC_LABELS[c.metric]} | {value} | {c.comparison} {c.bound:.4f} "
                f"| {delta} | {'pass' if c.passed else 'FAIL'}{'' if c.gating else ' (audit only)'} |"
            )
    else:
        lines.append("No checks ran.")
    verdict = (
        "BLESSED" + (" (rubber stamp)" if report.rubber_stamp else "") if report.blessed else "NOT BLESSED"
    )
    lines += ["", f"## Verdict: {verdict}", ""]
    lines += [f"- {reason}" for reason in report.reasons]
    return "\n".join(lines) + "\n"


def served_markdown(served: ServedQuality) -> list[str]:
    """The as-served section: live composition, targets, and the three served rows."""
    shares = ", ".join(f"v{v} {100 * s:.1f} %" for v, s in served.live_shares.items())
    counts = ", ".join(f"v{v} {c}" for v, c in served.composed_counts.items())
    lines = [
        "## As served",
        "",
        f"Live gallery `{served.gallery_version}` (codebooks v{served.codebook_version}): {shares}. "
        f"Validation gallery ({served.split}, seed {served.seed}) composed as {counts}"
        + ("; scores calibrated per model." if served.calibrated else "."),
    ]
    if served.targets:
        targets = ", ".join(
            f"v{t.version} (share {t.share:.2f}, weight {t.weight:.2f})" for t in served.targets
        )
        lines += ["", f"Training targets: {targets}"]
    lines += ["", "| Queries → gallery | Top-1 (%) | Top-5 (%) | mAP (%) |", "|---|---:|---:|---:|"]
    rows = (
        (f"v{served.candidate_version} → live mix", served.candidate),
        (f"v{served.champion_version} → live mix (today)", served.live),
        (f"v{served.champion_version} → own gallery only", served.champion_only),
    )
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(_pct(values.get(m)) for m in METRICS) + " |")
    return lines


def report_heatmap_png(report: CompatibilityReport, dpi: int = 100) -> bytes:
    """One 2×2 panel per metric: rows = query model, columns = gallery model; empty cells = not measured."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if any(m in values for values in report.matrix.values())]
    fig = Figure(figsize=(3.2 * max(len(metrics), 1), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    models = ("old", "new")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        grid = np.full((2, 2), np.nan)
        for r, query in enumerate(models):
            for c, gallery in enumerate(models):
                grid[r, c] = report.matrix.get(f"{query}/{gallery}", {}).get(metric, np.nan)
        ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis")
        for r in range(2):
            for c in range(2):
                text = "n/a" if np.isnan(grid[r, c]) else f"{grid[r, c]:.3f}"
                colour = "black" if not np.isnan(grid[r, c]) and grid[r, c] > 0.6 else "white"
                ax.text(c, r, text, ha="center", va="center", color=colour if text != "n/a" else "grey")
        ax.set_xticks([0, 1], [f"{m} gallery" for m in models])
        ax.set_yticks([0, 1], [f"{m} query" for m in models])
        ax.set_title(METRIC_LABELS[metric])
    verdict = "blessed" if report.blessed else "NOT blessed"
    name = f"{report.model_name} " if report.model_name else ""
    old = f"v{report.old_version}" if report.old_version is not None else "no baseline"
    fig.suptitle(f"{name}v{report.new_version} vs {old}: {verdict}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
