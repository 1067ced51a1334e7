"""The ``hotswap`` command line: one command per flow, plus search and status.

Start-up is cheap on purpose: this module imports only typer and rich; each command imports what
it needs in its body, after its inputs are checked (flows/cli_checks.py). Read-only commands
(``status``, ``report``, ``search``, ``serve``) never touch Prefect. Commands that run flows need
a Prefect API: ``PREFECT_API_URL`` when set, else the home's own local API, started on first use
and reused by later commands (flows/local_api.py); its database is ``<home>/prefect``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from hotswap.flows.cli_errors import HotswapGroup, cli_state, guard_gallery, note, use_prefect_api
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    cls=HotswapGroup,
    help="hotswap: upgrade a retrieval model without re-extracting the gallery.",
    no_args_is_help=True,
)
console = Console()

HomeOption = typer.Option(None, "--home", help="hotswap home (default: HOTSWAP_HOME or ~/.hotswap)")


def _prepare(
    home: Path | None, check: Callable[[Any], None] | None = None, *, prefect: bool = False
) -> dict[str, Any]:
    """Check, then set up: settings and ``check`` first, before anything is started or created.

    Order matters (an input error must cost about as much as ``--help``): the settings are loaded
    and checked (flows/cli_checks.py), then the command's own ``check(settings)`` runs; only then
    is the home created, the gallery's lease taken and an interrupted switch repaired
    (flows/cli_errors.py), and, for commands that run flows (``prefect=True``), a Prefect API
    found or started (flows/local_api.py).
    """
    from hotswap.components.core.settings import load_settings
    from hotswap.flows.cli_checks import check_settings

    overrides: dict[str, Any] = {"home": str(home)} if home else {}
    cli_state.home = home
    settings = load_settings(**overrides)
    cli_state.home = settings.home
    check_settings(settings)
    if check is not None:
        check(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # INFO reaches the API (the UI shows each run's log); Prefect's console handler stays at
    # CRITICAL so its failed-task tracebacks never bury the one `error:` line (flows/cli_errors.py).
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    guard_gallery(settings)
    if prefect:
        use_prefect_api(settings)
    return overrides


def _require_registry(settings: Any, ref: str) -> None:
    """A read of a version on a home where nothing was recorded: the state error, without creating
    the MLflow database only to find it empty."""
    if settings.registry_absent:
        from hotswap.components.core.errors import StateError

        raise StateError(
            f"registered model {settings.model_name!r} has no version or alias {ref!r} (nothing is "
            f"recorded in {settings.local_tracking_db} yet): run `hotswap bootstrap` first"
        )


def _print_report(payload: dict[str, Any]) -> None:
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


def _print_decision(settings: Any, version: str) -> None:
    """The decision's verdict, reasons and a compact view of its options table."""
    from hotswap.components.decision.storage import load_decision
    from hotswap.components.registry.mlflow_registry import ModelRegistry

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
    from hotswap.flows.cli_checks import check_data

    overrides = _prepare(home, check_data, prefect=True)
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
    from hotswap.flows.cli_checks import check_adopt, read_spec

    spec_fields: dict[str, Any] = {}

    def check(settings: Any) -> None:
        spec_fields.update(read_spec(spec))
        check_adopt(settings, weights, gallery_features, gallery_ids)

    overrides = _prepare(home, check, prefect=True)
    from hotswap.flows.adopt import adopt as adopt_flow

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
    from hotswap.components.lifecycle.adopt import AdoptReport

    return AdoptReport.model_validate(result["report"]).to_markdown()


@app.command(name="gallery-sync")
def gallery_sync(
    publish: bool = typer.Option(True, help="make the new version live"), home: Path | None = HomeOption
) -> None:
    """Make the gallery match its manifest: embed added items with the champion, drop removed ones."""
    from hotswap.flows.cli_checks import check_gallery_sync

    overrides = _prepare(home, check_gallery_sync, prefect=True)
    from hotswap.flows.adopt import gallery_sync as sync_flow

    _print_json(sync_flow(overrides=overrides, publish=publish))


