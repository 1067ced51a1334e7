"""The ``hotswap`` commands for long-running processes: ``serve`` (HTTP search) and ``server``.

``serve`` answers searches from the live model and gallery and never touches Prefect; the
``server`` group stops or inspects the home's local Prefect API (flows/local_api.py), which
commands that run flows start on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from hotswap.flows.cli_errors import cli_state
from hotswap.flows.cli_output import console, print_json
from hotswap.flows.cli_prepare import HomeOption, prepare


def serve(
    host: str = typer.Option(None, help="address to bind (default: settings serve.host, 127.0.0.1)"),
    port: int = typer.Option(None, help="TCP port (default: settings serve.port, 8080; 0 = any free port)"),
    home: Path | None = HomeOption,
) -> None:
    """Serve searches over HTTP from the live model and gallery; follows promotions and rollbacks."""
    overrides = prepare(home)
    from hotswap.components.core.settings import load_settings
    from hotswap.components.serving.server import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(load_settings(**overrides), host=host, port=port)


server_app = typer.Typer(
    help="The home's local Prefect API (used when PREFECT_API_URL is not set).", no_args_is_help=True
)


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

    print_json(local_api_status(_api_folder(home)))
