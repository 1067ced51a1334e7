"""Per-item provenance of a gallery version: which model version produced each row's features.

Each version records, per item, which model produced its features (the *provenance*): a uint16
array aligned with the version's rows, stored as ``backfill/feature_models.npy`` under the version
folder, with the model-version names and the array's sha256 in the manifest metadata (the gallery
format stores only ids/features/codes per shard, so provenance travels beside it, checksummed by
the manifest). A later partial backfill for the same model skips items that already carry its
features, and an auditor can tell a mixed gallery from a clean one.

A row a transform backfill *mapped* (DESIGN.md §17) keeps its lineage in its label: ``"1>3"``
was extracted by v1 and mapped into v3's space, ``"1>3>5"`` then into v5's. The last element is
the row's feature *space* (what calibration and the next transform read); the whole label is
what the decision simulates as served, map by map, so a chain of maps is judged by what it
really stores and not as the candidate's own features.
"""

from __future__ import annotations

import numpy as np
from hotswap.components.gallery.records import GalleryManifest, ShardCorruptedError, npy_load, sha256_hex
from hotswap.components.gallery.store import ObjectNotFoundError, ObjectStore
from hotswap.components.gallery.version_writer import VersionWriter
from hotswap.components.gallery.versions import GalleryStore

PROVENANCE_FILE = "backfill/feature_models.npy"
LINEAGE_SEPARATOR = ">"


def feature_space(label: str) -> str:
    """The model version whose feature space a row's features live in (the label's last element)."""
    return str(label).rsplit(LINEAGE_SEPARATOR, 1)[-1]


def extracted_by(label: str) -> str:
    """The model version that embedded the row's image (the label's first element)."""
    return str(label).split(LINEAGE_SEPARATOR, 1)[0]


def mapped_into(label: str, target: str) -> str:
    """The label of a row after a map into ``target``'s space."""
    return f"{label}{LINEAGE_SEPARATOR}{target}"


def lineage_hops(label: str) -> list[tuple[str, str]]:
    """The maps (from, into) a row went through, in order; [] for an extracted row."""
    parts = str(label).split(LINEAGE_SEPARATOR)
    return list(zip(parts, parts[1:], strict=False))


def _provenance_key(galleries: GalleryStore, gallery: str, version: str) -> str:
    return galleries.version_key(gallery, version, PROVENANCE_FILE)


def feature_models(galleries: GalleryStore, gallery: str, version: str) -> np.ndarray:
    """Per row of a finished version, the model version that produced its features (str [N]).

    Versions written without provenance (by other tools) count as wholly the manifest's model.
    The stored array is checked against the sha256 the manifest metadata records.
    """
    manifest = galleries.load_manifest(gallery, version)
    models, codes = read_provenance(galleries, manifest)
    return np.asarray(models, dtype=str)[codes]


def feature_spaces(galleries: GalleryStore, gallery: str, version: str) -> np.ndarray:
    """Per row, the model version whose space its features live in (str [N]): what calibration
    groups rows by and what a search compares queries against."""
    manifest = galleries.load_manifest(gallery, version)
    models, codes = read_provenance(galleries, manifest)
    return np.asarray([feature_space(label) for label in models], dtype=str)[codes]  # per label, not row


def read_provenance(galleries: GalleryStore, manifest: GalleryManifest) -> tuple[list[str], np.ndarray]:
    meta = manifest.metadata.get("provenance")
    models = manifest.metadata.get("feature_models")
    if not isinstance(meta, dict) or not isinstance(models, list):
        return [manifest.model_version], np.zeros(manifest.num_items, dtype=np.uint16)
    where = f"gallery {manifest.gallery!r} version {manifest.version!r}"
    key = _provenance_key(galleries, manifest.gallery, manifest.version)
    try:
        data = galleries.store.get_bytes(key)
    except ObjectNotFoundError:
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} is missing") from None
    if sha256_hex(data) != meta.get("sha256"):
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} fails its checksum")
    codes = npy_load(data)
    if codes.shape != (manifest.num_items,) or (len(codes) and int(codes.max()) >= len(models)):
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} does not match the manifest")
    return [str(m) for m in models], codes


def write_provenance(writer: VersionWriter, data: bytes) -> None:
    store: ObjectStore = writer.galleries.store
    key = _provenance_key(writer.galleries, writer.gallery, writer.version)
    try:
        if store.get_bytes(key) == data:
            return
    except ObjectNotFoundError:
        pass
    store.put_bytes(key, data)