@app.command()
def refresh(
    home: Path | None = HomeOption,
    auto_promote: bool = typer.Option(None, "--auto-promote/--no-auto-promote", help="default: settings"),
) -> None:
    """Run the lifecycle: compatible training, validation, DPQ, decision, staged backfill."""
    from hotswap.flows.cli_checks import check_data

    overrides = _prepare(home, check_data, prefect=True)
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
    from hotswap.flows.cli_checks import check_promote, check_version

    check_version(version, "version")
    check_promote(approve, backfill_mode, fraction)
    overrides = _prepare(home, prefect=True)
    from hotswap.flows.promote import PromotionInput
    from hotswap.flows.promote import promote as promote_flow

    answer = None
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
    from hotswap.components.core.preflight import check_backfill_request
    from hotswap.flows.cli_checks import check_data, check_version

    check_backfill_request(mode, fraction)
    check_version(version, "--version")
    overrides = _prepare(home, check_data, prefect=True)
    from hotswap.flows.backfill import backfill as backfill_flow

    _print_json(
        backfill_flow(overrides=overrides, mode=mode, fraction=fraction, version=version, publish=publish)
    )


@app.command()
def audit(home: Path | None = HomeOption) -> None:
    """Every registered version against every other: matrix, AC/AM, markdown/CSV/HTML in MLflow."""
    from hotswap.flows.cli_checks import check_data

    overrides = _prepare(home, check_data, prefect=True)
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
    from hotswap.flows.cli_checks import check_search

    overrides = _prepare(home, lambda settings: check_search(settings, image, item_id))
    from hotswap.components.core.settings import load_settings

    settings = load_settings(**overrides)
    _require_registry(settings, "champion")
    from hotswap.components.lifecycle.search import search_live

    _print_hits(search_live(settings, image=image, item_id=item_id, k=k))


@app.command()
def serve(
    host: str = typer.Option(None, help="address to bind (default: settings serve.host, 127.0.0.1)"),
    port: int = typer.Option(None, help="TCP port (default: settings serve.port, 8080; 0 = any free port)"),
    home: Path | None = HomeOption,
) -> None:
    """Serve searches over HTTP from the live model and gallery; follows promotions and rollbacks."""
    overrides = _prepare(home)
    from hotswap.components.core.settings import load_settings
    from hotswap.components.serving.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(load_settings(**overrides), host=host, port=port)


@app.command()
def rollback(home: Path | None = HomeOption) -> None:
    """Make the previous champion and its gallery live again (the same switch as a promotion)."""
    overrides = _prepare(home, prefect=True)
    from hotswap.flows.rollback import rollback as rollback_flow

    _print_json(rollback_flow(overrides=overrides))


@app.command()
def status(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
) -> None:
    """Champion, challenger (matrix, verdict), live gallery composition by model version, last decision."""
    overrides = _prepare(home)
    from hotswap.components.core.settings import load_settings

    settings = load_settings(**overrides)
    if settings.registry_absent:  # a fresh home: say so without creating the MLflow database
        state = {
            "model": settings.model_name,
            "champion": None,
            "challenger": None,
            "previous": None,
            "gallery": settings.gallery_name,
            "live_gallery_version": None,
        }
    else:
        from hotswap.components.lifecycle.status import system_status

        state = system_status(settings)
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
    from hotswap.flows.cli_checks import check_version

    check_version(version, "version")
    overrides = _prepare(home)
    from hotswap.components.core.settings import load_settings
    from hotswap.components.lifecycle.status import version_record

    settings = load_settings(**overrides)
    _require_registry(settings, version)
    record = version_record(settings, version)
    aliases = f" ({', '.join(record['aliases'])})" if record["aliases"] else ""
    console.rule(f"{settings.model_name} v{record['version']}{aliases}")
    _print_report(record["report"].model_dump(mode="json"))
    if record["decision"] is None:
        console.print("no backfill decision recorded (first model, or the refresh stopped before deciding)")
    else:
        _print_decision(settings, record["version"])
    for key in ("promotion.status", "promotion.reason", *FLOW_RUN_TAGS):
        if record["tags"].get(key):
            console.print(f"{key}: {record['tags'][key]}")


#: Tags naming the Prefect flow run that recorded a version (a URL only when a UI serves it).
FLOW_RUN_TAGS = (
    "prefect.flow_run_url",
    "prefect.flow_run_id",
    "promotion.flow_run_url",
    "promotion.flow_run_id",
)


