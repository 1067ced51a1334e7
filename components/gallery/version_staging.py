"""Staging gallery versions: begin or resume one, refuse sealed ones, unseal or discard.

``begin_version`` fixes a job's parameters in ``staging.json`` so that a rerun resumes the same
version and two jobs with different parameters can never mix their shards; nothing staged is
visible to readers until it is published (components/gallery/publishing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from hotswap.components.gallery.records import (
    ARRAY_KINDS,
    MANIFEST_FILE,
    SEAL_FILE,
    STAGING_FILE,
    ArrayKind,
    GalleryError,
    StagingRecord,
    VersionImmutableError,
    as_utc,
    first_error,
    to_json,
)
from hotswap.components.gallery.store import ObjectNotFoundError
from hotswap.components.gallery.version_reader import GalleryReader
from hotswap.components.gallery.version_writer import VersionWriter
from pydantic import JsonValue, ValidationError


class VersionStaging(GalleryReader):
    """Begin, open, unseal and discard staged versions (the writes before a publish)."""

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
