"""What each command checks before it starts anything (no torch, MLflow, Prefect or boto3).

Why: an input error should cost about as much as ``--help``. These checks run on the loaded
settings and the command's own arguments, before the gallery lease, the MLflow database or a
Prefect API exists. They look at names, files and headers only; what needs the registry or the
decoded data (an unknown version, labels that do not exist) is still checked by the flows.
Every failure is an :class:`InputError`: one line naming the input (exit code 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hotswap.components.core.errors import InputError
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.source_check import check_data_source, check_gallery_manifest
from hotswap.components.gallery.store_uri import parse_store_uri

ALIASES = ("champion", "challenger", "previous")
PROMOTE_MODES = ("as-decided", "skip", "transform", "requantize", "partial", "full")


def check_settings(settings: HotswapSettings) -> None:
    """Every command: the store URI parses (its scheme, bucket, endpoint)."""
    try:
        parse_store_uri(settings.resolved_store_uri)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def check_data(settings: HotswapSettings) -> None:
    """Commands that read the data: data.source and the gallery's own manifest usable."""
    check_data_source(settings.data.source)
    check_gallery_manifest(settings.gallery.manifest)


def check_version(value: str, what: str) -> None:
    """A model version is a positive number or an alias."""
    if value in ALIASES or (value.isdigit() and int(value) > 0) or value.startswith("models:/"):
        return
    raise InputError(
        f"{what} {value!r} is not a version: give a number (1, 2, ...) or one of {', '.join(ALIASES)}"
    )


def check_promote(approve: bool | None, backfill_mode: str, fraction: float | None) -> None:
    """``promote``'s options, and that a pause for a reviewer has a Prefect UI to pause in."""
    if backfill_mode not in PROMOTE_MODES:
        raise InputError(
            f"--backfill-mode {backfill_mode!r} is not valid (backfill_mode); "
            f"use one of {', '.join(PROMOTE_MODES)}"
        )
    if backfill_mode == "partial" and (fraction is None or not 0.0 < fraction < 1.0):
        raise InputError(f"--fraction {fraction}: a partial backfill needs 0 < fraction < 1")
    if backfill_mode != "partial" and fraction is not None:
        raise InputError(f"--fraction {fraction} only applies to --backfill-mode partial")
    if approve is None and not os.environ.get("PREFECT_API_URL"):
        import typer

        raise typer.BadParameter(
            "without --approve/--reject the run pauses for a reviewer in the Prefect UI, which needs a "
            "Prefect server: set PREFECT_API_URL (see docs/operations.md) or decide here",
            param_hint="--approve/--reject",
        )


def check_readable_file(path: Path, what: str) -> None:
    if not path.is_file():
        state = "is a directory" if path.is_dir() else "does not exist"
        raise InputError(f"{what} {path}: {state}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{what} {path}: cannot be read (permission denied)")


def read_spec(path: Path) -> dict[str, Any]:
    """``adopt --spec``: a readable JSON object."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--spec {path}: not a readable JSON model spec ({exc})") from None
    if not isinstance(spec, dict):
        raise InputError(f"--spec {path}: a model spec is a JSON object, got {type(spec).__name__}")
    return spec


def check_adopt(settings: HotswapSettings, weights: Path, features: Path, ids: Path | None) -> None:
    """``adopt``'s files exist and are of a kind it reads; the training data is usable."""
    check_readable_file(weights, "--weights")
    check_readable_file(features, "--gallery-features")
    if features.suffix not in (".parquet", ".npy"):
        raise InputError(f"--gallery-features {features}: use a .parquet or .npy file")
    if ids is not None:
        check_readable_file(ids, "--gallery-ids")
    check_data(settings)


def check_gallery_sync(settings: HotswapSettings) -> None:
    """``gallery-sync`` reads the gallery manifest, else the configured data's gallery split."""
    check_data(settings)


def check_search(settings: HotswapSettings, image: Path | None, item_id: str | None) -> None:
    """Exactly one query; an image file must be readable, an item id needs a usable data source."""
    if (image is None) == (item_id is None):
        import typer

        raise typer.BadParameter("give exactly one of --image or --item-id")
    if image is not None and not Path(image).is_file():
        raise InputError(f"query image {image}: cannot be read (no such file)")
    if item_id is not None:
        check_data_source(settings.data.source)
