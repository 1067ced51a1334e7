"""The backfill engine on real stores (local directory and moto S3), real torch models and DPQ codes.

Models are untrained (the engine does not care what the weights mean, only which model produced
which row), images are tiny procedural ones, so every test runs in about a second or two.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from hotswap.components.data.bundled import make_synthetic
from hotswap.components.data.images import ImageSet
from hotswap.components.data.loading import SourceItemSource
from hotswap.components.decision.ordering import uncertainty_scores
from hotswap.components.gallery.backfill import build_gallery_version, run_backfill
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.provenance import PROVENANCE_FILE, feature_models
from hotswap.components.gallery.records import GalleryError, ShardCorruptedError
from hotswap.components.gallery.shard_jobs import BackfillError, ShardResult
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks

from tests.fixtures import stores
from tests.fixtures.stores import RecordingStore, sibling_store

any_store = stores.any_store

GALLERY = "shop"
N_ITEMS = 96
SHARD = 16  # -> 6 shards
DIM = 8
CREATED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Interrupted(RuntimeError):
    """Raised from on_shard to stop a backfill the way a killed worker would."""


@pytest.fixture(scope="module")
def data() -> ImageSet:
    return make_synthetic(N_ITEMS, n_classes=4, image_size=16, seed=3)


def model(seed: int, arch: str = "small") -> EmbeddingModel:
    spec = BackboneSpec(arch=arch, embedding_dim=DIM, num_classes=4, image_size=16)
    return build_model(spec, seed=seed).eval()


def codebooks(seed: int) -> DPQCodebooks:
    rng = np.random.default_rng(seed)
    return DPQCodebooks((rng.standard_normal((2, 16, DIM)) * 0.3).astype(np.float32))


def item_source(data: ImageSet) -> SourceItemSource:
    """The gallery's images by id, as every model of these tests reads them (16×16 grayscale)."""
    return SourceItemSource(data, model(0).preprocessing)


class CountingSource(SourceItemSource):
    """Counts every image handed out: each one is exactly one forward pass of the new model."""

    def __init__(self, dataset: ImageSet) -> None:
        super().__init__(dataset, model(0).preprocessing)
        self.served: list[str] = []

    def images(self, item_ids: np.ndarray) -> np.ndarray:
        self.served.extend(str(i) for i in item_ids)
        return super().images(item_ids)


def count_forward(net: EmbeddingModel) -> list[int]:
    """Rows that went through the model's trunk (a forward-pass counter independent of the source)."""
    seen: list[int] = []
    net.trunk.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    return seen


def bootstrap(store: ObjectStore, data: ImageSet) -> GalleryStore:
    galleries = GalleryStore(store)
    build_gallery_version(
        galleries, GALLERY, model(0), codebooks(0), item_source(data), data.item_ids,
        model_version="m1", codebook_version="c1", version="v1", shard_size=SHARD, workers=1,
        publish=True, created_at=CREATED,
    )  # fmt: skip
    return galleries


def snapshot(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix) :]: store.get_bytes(key) for key in store.list(prefix)}


def test_bootstrap_version_holds_model_features_and_codes(data: ImageSet, tmp_path) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    arrays = galleries.load_arrays(GALLERY, "v1")
    expected = extract_features(model(0), data.native_inputs())
    np.testing.assert_array_equal(arrays.ids, data.item_ids)
    np.testing.assert_allclose(arrays.features, expected, atol=1e-6)
    np.testing.assert_array_equal(arrays.codes, codebooks(0).encode(arrays.features))
    assert galleries.read_current(GALLERY) == "v1"
    assert set(feature_models(galleries, GALLERY, "v1")) == {"m1"}
    assert galleries.load_manifest(GALLERY, "v1").num_shards == N_ITEMS // SHARD


