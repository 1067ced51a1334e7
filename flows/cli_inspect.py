"""The read-only ``hotswap`` commands: search, status and report.

They read MLflow and the gallery store only and never touch Prefect, so they work (and answer
fast) on a home where no flow is running; on a fresh home they say so without creating the
MLflow database.
"""

from __future__ import annotations

from pathlib import Path

import typer
from hotswap.flows.cli_output import console, print_decision, print_hits, print_json, print_report
from hotswap.flows.cli_prepare import HomeOption, prepare, require_registry


def search(
    image: Path = typer.Option(None, help="a query image file (PNG/JPEG)"),
    item_id: str = typer.Option(None, help="or: the id of an item of the configured dataset"),
    k: int = typer.Option(5, min=1, help="how many results"),
    home: Path | None = HomeOption,
) -> None:
    """Top-k of a query image against the live gallery, with the champion model."""
    from hotswap.flows.cli_checks import check_search

    overrides = prepare(home, lambda settings: check_search(settings, image, item_id))
    from hotswap.components.core.settings import load_settings

    settings = load_settings(**overrides)
    require_registry(settings, "champion")
    from hotswap.components.lifecycle.search import search_live

    print_hits(search_live(settings, image=image, item_id=item_id, k=k))


def status(
    home: Path | None = HomeOption,
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
) -> None:
    """Champion, challenger (matrix, verdict), live gallery composition by model version, last decision."""
    overrides = prepare(home)
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
    else:  # the last answer while nothing it was read from changed (status_snapshot.py)
        from hotswap.components.lifecycle.status_snapshot import cached_status

        state = cached_status(settings)
    if as_json:
        print_json(state)
    else:
        from hotswap.flows.cli_views import print_status

        print_status(console, state)


def report(
    version: str = typer.Argument(..., help="version number or alias (champion, challenger, previous)"),
    home: Path | None = HomeOption,
) -> None:
    """A version's compatibility report and backfill decision, read from MLflow alone."""
    from hotswap.flows.cli_checks import check_version

    check_version(version, "version")
    overrides = prepare(home)
    from hotswap.components.core.settings import load_settings
    from hotswap.components.lifecycle.status import version_record

    settings = load_settings(**overrides)
    require_registry(settings, version)
    record = version_record(settings, version)
    aliases = f" ({', '.join(record['aliases'])})" if record["aliases"] else ""
    console.rule(f"{settings.model_name} v{record['version']}{aliases}")
    print_report(record["report"].model_dump(mode="json"))
    if record["decision"] is None:
        console.print("no backfill decision recorded (first model, or the refresh stopped before deciding)")
    else:
        print_decision(settings, record["version"])
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
