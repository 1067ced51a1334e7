"""The ``hotswap`` command line: one command per flow, plus search and status.

Start-up is cheap on purpose: this module and the command modules import only typer and rich;
each command imports what it needs in its body, after its inputs are checked (flows/cli_checks.py).
Read-only commands (``status``, ``report``, ``search``, ``serve``) never touch Prefect. Commands
that run flows need a Prefect API: ``PREFECT_API_URL`` when set, else the home's own local API,
started on first use and reused by later commands (flows/local_api.py); its database is
``<home>/prefect``.

The commands live by what they do: flows/cli_lifecycle.py (commands that run flows),
flows/cli_inspect.py (read-only), flows/cli_servers.py (``serve``, ``server``) and
flows/cli_demo.py; this module builds the app from them, in the order ``--help`` lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from hotswap.flows.cli_demo import demo
from hotswap.flows.cli_errors import HotswapGroup, cli_state
from hotswap.flows.cli_inspect import report, search, status
from hotswap.flows.cli_lifecycle import (
    adopt,
    audit,
    backfill,
    bootstrap,
    data_app,
    gallery_sync,
    promote,
    refresh,
    rollback,
)
from hotswap.flows.cli_servers import serve, server_app

app = typer.Typer(
    cls=HotswapGroup,
    help="hotswap: upgrade a retrieval model without re-extracting the gallery.",
    no_args_is_help=True,
)
app.command()(bootstrap)
app.command()(adopt)
app.command(name="gallery-sync")(gallery_sync)
app.command()(refresh)
app.command()(promote)
app.command()(backfill)
app.command()(audit)
app.command()(search)
app.command()(serve)
app.command()(rollback)
app.command()(status)
app.command()(report)
app.add_typer(data_app, name="data")
app.add_typer(server_app, name="server")
app.command()(demo)


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
    # pydantic looks for plugins in every installed distribution's entry points the first time it
    # builds a model (~10 ms, 4 % of an input error); hotswap uses none. Setting the variable to
    # an empty value before running keeps a user's plugins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    app()


if __name__ == "__main__":
    run()
