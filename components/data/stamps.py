"""What changes when a local data source changes on disk, read without opening it.

A source opened once per process is kept while its stamp holds (components/data/sources.py), and
``hotswap status`` keeps its answer while the stamps of what it read hold
(components/lifecycle/status_snapshot.py). Nothing heavy is imported here: status must not pay
for pandas to learn that nothing changed.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED = ("mnist5k", "synthetic:")


def source_stamp(source: str) -> tuple:
    """Size and mtime of a manifest file or of every file of an image folder; () for a bundled set
    (fixed by its name) or a path that does not exist here (e.g. ``s3://``)."""
    path = Path(source)
    if source.startswith(BUNDLED) or not path.exists():
        return ()
    entries = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
