"""When a refresh builds the gallery its decision asks for (components/lifecycle/gallery_plan.py)."""

from __future__ import annotations

import pytest
from hotswap.components.lifecycle.gallery_plan import (
    GALLERY_PLANNED,
    builds_now,
    gallery_state,
    goes_live_now,
)


@pytest.mark.parametrize(
    ("mode", "promotable", "auto_promote", "prebuild", "builds", "live"),
    [
        ("full", True, True, False, True, True),  # promotable and auto-promoted: built, switched
        ("full", True, False, False, False, False),  # waits for a reviewer: planned only
        ("full", False, True, False, False, False),  # not promotable: waits, planned only
        ("partial", False, False, True, True, False),  # the operator asked for a prebuilt gallery
        ("reject", False, True, True, False, False),  # nothing to build, ever
    ],
)
def test_a_gallery_is_built_only_when_it_will_be_used_or_the_operator_asks(
    mode: str, promotable: bool, auto_promote: bool, prebuild: bool, builds: bool, live: bool
) -> None:
    assert builds_now(mode, promotable, auto_promote, prebuild) is builds
    assert goes_live_now(mode, promotable, auto_promote) is live


def test_the_gallery_state_says_planned_until_it_is_built() -> None:
    assert gallery_state("full", None) == GALLERY_PLANNED == "planned, built on approval"
    assert gallery_state("full", "v3-full") == "v3-full"
    assert gallery_state("reject", None) == "none (rejected)"