def test_interrupted_backfill_redoes_no_finished_shard_and_matches_clean_run(
    any_store: ObjectStore, data: ImageSet, tmp_path
) -> None:
    bootstrap(any_store, data)
    checker = GalleryStore(any_store)

    current_key = checker.current_key(GALLERY)
    verified = {"v1"}

    def current_is_whole(key: str) -> None:
        """After every single write of the job: CURRENT names a whole version (verified in full
        whenever CURRENT itself was written; it cannot change otherwise)."""
        live = checker.read_current(GALLERY)
        if key == current_key:
            checker.verify_version(GALLERY, live)  # raises if CURRENT names an incomplete version
            verified.add(live)
        assert live in verified

    def backfill(store: ObjectStore, source, on_shard=None, publish: bool = True):
        return run_backfill(
            store, GALLERY, "v1", "partial", new, codebooks(1), source, fraction=0.5, ordering="random",
            on_shard=on_shard, model_version="m2", codebook_version="c2", version="v2", workers=1,
            publish=publish, created_at=CREATED, seed=7,
        )  # fmt: skip

    new = model(1, "large")
    forward = count_forward(new)
    first_source = CountingSource(data)
    done_first: list[int] = []

    def stop_after_two(result: ShardResult) -> None:
        done_first.append(result.shard)
        if len(done_first) == 2:
            raise Interrupted("worker killed after 2 shards")

    recording = RecordingStore(any_store, after_write=current_is_whole)
    with pytest.raises(Interrupted):
        backfill(recording, first_source, on_shard=stop_after_two)
    assert checker.read_current(GALLERY) == "v1"  # nothing half-built became visible
    staged = checker.open_version(GALLERY, "v2")
    assert [n for n in range(staged.num_shards) if staged.shard_done(n)] == done_first == [0, 1]
    embedded_first = sum(forward)

    rerun_source = CountingSource(data)
    resumed = RecordingStore(any_store, after_write=current_is_whole)
    manifest = backfill(resumed, rerun_source)
    # No finished shard was rewritten, and none of its items went through the model again.
    assert not [k for k in resumed.puts if "/shards/000000." in k or "/shards/000001." in k]
    assert not set(first_source.served) & set(rerun_source.served)
    reextracted = manifest.metadata["backfill"]["reextracted"]
    assert len(first_source.served) + len(rerun_source.served) == reextracted == N_ITEMS // 2
    assert sum(forward) - embedded_first == len(rerun_source.served)
    assert checker.read_current(GALLERY) == "v2"

    clean_store = sibling_store(any_store, "clean", tmp_path)
    bootstrap(clean_store, data)
    backfill(clean_store, item_source(data))
    prefix = checker.version_prefix(GALLERY, "v2")
    resumed_files, clean_files = snapshot(any_store, prefix), snapshot(clean_store, prefix)
    resumed_files.pop("PUBLISHED"), clean_files.pop("PUBLISHED")  # the seal holds its own timestamp
    assert resumed_files.keys() == clean_files.keys()
    assert resumed_files == clean_files


def test_modes_write_the_right_features_codes_and_provenance(data: ImageSet, tmp_path) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    old = galleries.load_arrays(GALLERY, "v1")
    new = model(1, "large")
    new_feats = extract_features(new, data)
    forward = count_forward(new)
    common = dict(model_version="m2", codebook_version="c2", workers=2)

    skip = run_backfill(galleries, GALLERY, "v1", "skip", new, codebooks(1), None, **common)
    assert skip.version == "v1" and galleries.list_versions(GALLERY) == ["v1"]

    run_backfill(galleries, GALLERY, "v1", "requantize", None, codebooks(1), None, version="rq", **common)
    rq = galleries.load_arrays(GALLERY, "rq")
    np.testing.assert_array_equal(rq.features, old.features)
    np.testing.assert_array_equal(rq.codes, codebooks(1).encode(old.features))
    assert set(feature_models(galleries, GALLERY, "rq")) == {"m1"} and sum(forward) == 0

    source = CountingSource(data)
    run_backfill(
        galleries, GALLERY, "v1", "partial", new, codebooks(1), source, fraction=0.25, ordering="random",
        version="p25", **common,
    )  # fmt: skip
    part = galleries.load_arrays(GALLERY, "p25")
    is_new = feature_models(galleries, GALLERY, "p25") == "m2"
    assert is_new.sum() == N_ITEMS // 4 == len(source.served) == sum(forward)
    assert set(part.ids[is_new]) == set(source.served)
    np.testing.assert_allclose(part.features[is_new], new_feats[is_new], atol=1e-5)
    np.testing.assert_array_equal(part.features[~is_new], old.features[~is_new])
    np.testing.assert_array_equal(part.codes, codebooks(1).encode(part.features))

    # Continuing to 50 % from the 25 % version re-extracts only the items not yet new.
    manifest = run_backfill(
        galleries, GALLERY, "p25", "partial", new, codebooks(1), source, fraction=0.5, ordering="random",
        version="p50", **common,
    )  # fmt: skip
    assert manifest.metadata["backfill"]["already_new"] == N_ITEMS // 4
    assert manifest.metadata["backfill"]["reextracted"] == N_ITEMS // 4 == len(source.served) - N_ITEMS // 4
    assert (feature_models(galleries, GALLERY, "p50") == "m2").sum() == N_ITEMS // 2

    run_backfill(galleries, GALLERY, "v1", "full", new, codebooks(1), source, version="full", **common)
    full = galleries.load_arrays(GALLERY, "full")
    np.testing.assert_allclose(full.features, new_feats, atol=1e-5)
    assert set(feature_models(galleries, GALLERY, "full")) == {"m2"}
    assert galleries.read_current(GALLERY) == "v1"  # nothing published without publish=True
    assert galleries.is_sealed(GALLERY, "v1") and not galleries.is_sealed(GALLERY, "full")


