"""The ``hotswap`` command line: one command per flow, plus search and status.

Prefect needs an API; without ``PREFECT_API_URL`` each command runs on a temporary local one
whose database lives under ``<hotswap home>/prefect`` (set before Prefect is imported).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="hotswap: upgrade a retrieval model without re-extracting the gallery.", no_args_is_help=True
)
console = Console()

HomeOption = typer.Option(None, "--home", help="hotswap home (default: HOTSWAP_HOME or ~/.hotswap)")


def _prepare(home: Path | None) -> dict[str, Any]:
    """Settings overrides for the flows, and Prefect pointed at the home before it is imported."""
    from components.settings import load_settings

    overrides: dict[str, Any] = {"home": str(home)} if home else {}
    settings = load_settings(**overrides)
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return overrides


def _print_report(payload: dict[str, Any]) -> None:
    from components.report import CompatibilityReport

    report = CompatibilityReport.model_validate(payload)
    table = Table(title=f"compatibility: v{report.new_version} vs v{report.old_version} (held-out data)")
    for column in ("pair", "mAP", "top-1", "top-5"):
        table.add_column(column, justify="right")
    for pair in ("old/old", "new/new", "new/old", "old/new"):
        if pair in report.matrix:
            m = report.matrix[pair]
            table.add_row(pair, f"{m['map']:.3f}", f"{m['top1']:.3f}", f"{m['top5']:.3f}")
    console.print(table)
    verdict = "[green]blessed[/green]" if report.blessed else "[red]NOT blessed[/red]"
    console.print(f"verdict: {verdict} — " + "; ".join(report.reasons))


def _print_decision(settings: Any, version: str) -> None:
    """The decision's verdict, reasons and a compact view of its options table."""
    from components.decision import load_decision
    from components.registry import ModelRegistry

    record = load_decision(ModelRegistry.from_settings(settings), version)
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


def _print_hits(hits: Any) -> None:
    table = Table(
        title=f"top-{len(hits.results)} in gallery {hits.gallery_version} (model v{hits.model_version})"
    )
    for column in ("rank", "item id", "label", "score"):
        table.add_column(column, justify="right")
    for rank, hit in enumerate(hits.results, start=1):
        table.add_row(str(rank), hit.item_id, hit.label or "", f"{hit.score:.4f}")
    console.print(table)


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.command()
def bootstrap(home: Path | None = HomeOption) -> None:
    """Train the first model, bless it (rubber stamp) and build the first live gallery."""
    overrides = _prepare(home)
    from flows.bootstrap import bootstrap as bootstrap_flow

    _print_json(bootstrap_flow(overrides=overrides))


