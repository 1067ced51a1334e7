"""Where a gallery's own records live in the store: the live pointer, the switch intent, the lease.

Kept apart from the gallery modules (which need numpy) so that the cheap checks of a read-only
command (is a switch unfinished? is a command holding the gallery? has CURRENT moved?) import
nothing heavy. Every name that becomes a key segment is checked here.
"""

from __future__ import annotations

import re

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CURRENT_FILE = "CURRENT"
INTENT_FILE = "SWITCH-INTENT.json"
LEASE_FILE = "LEASE.json"


def validate_name(value: str, what: str) -> str:
    """Gallery names and version ids become one key segment: letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def gallery_prefix(gallery: str) -> str:
    return f"galleries/{validate_name(gallery, 'gallery name')}/"


def current_key(gallery: str) -> str:
    return gallery_prefix(gallery) + CURRENT_FILE


def intent_key(gallery: str) -> str:
    return gallery_prefix(gallery) + INTENT_FILE


def lease_key(gallery: str) -> str:
    return gallery_prefix(gallery) + LEASE_FILE
