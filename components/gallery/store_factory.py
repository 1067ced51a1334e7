"""Open the object store a URI names, so callers never pick the backend themselves.

Kept apart from components/gallery/store_uri.py, which only parses and checks URIs and must stay
cheap to import (no boto3) for the settings checks every command runs first. boto3 itself is
imported only when an ``s3://`` store is opened: a local store (the embedded default) serves
``hotswap status`` and ``search`` without it.
"""

from __future__ import annotations

from typing import Any

from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.store_uri import parse_store_uri


def open_store(uri: str, endpoint_url: str | None = None, **options: Any) -> ObjectStore:
    """Open the store a URI names: ``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory.

    ``endpoint_url`` selects an S3-compatible endpoint (MinIO, moto); without it boto3 uses AWS
    or ``AWS_ENDPOINT_URL_S3``. Extra keyword ``options`` go to the store's constructor (for
    example ``list_page_size`` or ``multipart_threshold`` for S3, ``fsync`` for a directory).
    """
    location = parse_store_uri(uri)
    if location.kind == "s3":
        from hotswap.components.gallery.s3_store import S3ObjectStore

        return S3ObjectStore(location.bucket, location.prefix, endpoint_url=endpoint_url, **options)
    return LocalObjectStore(location.path, **options)
