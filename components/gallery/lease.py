"""One writer per gallery: a lease object in the store, taken with a conditional write.

Two lifecycle commands changing one gallery at once (a refresh and a backfill, two refreshes)
would race on CURRENT and on staged versions. Before changing anything a command takes the
gallery's lease: ``galleries/<gallery>/LEASE.json``, created only if absent (S3: ``PUT`` with
``If-None-Match: *``, which S3 and moto's server honour; a directory: ``link(2)`` of a complete
temp file, the O_EXCL way that cannot leave a torn record). The record says who holds it (the
command, process id, host, a random id), since when, and until when.

While held, a background thread renews it (``replace_if`` on the token it last wrote, so a
holder that lost the lease notices instead of overwriting the new holder). A holder that dies
stops renewing: its lease expires after ``ttl_seconds``; on the same host a holder whose process
no longer exists is treated as expired at once. Taking over an expired lease is again a
conditional write on the expired record's token, so only one of several waiters wins.

A second command either fails at once with :class:`LeaseHeldError` ("gallery X is being changed
by <holder>, started <time>") or, given ``wait_seconds``, polls until the lease is free or the
wait is over, telling the user what it waits for.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from hotswap.components.core.errors import BusyError
from hotswap.components.gallery.keys import lease_key
from hotswap.components.gallery.store import ObjectStore
from pydantic import BaseModel, ValidationError

#: Holder ids of the leases this process holds now. A record naming this process but none of
#: these was left by an earlier command of this process that could not release it (store down).
_HELD_HERE: set[str] = set()


class LeaseHeldError(BusyError):
    """Another live command holds the gallery's lease."""


class LeaseLostError(BusyError):
    """This command's lease expired or was taken over while it worked (renewal failed)."""


class LeaseRecord(BaseModel):
    """Who holds a gallery's lease, and until when."""

    gallery: str
    holder_id: str
    command: str
    pid: int
    host: str
    started_at: datetime
    renewed_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host})"

    def started(self) -> str:
        return self.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def is_live(self, now: datetime | None = None) -> bool:
        """Not expired, and (on this host) its process still exists."""
        now = now or datetime.now(UTC)
        if self.expires_at <= now:
            return False
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return self.holder_id in _HELD_HERE
            return _process_exists(self.pid)
        return True


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lease(store: ObjectStore, gallery: str) -> tuple[LeaseRecord, str] | None:
    """The stored lease record and its token; an unreadable record counts as expired (None, token)."""
    found = store.read_with_token(lease_key(gallery))
    if found is None:
        return None
    data, token = found
    try:
        return LeaseRecord.model_validate_json(data), token
    except ValidationError:
        return _unreadable(gallery), token


def _unreadable(gallery: str) -> LeaseRecord:
    past = datetime(1970, 1, 1, tzinfo=UTC)
    return LeaseRecord(
        gallery=gallery,
        holder_id="?",
        command="?",
        pid=0,
        host="?",
        started_at=past,
        renewed_at=past,
        expires_at=past,
    )


def live_holder(store: ObjectStore, gallery: str) -> LeaseRecord | None:
    """The live holder of the gallery's lease, or None when it is free or expired."""
    found = read_lease(store, gallery)
    return found[0] if found is not None and found[0].is_live() else None


_COVERS_FLOWS: set[str] = set()  # holder ids of command leases that serialise this process's flows


def held_in_this_process(store: ObjectStore, gallery: str) -> bool:
    """Whether a command of this process holds the gallery's lease for its flows (``covers_flows``)."""
    found = read_lease(store, gallery)
    return found is not None and found[0].holder_id in _HELD_HERE & _COVERS_FLOWS


