"""Build only what will be used: when a refresh builds the gallery version its decision asks for.

Why: a backfill is the expensive part of an upgrade (every re-extracted item is a forward pass).
A decision that waits for a reviewer may be rejected, or overtaken by the next refresh, and a
gallery built for it would then be work nobody used (DESIGN.md §16). So a refresh builds the
decided gallery only when it will switch to it at once (auto-promotion of a promotable decision),
or when the operator asks for a prebuilt gallery (``prebuild_on_review``: the approval then
switches without waiting for the build). Otherwise the plan is staged (decision recorded,
codebooks trained) and ``promote`` builds the gallery on approval; the build is resumable, so a
killed approval resumes it shard by shard.
"""

from __future__ import annotations

from hotswap.components.decision.record import GALLERY_PLANNED, gallery_state

__all__ = ["GALLERY_PLANNED", "builds_now", "gallery_state", "goes_live_now"]


def goes_live_now(mode: str, promotable: bool, auto_promote: bool) -> bool:
    """Auto-promotion switches at once to what the decision made promotable (never a reject)."""
    return auto_promote and promotable and mode != "reject"


def builds_now(mode: str, promotable: bool, auto_promote: bool, prebuild_on_review: bool) -> bool:
    """Whether the refresh itself builds the decided gallery version (see the module doc)."""
    if mode == "reject":
        return False
    return goes_live_now(mode, promotable, auto_promote) or prebuild_on_review
