"""Versioned galleries on both store backends: staging, resume, atomic switch, corruption, rollback."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from hotswap.components.gallery.records import (
    GalleryArrays,
    GalleryError,
    ManifestError,
    ShardCorruptedError,
    VersionImmutableError,
    VersionIncompleteError,
    new_version_id,
)
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.versions import GalleryStore

from tests.fixtures.stores import CrashError, RecordingStore, sibling_store

GALLERY = "products"
NUM_SHARDS = 3
SHARD_SIZE = 5
DIM = 8
CODE_LEN = 3
CREATED = datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)


def shard_arrays(version: str, n: int) -> GalleryArrays:
    """Deterministic arrays of shard n; differ per version so a mixed read would show."""
    seed = int(hashlib.sha256(f"{version}/{n}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    ids = np.array([f"item-{n * SHARD_SIZE + i:04d}" for i in range(SHARD_SIZE)])
    feats = rng.standard_normal((SHARD_SIZE, DIM)).astype(np.float32)
    codes = rng.integers(0, 256, (SHARD_SIZE, CODE_LEN), dtype=np.uint8)
    return GalleryArrays(ids=ids, features=feats, codes=codes)


def expected_arrays(version: str) -> GalleryArrays:
    parts = [shard_arrays(version, n) for n in range(NUM_SHARDS)]
    return GalleryArrays(
        ids=np.concatenate([p.ids for p in parts]),
        features=np.concatenate([p.features for p in parts]),
        codes=np.concatenate([p.codes for p in parts]),
    )


def begin(galleries: GalleryStore, version: str, **overrides):
    params = dict(
        model_version="7",
        codebook_version="cb-7",
        parent_version=None,
        num_shards=NUM_SHARDS,
        metadata={"mode": "full", "fraction": 1.0},
        created_at=CREATED,
    )
    params.update(overrides)
    return galleries.begin_version(GALLERY, version, **params)


def write_all(galleries: GalleryStore, version: str, index: bytes | None = b"faiss-bytes", **overrides):
    writer = begin(galleries, version, **overrides)
    for n in writer.pending_shards():
        a = shard_arrays(version, n)
        writer.write_shard(n, a.ids, a.features, a.codes)
    writer.finalize(index_bytes=index)
    return writer


def index_for(version: str) -> bytes:
    return f"index-of-{version}".encode() * 10


def assert_same(actual: GalleryArrays, expected: GalleryArrays) -> None:
    np.testing.assert_array_equal(actual.ids, expected.ids)
    np.testing.assert_array_equal(actual.features, expected.features)
    np.testing.assert_array_equal(actual.codes, expected.codes)


def snapshot(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix) :]: store.get_bytes(key) for key in store.list(prefix)}


def test_version_written_shard_by_shard_and_published(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    assert galleries.read_current(GALLERY) is None
    writer = begin(galleries, "v1")
    for n in range(NUM_SHARDS):
        assert not writer.shard_done(n)
        a = shard_arrays("v1", n)
        record = writer.write_shard(n, a.ids, a.features, a.codes)
        assert record.count == SHARD_SIZE and writer.shard_done(n)
        assert galleries.read_current(GALLERY) is None  # staging is invisible
    assert galleries.list_versions(GALLERY) == []
    assert galleries.list_versions(GALLERY, include_staged=True) == ["v1"]
    manifest = writer.finalize(index_bytes=index_for("v1"))
    assert galleries.read_current(GALLERY) is None  # finalizing is not publishing
    pointer = writer.publish()
    assert (pointer.version, pointer.previous) == ("v1", None)
    assert galleries.read_current(GALLERY) == "v1"
    assert galleries.list_versions(GALLERY) == ["v1"]

    loaded = galleries.load_manifest(GALLERY, "v1")
    assert loaded == manifest
    assert (loaded.model_version, loaded.codebook_version, loaded.metadata) == (
        "7",
        "cb-7",
        {"mode": "full", "fraction": 1.0},
    )
    assert (loaded.num_items, loaded.num_shards, loaded.feature_dim, loaded.code_length) == (
        15,
        3,
        DIM,
        CODE_LEN,
    )
    assert loaded.created_at == CREATED
    prefix = galleries.version_prefix(GALLERY, "v1")
    for entry in loaded.files():  # the manifest's checksums are those of the stored bytes
        assert hashlib.sha256(any_store.get_bytes(prefix + entry.path)).hexdigest() == entry.sha256
    assert_same(galleries.load_arrays(GALLERY, "v1"), expected_arrays("v1"))
    assert_same(galleries.load_shard(GALLERY, "v1", 2), shard_arrays("v1", 2))
    assert galleries.load_index(GALLERY, "v1") == index_for("v1")
    assert any_store.exists(f"galleries/{GALLERY}/versions/v1/shards/000002.features.npy")


def test_interrupted_write_resumes_without_rewriting_and_matches_clean_run(any_store, tmp_path) -> None:
    # Live v1 first, so "CURRENT never points at an incomplete version" is checked while it is set.
    write_all(
        GalleryStore(any_store), "v1", index_for("v1"), num_shards=1
    )  # small: checked after every write
    GalleryStore(any_store).publish(GALLERY, "v1")
    checker = GalleryStore(any_store)
    seen_current = []

    def current_is_whole(_key: str) -> None:
        live = checker.read_current(GALLERY)
        seen_current.append(live)
        checker.verify_version(GALLERY, live, checksums=True)  # raises if incomplete or corrupted

    crash_at = "galleries/products/versions/v2/shards/000002.codes.npy"  # mid-shard 2
    crashing = RecordingStore(
        any_store, crash_before=lambda key: key == crash_at, after_write=current_is_whole
    )
    writer = begin(GalleryStore(crashing), "v2", parent_version="v1")
    with pytest.raises(CrashError):
        for n in range(NUM_SHARDS):
            a = shard_arrays("v2", n)
            writer.write_shard(n, a.ids, a.features, a.codes)
    assert crashing.puts[-1].endswith("000002.features.npy")  # shard 2 is half-written, uncommitted

    # A new process resumes the same job.
    resumed = RecordingStore(any_store, after_write=current_is_whole)
    writer = begin(GalleryStore(resumed), "v2", parent_version="v1", created_at=None)
    assert writer.pending_shards() == [2]
    for n in range(NUM_SHARDS):
        a = shard_arrays("v2", n)
        writer.write_shard(n, a.ids, a.features, a.codes)  # done shards are skipped by the writer
    writer.finalize(index_bytes=index_for("v2"))
    rewritten = [key for key in resumed.puts if "/shards/000000" in key or "/shards/000001" in key]
    assert rewritten == []
    assert any("/shards/000002.codes.npy" in key for key in resumed.puts)
    assert set(seen_current) == {"v1"}  # CURRENT stayed on the whole v1 at every write

    clean_store = sibling_store(any_store, "clean", tmp_path)
    write_all(GalleryStore(clean_store), "v2", index_for("v2"), parent_version="v1")
    prefix = GalleryStore(any_store).version_prefix(GALLERY, "v2")
    resumed_files, clean_files = snapshot(any_store, prefix), snapshot(clean_store, prefix)
    assert sorted(resumed_files) == sorted(clean_files)
    assert resumed_files == clean_files  # byte-identical, manifest included

    resumed.after_write = None
    GalleryStore(resumed).publish(GALLERY, "v2", expected_current="v1", verify_checksums=True)
    assert GalleryStore(any_store).read_current(GALLERY) == "v2"
    assert_same(GalleryStore(any_store).load_arrays(GALLERY, "v2"), expected_arrays("v2"))


def test_corrupted_staged_shard_is_rewritten_on_resume(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    writer = begin(galleries, "v1")
    a = shard_arrays("v1", 0)
    writer.write_shard(0, a.ids, a.features, a.codes)
    key = galleries.version_key(GALLERY, "v1", "shards/000000.features.npy")
    good = any_store.get_bytes(key)
    any_store.put_bytes(key, good[:-4])  # torn file
    fresh = begin(galleries, "v1")
    assert not fresh.shard_done(0)
    fresh.write_shard(0, a.ids, a.features, a.codes)
    assert fresh.shard_done(0) and any_store.get_bytes(key) == good


def test_reader_sees_old_or_new_version_whole_during_switches(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    for version in ("v1", "v2"):
        write_all(galleries, version, index_for(version))
    galleries.publish(GALLERY, "v1")
    expected = {v: expected_arrays(v) for v in ("v1", "v2")}
    observed: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    reader = GalleryStore(any_store)

    def read_loop() -> None:
        try:
            while not stop.is_set() or len(observed) < 3:
                version = reader.read_current(GALLERY)
                assert_same(reader.load_arrays(GALLERY, version, max_workers=2), expected[version])
                assert reader.load_index(GALLERY, version) == index_for(version)
                observed.append(version)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for target in ("v2", "v1", "v2"):
            galleries.set_current(GALLERY, target)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert set(observed) <= {"v1", "v2"} and observed
    assert reader.read_current(GALLERY) == "v2"


def test_corrupted_shard_detected_by_checksum(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    write_all(galleries, "v1")
    galleries.publish(GALLERY, "v1")
    key = galleries.version_key(GALLERY, "v1", "shards/000001.features.npy")
    data = bytearray(any_store.get_bytes(key))
    data[-1] ^= 0xFF  # same size, one flipped bit pattern: only the checksum can tell
    any_store.put_bytes(key, bytes(data))
    with pytest.raises(ShardCorruptedError, match=r"version 'v1' shard 1: file shards/000001\.features\.npy"):
        galleries.load_arrays(GALLERY, "v1")
    with pytest.raises(ShardCorruptedError, match="checksum"):
        galleries.verify_version(GALLERY, "v1")
    assert_same(galleries.load_shard(GALLERY, "v1", 0), shard_arrays("v1", 0))  # other shards still load


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: b"{not json", "corrupted or inconsistent"),
        (lambda raw: raw.replace(b'"num_items": 5', b'"num_items": 6'), "num_items=6"),
        (lambda raw: raw.replace(b'"version": "v1"', b'"version": "v9"'), "describes gallery"),
        (lambda raw: None, "missing"),
    ],
    ids=["unparseable", "inconsistent-totals", "other-version", "missing"],
)
def test_bad_manifest_gets_a_clear_error_and_cannot_be_published(any_store, damage, message) -> None:
    galleries = GalleryStore(any_store)
    write_all(galleries, "v1", num_shards=1)
    key = galleries.version_key(GALLERY, "v1", "manifest.json")
    damaged = damage(any_store.get_bytes(key))
    if damaged is None:
        any_store.delete(key)
    else:
        any_store.put_bytes(key, damaged)
    with pytest.raises(ManifestError, match=message) as info:
        galleries.load_manifest(GALLERY, "v1")
    assert "version 'v1'" in str(info.value)
    with pytest.raises(ManifestError):
        galleries.publish(GALLERY, "v1")
    assert galleries.read_current(GALLERY) is None


def test_incomplete_version_cannot_be_finalized_or_published(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    write_all(galleries, "v1")
    galleries.publish(GALLERY, "v1")
    writer = begin(galleries, "v2")
    a = shard_arrays("v2", 0)
    writer.write_shard(0, a.ids, a.features, a.codes)
    with pytest.raises(VersionIncompleteError, match=r"shards \[1, 2\]"):
        writer.finalize()
    with pytest.raises(ManifestError, match="missing"):
        galleries.publish(GALLERY, "v2")
    write_all(galleries, "v2")
    any_store.delete(galleries.version_key(GALLERY, "v2", "index.faiss"))  # lost after finalize
    with pytest.raises(VersionIncompleteError, match="index.faiss"):
        galleries.publish(GALLERY, "v2")
    assert galleries.read_current(GALLERY) == "v1"


def test_published_version_is_immutable(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    writer = write_all(galleries, "v1", num_shards=1)
    writer.publish()
    before = snapshot(any_store, galleries.version_prefix(GALLERY, "v1"))
    a = shard_arrays("other", 0)
    with pytest.raises(VersionImmutableError, match="'v1'"):
        begin(galleries, "v1")
    with pytest.raises(VersionImmutableError):
        writer.write_shard(0, a.ids, a.features, a.codes)
    with pytest.raises(VersionImmutableError):
        writer.finalize(index_bytes=b"other index")
    with pytest.raises(VersionImmutableError):
        galleries.discard_version(GALLERY, "v1")
    write_all(galleries, "v2", num_shards=1)
    galleries.publish(GALLERY, "v2")  # no longer live, still sealed
    with pytest.raises(VersionImmutableError):
        galleries.open_version(GALLERY, "v1")
    assert snapshot(any_store, galleries.version_prefix(GALLERY, "v1")) == before


def test_rollback_restores_previous_pointer(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    for version in ("v1", "v2"):
        write_all(galleries, version, num_shards=1)
    first = galleries.publish(GALLERY, "v1")
    assert first.previous is None
    second = galleries.publish(GALLERY, "v2", expected_current="v1")
    assert second.previous == "v1"
    with pytest.raises(GalleryError, match="CURRENT is 'v2', expected 'v1'"):
        galleries.set_current(GALLERY, "v1", expected_current="v1")
    galleries.set_current(GALLERY, second.previous, expected_current="v2")  # transaction rollback
    assert galleries.read_current(GALLERY) == "v1"
    assert galleries.set_current(GALLERY, first.previous) is None  # undo the very first publish
    assert galleries.read_current(GALLERY) is None
    assert galleries.list_versions(GALLERY) == ["v1", "v2"]


def test_resume_with_other_parameters_is_refused(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    begin(galleries, "v1")
    with pytest.raises(GalleryError, match="model_version: staged '7', now '8'"):
        begin(galleries, "v1", model_version="8")
    assert galleries.open_version(GALLERY, "v1").num_shards == NUM_SHARDS
    with pytest.raises(GalleryError, match="never begun"):
        galleries.open_version(GALLERY, "v9")


def test_discard_removes_an_unpublished_version(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    write_all(galleries, "v1", num_shards=1)
    galleries.discard_version(GALLERY, "v1")
    assert any_store.list(galleries.version_prefix(GALLERY, "v1")) == []
    assert galleries.list_versions(GALLERY, include_staged=True) == []


def test_optional_arrays_and_integer_ids(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    writer = galleries.begin_version(
        GALLERY, "codes-only", model_version="1", num_shards=2, arrays=("ids", "codes")
    )
    for n in range(2):
        writer.write_shard(n, np.arange(n * 3, n * 3 + 3, dtype=np.int32), codes=np.full((3, 2), n, np.uint8))
    manifest = writer.finalize()
    assert manifest.arrays == ("codes", "ids") and manifest.index is None and manifest.id_kind == "int64"
    loaded = galleries.load_arrays(GALLERY, "codes-only")
    assert loaded.features is None and loaded.ids.dtype == np.int64
    np.testing.assert_array_equal(loaded.ids, np.arange(6))
    assert galleries.load_index(GALLERY, "codes-only") is None


def test_bad_shard_input_gets_clear_errors(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    writer = begin(galleries, "v1")
    a = shard_arrays("v1", 0)
    nan = a.features.copy()
    nan[0, 0] = np.nan
    cases = [
        (lambda: writer.write_shard(3, a.ids, a.features, a.codes), "outside 0..2"),
        (lambda: writer.write_shard(0, a.ids, a.features), r"got arrays \['features', 'ids'\]"),
        (lambda: writer.write_shard(0, a.ids, a.features[:-1], a.codes), "features must have shape"),
        (lambda: writer.write_shard(0, a.ids, nan, a.codes), "NaN"),
        (lambda: writer.write_shard(0, a.ids, a.features, a.codes.astype(np.int8)), "unsigned"),
        (lambda: writer.write_shard(0, np.array(["x"] * SHARD_SIZE), a.features, a.codes), "duplicates"),
        (
            lambda: writer.write_shard(0, a.ids.astype(object), a.features, a.codes),
            "ids must be integers or str",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            call()
        assert "shard" in str(info.value)
    assert not writer.shard_done(0)
    with pytest.raises(ValueError, match="gallery name"):
        galleries.read_current("../etc")
    with pytest.raises(ValueError, match="version id"):
        galleries.load_manifest(GALLERY, "a/b")


def test_duplicate_ids_across_shards_refused_at_finalize(any_store: ObjectStore) -> None:
    galleries = GalleryStore(any_store)
    writer = galleries.begin_version(GALLERY, "dup", model_version="1", num_shards=2, arrays=("ids",))
    writer.write_shard(0, np.array([1, 2]))
    writer.write_shard(1, np.array([2, 3]))
    with pytest.raises(GalleryError, match=r"more than once.*\[2\]"):
        writer.finalize()


def test_new_version_ids_sort_by_time() -> None:
    early = new_version_id(datetime(2026, 1, 1, tzinfo=UTC))
    late = new_version_id(datetime(2026, 1, 2, tzinfo=UTC))
    assert early.startswith("20260101T000000Z-") and early < late