def test_uncertainty_partial_reextracts_the_least_certain_stored_items(data: ImageSet, tmp_path) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    old_model = model(0)
    prototypes = old_model.head.weight.detach().numpy()
    stored = galleries.load_arrays(GALLERY, "v1")
    run_backfill(
        galleries, GALLERY, "v1", "partial", model(1, "large"), codebooks(1), item_source(data),
        fraction=0.25, ordering="uncertainty", prototypes=prototypes, shard_size=40,
        model_version="m2", version="u25", workers=1,
    )  # fmt: skip
    is_new = feature_models(galleries, GALLERY, "u25") == "m2"
    scores = uncertainty_scores(stored.features, prototypes)
    assert is_new.sum() == N_ITEMS // 4
    assert scores[is_new].min() >= scores[~is_new].max()  # exactly the top of the ordering
    manifest = galleries.load_manifest(GALLERY, "u25")
    assert [s.count for s in manifest.shards] == [40, 40, 16]  # re-cut into the requested shard size
    np.testing.assert_array_equal(galleries.load_arrays(GALLERY, "u25").ids, stored.ids)


def test_compute_slots_cap_concurrent_forward_passes(data: ImageSet, tmp_path) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    new = model(1, "large")
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def enter(_module, _inputs) -> None:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)  # widen the window in which a second forward pass could start

    def leave(_module, _inputs, _output) -> None:
        with lock:
            state["now"] -= 1

    new.trunk.register_forward_pre_hook(enter)
    new.trunk.register_forward_hook(leave)
    results: list[ShardResult] = []
    run_backfill(
        galleries, GALLERY, "v1", "full", new, codebooks(1), item_source(data), model_version="m2",
        version="slots", workers=3, compute_slots=1, on_shard=results.append,
    )  # fmt: skip
    assert state["max"] == 1 and len(results) == N_ITEMS // SHARD
    np.testing.assert_allclose(
        galleries.load_arrays(GALLERY, "slots").features, extract_features(new, data), atol=1e-5
    )


_IN_PROCESS: dict = {}


def _build_in_process(what: str) -> object:
    """A worker's build of a resource; in-process workers find it in this module (and count it)."""
    _IN_PROCESS.setdefault("builds", []).append(what)
    return _IN_PROCESS[what]


