"""Versioned, sharded, resumable galleries with an atomic switch (DESIGN.md §8).

A gallery is the searchable side of retrieval: item ids with their float features and/or
quantized codes, plus a serialized faiss index. Upgrading the model rewrites it (fully,
partially or only its codes), which can take hours on a real gallery, so a rewrite must survive a
crash and must never expose a half-built state. Layout, under any :class:`ObjectStore`::

    galleries/<gallery>/CURRENT                               live-version pointer (JSON)
    galleries/<gallery>/versions/<vid>/staging.json           the job's parameters, fixed at begin
    galleries/<gallery>/versions/<vid>/shards/<n>.features.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.codes.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.ids.npy
    galleries/<gallery>/versions/<vid>/shards/<n>.json        shard commit record (sizes, sha256)
    galleries/<gallery>/versions/<vid>/manifest.json          the finished version (all checksums)
    galleries/<gallery>/versions/<vid>/index.faiss            optional index bytes
    galleries/<gallery>/versions/<vid>/PUBLISHED              seal: CURRENT has pointed here

``<n>`` is zero-padded to six digits so listings sort in shard order.

Write protocol and why it is safe:

1. ``begin_version`` writes ``staging.json``. Nothing is visible: readers only follow CURRENT.
2. ``write_shard(n)`` writes the shard's ``.npy`` files, then the shard record last. A shard counts
   as done only if its record parses and every file's sha256 matches it, so a crash mid-shard
   (files without record, or a torn file) simply makes the shard pending again. A rerun skips
   done shards without rewriting them.
3. ``finalize`` gathers the verified shard records into ``manifest.json`` (then the index).
   ``created_at`` comes from the staging record, so a resumed run produces byte-identical files.
4. ``publish`` checks every file the manifest names exists (optionally re-verifies checksums),
   writes the ``PUBLISHED`` seal, then writes CURRENT. Writing CURRENT is the only visibility
   change, and each store put is atomic, so a reader sees the old version or the new one whole.

Once sealed a version is immutable: writers refuse to touch it and it cannot be discarded.
``set_current`` moves the pointer back (a transaction rollback) and accepts ``None`` to remove
CURRENT when the rolled-back publish was the gallery's first.

Records, layout and errors live in components/gallery/records.py and are re-exported here.

One writer job per gallery version is assumed (the gallery's lease, components/gallery/lease.py);
``expected_current`` gives an optimistic check against a concurrent switch, not a lock.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
from hotswap.components.gallery.records import (
    ARRAY_KINDS,
    INDEX_FILE,
    MANIFEST_FILE,
    SEAL_FILE,
    STAGING_FILE,
    ArrayKind,
    CurrentPointer,
    FileEntry,
    GalleryArrays,
    GalleryError,
    GalleryManifest,
    ManifestError,
    SealRecord,
    ShardCorruptedError,
    ShardRecord,
    StagingRecord,
    VersionImmutableError,
    VersionIncompleteError,
    as_utc,
    check_array_shape,
    first_error,
    new_version_id,
    npy_bytes,
    npy_load,
    prepare_shard_arrays,
    sha256_hex,
    shard_file,
    shard_record_file,
    to_json,
    validate_name,
)
from hotswap.components.gallery.store import ObjectNotFoundError, ObjectStore
from pydantic import JsonValue, ValidationError

__all__ = [
    "ARRAY_KINDS",
    "UNSET",
    "ArrayKind",
    "CurrentPointer",
    "FileEntry",
    "GalleryArrays",
    "GalleryError",
    "GalleryManifest",
    "GalleryStore",
    "ManifestError",
    "ShardCorruptedError",
    "ShardRecord",
    "StagingRecord",
    "VersionImmutableError",
    "VersionIncompleteError",
    "VersionWriter",
    "new_version_id",
    "shard_file",
    "validate_name",
]


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET


# --------------------------------------------------------------------------- the store


class GalleryStore:
    """Read, write, publish and roll back gallery versions in one :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # keys -----------------------------------------------------------------

    @staticmethod
    def gallery_prefix(gallery: str) -> str:
        return f"galleries/{validate_name(gallery, 'gallery name')}/"

    def current_key(self, gallery: str) -> str:
        return self.gallery_prefix(gallery) + "CURRENT"

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

    # writing --------------------------------------------------------------

    def begin_version(
        self,
        gallery: str,
        version: str,
        *,
        model_version: str,
        num_shards: int,
        arrays: Sequence[ArrayKind] = ARRAY_KINDS,
        codebook_version: str | None = None,
        parent_version: str | None = None,
        metadata: dict[str, JsonValue] | None = None,
        created_at: datetime | None = None,
    ) -> VersionWriter:
        """Start (or resume) staging a version; nothing becomes visible until it is published.

        Resuming with the same parameters returns a writer that skips finished shards; different
        parameters raise :class:`GalleryError` naming the fields that differ, so two jobs can
        never mix their shards. ``created_at`` defaults to now on the first begin and to the
        stored value on a resume. ``arrays`` must include "ids".
        """
        self._refuse_if_sealed(gallery, version)
        arrays = tuple(arrays)
        unknown = [a for a in arrays if a not in ARRAY_KINDS]
        if unknown or "ids" not in arrays or len(set(arrays)) != len(arrays):
            raise ValueError(f"arrays={arrays!r}: must be distinct values of {ARRAY_KINDS} and include 'ids'")
        key = self.version_key(gallery, version, STAGING_FILE)
        existing = self._read_staging(gallery, version)
        fields = dict(
            gallery=gallery,
            version=version,
            model_version=model_version,
            codebook_version=codebook_version,
            parent_version=parent_version,
            num_shards=num_shards,
            arrays=tuple(a for a in ARRAY_KINDS if a in arrays),
            metadata=metadata or {},
        )
        if created_at is not None:
            moment = as_utc(created_at)
        else:
            moment = existing.created_at if existing is not None else datetime.now(UTC)
        try:
            staging = StagingRecord(created_at=moment, **fields)
        except ValidationError as exc:
            raise ValueError(f"gallery {gallery!r} version {version!r}: {first_error(exc)}") from None
        if existing is None:
            self.store.put_bytes(key, to_json(staging))
            return VersionWriter(self, staging)
        old, new = existing.model_dump(mode="json"), staging.model_dump(mode="json")
        differing = [
            f"{name}: staged {old[name]!r}, now {new[name]!r}" for name in old if old[name] != new[name]
        ]
        if differing:
            raise GalleryError(
                f"gallery {gallery!r} version {version!r} is already staged with other parameters "
                f"({'; '.join(differing)}); use a new version id"
            )
        return VersionWriter(self, existing)

    def open_version(self, gallery: str, version: str) -> VersionWriter:
        """A writer for a version already begun elsewhere (e.g. on a Dask worker writing some shards)."""
        self._refuse_if_sealed(gallery, version)
        staging = self._read_staging(gallery, version)
        if staging is None:
            raise GalleryError(f"gallery {gallery!r} version {version!r} was never begun (no {STAGING_FILE})")
        return VersionWriter(self, staging)

    def _read_staging(self, gallery: str, version: str) -> StagingRecord | None:
        key = self.version_key(gallery, version, STAGING_FILE)
        try:
            data = self.store.get_bytes(key)
        except ObjectNotFoundError:
            return None
        try:
            staging = StagingRecord.model_validate_json(data)
        except ValidationError as exc:
            raise GalleryError(
                f"gallery {gallery!r} version {version!r}: {key} is corrupted: {first_error(exc)}"
            ) from None
        if (staging.gallery, staging.version) != (gallery, version):
            raise GalleryError(f"gallery {gallery!r} version {version!r}: {key} belongs to another version")
        return staging

    def _refuse_if_sealed(self, gallery: str, version: str) -> None:
        if self.is_sealed(gallery, version) or self.read_current(gallery) == version:
            raise VersionImmutableError(
                f"gallery {gallery!r} version {version!r} has been published and is immutable; "
                "write a new version"
            )

    def unseal(self, gallery: str, version: str) -> bool:
        """Remove the seal of a version whose publish was rolled back before it was confirmed.

        Only for undoing a switch (components/gallery/switch_intent.py): the version was live for a
        moment and never passed its health check, so it goes back to staged (a rerun may resume
        or discard it). Refused while CURRENT points at it. Returns whether a seal was removed.
        """
        if self.read_current(gallery) == version:
            raise VersionImmutableError(f"gallery {gallery!r} version {version!r} is live; cannot unseal it")
        key = self.version_key(gallery, version, SEAL_FILE)
        if not self.store.exists(key):
            return False
        self.store.delete(key)
        return True

    def discard_version(self, gallery: str, version: str) -> None:
        """Delete an abandoned, never-published version (manifest first, so it stops being listed)."""
        self._refuse_if_sealed(gallery, version)
        prefix = self.version_prefix(gallery, version)
        self.store.delete(prefix + MANIFEST_FILE)
        for key in self.store.list(prefix):
            self.store.delete(key)

    # switching ------------------------------------------------------------

    def set_current(
        self,
        gallery: str,
        version: str | None,
        *,
        expected_current: str | None | _Unset = UNSET,
        verify_checksums: bool = False,
    ) -> CurrentPointer | None:
        """Point CURRENT at ``version`` (see :meth:`publish`), or remove CURRENT for ``None``.

        This is the rollback primitive: pass the ``previous`` of the pointer a publish returned
        (None when that publish was the gallery's first). Returns the new pointer, or None.
        """
        if version is not None:
            return self.publish(
                gallery, version, expected_current=expected_current, verify_checksums=verify_checksums
            )
        self._check_expected(gallery, expected_current)
        self.store.delete(self.current_key(gallery))
        return None

    def publish(
        self,
        gallery: str,
        version: str,
        *,
        expected_current: str | None | _Unset = UNSET,
        verify_checksums: bool = False,
    ) -> CurrentPointer:
        """Make a finalized version live: check it is whole, seal it, then write CURRENT last.

        The version's manifest must load and every file it names must exist (and match its
        sha256 if ``verify_checksums``). ``expected_current``, when given, must equal the live
        version or :class:`GalleryError` is raised and nothing changes. Returns the new pointer;
        its ``previous`` is what a rollback restores with :meth:`set_current`.
        """
        self.verify_version(gallery, version, checksums=verify_checksums)
        live = self._check_expected(gallery, expected_current)
        seal = self.version_key(gallery, version, SEAL_FILE)
        if not self.store.exists(seal):
            self.store.put_bytes(seal, to_json(SealRecord(sealed_at=datetime.now(UTC))))
        pointer = CurrentPointer(
            gallery=gallery, version=version, previous=live, updated_at=datetime.now(UTC)
        )
        self.store.put_atomic(self.current_key(gallery), to_json(pointer))  # the only visibility change
        return pointer

    def _check_expected(self, gallery: str, expected_current: str | None | _Unset) -> str | None:
        """The live version, after checking it is the one the caller expects (if it said)."""
        live = self.read_current(gallery)
        if expected_current is not UNSET and expected_current != live:
            raise GalleryError(
                f"gallery {gallery!r}: CURRENT is {live!r}, expected {expected_current!r}; "
                "another job switched it, refusing to overwrite"
            )
        return live


