"""The feature transformations a gallery version was built with, stored inside that version.

A ``transform`` backfill maps each provenance model v's stored features with h_v
(components/compat/transform.py). The maps are part of how the version came to be, so they live
in its folder and are listed in its manifest metadata with their checksums::

    galleries/<gallery>/versions/<vid>/transforms/<source model version>/transform.safetensors
    galleries/<gallery>/versions/<vid>/transforms/<source model version>/transform.json

The manifest's ``metadata["transforms"]`` names, per source model, every file with its sha256
and size; :func:`read_transforms` refuses a missing or altered file. The query service never
reads them (features are mapped at build time, queries are not): they are for audit and to
reproduce or resume the version.
"""

from __future__ import annotations

from collections.abc import Mapping

from hotswap.components.compat.transform import FeatureTransform, transform_from_files, transform_to_files
from hotswap.components.gallery.keys import validate_name
from hotswap.components.gallery.records import GalleryManifest, ShardCorruptedError, sha256_hex
from hotswap.components.gallery.store import ObjectNotFoundError
from hotswap.components.gallery.version_writer import VersionWriter
from hotswap.components.gallery.versions import GalleryStore
from pydantic import JsonValue

TRANSFORM_DIR = "transforms"


def _relative(model: str, name: str) -> str:
    return f"{TRANSFORM_DIR}/{validate_name(str(model), 'source model version')}/{name}"


def transform_files(transforms: Mapping[str, FeatureTransform]) -> dict[str, dict[str, bytes]]:
    """Per source model, the files to store (computed once: the manifest lists their checksums)."""
    return {str(model): transform_to_files(t) for model, t in sorted(transforms.items())}


def transforms_metadata(files: Mapping[str, Mapping[str, bytes]]) -> dict[str, JsonValue]:
    """The manifest entry: per source model, each file's path, sha256 and size."""
    return {
        model: {
            name: {"path": _relative(model, name), "sha256": sha256_hex(data), "size": len(data)}
            for name, data in sorted(named.items())
        }
        for model, named in sorted(files.items())
    }


def write_transforms(writer: VersionWriter, files: Mapping[str, Mapping[str, bytes]]) -> None:
    """Put every map's files into the staged version (idempotent: equal bytes are not rewritten)."""
    store = writer.galleries.store
    for model, named in files.items():
        for name, data in named.items():
            key = writer.galleries.version_key(writer.gallery, writer.version, _relative(model, name))
            try:
                if store.get_bytes(key) == data:
                    continue
            except ObjectNotFoundError:
                pass
            store.put_bytes(key, data)


def read_transforms(galleries: GalleryStore, manifest: GalleryManifest) -> dict[str, FeatureTransform]:
    """The maps a version was built with, checked against its manifest ({} when it used none)."""
    listed = manifest.metadata.get("transforms")
    if not isinstance(listed, dict):
        return {}
    where = f"gallery {manifest.gallery!r} version {manifest.version!r}"
    out: dict[str, FeatureTransform] = {}
    for model, entries in listed.items():
        files: dict[str, bytes] = {}
        for name, entry in dict(entries).items():
            key = galleries.version_key(manifest.gallery, manifest.version, entry["path"])
            try:
                data = galleries.store.get_bytes(key)
            except ObjectNotFoundError:
                raise ShardCorruptedError(
                    f"{where}: transformation file {entry['path']} is missing"
                ) from None
            if sha256_hex(data) != entry["sha256"]:
                raise ShardCorruptedError(f"{where}: transformation file {entry['path']} fails its checksum")
            files[name] = data
        out[str(model)] = transform_from_files(files, source=f"{where}, map of v{model}")
    return out