def test_dask_cluster_writes_the_same_version_as_threads(data: ImageSet, tmp_path) -> None:
    """Shards as tasks (components/gallery/dask_shards.py): the model and items go by reference, each
    worker builds them once; the version equals the thread pool's byte for byte."""
    distributed = pytest.importorskip("distributed")
    from hotswap.components.gallery.dask_shards import DaskShards, Resource, WorkerSetup

    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    new = model(1, "large")
    common = dict(fraction=1.0, model_version="m2", created_at=CREATED)
    run_backfill(
        galleries, GALLERY, "v1", "full", new, codebooks(1), item_source(data), version="threads",
        workers=2, **common,
    )  # fmt: skip
    _IN_PROCESS.clear()
    _IN_PROCESS.update(model=new, items=item_source(data))
    setup = WorkerSetup(
        model=Resource(f"model:{tmp_path}", functools.partial(_build_in_process, "model")),
        items=Resource(f"items:{tmp_path}", functools.partial(_build_in_process, "items")),
    )
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        runner = DaskShards(cluster.scheduler_address, setup)
        seen: list[int] = []
        run_backfill(
            galleries, GALLERY, "v1", "full", new, codebooks(1), item_source(data), version="dask",
            executor=runner, on_shard=lambda r: seen.append(r.shard), **common,
        )  # fmt: skip
        shares = dict(runner.shares)
        some = data.item_ids[:40]  # a gallery sync's new items, embedded on the cluster in chunks
        embedded = runner.embed(some, chunk=16)
    # the same chunks embedded here, in order (a batch's size can change float sums in the last bit)
    chunks = [some[a : a + 16] for a in range(0, len(some), 16)]
    here = [extract_features(new, item_source(data).images(chunk)) for chunk in chunks]
    np.testing.assert_array_equal(embedded, np.concatenate(here))
    assert sorted(seen) == list(range(N_ITEMS // SHARD))
    assert sum(shares.values()) == N_ITEMS // SHARD and "" not in shares
    assert sorted(_IN_PROCESS["builds"]) == ["items", "model"]  # once per process (workers share it)
    a, b = galleries.load_arrays(GALLERY, "threads"), galleries.load_arrays(GALLERY, "dask")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_corrupted_source_shard_is_detected_by_its_checksum(any_store: ObjectStore, data: ImageSet) -> None:
    galleries = bootstrap(any_store, data)
    key = galleries.version_key(GALLERY, "v1", "shards/000003.features.npy")
    damaged = bytearray(any_store.get_bytes(key))
    damaged[-1] ^= 0xFF
    any_store.put_bytes(key, bytes(damaged))
    with pytest.raises(ShardCorruptedError, match="shard 3"):
        run_backfill(
            galleries, GALLERY, "v1", "requantize", None, codebooks(1), None, model_version="m2", workers=1
        )


def test_resuming_with_another_plan_is_refused(data: ImageSet, tmp_path) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    args = (galleries, GALLERY, "v1", "partial", model(1), codebooks(1), item_source(data))

    def interrupt(_result: ShardResult) -> None:
        raise Interrupted("stop after the first shard")

    with pytest.raises(Interrupted):
        run_backfill(*args, fraction=0.25, ordering="random", model_version="m2", version="p", workers=1,
                     on_shard=interrupt)  # fmt: skip
    for change in ({"fraction": 0.5}, {"shard_size": 32}):
        kwargs = {"fraction": 0.25, "ordering": "random", "model_version": "m2", "version": "p"} | change
        with pytest.raises(GalleryError, match="already staged with other parameters"):
            run_backfill(*args, workers=1, **kwargs)


def test_tampered_provenance_is_detected(data: ImageSet, tmp_path) -> None:
    store = LocalObjectStore(tmp_path / "s", fsync=False)
    galleries = bootstrap(store, data)
    store.put_bytes(galleries.version_key(GALLERY, "v1", PROVENANCE_FILE), b"not the recorded array")
    with pytest.raises(ShardCorruptedError, match="provenance"):
        feature_models(galleries, GALLERY, "v1")


@pytest.mark.parametrize(
    ("mode", "kwargs", "message"),
    [
        ("sideways", {}, "mode 'sideways' is unknown"),
        ("partial", {"fraction": None}, "needs a fraction"),
        ("partial", {"fraction": 1.5}, r"fraction must lie in \[0, 1\]"),
        ("partial", {"fraction": 0.3, "ordering": "uncertainty"}, "needs the old model's class prototypes"),
        ("full", {"item_source": None}, "needs new_model and item_source"),
        ("full", {"new_model": "wrong-dim"}, "d=8"),
    ],
)
def test_bad_requests_get_clear_errors(data: ImageSet, tmp_path, mode, kwargs, message) -> None:
    galleries = bootstrap(LocalObjectStore(tmp_path / "s", fsync=False), data)
    args = {"new_model": model(1), "item_source": item_source(data), "fraction": 0.5} | kwargs
    if args["new_model"] == "wrong-dim":
        args["new_model"] = build_model(
            BackboneSpec(arch="small", embedding_dim=4, num_classes=4, image_size=16)
        )
    with pytest.raises(BackfillError, match=message):
        run_backfill(
            galleries, GALLERY, "v1", mode, args["new_model"], codebooks(1), args["item_source"],
            fraction=args["fraction"], ordering=kwargs.get("ordering", "random"), model_version="m2",
        )  # fmt: skip
