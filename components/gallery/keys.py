"""Where a gallery's own records live in the store: the live pointer, the switch intent, the lease.

Kept apart from the gallery modules (which need numpy) so that the cheap checks of a read-only
command (is a switch unfinished? is a command holding the gallery? has CURRENT moved?) import
nothing heavy. The gallery name is checked where settings are read and where versions are written.
"""

from __future__ import annotations

CURRENT_FILE = "CURRENT"
INTENT_FILE = "SWITCH-INTENT.json"
LEASE_FILE = "LEASE.json"


def gallery_prefix(gallery: str) -> str:
    return f"galleries/{gallery}/"


def current_key(gallery: str) -> str:
    return gallery_prefix(gallery) + CURRENT_FILE


def intent_key(gallery: str) -> str:
    return gallery_prefix(gallery) + INTENT_FILE


def lease_key(gallery: str) -> str:
    return gallery_prefix(gallery) + LEASE_FILE
