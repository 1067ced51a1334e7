"""The production object store: objects in an S3 bucket (any S3-compatible endpoint), through boto3.

A PUT or a completed multipart upload is atomic per object; conditional writes (the gallery
lease) are S3's If-None-Match / If-Match. Credentials come from boto3's default chain and are
never passed in, stored on the object, logged or shown in ``repr``. See
components/gallery/store.py for the guarantees every store gives.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from hotswap.components.gallery.store import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    validate_key,
    validate_prefix,
)

MIB = 1024 * 1024
_S3_MISSING = {"404", "NoSuchKey", "NotFound"}
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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
