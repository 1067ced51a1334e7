"""Which store a URI names, checked without opening it (no boto3, no directory created).

Why apart from components/gallery/store_factory.py: every command checks its settings before it starts
anything, and a bad ``store_uri`` must be reported as fast as ``--help``; opening a store
imports boto3 and may create directories. ``open_store`` uses the same parse.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse


@dataclass(frozen=True)
class StoreLocation:
    """``kind`` is "s3" (``bucket`` and ``prefix`` set) or "local" (``path`` set)."""

    kind: str
    path: str = ""
    bucket: str = ""
    prefix: str = ""


def parse_store_uri(uri: str) -> StoreLocation:
    """``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory; ValueError names the URI."""
    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"store URI {uri!r} is empty; give a directory or s3://bucket/prefix")
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"store URI {uri!r} names no bucket; expected s3://bucket/prefix")
        if parsed.query or parsed.fragment:
            raise ValueError(f"store URI {uri!r} must not carry a query or fragment")
        return StoreLocation("s3", bucket=parsed.netloc, prefix=parsed.path)
    # an S3 endpoint beside a local store is fine: it also serves the manifests' s3:// images
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"store URI {uri!r}: file URIs must name a local path (file:///dir)")
        return StoreLocation("local", path=parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ValueError(f"store URI {uri!r} has unsupported scheme {parsed.scheme!r}; use a path or s3://")
    return StoreLocation("local", path=uri)
