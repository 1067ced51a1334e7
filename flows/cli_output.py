"""What ``hotswap`` commands print: the console, JSON results, reports, decisions and search hits.

Rich tables only; every model or registry import happens inside the function that needs it, so
importing this module stays as cheap as the CLI's start-up must be.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_report(payload: dict[str, Any]) -> None:
    from hotswap.components.compat.report import CompatibilityReport

    report = CompatibilityReport.model_validate(payload)
    against = "first model, no baseline" if report.old_version is None else f"vs v{report.old_version}"
    table = Table(title=f"compatibility: v{report.new_version} {against} (held-out data)")
    for column in ("pair", "mAP", "top-1", "top-5"):
        table.add_column(column, justify="right")
    for pair in ("old/old", "new/new", "new/old", "old/new"):
        if pair in report.matrix:
            m = report.matrix[pair]
            table.add_row(pair, f"{m['map']:.3f}", f"{m['top1']:.3f}", f"{m['top5']:.3f}")
    console.print(table)
    verdict = "[green]blessed[/green]" if report.blessed else "[red]NOT blessed[/red]"
    console.print(f"verdict: {verdict} — " + "; ".join(report.reasons))


def print_decision(settings: Any, version: str) -> None:
    """The decision's verdict, reasons and a compact view of its options table."""
    from hotswap.components.decision.storage import load_decision
    from hotswap.components.registry.sqlite_reader import registry_for_reading

    record = load_decision(registry_for_reading(settings), version)
    shown = [o for o in record.options if o.mode != "partial" or round(o.fraction * 21) in (2, 5, 10, 15)]
    table = Table(title=f"backfill options for v{version} (quality on held-out data, as served by DPQ codes)")
    for column in ("option", "re-extracted", "mAP", "of full", "est. seconds", "meets target"):
        table.add_column(column, justify="right")
    for o in shown:
        chosen = " ←" if (o.mode, o.fraction) == (record.mode, record.fraction) else ""
        table.add_row(
            o.mode + chosen,
            f"{o.fraction:.0%}",
            f"{o.quality[record.config.metric]:.3f}",
            f"{o.relative_quality:.1%}",
            f"{o.estimated_seconds:.2f}",
            "yes" if o.meets_target and o.eligible else "no",
        )
    console.print(table)
    console.print(f"decision: [bold]{record.mode}[/bold] — " + "; ".join(record.reasons))


def print_hits(hits: Any) -> None:
    scores = {"stored": ", calibrated scores", "missing": ", raw scores: mixed gallery without calibration"}
    table = Table(
        title=f"top-{len(hits.results)} in gallery {hits.gallery_version} (model v{hits.model_version}"
        f"{scores.get(getattr(hits, 'calibration', ''), '')})"
    )
    for column in ("rank", "item id", "label", "score"):
        table.add_column(column, justify="right")
    for rank, hit in enumerate(hits.results, start=1):
        table.add_row(str(rank), hit.item_id, hit.label or "", f"{hit.score:.4f}")
    console.print(table)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
