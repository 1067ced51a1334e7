"""Publishing gallery versions: seal a finished version and move the CURRENT pointer to it.

Writing CURRENT is the only change readers can see, and each store put is atomic, so a reader sees
the old version or the new one whole. ``set_current`` moves the pointer back for a rollback;
``expected_current`` is an optimistic check against a concurrent switch, not a lock.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from hotswap.components.gallery.records import (
    SEAL_FILE,
    CurrentPointer,
    GalleryError,
    SealRecord,
    to_json,
)
from hotswap.components.gallery.version_reader import GalleryReader


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET


class VersionPublishing(GalleryReader):
    """Seal a finalized version and point CURRENT at it, or move CURRENT back."""

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
