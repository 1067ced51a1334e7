"""The ``hotswap`` command line: one command per flow, plus search and status.

Prefect needs an API; without ``PREFECT_API_URL`` each command runs on a temporary local one
whose database lives under ``<hotswap home>/prefect`` (set before Prefect is imported).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer
from hotswap.flows.cli_errors import HotswapGroup, cli_state, guard_gallery, note
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    cls=HotswapGroup,
    help="hotswap: upgrade a retrieval model without re-extracting the gallery.",
    no_args_is_help=True,
)
console = Console()

HomeOption = typer.Option(None, "--home", help="hotswap home (default: HOTSWAP_HOME or ~/.hotswap)")


def _prepare(home: Path | None) -> dict[str, Any]:
    """Settings overrides for the flows, and Prefect pointed at the home before it is imported.

    Also (flows/cli_errors.py): takes the gallery's lease for lifecycle commands and repairs an
    interrupted switch before commands that read live state.
    """
    from hotswap.components.settings import load_settings

    overrides: dict[str, Any] = {"home": str(home)} if home else {}
    cli_state.home = home
    settings = load_settings(**overrides)
    settings.home.mkdir(parents=True, exist_ok=True)
    cli_state.home = settings.home
    os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # INFO reaches the API (the UI shows each run's log); Prefect's console handler stays at
    # CRITICAL so its failed-task tracebacks never bury the one `error:` line (flows/cli_errors.py).
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    guard_gallery(settings)
    return overrides


def _print_report(payload: dict[str, Any]) -> None:
    from hotswap.components.report import CompatibilityReport

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


def _print_decision(settings: Any, version: str) -> None:
    """The decision's verdict, reasons and a compact view of its options table."""
    from hotswap.components.decision import load_decision
    from hotswap.components.registry import ModelRegistry

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


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.command()
def bootstrap(home: Path | None = HomeOption) -> None:
    """Train the first model, bless it (rubber stamp) and build the first live gallery."""
    overrides = _prepare(home)
    from hotswap.flows.bootstrap import bootstrap as bootstrap_flow

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
    from hotswap.flows.adopt import adopt as adopt_flow

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
    from hotswap.components.adopt import AdoptReport

    return AdoptReport.model_validate(result["report"]).to_markdown()


@app.command(name="gallery-sync")
def gallery_sync(
    publish: bool = typer.Option(True, help="make the new version live"), home: Path | None = HomeOption
) -> None:
    """Make the gallery match its manifest: embed added items with the champion, drop removed ones."""
    overrides = _prepare(home)
    from hotswap.flows.adopt import gallery_sync as sync_flow

    _print_json(sync_flow(overrides=overrides, publish=publish))


@app.command()
def refresh(
    home: Path | None = HomeOption,
    auto_promote: bool = typer.Option(None, "--auto-promote/--no-auto-promote", help="default: settings"),
) -> None:
    """Run the lifecycle: compatible training, validation, DPQ, decision, staged backfill."""
    overrides = _prepare(home)
    from hotswap.flows.refresh import refresh as refresh_flow

    result = refresh_flow(overrides=overrides, auto_promote=auto_promote)
    for line in result.get("recovery") or []:  # what it resumed or cleaned up, also in the JSON
        note(line)
    _print_json(result)


