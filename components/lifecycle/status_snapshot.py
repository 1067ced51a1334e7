"""``hotswap status`` answered again from its last answer while nothing it reads has changed.

A status reads the registry, the live gallery (its records, its composition by model version) and
the gallery's own manifest (to say whether the live gallery holds exactly its items). The last
part parses the data source: pandas and, for the bundled digits, a 5,000-row file, three times
the cost of ``--help`` before anything is printed. A reviewer who runs ``status`` ten times a day
mostly asks about a home where nothing happened since the last time.

So the answer is kept in ``<home>/cache/status.json`` with a fingerprint of everything it was
read from, the way ``git status`` trusts a file whose stat data did not change:

- the settings status depends on (another home, registry, store, model, gallery, data or gallery
  manifest is another fingerprint; training knobs are not part of it);
- the MLflow SQLite database with its journal and WAL files (size and modification time): every
  alias, tag and stage is a database write, and artifacts are written before the rows that
  point at them;
- the store's ``CURRENT`` pointer of the gallery; a switch intent or a held lease means a command
  is changing the gallery (or died doing it), and then there is no fingerprint;
- the data source and the gallery manifest: a bundled set by its name, a local file or image
  folder by the size and modification time of its files (components/data/stamps.py, the stamp a
  process already uses to know when to reopen a source).

Anything else (a tracking server, an ``s3://`` store or manifest) has no fingerprint: status is
then read in full every time, as before. The fingerprint is taken before and after a full read,
and the answer is kept only when both agree (nothing changed while it was read).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hotswap.components.data.stamps import source_stamp
from hotswap.components.gallery.keys import current_key, intent_key, lease_key
from hotswap.components.gallery.store_uri import parse_store_uri

#: Bump when the status dictionary changes shape: an older snapshot is then read in full again.
SNAPSHOT_FORMAT = 1
#: The settings a status depends on: where things live, which model and gallery, and which data
#: the gallery manifest is compared with (training knobs do not change what status shows).
STATUS_SETTINGS = {
    "home",
    "tracking_uri",
    "store_uri",
    "s3_endpoint_url",
    "model_name",
    "gallery_name",
    "data",
    "gallery",
}


def snapshot_path(settings: Any) -> Path:
    return Path(settings.home) / "cache" / "status.json"


def fingerprint(settings: Any) -> str | None:
    """What identifies everything ``status`` reads (a JSON text), or None when one of them cannot be
    identified cheaply."""
    database = settings.local_tracking_db
    location = parse_store_uri(settings.resolved_store_uri)
    if database is None or location.kind != "local":
        return None
    store = Path(location.path)
    gallery = settings.gallery_name
    if any((store / key).exists() for key in (intent_key(gallery), lease_key(gallery))):
        return None  # a command is changing the gallery, or died doing so: read everything
    parts: list[Any] = [SNAPSHOT_FORMAT, settings.model_dump(mode="json", include=STATUS_SETTINGS)]
    for suffix in ("", "-journal", "-wal"):
        parts.append(_stat(Path(f"{database}{suffix}")))
    parts.append(_stat(store / current_key(gallery)))
    for source in (settings.data.source, settings.gallery.manifest):
        if source is not None:
            described = _describe_source(source)
            if described is None:
                return None
            parts.append(described)
    return json.dumps(parts, sort_keys=True, default=str)  # compared whole: no hashing to import


def cached_status(settings: Any, read: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The status ``read(settings)`` gives (default: the full read, components/lifecycle/status.py),
    from the snapshot when its fingerprint still holds."""
    before = fingerprint(settings)
    path = snapshot_path(settings)
    if before is not None:
        try:
            kept = json.loads(path.read_text())
            if kept.get("fingerprint") == before:
                return kept["state"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no snapshot yet, or an unreadable one: read in full
    state = (read or _full_read)(settings)
    if before is not None and fingerprint(settings) == before:
        _write(path, {"fingerprint": before, "state": state})
    return state


def leave_snapshot(settings: Any) -> None:
    """After a lifecycle run changed the gallery and released its lease: read the status once, so
    that the next ``hotswap status`` answers from it. The run has numpy and the data loaded
    already; ``status`` would not. Never raises: it is a shortcut, not part of the run."""
    try:
        if fingerprint(settings) is not None:
            cached_status(settings)
    except Exception:
        logging.getLogger(__name__).debug("status snapshot not written", exc_info=True)


def _full_read(settings: Any) -> dict[str, Any]:
    from hotswap.components.lifecycle.status import system_status  # numpy, pandas: only on a miss

    return system_status(settings)


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the snapshot whole (a reader never sees half of it); a home we cannot write to
    (read-only) only loses the shortcut."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(data, default=str))
        partial.replace(path)
    except OSError:
        pass


def _stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _describe_source(source: str) -> Any:
    """What identifies a data source's contents without reading them; None when that would cost
    (an ``s3://`` manifest: its objects would have to be listed)."""
    if "://" in source:
        return None
    return [list(entry) for entry in source_stamp(source)] or source