data_app = typer.Typer(help="Datasets a refresh can train on.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("register")
def data_register(
    manifest: str = typer.Argument(..., help="a manifest (.csv/.parquet), image folder or built-in source"),
    home: Path | None = HomeOption,
) -> None:
    """Record a dataset version and emit `hotswap.dataset.registered` (which triggers a refresh);
    data already registered emits nothing."""
    from hotswap.components.data.source_check import check_data_source

    overrides = _prepare(home, lambda settings: check_data_source(manifest), prefect=True)
    from hotswap.components.core.settings import load_settings
    from hotswap.components.data.registered import register_dataset
    from hotswap.tasks.events import emit_dataset_registered

    settings = load_settings(**overrides)
    registration = register_dataset(settings, manifest)
    if not registration.new:
        console.print(f"dataset {registration.version} is already registered: no event, no new refresh")
        return
    if cli_state.local_api:
        console.print(
            "[yellow]PREFECT_API_URL is not set: the event goes to this home's local Prefect API, "
            "where no deployment listens[/yellow]"
        )
    event_id = emit_dataset_registered(settings, registration)
    sent = f"event hotswap.dataset.registered {event_id}" if event_id else "no event sent (events are off)"
    console.print(
        f"registered dataset {registration.version} ({registration.items} items, "
        f"{registration.classes} classes): {sent}"
    )


server_app = typer.Typer(
    help="The home's local Prefect API (used when PREFECT_API_URL is not set).", no_args_is_help=True
)
app.add_typer(server_app, name="server")


def _api_folder(home: Path | None) -> Path:
    from hotswap.components.core.settings import load_settings

    overrides: dict[str, Any] = {"home": str(home)} if home else {}
    cli_state.home = home
    settings = load_settings(**overrides)
    cli_state.home = settings.home
    return settings.home / "prefect"


@server_app.command("stop")
def server_stop(home: Path | None = HomeOption) -> None:
    """Stop the home's local Prefect API now (it also stops by itself after prefect_idle_seconds)."""
    from hotswap.flows.local_api import stop_local_api

    stopped = stop_local_api(_api_folder(home))
    if stopped is None:
        console.print("no local Prefect API is recorded for this home")
    else:
        console.print(f"stopped the local Prefect API (pid {stopped.pid}, {stopped.url})")


@server_app.command("status")
def server_status(home: Path | None = HomeOption) -> None:
    """The home's local Prefect API: pid, URL, whether it answers, which commands use it (JSON)."""
    from hotswap.flows.local_api import local_api_status

    _print_json(local_api_status(_api_folder(home)))


@app.command()
def demo(
    home: Path | None = typer.Option(None, help="where the demo keeps its state (default: <home>/demo)"),
    keep: bool = typer.Option(False, help="keep an earlier demo's state instead of starting fresh"),
) -> None:
    """Bootstrap v1 on digits 0-4, refresh to v2 on all digits, promote it, and answer a search."""
    from hotswap.components.core.settings import load_settings

    home = home or load_settings().home / "demo"
    if home.exists() and not keep:
        console.print(f"starting fresh: removing the previous demo state in {home}")
        from hotswap.flows.local_api import stop_local_api

        stop_local_api(home / "prefect")  # its database is about to go
        shutil.rmtree(home)
    overrides = _prepare(home, prefect=True)
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

    from hotswap.components.lifecycle.status import system_status
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    settings = load_settings(**overrides)
    registry = ModelRegistry.from_settings(settings)
    _print_report(registry.load_report(second["challenger"]).model_dump(mode="json"))
    _print_decision(settings, second["challenger"])
    state = system_status(settings)

    console.rule("3/3 search the live gallery")
    from hotswap.components.lifecycle.search import search_live

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
    if not cli_state.local_api:
        console.print(
            f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')} (the server this ran on)"
        )
    else:  # the runs are in the home's local API database (no UI): serve that database with one
        prefect = Path(sys.executable).with_name("prefect")
        console.print(
            f"Prefect UI: hotswap server stop --home {home}; "
            f"PREFECT_HOME={home / 'prefect'} {prefect} server start"
        )


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
