"""Is a data source usable? Checked from its name and header only, before anything starts.

Why: a command that will decode thousands of images, train and write to MLflow should say at
once that its manifest lacks a column or does not exist, not after importing torch, starting a
Prefect API and creating the registry. These checks read at most a manifest's header (CSV) or
schema (parquet); the full row-level validation still runs where the data is loaded
(components/data/objects.py, components/data/sources.py). Messages match theirs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from hotswap.components.core.errors import InputError

MANIFEST_COLUMNS = ("item_id", "uri", "label", "split")
GALLERY_COLUMNS = ("item_id", "uri")
MANIFEST_SUFFIXES = (".csv", ".parquet")


def manifest_columns(path: Path) -> list[str]:
    """The column names of a CSV or parquet manifest (header or schema only)."""
    if not path.exists():
        raise InputError(f"manifest {path}: file does not exist")
    if path.is_dir():
        raise InputError(f"manifest {path}: is a directory, not a .csv or .parquet file")
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return [name.strip() for name in next(csv.reader(handle), [])]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"manifest {path}: cannot be parsed ({exc})") from None
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise InputError(f"manifest {path}: cannot be parsed ({exc})") from None
    raise InputError(f"manifest {path}: unsupported format {path.suffix!r}; use .parquet or .csv")


def check_manifest(path: str | Path, required: Sequence[str] = MANIFEST_COLUMNS) -> None:
    """The manifest exists, is CSV/parquet and has the ``required`` columns."""
    path = Path(path)
    columns = manifest_columns(path)
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; a manifest needs {list(required)}")


def check_data_source(source: str) -> None:
    """``mnist5k``, ``synthetic:<items>:<classes>[:<size>]``, a manifest file or an image folder."""
    if source == "mnist5k":
        return
    if source.startswith("synthetic:"):
        parts = source.split(":")
        try:
            if len(parts) not in (3, 4):
                raise ValueError(f"expected 3 or 4 parts, got {len(parts)}")
            items, classes = int(parts[1]), int(parts[2])
            if len(parts) == 4 and int(parts[3]) < 8:
                raise ValueError(f"image size {parts[3]} is below 8")
        except ValueError as exc:
            raise InputError(
                f"data source {source!r}: expected 'synthetic:<items>:<classes>[:<size>]' ({exc})"
            ) from None
        if classes < 2 or items < classes:
            raise InputError(
                f"data source {source!r}: need n_classes >= 2 and n_items >= n_classes, got "
                f"n_items={items} n_classes={classes}"
            )
        return
    path = Path(source)
    if path.suffix in MANIFEST_SUFFIXES:
        check_manifest(path)
        return
    if path.is_dir():
        return
    raise InputError(
        f"data source {source!r}: not 'mnist5k', 'synthetic:…', a manifest file or an image folder"
    )


def check_gallery_manifest(manifest: str | None) -> None:
    """``gallery.manifest``, when set: a manifest with at least ``item_id`` and ``uri``."""
    if manifest is not None:
        check_manifest(manifest, GALLERY_COLUMNS)
