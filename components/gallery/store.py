"""One object-store interface over a local directory and S3 (DESIGN.md §8).

Galleries, codebooks and indexes are written as whole objects under slash-separated keys. The
same code must run on one laptop (a directory under the hotswap home, the embedded default) and
in production (``s3://bucket/prefix`` on any S3-compatible endpoint), so everything above this
module talks to :class:`ObjectStore` only. The directory store is in
components/gallery/local_store.py, the S3 one in components/gallery/s3_store.py, and
components/gallery/store_factory.py opens the one a URI names.

Guarantees every implementation gives, because the gallery's crash-safety rests on them:

- every put is atomic: a reader sees the old object, the new one, or none, never a torn one
  (local: temp file in the same directory + ``os.replace``; S3: a PUT or a completed multipart
  upload is atomic per object);
- keys are validated before any I/O and can never leave the configured root or prefix;
- ``delete`` of a missing key is not an error (a retried clean-up must not fail).

Credentials for S3 come from the environment (boto3's default chain) and are never passed in,
stored on the object, logged or shown in ``repr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

#: Local temp files start with this; keys may not, so a half-written temp file is never listed.
TEMP_PREFIX = ".~tmp-"


class InvalidKeyError(ValueError):
    """A key that could escape the store root or that some backend cannot represent."""


class ObjectNotFoundError(FileNotFoundError):
    """The key names no object; a FileNotFoundError so generic handlers catch it too."""


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`InvalidKeyError`.

    Rejected: non-strings, empty keys, absolute paths, backslashes (Windows separators would
    mean different things on the two backends), empty, ``.`` or ``..`` segments (path
    traversal, and S3 would store them literally while a directory would collapse them),
    control characters, and segments starting with the local temp-file marker.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key {key!r} must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("object key '' is empty")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} is absolute; keys are relative to the store root")
    if "\\" in key:
        raise InvalidKeyError(f"object key {key!r} contains a backslash; use '/' as separator")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise InvalidKeyError(f"object key {key!r} contains a control character")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError(f"object key {key!r} has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise InvalidKeyError(f"object key {key!r} contains a {segment!r} segment")
        if segment.startswith(TEMP_PREFIX):
            raise InvalidKeyError(f"object key {key!r} uses the reserved temp-file prefix {TEMP_PREFIX!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty (everything) or a key, optionally ending in one '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class ObjectStore(ABC):
    """Whole-object storage under validated, slash-separated keys (see the module docstring)."""

    @property
    @abstractmethod
    def uri(self) -> str:
        """Where this store lives, safe to log (never contains credentials)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically, replacing any existing object."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read the whole object; :class:`ObjectNotFoundError` if there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (plain string prefix, as in S3)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    def put_atomic(self, key: str, data: bytes) -> None:
        """Same as :meth:`put_bytes`; the name states the guarantee callers rely on."""
        self.put_bytes(key, data)

    # Conditional writes: what a lease (components/gallery/lease.py) needs so that two writers can never
    # both believe they hold it. A *token* identifies one stored content of a key (S3: its ETag;
    # a directory: the content's sha256).

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        """The object and its token, or None when there is none."""
        raise NotImplementedError(f"{type(self).__name__} does not support conditional writes")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if no object is stored there; False (nothing written) if one is."""
        raise NotImplementedError(f"{type(self).__name__} does not support conditional writes")

    def replace_if(self, key: str, data: bytes, token: str) -> bool:
        """Overwrite ``key`` only if it still holds the content ``token`` names; False otherwise."""
        raise NotImplementedError(f"{type(self).__name__} does not support conditional writes")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
