"""One object-store interface over a local directory and S3 (DESIGN.md §8).

Galleries, codebooks and indexes are written as whole objects under slash-separated keys. The
same code must run on one laptop (a directory under the hotswap home, the embedded default) and
in production (``s3://bucket/prefix`` on any S3-compatible endpoint), so everything above this
module talks to :class:`ObjectStore` only.

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

import contextlib
import hashlib
import io
import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from hotswap.components.gallery.store_uri import parse_store_uri

#: Local temp files start with this; keys may not, so a half-written temp file is never listed.
TEMP_PREFIX = ".~tmp-"
MIB = 1024 * 1024
_S3_MISSING = {"404", "NoSuchKey", "NotFound"}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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


class LocalObjectStore(ObjectStore):
    """Objects as files under a root directory (the embedded default).

    ``fsync`` (default on) flushes each file and its directory before returning, so a power
    loss cannot leave a renamed-but-empty file: the gallery's "CURRENT is written last" rule is
    only worth something if earlier writes are durable first.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def uri(self) -> str:
        return self.root.as_posix()

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Defence in depth against symlinks inside the root pointing elsewhere.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKeyError(f"object key {key!r} resolves outside the store root")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.fsync:
            self._fsync_dir(path.parent)

    @staticmethod
    def _fsync_dir(directory: Path) -> None:
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:  # some platforms cannot open directories; the rename is still atomic
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} in store {self.uri}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix fully names, then filter by string prefix.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except ObjectNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _staged(self, path: Path, data: bytes) -> str:
        """A fully written, fsynced temp file beside ``path`` (not yet visible under the key)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """``link(2)`` of a complete temp file: atomic, exclusive (like O_EXCL) and never torn."""
        path = self._path(key)
        tmp = self._staged(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if self.fsync:
            self._fsync_dir(path.parent)
        return True

    def replace_if(self, key: str, data: bytes, token: str) -> bool:
        """Move the old object aside (one rename wins), check it is ``token``, link the new one."""
        path = self._path(key)
        aside = path.with_name(f"{TEMP_PREFIX}aside-{os.getpid()}-{threading.get_ident()}-{path.name}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if hashlib.sha256(aside.read_bytes()).hexdigest() != token:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)  # not ours to replace: put it back
                return False
            return self.put_if_absent(key, data)
        finally:
            aside.unlink(missing_ok=True)


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket under an optional key prefix, through boto3.

    Each call uses a pooled client exclusively (see :meth:`lease_client`), so one store object
    can be shared by many threads.
    Objects of ``multipart_threshold`` bytes or more go up as a multipart upload in
    ``multipart_chunksize`` parts (S3's minimum part size is 5 MiB); smaller ones are one PUT.
    Listings use the ListObjectsV2 paginator with ``list_page_size`` keys per page.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        max_attempts: int = 3,
        list_page_size: int = 1000,
        multipart_threshold: int = 64 * MIB,
        multipart_chunksize: int = 16 * MIB,
        addressing_style: str = "auto",
        timeout_seconds: float | None = None,
    ) -> None:
        if not _BUCKET_RE.match(bucket or ""):
            raise ValueError(
                f"S3 bucket name {bucket!r} is invalid (3-63 lowercase letters, digits, '.', '-')"
            )
        prefix = prefix.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidKeyError as exc:
                raise ValueError(f"S3 prefix {prefix!r} is invalid: {exc}") from None
        if not 1 <= list_page_size <= 1000:
            raise ValueError(f"list_page_size={list_page_size} must be between 1 and 1000")
        if multipart_chunksize < 5 * MIB:
            raise ValueError(f"multipart_chunksize={multipart_chunksize} is below S3's 5 MiB minimum part")
        if max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts} must be at least 1")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.list_page_size = list_page_size
        self.multipart_threshold = multipart_threshold
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize
        )
        timeout = service_timeout_seconds() if timeout_seconds is None else timeout_seconds
        self._config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            s3={"addressing_style": addressing_style},
            connect_timeout=timeout,
            read_timeout=timeout,
        )
        self._idle_clients: deque[Any] = deque()
        self._session = boto3.session.Session()
        self._session_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without clients, session or lock (e.g. to ship to Dask worker processes)."""
        state = self.__dict__.copy()
        for name in ("_idle_clients", "_session", "_session_lock"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._idle_clients = deque()
        self._session = boto3.session.Session()
        self._session_lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @contextmanager
    def lease_client(self) -> Iterator[Any]:
        """A boto3 S3 client for this thread's exclusive use during the ``with`` block.

        Clients live in a small pool: a thread takes an idle one (or a new one) and gives it
        back after the call, so no two threads ever use one client at the same time, while
        short-lived threads (parallel shard reads) do not pay ~0.1-0.2 s of CPU to build a
        client each. Credentials come from the environment's default chain.
        """
        try:
            client = self._idle_clients.pop()
        except IndexError:
            with self._session_lock:  # boto3 sessions are not thread-safe; clients are built here
                client = self._session.client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region_name, config=self._config
                )
        try:
            yield client
        finally:
            self._idle_clients.append(client)

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full_key(key)
        with self.lease_client() as client:
            if len(data) >= self.multipart_threshold:
                client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=self.transfer_config)
            else:
                client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def get_bytes(self, key: str) -> bytes:
        full = self._full_key(key)
        with self.lease_client() as client:
            try:
                response = client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error_code(exc) in _S3_MISSING:
                    raise ObjectNotFoundError(f"no object {key!r} in store {self.uri}") from None
                raise
            return response["Body"].read()

    def exists(self, key: str) -> bool:
        full = self._full_key(key)
        try:
            with self.lease_client() as client:
                client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _error_code(exc) in _S3_MISSING:
                return False
            raise
        return True

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        with self.lease_client() as client:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            keys = [obj["Key"][len(root) :] for page in pages for obj in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        with self.lease_client() as client:
            client.delete_object(Bucket=self.bucket, Key=full)

    def read_with_token(self, key: str) -> tuple[bytes, str] | None:
        full = self._full_key(key)
        with self.lease_client() as client:
            try:
                response = client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error_code(exc) in _S3_MISSING:
                    return None
                raise
            return response["Body"].read(), response["ETag"]

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """S3 conditional write (If-None-Match / If-Match); 412 or 409 means the condition failed."""
        full = self._full_key(key)
        with self.lease_client() as client:
            try:
                client.put_object(Bucket=self.bucket, Key=full, Body=data, **condition)
            except ClientError as exc:
                if _error_code(exc) in {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}:
                    return False
                raise
        return True

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace_if(self, key: str, data: bytes, token: str) -> bool:
        return self._conditional_put(key, data, IfMatch=token)


def service_timeout_seconds() -> float:
    """Default connect/read timeout of service calls: ``HOTSWAP_SERVICE_TIMEOUT_SECONDS`` or 10 s.

    The same variable sets the ``service_timeout_seconds`` setting, so a store opened without
    settings at hand waits no longer than one opened with them.
    """
    try:
        return max(0.1, float(os.environ.get("HOTSWAP_SERVICE_TIMEOUT_SECONDS", "10")))
    except ValueError:
        return 10.0


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def open_store(uri: str, endpoint_url: str | None = None, **options: Any) -> ObjectStore:
    """Open the store a URI names: ``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory.

    ``endpoint_url`` selects an S3-compatible endpoint (MinIO, moto); without it boto3 uses AWS
    or ``AWS_ENDPOINT_URL_S3``. Extra keyword ``options`` go to the store's constructor (for
    example ``list_page_size`` or ``multipart_threshold`` for S3, ``fsync`` for a directory).
    """
    location = parse_store_uri(uri)
    if location.kind == "s3":
        return S3ObjectStore(location.bucket, location.prefix, endpoint_url=endpoint_url, **options)
    return LocalObjectStore(location.path, **options)
