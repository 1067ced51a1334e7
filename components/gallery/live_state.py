"""What is live, read from its two sources of truth: the champion alias and the gallery's CURRENT.

A model version and a gallery version only make sense together: the gallery a promotion switches
to is recorded on the model version (tag ``backfill.gallery_version``, written by the backfill
decision), so the pair is *whole* when CURRENT names the gallery the champion's tag names, or a
version ``gallery-sync`` made from it with the champion (components/gallery/sync_lineage.py says why a
sync does not move the tag). A skip decision names the gallery that was already live; a
bootstrap names the first gallery. A model registered without that tag is paired with a gallery
whose features it built itself.

The switch transaction (flows/switch.py) moves the alias first and CURRENT second, so a reader
that polls both can see a half-moved state for a moment; :func:`read_live_target` says so
(``whole`` is False) and the query service keeps its old pair until the state is whole again.
Rollback uses the same binding to find which gallery goes back with the previous champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hotswap.components.gallery.records import ManifestError
from hotswap.components.gallery.sync_lineage import belongs_to, newest_synced
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.records import CHAMPION, PREVIOUS, VersionNotFoundError

if TYPE_CHECKING:
    from hotswap.components.registry.mlflow_registry import ModelRegistry

TAG_GALLERY_VERSION = "backfill.gallery_version"


class NothingToRollBackError(RuntimeError):
    """There is no previous champion (or no gallery that belongs to it)."""


@dataclass(frozen=True)
class LiveTarget:
    """The pair the registry and the gallery store name right now, and whether it is whole."""

    model_version: str | None
    gallery_version: str | None
    whole: bool
    reason: str

    @property
    def key(self) -> tuple[str | None, str | None]:
        return (self.model_version, self.gallery_version)


def bound_gallery(registry: ModelRegistry, model_version: str) -> str | None:
    """The gallery version that goes live with ``model_version`` (its tag), or None if none is recorded."""
    return registry.resolve(model_version).tags.get(TAG_GALLERY_VERSION) or None


def read_live_target(
    registry: ModelRegistry,
    galleries: GalleryStore,
    gallery: str,
    memo: dict[tuple[str, str, str], bool] | None = None,
) -> LiveTarget:
    """Champion and CURRENT now; ``whole`` when CURRENT is the gallery that belongs to the champion.

    ``memo`` keeps what a poller learnt about (version, model, bound gallery): published versions
    are immutable, so the answer never changes, and a watcher need not reread a manifest each poll.
    """
    champion = registry.aliases().get(CHAMPION)
    current = galleries.read_current(gallery)
    if champion is None or current is None:
        missing = "no champion alias" if champion is None else f"gallery {gallery!r} has no CURRENT"
        return LiveTarget(champion, current, False, f"nothing live yet: {missing}")
    try:
        bound = bound_gallery(registry, champion)
    except VersionNotFoundError as exc:
        return LiveTarget(champion, current, False, str(exc))
    if bound is not None:
        if bound == current:
            return LiveTarget(champion, current, True, f"champion v{champion} belongs to gallery {current}")
        key = (current, champion, bound)
        try:
            synced = (
                memo[key]
                if memo is not None and key in memo
                else belongs_to(galleries, gallery, current, champion, bound)
            )
        except ManifestError as exc:
            return LiveTarget(champion, current, False, str(exc))
        if memo is not None:
            memo[key] = synced
        if synced:
            return LiveTarget(
                champion,
                current,
                True,
                f"champion v{champion} belongs to gallery {bound}, synced as {current}",
            )
        return LiveTarget(
            champion,
            current,
            False,
            f"champion v{champion} belongs to gallery {bound}, CURRENT is {current} (switch in progress?)",
        )
    try:
        built_by = galleries.load_manifest(gallery, current).model_version
    except ManifestError as exc:
        return LiveTarget(champion, current, False, str(exc))
    if built_by == champion:
        return LiveTarget(champion, current, True, f"gallery {current} was built by champion v{champion}")
    return LiveTarget(
        champion,
        current,
        False,
        f"champion v{champion} names no gallery ({TAG_GALLERY_VERSION}) and gallery {current} "
        f"was built by v{built_by}",
    )


def rollback_target(registry: ModelRegistry, galleries: GalleryStore, gallery: str) -> tuple[str, str]:
    """(previous champion, its gallery): what ``hotswap rollback`` makes live again.

    The gallery is the one recorded on the previous champion, as last synced while it was live
    (the newest published sync of it); without that record, the version CURRENT pointed at
    before the last switch. It must still be a finalized version.
    """
    previous = registry.aliases().get(PREVIOUS)
    if previous is None:
        raise NothingToRollBackError(
            f"model {registry.model_name!r} has no {PREVIOUS!r} alias: nothing was promoted over it yet"
        )
    target = bound_gallery(registry, previous)
    if target is None:
        pointer = galleries.read_pointer(gallery)
        target = pointer.previous if pointer is not None else None
    else:  # items synced while it was champion stay added (or removed)
        target = newest_synced(galleries, gallery, previous, target)
    if target is None:
        raise NothingToRollBackError(
            f"previous champion v{previous} names no gallery and gallery {gallery!r} has no previous version"
        )
    try:
        galleries.load_manifest(gallery, target)
    except ManifestError as exc:
        raise NothingToRollBackError(f"cannot roll back to v{previous} + gallery {target}: {exc}") from exc
    return previous, target