@app.command()
def adopt(
    spec: Path = typer.Option(
        ...,
        "--spec",
        help="model spec JSON: arch, kwargs, format, embedding_dim, "
        "image_size, channels, mean, std, projection",
    ),
    weights: Path = typer.Option(..., "--weights", help="safetensors state_dict, or the .pt2 export"),
    gallery_features: Path = typer.Option(
        ..., "--gallery-features", help=".parquet or .npy gallery features"
    ),
    gallery_ids: Path | None = typer.Option(
        None, "--gallery-ids", help="ids beside an .npy (.npy/.txt/.csv)"
    ),
    home: Path | None = HomeOption,
) -> None:
    """Take over a running system: its model as v1, its gallery features as the live gallery."""
    overrides = _prepare(home)
    from flows.adopt import adopt as adopt_flow

    try:
        spec_fields = json.loads(spec.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{spec}: not a readable JSON model spec ({exc})") from None
    result = adopt_flow(
        spec=spec_fields,
        weights=str(weights),
        gallery_features=str(gallery_features),
        gallery_ids=str(gallery_ids) if gallery_ids else None,
        overrides=overrides,
    )
    console.print(_adopt_markdown(result))
    _print_json({k: v for k, v in result.items() if k != "report"})


def _adopt_markdown(result: dict[str, Any]) -> str:
    from components.adopt import AdoptReport

    return AdoptReport.model_validate(result["report"]).to_markdown()


@app.command(name="gallery-sync")
def gallery_sync(
    publish: bool = typer.Option(True, help="make the new version live"), home: Path | None = HomeOption
) -> None:
    """Make the gallery match its manifest: embed added items with the champion, drop removed ones."""
    overrides = _prepare(home)
    from flows.adopt import gallery_sync as sync_flow

    _print_json(sync_flow(overrides=overrides, publish=publish))


@app.command()
def refresh(
    home: Path | None = HomeOption,
    auto_promote: bool = typer.Option(None, "--auto-promote/--no-auto-promote", help="default: settings"),
) -> None:
    """Run the lifecycle: compatible training, validation, DPQ, decision, staged backfill."""
    overrides = _prepare(home)
    from flows.refresh import refresh as refresh_flow

    _print_json(refresh_flow(overrides=overrides, auto_promote=auto_promote))


@app.command()
def promote(
    version: str = typer.Argument("challenger", help="version number or alias"),
    approve: bool = typer.Option(None, "--approve/--reject", help="decide now instead of pausing for the UI"),
    reason: str = typer.Option("", help="why (recorded on the model version)"),
    backfill_mode: str = typer.Option("as-decided", help="as-decided, skip, requantize, partial or full"),
    fraction: float = typer.Option(None, help="fraction for a partial backfill"),
    home: Path | None = HomeOption,
) -> None:
    """Promote a challenger; without --approve/--reject the run pauses for a decision in the Prefect UI."""
    overrides = _prepare(home)
    from flows.promote import PromotionInput
    from flows.promote import promote as promote_flow

    answer = None
    if approve is not None:
        answer = PromotionInput(
            approve=approve, reason=reason, backfill_mode=backfill_mode, fraction=fraction
        )
    _print_json(promote_flow(overrides=overrides, version=version, answer=answer))


@app.command()
def backfill(
    mode: str = typer.Option("full", help="requantize, partial or full"),
    fraction: float = typer.Option(None, help="fraction re-extracted by a partial backfill"),
    version: str = typer.Option("challenger", help="model version (or alias) the gallery is rebuilt for"),
    publish: bool = typer.Option(False, help="switch the live gallery to the result (no alias change)"),
    home: Path | None = HomeOption,
) -> None:
    """Rebuild the live gallery for a model version; rerun to resume after an interruption."""
    overrides = _prepare(home)
    from flows.backfill import backfill as backfill_flow

    _print_json(
        backfill_flow(overrides=overrides, mode=mode, fraction=fraction, version=version, publish=publish)
    )


@app.command()
def audit(home: Path | None = HomeOption) -> None:
    """Every registered version against every other: matrix, AC/AM, markdown/CSV/HTML in MLflow."""
    overrides = _prepare(home)
    from flows.audit import audit as audit_flow

    result = audit_flow(overrides=overrides)
    console.print(result["markdown"])


@app.command()
def search(
    image: Path = typer.Option(None, help="a query image file (PNG/JPEG)"),
    item_id: str = typer.Option(None, help="or: the id of an item of the configured dataset"),
    k: int = typer.Option(5, min=1, help="how many results"),
    home: Path | None = HomeOption,
) -> None:
    """Top-k of a query image against the live gallery, with the champion model."""
    overrides = _prepare(home)
    from components.search import search_live
    from components.settings import load_settings

    if (image is None) == (item_id is None):
        raise typer.BadParameter("give exactly one of --image or --item-id")
    _print_hits(search_live(load_settings(**overrides), image=image, item_id=item_id, k=k))


@app.command()
def status(home: Path | None = HomeOption) -> None:
    """Champion, challenger, live gallery version and the last decision."""
    overrides = _prepare(home)
    from components.settings import load_settings
    from components.status import system_status

    _print_json(system_status(load_settings(**overrides)))


@app.command()
def demo(
    home: Path | None = typer.Option(None, help="where the demo keeps its state (default: <home>/demo)"),
    keep: bool = typer.Option(False, help="keep an earlier demo's state instead of starting fresh"),
) -> None:
    """Bootstrap v1 on digits 0-4, refresh to v2 on all digits, promote it, and answer a search."""
    from components.settings import load_settings

    home = home or load_settings().home / "demo"
    if home.exists() and not keep:
        console.print(f"starting fresh: removing the previous demo state in {home}")
        shutil.rmtree(home)
    overrides = _prepare(home)
    overrides["auto_promote"] = True
    timings: dict[str, float] = {}

    start = time.perf_counter()
    console.rule("1/3 bootstrap: v1 on digits 0-4 (rubber-stamped)")
    from flows.bootstrap import bootstrap as bootstrap_flow
    from flows.refresh import refresh as refresh_flow

    first = bootstrap_flow(overrides=overrides)
    timings["bootstrap"] = time.perf_counter() - start
    console.print(f"v{first['version']} is champion; live gallery {first['gallery_version']}")

    console.rule("2/3 refresh: v2 on all digits with Dual-Tuning, validation, DPQ, decision")
    start = time.perf_counter()
    second = refresh_flow(overrides=overrides, auto_promote=True)
    timings["refresh"] = time.perf_counter() - start

    from components.registry import ModelRegistry
    from components.status import system_status

    settings = load_settings(**overrides)
    registry = ModelRegistry.from_settings(settings)
    _print_report(registry.load_report(second["challenger"]).model_dump(mode="json"))
    _print_decision(settings, second["challenger"])
    state = system_status(settings)

    console.rule("3/3 search the live gallery")
    from components.search import search_live

    console.print(f"query: item {state['example_item']} of the gallery")
    _print_hits(search_live(settings, item_id=state["example_item"], k=5))

    console.rule("done")
    console.print(
        f"champion v{second['challenger']} promoted: {second['promoted']}; decision: {second['decision']}"
    )
    console.print("wall time: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in timings.items()))
    console.print(f"MLflow UI:  mlflow ui --backend-store-uri {settings.resolved_tracking_uri}")
    console.print(f"Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} prefect server start")


@app.callback()
def main() -> None:
    """hotswap: upgrade a retrieval model without re-extracting the gallery."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input or state: shown as one clear line, not a traceback."""
    from pydantic import ValidationError

    from components.backbones import ModelFormatError
    from components.backfill import BackfillError
    from components.data import DataError
    from components.decision import DecisionError
    from components.gallery import GalleryError
    from components.registry import RegistryError
    from components.report import ReportFormatError
    from components.search import NoLiveGalleryError
    from components.store import InvalidKeyError, ObjectNotFoundError

    return (
        ValidationError,
        ModelFormatError,
        BackfillError,
        DataError,
        DecisionError,
        GalleryError,
        RegistryError,
        ReportFormatError,
        NoLiveGalleryError,
        InvalidKeyError,
        ObjectNotFoundError,
        LookupError,
    )


def run() -> None:
    """Console-script entry point: the Typer app, with known errors reported without a traceback."""
    try:
        app()
    except Exception as exc:
        if isinstance(exc, _expected_errors()) or type(exc).__module__.startswith(("flows.", "components.")):
            console.print(f"[red]error:[/red] {exc}")
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    run()
