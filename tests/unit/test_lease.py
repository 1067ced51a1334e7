"""The gallery lease on both backends (a directory and moto's real S3 server): one writer at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hotswap.components.gallery.lease import GalleryLease, LeaseHeldError, lease_key, live_holder, read_lease
from hotswap.components.gallery.store import ObjectStore


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant(store: ObjectStore, **fields) -> None:
    now = datetime.now(UTC)
    record = {
        "gallery": "g",
        "holder_id": "planted",
        "command": "hotswap refresh",
        "pid": 1,
        "host": "elsewhere",
        "started_at": now.isoformat(),
        "renewed_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
    }
    record.update(fields)
    store.put_bytes(lease_key("g"), json.dumps(record).encode())


def test_conditional_writes_exclude_each_other(any_store: ObjectStore) -> None:
    assert any_store.put_if_absent("k", b"one")
    assert not any_store.put_if_absent("k", b"two")
    data, token = any_store.read_with_token("k")
    assert data == b"one"
    assert not any_store.replace_if("k", b"three", "not-the-token")
    assert any_store.get_bytes("k") == b"one"
    assert any_store.replace_if("k", b"four", token)
    assert any_store.get_bytes("k") == b"four"
    assert not any_store.replace_if("k", b"five", token)  # the token named the old content
    assert any_store.read_with_token("missing") is None


def test_second_holder_fails_at_once_naming_the_first(any_store: ObjectStore) -> None:
    with GalleryLease(any_store, "g", "hotswap refresh", ttl_seconds=30):
        start = time.monotonic()
        with pytest.raises(
            LeaseHeldError, match=r"gallery 'g' is being changed by `hotswap refresh` \(pid \d+"
        ):
            GalleryLease(any_store, "g", "hotswap backfill").acquire()
        assert time.monotonic() - start < 5
        assert live_holder(any_store, "g").command == "hotswap refresh"
    assert read_lease(any_store, "g") is None  # released: the object is gone
    with GalleryLease(any_store, "g", "hotswap backfill"):
        pass


def test_lease_of_a_dead_process_on_this_host_is_taken_over(any_store: ObjectStore) -> None:
    import socket

    _plant(any_store, pid=_dead_pid(), host=socket.gethostname())
    with GalleryLease(any_store, "g", "hotswap refresh") as lease:
        assert read_lease(any_store, "g")[0].holder_id == lease.holder_id


def test_expired_lease_of_another_host_is_taken_over_and_a_live_one_is_not(any_store: ObjectStore) -> None:
    _plant(any_store)  # another host, an hour to go
    with pytest.raises(LeaseHeldError, match="started"):
        GalleryLease(any_store, "g", "hotswap refresh").acquire()
    _plant(any_store, expires_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    with GalleryLease(any_store, "g", "hotswap refresh") as lease:
        assert read_lease(any_store, "g")[0].holder_id == lease.holder_id


def test_wait_is_bounded_and_says_what_it_waits_for(any_store: ObjectStore) -> None:
    told: list[str] = []
    first = GalleryLease(any_store, "g", "hotswap refresh").acquire()
    threading.Timer(1.0, first.release).start()
    with GalleryLease(
        any_store, "g", "hotswap backfill", wait_seconds=30, poll_seconds=0.2, on_wait=told.append
    ):
        pass
    assert told and "waiting up to 30 s" in told[0] and "hotswap refresh" in told[0]
    blocker = GalleryLease(any_store, "g", "hotswap refresh").acquire()
    try:
        start = time.monotonic()
        with pytest.raises(LeaseHeldError, match=r"waited 1 s"):
            GalleryLease(any_store, "g", "hotswap backfill", wait_seconds=1, poll_seconds=0.2).acquire()
        assert time.monotonic() - start < 10
    finally:
        blocker.release()


def test_renewal_extends_the_lease_and_notices_a_take_over(any_store: ObjectStore) -> None:
    lease = GalleryLease(any_store, "g", "hotswap refresh", ttl_seconds=0.6).acquire()
    try:
        first = read_lease(any_store, "g")[0].expires_at
        time.sleep(1.0)  # the renewer runs every ttl/3
        renewed = read_lease(any_store, "g")[0]
        assert renewed.expires_at > first and renewed.started_at <= first
        assert not lease.lost
        _plant(any_store)  # someone else now holds it
        time.sleep(0.6)
        assert lease.lost
        with pytest.raises(Exception, match="taken over"):
            lease.check()
    finally:
        lease.release()
    assert read_lease(any_store, "g")[0].holder_id == "planted"  # not ours: release left it alone
