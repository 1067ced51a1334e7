"""Check, then set up: what every ``hotswap`` command runs before it does anything.

An input error must cost about as much as ``--help``, so the settings and the command's own
check come first (flows/cli_checks.py); only then is the home created, the gallery's lease taken
and, for commands that run flows, a Prefect API found or started (flows/local_api.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from hotswap.flows.cli_errors import CHANGES_GALLERY, cli_state, guard_gallery, use_prefect_api

HomeOption = typer.Option(None, "--home", help="hotswap home (default: HOTSWAP_HOME or ~/.hotswap)")
DaskOption = typer.Option(
    None,
    "--dask",
    metavar="ADDRESS",
    help="run the passes over gallery images on this Dask scheduler (default: the dask.address setting)",
)


def prepare(
    home: Path | None,
    check: Callable[[Any], None] | None = None,
    *,
    prefect: bool = False,
    cluster: bool = False,
    dask: str | None = None,
) -> dict[str, Any]:
    """Check, then set up: settings and ``check`` first, before anything is started or created.

    Order matters (an input error must cost about as much as ``--help``): the settings are loaded
    and checked (flows/cli_checks.py), then the command's own ``check(settings)`` runs; only then
    is the home created, the gallery's lease taken and an interrupted switch repaired
    (flows/cli_errors.py), and, for commands that run flows (``prefect=True``), a Prefect API
    found or started (flows/local_api.py). Commands that pass over gallery images (``cluster=True``)
    take ``dask`` (``--dask``) as ``dask.address``; a scheduler named there (by the option or the
    settings) must answer before anything starts.
    """
    from hotswap.components.core.settings import load_settings
    from hotswap.flows.cli_checks import check_settings

    overrides: dict[str, Any] = {"home": str(home)} if home else {}
    if dask:
        overrides["dask"] = {"address": dask}
    cli_state.home = home
    settings = load_settings(**overrides)
    cli_state.home = settings.home
    check_settings(settings)
    if check is not None:
        check(settings)
    if cluster and settings.dask.address is not None:
        from hotswap.components.core.dask_address import check_scheduler

        check_scheduler(settings.dask.address, settings.dask.connect_timeout_seconds)
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
    if cli_state.command in CHANGES_GALLERY and cli_state.context is not None:
        # registered before the lease, so it runs after the lease is released (LIFO)
        cli_state.context.call_on_close(lambda: leave_status_snapshot(settings))
    guard_gallery(settings)
    if prefect:
        use_prefect_api(settings)
    return overrides


def leave_status_snapshot(settings: Any) -> None:
    """After a command that changed the gallery succeeded and released its lease (see
    components/lifecycle/status_snapshot.py)."""
    if cli_state.succeeded:
        from hotswap.components.lifecycle.status_snapshot import leave_snapshot

        leave_snapshot(settings)


def require_registry(settings: Any, ref: str) -> None:
    """A read of a version on a home where nothing was recorded: the state error, without creating
    the MLflow database only to find it empty."""
    if settings.registry_absent:
        from hotswap.components.core.errors import StateError

        raise StateError(
            f"registered model {settings.model_name!r} has no version or alias {ref!r} (nothing is "
            f"recorded in {settings.local_tracking_db} yet): run `hotswap bootstrap` first"
        )
