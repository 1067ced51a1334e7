"""How the command line fails, waits and repairs: one ``error:`` line, a lease, a recovery.

- :class:`HotswapGroup` runs every command. Any failure becomes exactly one line
  ``error: <what is wrong, naming the input or service> — <what to do>`` and the exit code of its
  class (components/core/errors.py). The traceback goes to ``<home>/logs/hotswap.log``; ``--debug``
  prints it too. Usage errors (bad options) get the same one-line form.
- :func:`guard_gallery` (called by each command's set-up) takes the gallery's lease for
  commands that change it, so a second one fails at once naming the holder (or waits with
  ``--wait``), and repairs an interrupted switch before commands that read live state.
- Prefect's console handlers are quieted for CLI runs (its failed-task traceback would bury the
  one line); its API log handler is untouched, so what Prefect logs still reaches the server.
- :func:`use_prefect_api` points a command that runs flows at ``PREFECT_API_URL`` or the home's
  local Prefect API (flows/local_api.py); read-only commands never call it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

#: Commands that change a gallery: each holds the gallery's lease while it runs.
CHANGES_GALLERY = frozenset(
    {"bootstrap", "refresh", "promote", "backfill", "rollback", "demo", "gallery-sync"}
)
#: Commands that read live state: each first repairs an interrupted switch.
READS_LIVE = frozenset(
    {"status", "search", "serve", "refresh", "promote", "backfill", "rollback", "gallery-sync"}
)
LOG_FILE = Path("logs") / "hotswap.log"

_errors = Console(emoji=False, highlight=False, markup=False, soft_wrap=True)
_notes = Console(stderr=True, emoji=False, highlight=False, markup=False, soft_wrap=True)
_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


@dataclass
class CliState:
    """What one command invocation knows for reporting its failure."""

    debug: bool = False
    wait: float = 0.0
    home: Path | None = None
    services: Any = None
    notes: list[str] = field(default_factory=list)
    context: Any = None  # the group's typer.Context: resources (the lease) close with it
    command: str = ""
    local_api: str | None = None  # the home's local Prefect API this command runs on, if any
    succeeded: bool = False  # the command returned without an error (set before resources close)

    def reset(self, context: Any = None, debug: bool = False, wait: float = 0.0) -> None:
        self.debug, self.wait, self.home, self.services, self.notes = debug, wait, None, None, []
        self.local_api, self.succeeded = None, False
        self.context = context
        self.command = getattr(context, "invoked_subcommand", None) or ""

    def log_path(self) -> Path:
        home = self.home or Path(os.environ.get("HOTSWAP_HOME", Path.home() / ".hotswap"))
        return Path(home) / LOG_FILE


cli_state = CliState()


def note(message: str) -> None:
    """A line for the user that is not the command's output (stderr, so JSON output stays clean)."""
    cli_state.notes.append(message)
    _notes.print(Text.assemble(("note: ", "yellow"), message))


def _write_log(exc: BaseException, line: str) -> Path | None:
    path = cli_state.log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(traceback.format_exception(exc))
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"--- {stamp} pid {os.getpid()}: {' '.join(sys.argv)}\nerror: {line}\n")
            handle.write(_CREDENTIALS.sub(r"\1***@", text) + "\n")
    except OSError:
        return None
    return path


def report_failure(exc: BaseException) -> int:
    """Print the one ``error:`` line (and with --debug the traceback); returns the exit code."""
    from hotswap.components.core.errors import classify

    failure = classify(exc, cli_state.services)
    line = failure.line()
    _write_log(exc, line)
    if cli_state.debug:
        traceback.print_exception(exc, file=sys.stderr)
    _errors.print(Text.assemble(("error:", "bold red"), " ", line))
    return failure.exit_code


class HotswapGroup(TyperGroup):
    """The ``hotswap`` group: turns every failure into one line and its class's exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            result = super().invoke(ctx)
            cli_state.succeeded = True
            return result
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            raise typer.Exit(report_failure(exc)) from None

    def main(self, args: Any = None, prog_name: str | None = None, *a: Any, **extra: Any) -> Any:
        if extra.get("standalone_mode", True) is False or a:
            return super().main(args, prog_name, *a, **extra)
        extra["standalone_mode"] = False
        try:
            result = super().main(args, prog_name, **extra)
        except typer.TyperException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "show"):
                exc.show() if hasattr(exc, "show") else print(exc.format_message())
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "hotswap"
            _errors.print(
                Text.assemble(("error:", "bold red"), f" {exc.format_message()} (see `{command} --help`)")
            )
            sys.exit(exc.exit_code)
        except typer.Abort:
            _errors.print(
                Text.assemble(("error:", "bold red"), " interrupted; a rerun resumes finished work")
            )
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def quiet_prefect_console() -> None:
    """Prefect's console handlers print only CRITICAL for CLI runs (the API handler is untouched)."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    if "prefect.logging.handlers" not in sys.modules:
        return  # the variable above takes effect when Prefect configures logging
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL)


def guard_gallery(settings: Any) -> None:
    """Lease for commands that change the gallery, repair for commands that read live state."""
    from hotswap.components.core.errors import Services
    from hotswap.components.core.service_timeouts import apply_service_timeouts

    cli_state.services = Services(
        tracking_uri=settings.resolved_tracking_uri,
        store_uri=settings.resolved_store_uri,
        s3_endpoint_url=settings.s3_endpoint_url,
        prefect_api_url=os.environ.get("PREFECT_API_URL"),
    )
    apply_service_timeouts(settings)
    if not cli_state.debug:
        quiet_prefect_console()
    command = cli_state.command
    holding = command in CHANGES_GALLERY
    if holding:
        from hotswap.components.gallery.lease import GalleryLease
        from hotswap.components.gallery.store_factory import open_store

        store = open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url)
        lease = GalleryLease(
            store,
            settings.gallery_name,
            f"hotswap {command}",
            ttl_seconds=settings.lease_ttl_seconds,
            wait_seconds=cli_state.wait,
            on_wait=note,
            covers_flows=True,
        )
        if cli_state.context is not None:
            cli_state.context.with_resource(lease)
        else:  # called outside a command line: hold it for the process
            lease.acquire()
    if command in READS_LIVE and not settings.registry_absent:  # a fresh home has nothing to repair
        from hotswap.components.gallery.recovery import recover_live_state

        for message in recover_live_state(settings, holding_lease=holding):
            note(message)


def use_prefect_api(settings: Any) -> None:
    """Point this command's flows at a Prefect API before Prefect is imported.

    ``PREFECT_API_URL`` wins; so does an API the process already chose (Prefect imported and
    configured, as in a test harness). Otherwise the home's local API is found or started
    (flows/local_api.py) and named in ``PREFECT_API_URL`` for this process and its children.
    """
    import dataclasses

    from hotswap.flows.local_api import LOCAL_API_ENV, ensure_local_api

    if os.environ.get("PREFECT_API_URL"):
        return
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            return
    api, _ = ensure_local_api(
        settings.home / "prefect", settings.prefect_start_timeout_seconds, settings.prefect_idle_seconds
    )
    os.environ["PREFECT_API_URL"] = api.url
    os.environ[LOCAL_API_ENV] = "1"
    cli_state.local_api = api.url
    if cli_state.services is not None:
        cli_state.services = dataclasses.replace(cli_state.services, prefect_api_url=api.url)
    if "prefect.settings" in sys.modules and cli_state.context is not None:  # settings already read
        from prefect.settings import PREFECT_API_URL, temporary_settings

        cli_state.context.with_resource(temporary_settings(updates={PREFECT_API_URL: api.url}))