@app.command()
def promote(
    version: str = typer.Argument("challenger", help="version number or alias"),
    approve: bool = typer.Option(None, "--approve/--reject", help="decide now instead of pausing for the UI"),
    reason: str = typer.Option("", help="why (recorded on the model version)"),
    backfill_mode: str = typer.Option("as-decided", help="as-decided, skip, requantize, partial or full"),
    fraction: float = typer.Option(None, help="fraction for a partial backfill"),
    force: bool = typer.Option(False, "--force", help="promote even a version worse than the live system"),
    home: Path | None = HomeOption,
) -> None:
    """Promote a challenger; without --approve/--reject the run pauses for a decision in the Prefect UI."""
    overrides = _prepare(home)
    from hotswap.flows.promote import PromotionInput
    from hotswap.flows.promote import promote as promote_flow

    answer = None
    if approve is None and not os.environ.get("PREFECT_API_URL"):
        raise typer.BadParameter(
            "without --approve/--reject the run pauses for a reviewer in the Prefect UI, which needs a "
            "Prefect server: set PREFECT_API_URL (see docs/operations.md) or decide here",
            param_hint="--approve/--reject",
        )
    if approve is not None:
        answer = PromotionInput(
            approve=approve, reason=reason, backfill_mode=backfill_mode, fraction=fraction, force=force
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
    from hotswap.components.preflight import check_backfill_request

    check_backfill_request(mode, fraction)
    overrides = _prepare(home)
    from hotswap.flows.backfill import backfill as backfill_flow

    _print_json(
        backfill_flow(overrides=overrides, mode=mode, fraction=fraction, version=version, publish=publish)
    )


@app.command()
def audit(home: Path | None = HomeOption) -> None:
    """Every registered version against every other: matrix, AC/AM, markdown/CSV/HTML in MLflow."""
    overrides = _prepare(home)
    from hotswap.flows.audit import audit as audit_flow

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
    from hotswap.components.search import search_live
    from hotswap.components.settings import load_settings

    if (image is None) == (item_id is None):
        raise typer.BadParameter("give exactly one of --image or --item-id")
    _print_hits(search_live(load_settings(**overrides), image=image, item_id=item_id, k=k))


@app.command()
def serve(
    host: str = typer.Option(None, help="address to bind (default: settings serve.host, 127.0.0.1)"),
    port: int = typer.Option(None, help="TCP port (default: settings serve.port, 8080; 0 = any free port)"),
    home: Path | None = HomeOption,
) -> None:
    """Serve searches over HTTP from the live model and gallery; follows promotions and rollbacks."""
    overrides = _prepare(home)
    from hotswap.components.serving.server import serve_forever
    from hotswap.components.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(load_settings(**overrides), host=host, port=port)


@app.command()
def rollback(home: Path | None = HomeOption) -> None:
    """Make the previous champion and its gallery live again (the same switch as a promotion)."""
    overrides = _prepare(home)
    from hotswap.flows.rollback import rollback as rollback_flow

    _print_json(rollback_flow(overrides=overrides))


@app.command()
def status(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
) -> None:
    """Champion, challenger (matrix, verdict), live gallery composition by model version, last decision."""
    overrides = _prepare(home)
    from hotswap.components.settings import load_settings
    from hotswap.components.status import system_status

    state = system_status(load_settings(**overrides))
    if as_json:
        _print_json(state)
    else:
        from hotswap.flows.cli_views import print_status

        print_status(console, state)


@app.command()
def report(
    version: str = typer.Argument(..., help="version number or alias (champion, challenger, previous)"),
    home: Path | None = HomeOption,
) -> None:
    """A version's compatibility report and backfill decision, read from MLflow alone."""
    overrides = _prepare(home)
    from hotswap.components.settings import load_settings
    from hotswap.components.status import version_record

    settings = load_settings(**overrides)
    record = version_record(settings, version)
    aliases = f" ({', '.join(record['aliases'])})" if record["aliases"] else ""
    console.rule(f"{settings.model_name} v{record['version']}{aliases}")
    _print_report(record["report"].model_dump(mode="json"))
    if record["decision"] is None:
        console.print("no backfill decision recorded (first model, or the refresh stopped before deciding)")
    else:
        _print_decision(settings, record["version"])
    for key in ("promotion.status", "promotion.reason", "prefect.flow_run_url", "promotion.flow_run_url"):
        if record["tags"].get(key):
            console.print(f"{key}: {record['tags'][key]}")


data_app = typer.Typer(help="Datasets a refresh can train on.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("register")
def data_register(
    manifest: str = typer.Argument(..., help="a manifest (.csv/.parquet), image folder or built-in source"),
    home: Path | None = HomeOption,
) -> None:
    """Record a dataset version and emit `hotswap.dataset.registered` (which triggers a refresh);
    data already registered emits nothing."""
    overrides = _prepare(home)
    from hotswap.components.data.registered import register_dataset
    from hotswap.components.settings import load_settings
    from hotswap.tasks.events import emit_dataset_registered

    settings = load_settings(**overrides)
    registration = register_dataset(settings, manifest)
    if not registration.new:
        console.print(f"dataset {registration.version} is already registered: no event, no new refresh")
        return
    if not os.environ.get("PREFECT_API_URL"):
        console.print(
            "[yellow]PREFECT_API_URL is not set: the event goes to a temporary API "
            "that no deployment listens on[/yellow]"
        )
    event_id = emit_dataset_registered(settings, registration)
    sent = f"event hotswap.dataset.registered {event_id}" if event_id else "no event sent (events are off)"
    console.print(
        f"registered dataset {registration.version} ({registration.items} items, "
        f"{registration.classes} classes): {sent}"
    )


@app.command()
def demo(
    home: Path | None = typer.Option(None, help="where the demo keeps its state (default: <home>/demo)"),
    keep: bool = typer.Option(False, help="keep an earlier demo's state instead of starting fresh"),
) -> None:
    """Bootstrap v1 on digits 0-4, refresh to v2 on all digits, promote it, and answer a search."""
    from hotswap.components.settings import load_settings

    home = home or load_settings().home / "demo"
    if home.exists() and not keep:
        console.print(f"starting fresh: removing the previous demo state in {home}")
        shutil.rmtree(home)
    overrides = _prepare(home)
    overrides["auto_promote"] = True
    timings: dict[str, float] = {}

    start = time.perf_counter()
    console.rule("1/3 bootstrap: v1 on digits 0-4 (rubber-stamped)")
    from hotswap.flows.bootstrap import bootstrap as bootstrap_flow
    from hotswap.flows.refresh import refresh as refresh_flow

    first = bootstrap_flow(overrides=overrides)
    timings["bootstrap"] = time.perf_counter() - start
    console.print(f"v{first['version']} is champion; live gallery {first['gallery_version']}")

    console.rule("2/3 refresh: v2 on all digits with Dual-Tuning, validation, DPQ, decision")
    start = time.perf_counter()
    second = refresh_flow(overrides=overrides, auto_promote=True)
    timings["refresh"] = time.perf_counter() - start

    from hotswap.components.registry import ModelRegistry
    from hotswap.components.status import system_status

    settings = load_settings(**overrides)
    registry = ModelRegistry.from_settings(settings)
    _print_report(registry.load_report(second["challenger"]).model_dump(mode="json"))
    _print_decision(settings, second["challenger"])
    state = system_status(settings)

    console.rule("3/3 search the live gallery")
    from hotswap.components.search import search_live

    console.print(f"query: item {state['example_item']} of the gallery")
    _print_hits(search_live(settings, item_id=state["example_item"], k=5))

    console.rule("done")
    console.print(
        f"champion v{second['challenger']} promoted: {second['promoted']}; decision: {second['decision']}"
    )
    console.print("wall time: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in timings.items()))
    console.print(
        f"MLflow UI:  mlflow ui --backend-store-uri {settings.resolved_tracking_uri}"
        "  (side bar: Model training)"
    )
    if os.environ.get("PREFECT_API_URL"):
        console.print(
            f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')} (the server this ran on)"
        )
    else:  # the runs are in the temporary API's database: serve that database (this venv's prefect)
        prefect = Path(sys.executable).with_name("prefect")
        console.print(f"Prefect UI: PREFECT_HOME={os.environ['PREFECT_HOME']} {prefect} server start")


@app.callback()
def main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="print the traceback of a failure"),
    config: Path | None = typer.Option(
        None, "--config", help="settings file (TOML; default: HOTSWAP_CONFIG or ./hotswap.toml)"
    ),
    wait: float = typer.Option(
        0.0, "--wait", min=0, help="seconds to wait for another command changing the gallery"
    ),
) -> None:
    """hotswap: upgrade a retrieval model without re-extracting the gallery."""
    cli_state.reset(ctx, debug=debug, wait=wait)
    if config is not None:
        previous = os.environ.get("HOTSWAP_CONFIG")
        os.environ["HOTSWAP_CONFIG"] = str(config)
        ctx.call_on_close(lambda: _restore_env("HOTSWAP_CONFIG", previous))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def run() -> None:
    """Console-script entry point; failures are reported by HotswapGroup (flows/cli_errors.py)."""
    app()


if __name__ == "__main__":
    run()