# --------------------------------------------------------------------------- the writer


class VersionWriter:
    """Writes one staged version shard by shard; obtain it from :meth:`GalleryStore.begin_version`.

    Safe to use from several threads or processes for different shards (each process opening
    its own writer with :meth:`GalleryStore.open_version`); ``finalize`` and ``publish`` run once.
    """

    def __init__(self, galleries: GalleryStore, staging: StagingRecord) -> None:
        self.galleries = galleries
        self.staging = staging
        self._verified: dict[int, ShardRecord] = {}

    @property
    def gallery(self) -> str:
        return self.staging.gallery

    @property
    def version(self) -> str:
        return self.staging.version

    @property
    def num_shards(self) -> int:
        return self.staging.num_shards

    def _key(self, relative: str) -> str:
        return self.galleries.version_key(self.gallery, self.version, relative)

    def _where(self, n: int | None = None) -> str:
        where = f"gallery {self.gallery!r} version {self.version!r}"
        return where if n is None else f"{where} shard {n}"

    def _check_index(self, n: int) -> None:
        if not isinstance(n, int | np.integer) or not 0 <= n < self.num_shards:
            raise ValueError(f"{self._where()}: shard number {n!r} is outside 0..{self.num_shards - 1}")

    def _ensure_mutable(self) -> None:
        if self.galleries.is_sealed(self.gallery, self.version):
            raise VersionImmutableError(f"{self._where()} has been published and is immutable")

    def shard_done(self, n: int) -> bool:
        """Whether shard ``n`` is committed and all its files still match their checksums."""
        return self._verified_record(n) is not None

    def _verified_record(self, n: int) -> ShardRecord | None:
        self._check_index(n)
        if n in self._verified:
            return self._verified[n]
        try:
            record = ShardRecord.model_validate_json(
                self.galleries.store.get_bytes(self._key(shard_record_file(n)))
            )
        except (ObjectNotFoundError, ValidationError):
            return None  # never committed, or a torn record: the shard is simply pending
        if record.index != n or set(record.files) != set(self.staging.arrays):
            return None
        for entry in record.files.values():
            try:
                data = self.galleries.store.get_bytes(self._key(entry.path))
            except ObjectNotFoundError:
                return None
            if len(data) != entry.size or sha256_hex(data) != entry.sha256:
                return None
        self._verified[n] = record
        return record

    def pending_shards(self) -> list[int]:
        """Shard numbers still to write, in order (verifies the finished ones)."""
        return [n for n in range(self.num_shards) if not self.shard_done(n)]

    def write_shard(
        self,
        n: int,
        ids: np.ndarray,
        features: np.ndarray | None = None,
        codes: np.ndarray | None = None,
    ) -> ShardRecord:
        """Write shard ``n`` unless it is already done (then the stored record is returned as is).

        Check :meth:`shard_done` before computing a shard's arrays to save the work too. The
        first complete write of a shard wins; a rerun never rewrites it. Arrays: ``ids`` 1-D
        integers (stored int64) or strings; ``features`` float [count, d] (stored float32,
        finite); ``codes`` unsigned integers [count, m]. Which ones to give was fixed at begin.
        """
        self._check_index(n)
        given = {"ids": ids, "features": features, "codes": codes}
        present = {kind for kind, value in given.items() if value is not None}
        if present != set(self.staging.arrays):
            raise ValueError(
                f"{self._where(n)}: got arrays {sorted(present)}, "
                f"the version stores {sorted(self.staging.arrays)}"
            )
        prepared = prepare_shard_arrays(given, self._where(n))  # bad input fails before any I/O
        self._ensure_mutable()
        done = self._verified_record(n)
        if done is not None:
            return done
        files: dict[ArrayKind, FileEntry] = {}
        payloads: dict[str, bytes] = {}
        for kind in self.staging.arrays:
            data = npy_bytes(prepared[kind])
            files[kind] = FileEntry(path=shard_file(n, kind), size=len(data), sha256=sha256_hex(data))
            payloads[kind] = data
        record = ShardRecord(
            index=n,
            count=len(prepared["ids"]),
            id_kind="str" if prepared["ids"].dtype.kind == "U" else "int64",
            feature_dim=prepared["features"].shape[1] if "features" in prepared else None,
            code_length=prepared["codes"].shape[1] if "codes" in prepared else None,
            code_dtype=prepared["codes"].dtype.name if "codes" in prepared else None,
            files=files,
        )
        for kind, data in payloads.items():
            self.galleries.store.put_bytes(self._key(files[kind].path), data)
        self.galleries.store.put_bytes(self._key(shard_record_file(n)), to_json(record))  # commit
        self._verified[n] = record
        return record

    def finalize(self, index_bytes: bytes | None = None, *, check_unique_ids: bool = True) -> GalleryManifest:
        """Write the manifest from the verified shard records, then the index bytes (if any).

        Idempotent: an identical manifest or index already stored is not rewritten. Raises
        :class:`VersionIncompleteError` listing missing shards, :class:`GalleryError` when shards
        disagree (dimensions, id kind) or, with ``check_unique_ids``, share item ids.
        """
        self._ensure_mutable()
        records, missing = [], []
        for n in range(self.num_shards):
            record = self._verified_record(n)
            if record is None:
                missing.append(n)
            else:
                records.append(record)
        if missing:
            raise VersionIncompleteError(
                f"{self._where()}: shards {missing} are not written (or fail their checksums)"
            )
        first = records[0]
        for record in records[1:]:
            a = (record.id_kind, record.feature_dim, record.code_length, record.code_dtype)
            b = (first.id_kind, first.feature_dim, first.code_length, first.code_dtype)
            if a != b:
                raise GalleryError(
                    f"{self._where(record.index)} has (id_kind, feature_dim, code_length, code_dtype)={a}, "
                    f"shard 0 has {b}"
                )
        if check_unique_ids:
            self._check_unique_ids(records)
        index_entry = None
        if index_bytes is not None:
            if not isinstance(index_bytes, bytes | bytearray | memoryview):
                raise TypeError(
                    f"{self._where()}: index_bytes must be bytes, not {type(index_bytes).__name__}"
                )
            index_bytes = bytes(index_bytes)
            index_entry = FileEntry(path=INDEX_FILE, size=len(index_bytes), sha256=sha256_hex(index_bytes))
        s = self.staging
        manifest = GalleryManifest(
            gallery=s.gallery,
            version=s.version,
            model_version=s.model_version,
            codebook_version=s.codebook_version,
            parent_version=s.parent_version,
            created_at=s.created_at,
            arrays=s.arrays,
            num_shards=s.num_shards,
            num_items=sum(r.count for r in records),
            id_kind=first.id_kind,
            feature_dim=first.feature_dim,
            code_length=first.code_length,
            code_dtype=first.code_dtype,
            shards=records,
            index=index_entry,
            metadata=s.metadata,
        )
        store = self.galleries.store
        data = to_json(manifest)
        if _get_or_none(store, self._key(MANIFEST_FILE)) != data:
            store.put_bytes(self._key(MANIFEST_FILE), data)
        if index_bytes is None:
            store.delete(self._key(INDEX_FILE))  # an index from an earlier finalize no longer belongs
        elif _get_or_none(store, self._key(INDEX_FILE)) != index_bytes:
            store.put_bytes(self._key(INDEX_FILE), index_bytes)
        return manifest

    def _check_unique_ids(self, records: list[ShardRecord]) -> None:
        parts = [npy_load(self.galleries.store.get_bytes(self._key(r.files["ids"].path))) for r in records]
        ids = np.concatenate(parts)
        unique, counts = np.unique(ids, return_counts=True)
        if len(unique) != len(ids):
            dupes = unique[counts > 1][:5].tolist()
            raise GalleryError(f"{self._where()}: item ids occur more than once across shards, e.g. {dupes}")

    def publish(
        self, *, expected_current: str | None | _Unset = UNSET, verify_checksums: bool = False
    ) -> CurrentPointer:
        """Make this (finalized) version live; see :meth:`GalleryStore.set_current`."""
        return self.galleries.publish(
            self.gallery, self.version, expected_current=expected_current, verify_checksums=verify_checksums
        )


# --------------------------------------------------------------------------- helpers


def _get_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ObjectNotFoundError:
        return None
