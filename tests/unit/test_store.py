"""ObjectStore behaviour on both backends: a local directory and S3 on moto's HTTP server."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.s3_store import S3ObjectStore
from hotswap.components.gallery.store import InvalidKeyError, ObjectNotFoundError, ObjectStore, validate_key
from hotswap.components.gallery.store_factory import open_store

BAD_KEYS = [
    "",
    "/etc/passwd",
    "a/../b",
    "..",
    "a/./b",
    "a//b",
    "a/b/",
    "a\\b",
    "a/\x00b",
    "a/.~tmp-123",
]


def test_bytes_round_trip_and_overwrite(any_store: ObjectStore) -> None:
    payload = bytes(range(256)) * 3
    any_store.put_bytes("a/b/blob.bin", payload)
    any_store.put_bytes("a/empty", b"")
    assert any_store.get_bytes("a/b/blob.bin") == payload
    assert any_store.get_bytes("a/empty") == b""
    any_store.put_atomic("a/b/blob.bin", b"second")
    assert any_store.get_bytes("a/b/blob.bin") == b"second"


def test_exists_delete_and_missing_key(any_store: ObjectStore) -> None:
    any_store.put_bytes("x/y", b"1")
    assert any_store.exists("x/y")
    assert not any_store.exists("x/z")
    assert not any_store.exists("x")  # a "directory" is not an object
    any_store.delete("x/y")
    any_store.delete("x/y")  # deleting a missing key is not an error
    assert not any_store.exists("x/y")
    with pytest.raises(ObjectNotFoundError, match="x/y"):
        any_store.get_bytes("x/y")


def test_list_is_a_sorted_string_prefix_listing(any_store: ObjectStore) -> None:
    for key in ["g/v2/b", "g/v1/a", "g/v10/c", "h/x", "top"]:
        any_store.put_bytes(key, b".")
    assert any_store.list() == ["g/v1/a", "g/v10/c", "g/v2/b", "h/x", "top"]
    assert any_store.list("g/") == ["g/v1/a", "g/v10/c", "g/v2/b"]
    assert any_store.list("g/v1") == ["g/v1/a", "g/v10/c"]  # string prefix, as in S3
    assert any_store.list("g/v1/") == ["g/v1/a"]
    assert any_store.list("nothing/") == []


def test_invalid_keys_rejected_before_any_io(any_store: ObjectStore) -> None:
    for key in BAD_KEYS:
        for operation in (
            lambda k=key: any_store.put_bytes(k, b"x"),
            lambda k=key: any_store.get_bytes(k),
            lambda k=key: any_store.exists(k),
            lambda k=key: any_store.delete(k),
        ):
            with pytest.raises(InvalidKeyError, match="object key") as info:
                operation()
            assert isinstance(info.value, ValueError)
            assert repr(key) in str(info.value)
    assert any_store.list() == []


def test_invalid_list_prefix_rejected(any_store: ObjectStore) -> None:
    with pytest.raises(InvalidKeyError, match=r"\.\."):
        any_store.list("../")


def test_non_string_key_rejected() -> None:
    with pytest.raises(InvalidKeyError, match="must be a string"):
        validate_key(b"bytes-key")  # type: ignore[arg-type]


def test_s3_listing_follows_pagination(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p", endpoint_url=s3_endpoint, list_page_size=2)
    keys = [f"k/{i:02d}" for i in range(7)]
    for key in keys:
        store.put_bytes(key, b"v")
    calls = []
    with store.lease_client() as client:  # the pool hands this same client to the listing below
        client.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(kw))
    assert store.list("k/") == keys
    assert len(calls) == 4  # 2 + 2 + 2 + 1 keys: every page was fetched


def test_s3_keys_stay_under_the_store_prefix(s3_endpoint: str, s3_bucket: str) -> None:
    inside = open_store(f"s3://{s3_bucket}/tenant-a", endpoint_url=s3_endpoint)
    other = open_store(f"s3://{s3_bucket}/tenant-b", endpoint_url=s3_endpoint)
    inside.put_bytes("obj", b"a")
    raw = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    assert raw.list() == ["tenant-a/obj"]
    assert other.list() == [] and not other.exists("obj")
    with pytest.raises(InvalidKeyError):
        inside.get_bytes("../tenant-b/obj")


def test_s3_big_objects_use_multipart_upload(s3_endpoint: str, s3_bucket: str) -> None:
    mib = 1024 * 1024
    store = open_store(
        f"s3://{s3_bucket}",
        endpoint_url=s3_endpoint,
        multipart_threshold=5 * mib,
        multipart_chunksize=5 * mib,
    )
    payload = os.urandom(6 * mib)
    store.put_bytes("big.bin", payload)
    store.put_bytes("small.bin", b"tiny")
    with store.lease_client() as client:
        assert (
            client.head_object(Bucket=s3_bucket, Key="big.bin")["ETag"].strip('"').endswith("-2")
        )  # 2 parts
        assert "-" not in client.head_object(Bucket=s3_bucket, Key="small.bin")["ETag"]
    assert store.get_bytes("big.bin") == payload


def test_s3_clients_are_never_shared_by_concurrent_users(s3_endpoint: str, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    with store.lease_client() as first, store.lease_client() as second:
        assert first is not second  # two concurrent leases get two clients
    with store.lease_client() as again:
        assert again in (first, second)  # released clients are reused, not rebuilt
    errors = []

    def work(i: int) -> None:
        try:
            store.put_bytes(f"t/{i}", str(i).encode())
        except Exception as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.list("t/") == ["t/0", "t/1", "t/2"]


def test_s3_repr_and_uri_hold_no_credentials(s3_endpoint: str, s3_bucket: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sup3r-secret-value")
    store = open_store(f"s3://{s3_bucket}/pre", endpoint_url=s3_endpoint)
    assert store.uri == f"s3://{s3_bucket}/pre"
    assert "sup3r" not in repr(store) and "sup3r" not in repr(vars(store))


def test_local_put_is_atomic_on_failure(tmp_path: Path, monkeypatch) -> None:
    store = LocalObjectStore(tmp_path)
    store.put_bytes("d/obj", b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.put_bytes("d/obj", b"new")
    monkeypatch.undo()
    assert store.get_bytes("d/obj") == b"old"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["obj"]  # no temp file left


def test_local_symlink_out_of_root_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalObjectStore(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        store.put_bytes("link/evil", b"x")
    assert list(outside.iterdir()) == []


def test_open_store_parses_uris(tmp_path: Path, s3_endpoint: str) -> None:
    local = open_store(str(tmp_path / "a"))
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "a").resolve()
    assert isinstance(open_store((tmp_path / "b").as_uri()), LocalObjectStore)
    s3 = open_store("s3://my-bucket/some/prefix/", endpoint_url=s3_endpoint)
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("my-bucket", "some/prefix", s3_endpoint)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty"),
        ("s3://", "no bucket"),
        ("s3://Bad_Bucket/x", "bucket name"),
        ("s3://bucket/a/../b", "prefix"),
        ("gs://bucket/x", "unsupported scheme"),
        ("file://remote-host/dir", "local path"),
    ],
)
def test_open_store_rejects_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        open_store(uri)


def test_a_local_store_opens_beside_an_s3_endpoint_for_the_images(tmp_path: Path) -> None:
    # the endpoint may serve the manifests' s3:// images while the galleries stay on local disk
    store = open_store(str(tmp_path), endpoint_url="http://127.0.0.1:9")
    store.put_bytes("a/b", b"x")
    assert (tmp_path / "a" / "b").read_bytes() == b"x"


def test_s3_store_pickles_for_worker_processes(s3_endpoint, s3_bucket):
    """Dask worker processes receive the store by pickle: clients are rebuilt on the other side."""
    import pickle

    store = open_store(f"s3://{s3_bucket}/pickled", endpoint_url=s3_endpoint)
    store.put_bytes("a/b.bin", b"payload")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_bytes("a/b.bin") == b"payload"
    clone.put_bytes("a/c.bin", b"more")
    assert store.list("a/") == ["a/b.bin", "a/c.bin"]
