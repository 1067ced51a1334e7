"""``hotswap demo``: the whole lifecycle in one command, on a home of its own.

Bootstrap v1 on digits 0-4, refresh to v2 on all digits (compatible training, validation, DPQ,
decision) with automatic promotion, then answer a search, printing what an operator would look at.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import typer
from hotswap.flows.cli_errors import cli_state
from hotswap.flows.cli_output import console, print_decision, print_hits, print_report
from hotswap.flows.cli_prepare import prepare


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
    overrides = prepare(home, prefect=True)
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
    print_report(registry.load_report(second["challenger"]).model_dump(mode="json"))
    print_decision(settings, second["challenger"])
    state = system_status(settings)

    console.rule("3/3 search the live gallery")
    from hotswap.components.lifecycle.search import search_live

    console.print(f"query: item {state['example_item']} of the gallery")
    print_hits(search_live(settings, item_id=state["example_item"], k=5))

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
