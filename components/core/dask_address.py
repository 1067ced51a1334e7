"""Is the Dask scheduler of ``dask.address`` there? A TCP connect, before anything else starts.

A refresh trains for minutes before its backfill needs the cluster; a scheduler that is not
there must fail the command at once, with one line naming the address, not after the training.
Only a socket is opened (no dask import), so the check costs what ``--help`` costs.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from hotswap.components.core.errors import InputError, ServiceError

DEFAULT_PORT = 8786


def scheduler_host_port(address: str) -> tuple[str, int]:
    """(host, port) of ``tcp://host:port`` (or ``host:port``); other schemes are refused."""
    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    if parts.scheme not in ("tcp", "tls") or not parts.hostname:
        raise InputError(f"dask.address {address!r} is not a scheduler address like tcp://host:8786")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InputError(f"dask.address {address!r} has an invalid port") from None
    return parts.hostname, port


def check_scheduler(address: str, timeout_seconds: float) -> None:
    """Raise :class:`ServiceError` naming ``address`` unless something accepts connections there."""
    host, port = scheduler_host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds):
            return
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ServiceError(
            f"Dask scheduler {address} did not answer ({reason}): start it (`dask scheduler`) or fix "
            "dask.address / --dask, then rerun"
        ) from None
