"""The read side of versioned galleries: keys, the CURRENT pointer, manifests and verified shards.

Every byte read back is checked against the manifest's size and sha256 before it is used, so a torn
or tampered file is reported as :class:`ShardCorruptedError` naming the gallery, version and file.
The layout and the write protocol are described in components/gallery/versions.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hotswap.components.gallery import keys
from hotswap.components.gallery.keys import validate_name
from hotswap.components.gallery.records import (
    MANIFEST_FILE,
    SEAL_FILE,
    STAGING_FILE,
    CurrentPointer,
    FileEntry,
    GalleryArrays,
    GalleryError,
    GalleryManifest,
    ManifestError,
    ShardCorruptedError,
    VersionIncompleteError,
    check_array_shape,
    first_error,
    npy_load,
    sha256_hex,
)
from hotswap.components.gallery.store import ObjectNotFoundError, ObjectStore
from pydantic import ValidationError


class GalleryReader:
    """Keys and verified reads of gallery versions in one :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # keys -----------------------------------------------------------------

    @staticmethod
    def gallery_prefix(gallery: str) -> str:
        return keys.gallery_prefix(gallery)

    def current_key(self, gallery: str) -> str:
        return self.gallery_prefix(gallery) + keys.CURRENT_FILE

    def version_prefix(self, gallery: str, version: str) -> str:
        return f"{self.gallery_prefix(gallery)}versions/{validate_name(version, 'version id')}/"

    def version_key(self, gallery: str, version: str, relative: str) -> str:
        return self.version_prefix(gallery, version) + relative

    # reading --------------------------------------------------------------

    def read_pointer(self, gallery: str) -> CurrentPointer | None:
        """The CURRENT record, or None when no version was ever published."""
        key = self.current_key(gallery)
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            return None
        try:
            pointer = CurrentPointer.model_validate_json(data)
        except ValidationError as exc:
            raise GalleryError(
                f"gallery {gallery!r}: CURRENT ({key}) is unreadable: {first_error(exc)}"
            ) from None
        if pointer.gallery != gallery:
            raise GalleryError(f"gallery {gallery!r}: CURRENT names gallery {pointer.gallery!r}")
        return pointer

    def read_current(self, gallery: str) -> str | None:
        """The live version id, or None when the gallery has never been published."""
        pointer = self.read_pointer(gallery)
        return pointer.version if pointer else None

    def list_versions(self, gallery: str, include_staged: bool = False) -> list[str]:
        """Finalized version ids (with a manifest), sorted; ``include_staged`` adds unfinished ones."""
        prefix = self.gallery_prefix(gallery) + "versions/"
        wanted = {MANIFEST_FILE, STAGING_FILE} if include_staged else {MANIFEST_FILE}
        versions = set()
        for key in self.store.list(prefix):
            version, _, rest = key[len(prefix) :].partition("/")
            if rest in wanted:
                versions.add(version)
        return sorted(versions)

    def is_sealed(self, gallery: str, version: str) -> bool:
        """Whether CURRENT has ever pointed at this version (it is then immutable)."""
        return self.store.exists(self.version_key(gallery, version, SEAL_FILE))

    def load_manifest(self, gallery: str, version: str) -> GalleryManifest:
        """The version's manifest; :class:`ManifestError` naming the version if anything is off."""
        key = self.version_key(gallery, version, MANIFEST_FILE)
        where = f"gallery {gallery!r} version {version!r}"
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            raise ManifestError(f"{where}: manifest {key} is missing (version not finalized?)") from None
        try:
            manifest = GalleryManifest.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestError(
                f"{where}: manifest {key} is corrupted or inconsistent: {first_error(exc)}"
            ) from None
        if (manifest.gallery, manifest.version) != (gallery, version):
            raise ManifestError(
                f"{where}: manifest {key} describes gallery {manifest.gallery!r} version {manifest.version!r}"
            )
        return manifest

    def load_shard(
        self, gallery: str, version: str, n: int, manifest: GalleryManifest | None = None
    ) -> GalleryArrays:
        """Shard ``n``, every file checked against the manifest's sha256, size and shape."""
        manifest = manifest or self.load_manifest(gallery, version)
        if not 0 <= n < manifest.num_shards:
            raise ValueError(
                f"gallery {gallery!r} version {version!r} has shards 0..{manifest.num_shards - 1}, not {n}"
            )
        shard = manifest.shards[n]
        where = f"gallery {gallery!r} version {version!r} shard {n}"
        arrays: dict[str, np.ndarray] = {}
        for kind, entry in shard.files.items():
            data = self._read_verified(gallery, version, entry, where)
            try:
                array = npy_load(data)
            except (ValueError, OSError) as exc:
                raise ShardCorruptedError(
                    f"{where}: {entry.path} is not a readable .npy file: {exc}"
                ) from None
            check_array_shape(array, kind, shard, f"{where}: {entry.path}")
            arrays[kind] = array
        return GalleryArrays(ids=arrays["ids"], features=arrays.get("features"), codes=arrays.get("codes"))

    def load_ids(self, gallery: str, version: str, max_workers: int = 4) -> np.ndarray:
        """The item ids of a version in shard order, reading only the ids files (checksummed)."""
        manifest = self.load_manifest(gallery, version)

        def ids_of(n: int) -> np.ndarray:
            entry = manifest.shards[n].files["ids"]
            where = f"gallery {gallery!r} version {version!r} shard {n}"
            try:
                return npy_load(self._read_verified(gallery, version, entry, where))
            except (ValueError, OSError) as exc:
                raise ShardCorruptedError(
                    f"{where}: {entry.path} is not a readable .npy file: {exc}"
                ) from None

        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            parts = list(pool.map(ids_of, range(manifest.num_shards)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=str)

    def load_arrays(self, gallery: str, version: str, max_workers: int = 4) -> GalleryArrays:
        """All shards of a version concatenated in shard order (shards fetched in parallel)."""
        manifest = self.load_manifest(gallery, version)
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
            shards = list(
                pool.map(lambda n: self.load_shard(gallery, version, n, manifest), range(manifest.num_shards))
            )

        def concat(kind: str) -> np.ndarray | None:
            parts = [getattr(s, kind) for s in shards]
            return None if parts[0] is None else np.concatenate(parts)

        return GalleryArrays(ids=concat("ids"), features=concat("features"), codes=concat("codes"))

    def load_index(self, gallery: str, version: str) -> bytes | None:
        """The version's index bytes (checksum-verified), or None if it was finalized without one."""
        manifest = self.load_manifest(gallery, version)
        if manifest.index is None:
            return None
        return self._read_verified(
            gallery, version, manifest.index, f"gallery {gallery!r} version {version!r}"
        )

    def verify_version(self, gallery: str, version: str, checksums: bool = True) -> GalleryManifest:
        """Check a version is complete: every file exists and (if ``checksums``) matches its sha256."""
        manifest = self.load_manifest(gallery, version)
        where = f"gallery {gallery!r} version {version!r}"
        for entry in manifest.files():
            if checksums:
                self._read_verified(gallery, version, entry, where)
            elif not self.store.exists(self.version_key(gallery, version, entry.path)):
                raise VersionIncompleteError(f"{where}: file {entry.path} named by the manifest is missing")
        return manifest

    def _read_verified(self, gallery: str, version: str, entry: FileEntry, where: str) -> bytes:
        key = self.version_key(gallery, version, entry.path)
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            raise ShardCorruptedError(f"{where}: file {entry.path} is missing") from None
        digest = sha256_hex(data)
        if len(data) != entry.size or digest != entry.sha256:
            raise ShardCorruptedError(
                f"{where}: file {entry.path} fails its checksum (expected {entry.size} bytes sha256 "
                f"{entry.sha256[:12]}..., got {len(data)} bytes sha256 {digest[:12]}...)"
            )
        return data