class GalleryLease:
    """The lease of one gallery for one command; use as a context manager (acquire/release)."""

    def __init__(
        self,
        store: ObjectStore,
        gallery: str,
        command: str,
        *,
        ttl_seconds: float = 60.0,
        wait_seconds: float = 0.0,
        poll_seconds: float = 1.0,
        on_wait: Callable[[str], None] | None = None,
        covers_flows: bool = False,
    ) -> None:
        """``covers_flows``: the lease of a whole command (the CLI's), under which the flows it runs
        need no lock of their own (tasks/lock.py)."""
        if ttl_seconds <= 0:
            raise ValueError(f"lease ttl_seconds={ttl_seconds} must be positive")
        self.store = store
        self.gallery = gallery
        self.command = command
        self.ttl_seconds = ttl_seconds
        self.wait_seconds = max(0.0, wait_seconds)
        self.poll_seconds = poll_seconds
        self.on_wait = on_wait
        self.holder_id = uuid.uuid4().hex
        if covers_flows:
            _COVERS_FLOWS.add(self.holder_id)
        self._token: str | None = None
        self._record: LeaseRecord | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = False

    @property
    def key(self) -> str:
        return lease_key(self.gallery)

    def _new_record(self, started_at: datetime | None = None) -> LeaseRecord:
        now = datetime.now(UTC)
        return LeaseRecord(
            gallery=self.gallery,
            holder_id=self.holder_id,
            command=self.command,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=started_at or now,
            renewed_at=now,
            expires_at=now + timedelta(seconds=self.ttl_seconds),
        )

    def _try_take(self) -> LeaseRecord | None:
        """Take the lease if free or expired; else the live holder's record."""
        record = self._new_record()
        data = record.model_dump_json().encode()
        if self.store.put_if_absent(self.key, data):
            self._remember(record)
            return None
        found = read_lease(self.store, self.gallery)
        if found is None:  # released in between: try again at once
            return self._try_take()
        held, token = found
        if held.is_live():
            return held
        if self.store.replace_if(self.key, data, token):  # expired: one waiter wins the take-over
            self._remember(record)
            return None
        found = read_lease(self.store, self.gallery)
        return found[0] if found is not None else self._try_take()

    def _remember(self, record: LeaseRecord) -> None:
        _HELD_HERE.add(record.holder_id)
        found = self.store.read_with_token(self.key)
        self._record = record
        self._token = found[1] if found is not None else None

    def acquire(self) -> GalleryLease:
        """Take the lease now, or within ``wait_seconds``; :class:`LeaseHeldError` otherwise."""
        deadline = time.monotonic() + self.wait_seconds
        told = None
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                waited = f" (waited {self.wait_seconds:.0f} s)" if self.wait_seconds else ""
                raise LeaseHeldError(
                    f"gallery {self.gallery!r} is being changed by {holder.describe()}, "
                    f"started {holder.started()}{waited}; wait for it to finish, "
                    "or rerun with --wait SECONDS"
                )
            if self.on_wait is not None and told != holder.holder_id:
                told = holder.holder_id
                self.on_wait(
                    f"waiting up to {self.wait_seconds:.0f} s for gallery {self.gallery!r}: it is being "
                    f"changed by {holder.describe()}, started {holder.started()}"
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.gallery}", daemon=True)
        self._renewer.start()
        return self

    def renew(self) -> None:
        """Extend the lease; sets ``lost`` if it is no longer ours (expired and taken over)."""
        with self._lock:
            if self._record is None or self._token is None:
                return
            record = self._new_record(started_at=self._record.started_at)
            if self.store.replace_if(self.key, record.model_dump_json().encode(), self._token):
                self._remember(record)
            else:
                self.lost = True

    def _renew_loop(self) -> None:
        interval = max(0.05, self.ttl_seconds / 3)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception:  # a transient store error: the next renewal tries again before expiry
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (call before a visible change)."""
        if self.lost:
            raise LeaseLostError(
                f"gallery {self.gallery!r}: this command's lease expired and was taken over; "
                "stopping before changing anything else — rerun to resume"
            )

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still ours."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        with self._lock:
            try:
                found = read_lease(self.store, self.gallery)
                if found is not None and found[0].holder_id == self.holder_id:
                    self.store.delete(self.key)
            except Exception:  # store unreachable: the lease expires by itself after ttl_seconds
                pass
            _HELD_HERE.discard(self.holder_id)
            self._record = self._token = None

    def __enter__(self) -> GalleryLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
