"""What ``hotswap status`` shows an operator: one screen, read from MLflow and the gallery store."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

PAIRS = ("old/old", "new/new", "new/old", "old/new")


def _matrix_table(title: str, report: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("query/gallery", "mAP", "top-1", "top-5"):
        table.add_column(column, justify="right")
    for pair in PAIRS:
        if pair in report["matrix"]:
            m = report["matrix"][pair]
            table.add_row(pair, *(f"{m[k]:.3f}" if k in m else "n/a" for k in ("map", "top1", "top5")))
    return table


def _verdict(report: dict[str, Any]) -> str:
    if report.get("rubber_stamp"):
        return "[green]blessed[/green] (rubber stamp: first model)"
    if report["blessed"]:
        return "[green]blessed[/green]"
    failed = [c["message"] for c in report.get("checks", []) if not c["passed"]]
    return "[red]NOT blessed[/red]" + (": " + "; ".join(failed) if failed else "")


def print_status(console: Console, state: dict[str, Any]) -> None:
    """Champion, challenger with its matrix and verdict, live gallery composition, last decision."""
    console.rule(f"hotswap status: model {state['model']}, gallery {state['gallery']}")
    champion, challenger = state.get("champion"), state.get("challenger")
    if champion is None:
        console.print("no champion yet: run `hotswap bootstrap`")
        return
    previous = f" (previous: v{state['previous']})" if state.get("previous") else ""
    console.print(f"[bold]champion[/bold]   v{champion}{previous}")
    champion_report = state.get("champion_report")
    if champion_report:
        console.print(f"           {_verdict(champion_report)}")
    if challenger is None:
        console.print("[bold]challenger[/bold] none (run `hotswap refresh`)")
    else:
        stage = state.get("challenger_stage")
        if stage in (None, "staged"):
            console.print(f"[bold]challenger[/bold] v{challenger}, waiting for `hotswap promote`")
        else:
            console.print(
                f"[bold]challenger[/bold] v{challenger}, its refresh stopped after stage {stage!r}: "
                "run `hotswap refresh` to resume it"
            )
        report = state.get("challenger_report")
        if report:
            console.print(_matrix_table(f"v{challenger} against v{report['old_version']} (held-out)", report))
            console.print(f"verdict: {_verdict(report)}")
        else:
            console.print("no compatibility report recorded yet")
    gallery = state.get("live_gallery")
    if gallery is None:
        console.print("[bold]live gallery[/bold] none")
    else:
        console.print(
            f"[bold]live gallery[/bold] {state['live_gallery_version']}: {gallery['items']} items, "
            f"codebooks of v{gallery['codebooks_of']}"
        )
        table = Table()
        for column in ("features from", "items", "share"):
            table.add_column(column, justify="right")
        for model, part in gallery.get("composition", {}).items():
            table.add_row(model, str(part["items"]), f"{part['share']:.1%}")
        console.print(table)
        _print_manifest_difference(console, state.get("gallery_manifest"))
    decision = state.get("last_decision")
    if decision:
        console.print(
            f"[bold]last decision[/bold] v{decision['version']}: {decision['mode']} — "
            + "; ".join(decision["reasons"])
        )
        if "promotable" in decision:
            verdict = (
                "[green]promotable[/green]" if decision["promotable"] else "[yellow]not promotable[/yellow]"
            )
            console.print(f"              {verdict}: {decision['promotable_reason']}")
            console.print(f"              gallery: {decision['gallery']}")
    tags = state.get("latest_version_tags") or {}
    if "promotion.status" in tags:
        reason = tags.get("promotion.reason")
        console.print(
            f"promotion of the latest version: {tags['promotion.status']}"
            + (f" ({reason})" if reason else "")
        )


def _print_manifest_difference(console: Console, diff: dict[str, Any] | None) -> None:
    """One line: whether the gallery's own manifest and the live gallery hold the same items."""
    if not diff:
        return
    if "error" in diff:
        console.print(f"[yellow]gallery manifest[/yellow] {diff['source']}: cannot be read ({diff['error']})")
    elif diff["missing_from_live"] or diff["only_in_live"]:
        console.print(
            f"[yellow]gallery manifest[/yellow] {diff['source']}: {diff['missing_from_live']} item(s) "
            f"not yet in the live gallery, {diff['only_in_live']} live item(s) no longer listed; run "
            "`hotswap gallery-sync` (a refresh syncs first when gallery.sync_on_refresh is on)"
        )
    else:
        console.print(f"gallery manifest {diff['source']}: the live gallery holds exactly its items")
