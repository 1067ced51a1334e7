"""The ``hotswap`` commands that change the system: each checks its inputs, then runs one flow.

bootstrap, adopt, gallery-sync, refresh, promote, backfill, audit, rollback and ``data register``
all need a Prefect API (flows/cli_prepare.py finds or starts one); the flow modules are imported
only after the inputs are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from hotswap.flows.cli_errors import cli_state, note
from hotswap.flows.cli_output import console, print_json
from hotswap.flows.cli_prepare import DaskOption, HomeOption, prepare


def bootstrap(
    home: Path | None = HomeOption,
    force: bool = typer.Option(False, "--force", help="bless a first model even if it does not beat chance"),
    dask: str | None = DaskOption,
) -> None:
    """Train the first model, bless it (rubber stamp) and build the first live gallery."""
    from hotswap.flows.cli_checks import check_data

    overrides = prepare(home, check_data, prefect=True, cluster=True, dask=dask)
    from hotswap.flows.bootstrap import bootstrap as bootstrap_flow

    print_json(bootstrap_flow(overrides=overrides, force=force))


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
    force: bool = typer.Option(False, "--force", help="adopt the model even if its self-test is at chance"),
) -> None:
    """Take over a running system: its model as v1, its gallery features as the live gallery."""
    from hotswap.flows.cli_checks import check_adopt, read_spec

    spec_fields: dict[str, Any] = {}

    def check(settings: Any) -> None:
        spec_fields.update(read_spec(spec))
        check_adopt(settings, weights, gallery_features, gallery_ids)

    overrides = prepare(home, check, prefect=True)
    from hotswap.flows.adopt import adopt as adopt_flow

    result = adopt_flow(
        spec=spec_fields,
        weights=str(weights),
        gallery_features=str(gallery_features),
        gallery_ids=str(gallery_ids) if gallery_ids else None,
        overrides=overrides,
        force=force,
    )
    console.print(_adopt_markdown(result))
    print_json({k: v for k, v in result.items() if k != "report"})


def _adopt_markdown(result: dict[str, Any]) -> str:
    from hotswap.components.lifecycle.adopt import AdoptReport

    return AdoptReport.model_validate(result["report"]).to_markdown()


def gallery_sync(
    publish: bool = typer.Option(True, help="make the new version live"),
    home: Path | None = HomeOption,
    dask: str | None = DaskOption,
) -> None:
    """Make the gallery match its manifest: embed added items with the champion, drop removed ones."""
    from hotswap.flows.cli_checks import check_gallery_sync

    overrides = prepare(home, check_gallery_sync, prefect=True, cluster=True, dask=dask)
    from hotswap.flows.adopt import gallery_sync as sync_flow

    print_json(sync_flow(overrides=overrides, publish=publish))


def refresh(
    home: Path | None = HomeOption,
    auto_promote: bool = typer.Option(
        None, "--auto-promote/--no-auto-promote", help="promote a promotable challenger; default: settings"
    ),
    prebuild: bool = typer.Option(
        None,
        "--prebuild/--no-prebuild",
        help="build the gallery now even when the decision waits for review (default: settings "
        "prebuild_on_review; off: planned, built on approval)",
    ),
    dask: str | None = DaskOption,
) -> None:
    """Run the lifecycle: compatible training, validation, DPQ, decision, staged upgrade."""
    from hotswap.flows.cli_checks import check_data

    overrides = prepare(home, check_data, prefect=True, cluster=True, dask=dask)
    from hotswap.flows.refresh import refresh as refresh_flow

    result = refresh_flow(overrides=overrides, auto_promote=auto_promote, prebuild_on_review=prebuild)
    for line in result.get("recovery") or []:  # what it resumed or cleaned up, also in the JSON
        note(line)
    print_json(result)


def promote(
    version: str = typer.Argument("challenger", help="version number or alias"),
    approve: bool = typer.Option(None, "--approve/--reject", help="decide now instead of pausing for the UI"),
    reason: str = typer.Option("", help="why (recorded on the model version)"),
    backfill_mode: str = typer.Option(
        "as-decided", help="as-decided, skip, transform, requantize, partial or full"
    ),
    fraction: float = typer.Option(None, help="fraction for a partial backfill"),
    force: bool = typer.Option(False, "--force", help="promote even a version worse than the live system"),
    home: Path | None = HomeOption,
    dask: str | None = DaskOption,
) -> None:
    """Promote a challenger; without --approve/--reject the run pauses for a decision in the Prefect UI."""
    from hotswap.flows.cli_checks import check_promote, check_version

    check_version(version, "version")
    check_promote(approve, backfill_mode, fraction)
    overrides = prepare(home, prefect=True, cluster=True, dask=dask)
    from hotswap.flows.promote import PromotionInput
    from hotswap.flows.promote import promote as promote_flow

    answer = None
    if approve is not None:
        answer = PromotionInput(
            approve=approve, reason=reason, backfill_mode=backfill_mode, fraction=fraction, force=force
        )
    print_json(promote_flow(overrides=overrides, version=version, answer=answer))


def backfill(
    mode: str = typer.Option(
        "full", help="requantize, transform (maps stored features, reads no image), partial or full"
    ),
    fraction: float = typer.Option(None, help="fraction re-extracted by a partial (or transform) backfill"),
    version: str = typer.Option("challenger", help="model version (or alias) the gallery is rebuilt for"),
    publish: bool = typer.Option(False, help="switch the live gallery to the result (no alias change)"),
    home: Path | None = HomeOption,
    dask: str | None = DaskOption,
) -> None:
    """Rebuild the live gallery for a model version; rerun to resume after an interruption."""
    from hotswap.components.core.preflight import check_backfill_request
    from hotswap.flows.cli_checks import check_data, check_version

    check_backfill_request(mode, fraction)
    check_version(version, "--version")
    overrides = prepare(home, check_data, prefect=True, cluster=True, dask=dask)
    from hotswap.flows.backfill import backfill as backfill_flow

    print_json(
        backfill_flow(overrides=overrides, mode=mode, fraction=fraction, version=version, publish=publish)
    )


def audit(home: Path | None = HomeOption) -> None:
    """Every registered version against every other: matrix, AC/AM, markdown/CSV/HTML in MLflow."""
    from hotswap.flows.cli_checks import check_data

    overrides = prepare(home, check_data, prefect=True)
    from hotswap.flows.audit import audit as audit_flow

    result = audit_flow(overrides=overrides)
    console.print(result["markdown"])


def rollback(home: Path | None = HomeOption) -> None:
    """Make the previous champion and its gallery live again (the same switch as a promotion)."""
    overrides = prepare(home, prefect=True)
    from hotswap.flows.rollback import rollback as rollback_flow

    print_json(rollback_flow(overrides=overrides))


data_app = typer.Typer(help="Datasets a refresh can train on.", no_args_is_help=True)


@data_app.command("register")
def data_register(
    manifest: str = typer.Argument(..., help="a manifest (.csv/.parquet), image folder or built-in source"),
    home: Path | None = HomeOption,
) -> None:
    """Record a dataset version and emit `hotswap.dataset.registered` (which triggers a refresh);
    data already registered emits nothing."""
    from hotswap.components.data.source_check import check_data_source

    overrides = prepare(home, lambda settings: check_data_source(manifest), prefect=True)
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
