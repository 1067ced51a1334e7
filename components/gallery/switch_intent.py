"""Crash-consistent switch: an intent record written before the switch's first step.

The switch changes two systems that share no transaction: the registry's ``champion`` alias
(MLflow) and the gallery's CURRENT pointer (the store). In-process rollback hooks cannot run in
a killed process, so before its first step the switch stores ``galleries/<g>/SWITCH-INTENT.json``:
the target pair (model version, gallery version), the previous pair (every managed alias, the
previous CURRENT) and whether the target gallery version was already sealed. After the health
check it marks the intent ``checked``; after the last step it deletes it.

Whoever next reads live state (status, search, refresh, promote, backfill, a query service) calls
:func:`recover_switch` first. An intent still there means the switch died part-way:

- phase ``started`` (not health-checked): **roll back** — aliases restored from the snapshot,
  CURRENT put back, the target version's seal removed if this switch added it; a plain
  ``promote --approve`` rerun then tries again from the same state as before;
- phase ``checked`` (the new pair passed its health check): **roll forward** — champion and
  CURRENT both set to the target pair.

Either way the result is one whole pair, and the function says which it did. Both operations are
idempotent, so a recovery that is itself killed is simply redone by the next command.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from hotswap.components.gallery.keys import intent_key
from hotswap.components.gallery.store import ObjectNotFoundError
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.records import CHAMPION, MANAGED_ALIASES
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:  # read_intent serves readers that never import MLflow (status, search)
    from hotswap.components.registry.mlflow_registry import ModelRegistry


class SwitchIntent(BaseModel):
    """What a switch is about to do and what it replaces."""

    model_name: str
    gallery: str
    target_version: str
    target_gallery_version: str
    previous_aliases: dict[str, str]
    previous_gallery_version: str | None
    target_was_sealed: bool
    phase: Literal["started", "checked"] = "started"
    started_at: datetime
    holder: str

    def pair(self) -> str:
        return f"v{self.target_version} / gallery {self.target_gallery_version}"


def read_intent(galleries: GalleryStore, gallery: str) -> SwitchIntent | None:
    try:
        data = galleries.store.get_bytes(intent_key(gallery))
    except ObjectNotFoundError:
        return None
    try:
        return SwitchIntent.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(
            f"switch intent {intent_key(gallery)} is unreadable ({exc.errors()[0]['msg']}); "
            "compare `hotswap status` with the registry, fix the pair by hand, then delete it"
        ) from None


def begin_switch(
    registry: ModelRegistry, galleries: GalleryStore, gallery: str, version: str, gallery_version: str
) -> SwitchIntent:
    """Store the intent (before anything changes); an older unfinished intent must be recovered first."""
    if read_intent(galleries, gallery) is not None:
        raise RuntimeError(
            f"gallery {gallery!r} has an unfinished switch; run `hotswap status` to recover it first"
        )
    aliases = registry.aliases()
    intent = SwitchIntent(
        model_name=registry.model_name,
        gallery=gallery,
        target_version=str(version),
        target_gallery_version=gallery_version,
        previous_aliases={k: v for k, v in aliases.items() if k in MANAGED_ALIASES},
        previous_gallery_version=galleries.read_current(gallery),
        target_was_sealed=galleries.is_sealed(gallery, gallery_version),
        started_at=datetime.now(UTC),
        holder=f"pid {os.getpid()} on {socket.gethostname()}",
    )
    galleries.store.put_atomic(intent_key(gallery), intent.model_dump_json(indent=2).encode())
    return intent


def mark_checked(galleries: GalleryStore, intent: SwitchIntent) -> SwitchIntent:
    """The new pair passed its health check: from here on a crash rolls forward."""
    checked = intent.model_copy(update={"phase": "checked"})
    galleries.store.put_atomic(intent_key(intent.gallery), checked.model_dump_json(indent=2).encode())
    return checked


def finish_switch(galleries: GalleryStore, gallery: str) -> None:
    """The switch is complete (or fully undone): drop the intent."""
    galleries.store.delete(intent_key(gallery))


def roll_back(registry: ModelRegistry, galleries: GalleryStore, intent: SwitchIntent) -> str:
    """Put the previous pair back whole, unseal the target if this switch sealed it, drop the intent."""
    registry.restore_aliases(intent.previous_aliases)
    gallery, previous = intent.gallery, intent.previous_gallery_version
    if galleries.read_current(gallery) != previous:
        galleries.set_current(gallery, previous)
    target = intent.target_gallery_version
    if not intent.target_was_sealed and target != previous:
        galleries.unseal(gallery, target)
    finish_switch(galleries, gallery)
    champion = intent.previous_aliases.get(CHAMPION)
    return (
        f"an interrupted switch to {intent.pair()} (started {_when(intent)}, {intent.holder}) was "
        f"rolled back: champion {'v' + champion if champion else 'none'}, live gallery {previous}; "
        "rerun `hotswap promote` to switch again"
    )


def roll_forward(registry: ModelRegistry, galleries: GalleryStore, intent: SwitchIntent) -> str:
    """Finish a health-checked switch: champion and CURRENT both on the target pair."""
    if registry.aliases().get(CHAMPION) != intent.target_version:
        registry.promote(intent.target_version)
    if galleries.read_current(intent.gallery) != intent.target_gallery_version:
        galleries.publish(intent.gallery, intent.target_gallery_version)
    finish_switch(galleries, intent.gallery)
    return (
        f"an interrupted switch to {intent.pair()} (started {_when(intent)}, {intent.holder}) had "
        "passed its health check and was rolled forward: it is live now"
    )


def recover_switch(registry: ModelRegistry, galleries: GalleryStore, gallery: str) -> str | None:
    """Finish or undo an unfinished switch; None when there is none. The caller holds the lease."""
    intent = read_intent(galleries, gallery)
    if intent is None:
        return None
    if intent.model_name != registry.model_name:
        return None  # a switch of another model sharing the gallery store: not ours to judge
    if intent.phase == "checked":
        return roll_forward(registry, galleries, intent)
    return roll_back(registry, galleries, intent)


def _when(intent: SwitchIntent) -> str:
    return intent.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
