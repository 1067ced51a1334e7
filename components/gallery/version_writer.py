"""Writing one staged gallery version shard by shard, then finalizing its manifest.

A shard counts as done only when its record parses and every file matches the record's sha256, so
a crash mid-shard leaves it pending and a rerun skips finished shards without rewriting them;
``finalize`` gathers the verified records into ``manifest.json``. Get a writer from
``GalleryStore.begin_version`` or ``open_version`` (components/gallery/version_staging.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from hotswap.components.gallery.publishing import UNSET, _Unset
from hotswap.components.gallery.records import (
    INDEX_FILE,
    MANIFEST_FILE,
    ArrayKind,
    CurrentPointer,
    FileEntry,
    GalleryError,
    GalleryManifest,
    ShardRecord,
    StagingRecord,
    VersionImmutableError,
    VersionIncompleteError,
    npy_bytes,
    npy_load,
    prepare_shard_arrays,
    sha256_hex,
    shard_file,
    shard_record_file,
    to_json,
)
from hotswap.components.gallery.store import ObjectNotFoundError, ObjectStore
from pydantic import ValidationError

if TYPE_CHECKING:
    from hotswap.components.gallery.versions import GalleryStore


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


def _get_or_none(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ObjectNotFoundError:
        return None
