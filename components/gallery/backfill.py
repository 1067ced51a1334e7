"""The backfill engine: write a new gallery version for a new model, shard by shard, resumably.

Modes (DESIGN.md §7, cheapest first):

- ``skip``: nothing is written; the live version keeps its features, codes and index.
- ``requantize``: no forward pass; the stored features are re-encoded with the new codebooks.
- ``partial``: the first ⌊f·n⌋ items of an ordering (components/decision/ordering.py; computed from the
  *stored* old features, so choosing costs no forward pass) are re-extracted with the new model;
  every item is re-encoded with the new codebooks. The gallery is then mixed.
- ``full``: every item is re-extracted and re-encoded.

Each version records, per item, which model produced its features (the *provenance*): a uint16
array aligned with the version's rows, stored as ``backfill/feature_models.npy`` under the version
folder, with the model-version names and the array's sha256 in the manifest metadata (the gallery
format stores only ids/features/codes per shard, so provenance travels beside it, checksummed by
the manifest). A later partial backfill for the same model skips items that already carry its
features, and an auditor can tell a mixed gallery from a clean one.

Safety comes from components/gallery/versions.py: shards are written to a staged version that nothing
reads; a shard counts as done only when its record and checksums verify, so a rerun with the same
version id re-does exactly the unfinished shards (and no forward pass is spent on a finished one);
publishing (a separate, optional step, so a promotion transaction can own it) writes CURRENT last.
The plan (which rows are re-extracted) is a pure function of the stored gallery and the arguments,
and its checksum is part of the staged metadata, so a resumed run cannot silently mix two plans.

Parallelism: shards are independent jobs. By default they run on a thread pool (torch and numpy
release the GIL, and I/O overlaps compute); any executor with ``submit`` whose futures have
``result()`` works, and a ``dask.distributed.Client`` is detected (it has ``scatter``), receives the
shared context once per worker and is driven with ``distributed.as_completed``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.core.faults import fault_point
from hotswap.components.decision.ordering import (
    DEFAULT_SCORE,
    Ordering,
    UncertaintyScore,
    backfill_order,
    backfilled_count,
)
from hotswap.components.gallery.calibration import write_calibration
from hotswap.components.gallery.records import (
    GalleryError,
    GalleryManifest,
    ShardCorruptedError,
    new_version_id,
    npy_bytes,
    npy_load,
    sha256_hex,
)
from hotswap.components.gallery.store import ObjectNotFoundError, ObjectStore
from hotswap.components.gallery.version_writer import VersionWriter
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks
from pydantic import JsonValue

Mode = Literal["skip", "requantize", "partial", "full"]
MODES: tuple[str, ...] = ("skip", "requantize", "partial", "full")
PROVENANCE_FILE = "backfill/feature_models.npy"
DEFAULT_SHARD_SIZE = 1024
IndexBuilder = Callable[[np.ndarray, np.ndarray], bytes]


class BackfillError(ValueError):
    """A backfill was asked for something it cannot do; the message names the argument."""


# --------------------------------------------------------------------------- item sources


@runtime_checkable
class ItemSource(Protocol):
    """Gives gallery items by id, in the order asked, as one model reads them (float32 [N, C, H, W]).

    components/data/loading.py ``SourceItemSource`` reads them through the data source."""

    def images(self, item_ids: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- jobs and results


@dataclass(frozen=True)
class ShardJob:
    """One target shard: its source rows (slices of source shards) or, for a bootstrap, its ids,
    and which of its rows get new-model features."""

    shard: int
    extract: np.ndarray  # bool [count]
    source_slices: tuple[tuple[int, int, int], ...] = ()  # (source shard, start, stop)
    ids: np.ndarray | None = None


@dataclass(frozen=True)
class ShardResult:
    """What a shard job did; ``skipped`` means the shard was already written and verified."""

    shard: int
    items: int
    extracted: int
    skipped: bool
    seconds: dict[str, float] = field(default_factory=dict)


class BackfillContext:
    """Everything a shard job needs besides the job; shipped once per worker process.

    The version writer is opened lazily (``open_version``) in each process that runs jobs.
    ``compute_slots`` caps how many jobs of one process embed and encode at the same time (None:
    no cap). With more workers than slots, one shard's reads and writes overlap another shard's
    forward pass while the model still runs on a fixed number of cores: I/O hides behind compute.
    """

    def __init__(
        self,
        galleries: GalleryStore,
        gallery: str,
        version: str,
        source_version: str | None,
        source_manifest: GalleryManifest | None,
        model: EmbeddingModel | None,
        codebooks: DPQCodebooks | None,
        item_source: ItemSource | None,
        batch_size: int,
        device: str,
        writer: VersionWriter | None = None,
        compute_slots: int | None = None,
    ) -> None:
        self.galleries = galleries
        self.gallery = gallery
        self.version = version
        self.source_version = source_version
        self.source_manifest = source_manifest
        self.model = model
        self.codebooks = codebooks
        self.item_source = item_source
        self.batch_size = batch_size
        self.device = device
        self._writer = writer
        if compute_slots is not None and compute_slots < 1:
            raise BackfillError(f"compute_slots must be at least 1 (or None), got {compute_slots}")
        self.compute_slots = compute_slots
        self._init_locks()

    def _init_locks(self) -> None:
        self._lock = threading.Lock()
        slots = self.compute_slots
        self._compute = threading.BoundedSemaphore(slots) if slots is not None else contextlib.nullcontext()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_writer"] = None
        del state["_lock"], state["_compute"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_locks()

    @contextlib.contextmanager
    def compute(self, timer: _Timer) -> Iterator[None]:
        """Hold one compute slot (time spent waiting for it is recorded as 'wait')."""
        with timer("wait"):
            self._compute.__enter__()
        try:
            yield
        finally:
            self._compute.__exit__(None, None, None)

    def writer(self) -> VersionWriter:
        with self._lock:
            if self._writer is None:
                self._writer = self.galleries.open_version(self.gallery, self.version)
            return self._writer


def process_shard(ctx: BackfillContext, job: ShardJob) -> ShardResult:
    """Build and write one shard unless it is already done (then no image is read or embedded)."""
    timer = _Timer()
    writer = ctx.writer()
    if writer.shard_done(job.shard):
        return ShardResult(job.shard, len(job.extract), 0, True, timer.seconds)
    ids, features = _source_rows(ctx, job, timer)
    count = len(ids)
    if features is None:
        dim = ctx.model.embedding_dim if ctx.model is not None else 0
        features = np.zeros((count, dim), dtype=np.float32)
    extract = np.asarray(job.extract, dtype=bool)
    images = None
    if extract.any():
        with timer("fetch"):
            images = ctx.item_source.images(ids[extract])
    codes = None
    with ctx.compute(timer):
        if images is not None:
            with timer("extract"):
                features[extract] = extract_features(
                    ctx.model, images, batch_size=ctx.batch_size, device=ctx.device
                )
        if ctx.codebooks is not None:
            with timer("encode"):
                codes = ctx.codebooks.encode(features)
    with timer("write"):
        writer.write_shard(job.shard, ids, features, codes)
    fault_point(f"backfill:shard-{job.shard}-written")
    return ShardResult(job.shard, count, int(extract.sum()), False, timer.seconds)


def _source_rows(ctx: BackfillContext, job: ShardJob, timer: _Timer) -> tuple[np.ndarray, np.ndarray | None]:
    if job.ids is not None:
        return np.asarray(job.ids), None
    ids, feats = [], []
    with timer("read"):
        for source_shard, start, stop in job.source_slices:
            arrays = ctx.galleries.load_shard(
                ctx.gallery, ctx.source_version, source_shard, manifest=ctx.source_manifest
            )
            ids.append(arrays.ids[start:stop])
            if arrays.features is not None:
                feats.append(arrays.features[start:stop])
    features = np.concatenate(feats).astype(np.float32, copy=True) if feats else None
    return np.concatenate(ids), features


class _Timer:
    """Accumulates wall seconds per phase; the bench reads them to split orchestration overhead."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> _Phase:
        return _Phase(self, phase)


class _Phase:
    def __init__(self, timer: _Timer, phase: str) -> None:
        self.timer, self.phase = timer, phase

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter() - self.start
        self.timer.seconds[self.phase] = self.timer.seconds.get(self.phase, 0.0) + spent


# --------------------------------------------------------------------------- running jobs


ShardCallback = Callable[[ShardResult], None]


def run_shard_jobs(
    ctx: BackfillContext,
    jobs: Sequence[ShardJob],
    executor: Any | None = None,
    workers: int = 2,
    on_shard: ShardCallback | None = None,
) -> list[ShardResult]:
    """Run every job; ``on_shard`` sees each result as it completes (in the calling thread).

    If ``on_shard`` (or a job) raises, the jobs not yet started are cancelled and the error is
    re-raised: shards already written stay written, which is what makes the rerun cheap.
    ``executor=None`` uses a private thread pool of ``workers`` threads (1 runs inline).
    """
    if workers < 1:
        raise BackfillError(f"workers must be at least 1, got {workers}")
    if executor is None and workers == 1:
        results = []
        for job in jobs:
            result = process_shard(ctx, job)
            results.append(result)
            if on_shard is not None:
                on_shard(result)
        return results
    if executor is None:
        with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool:
            return _drive(pool, ctx, jobs, on_shard)
    return _drive(executor, ctx, jobs, on_shard)


def _is_dask_client(executor: Any) -> bool:
    return hasattr(executor, "scatter") and hasattr(executor, "gather") and hasattr(executor, "submit")


def _drive(
    executor: Any, ctx: BackfillContext, jobs: Sequence[ShardJob], on_shard: ShardCallback | None
) -> list[ShardResult]:
    if _is_dask_client(executor):
        from distributed import as_completed as dask_as_completed

        shared = executor.scatter(ctx, broadcast=True, hash=False)
        futures = [executor.submit(process_shard, shared, job, pure=False) for job in jobs]
        completed: Iterable[Any] = dask_as_completed(futures)

        def cancel() -> None:
            executor.cancel(futures)
    else:
        futures = [executor.submit(process_shard, ctx, job) for job in jobs]
        completed = cf.as_completed(futures)

        def cancel() -> None:
            for future in futures:
                future.cancel()

    results: list[ShardResult] = []
    try:
        for future in completed:
            result = future.result()
            results.append(result)
            if on_shard is not None:
                on_shard(result)
    except BaseException:
        cancel()
        raise
    return sorted(results, key=lambda r: r.shard)


# --------------------------------------------------------------------------- provenance


def _provenance_key(galleries: GalleryStore, gallery: str, version: str) -> str:
    return galleries.version_key(gallery, version, PROVENANCE_FILE)


def feature_models(galleries: GalleryStore, gallery: str, version: str) -> np.ndarray:
    """Per row of a finished version, the model version that produced its features (str [N]).

    Versions written without provenance (by other tools) count as wholly the manifest's model.
    The stored array is checked against the sha256 the manifest metadata records.
    """
    manifest = galleries.load_manifest(gallery, version)
    models, codes = _read_provenance(galleries, manifest)
    return np.asarray(models, dtype=str)[codes]


def _read_provenance(galleries: GalleryStore, manifest: GalleryManifest) -> tuple[list[str], np.ndarray]:
    meta = manifest.metadata.get("provenance")
    models = manifest.metadata.get("feature_models")
    if not isinstance(meta, dict) or not isinstance(models, list):
        return [manifest.model_version], np.zeros(manifest.num_items, dtype=np.uint16)
    where = f"gallery {manifest.gallery!r} version {manifest.version!r}"
    key = _provenance_key(galleries, manifest.gallery, manifest.version)
    try:
        data = galleries.store.get_bytes(key)
    except ObjectNotFoundError:
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} is missing") from None
    if sha256_hex(data) != meta.get("sha256"):
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} fails its checksum")
    codes = npy_load(data)
    if codes.shape != (manifest.num_items,) or (len(codes) and int(codes.max()) >= len(models)):
        raise ShardCorruptedError(f"{where}: provenance file {PROVENANCE_FILE} does not match the manifest")
    return [str(m) for m in models], codes


def _write_provenance(writer: VersionWriter, data: bytes) -> None:
    store: ObjectStore = writer.galleries.store
    key = _provenance_key(writer.galleries, writer.gallery, writer.version)
    try:
        if store.get_bytes(key) == data:
            return
    except ObjectNotFoundError:
        pass
    store.put_bytes(key, data)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class BackfillPlan:
    """Which rows of the source get new features, how they are cut into shards, and provenance."""

    jobs: tuple[ShardJob, ...]
    models: tuple[str, ...]
    provenance: np.ndarray  # uint16 [N] index into models
    extracted: int
    already_new: int

    @property
    def provenance_bytes(self) -> bytes:
        return npy_bytes(self.provenance.astype(np.uint16))


def _check_fraction(mode: str, fraction: float | None) -> float:
    if mode == "full":
        return 1.0
    if mode == "requantize":
        return 0.0
    if fraction is None:
        raise BackfillError("mode 'partial' needs a fraction in [0, 1]")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise BackfillError(f"fraction must lie in [0, 1], got {fraction}")
    return fraction


def _source_bounds(manifest: GalleryManifest) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([s.count for s in manifest.shards])]).astype(np.int64)


def _slices(bounds: np.ndarray, start: int, stop: int) -> tuple[tuple[int, int, int], ...]:
    """The (source shard, start, stop) pieces that make up global rows [start, stop)."""
    out = []
    first = int(np.searchsorted(bounds, start, side="right") - 1)
    for shard in range(first, len(bounds) - 1):
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        if lo >= stop:
            break
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            out.append((shard, a - lo, b - lo))
    return tuple(out)


def plan_backfill(
    galleries: GalleryStore,
    gallery: str,
    source: GalleryManifest,
    mode: Mode,
    target_model_version: str,
    *,
    fraction: float | None = None,
    ordering: Ordering = "uncertainty",
    prototypes: np.ndarray | None = None,
    score: UncertaintyScore = DEFAULT_SCORE,
    scale: float = 16.0,
    seed: int = 0,
    shard_size: int | None = None,
) -> BackfillPlan:
    """Decide, from stored data only, which rows are re-extracted and how shards are cut.

    ``partial``: the first ⌊fraction·n⌋ rows of the ordering (over the whole gallery) are chosen;
    rows whose features already come from ``target_model_version`` are not re-extracted again.
    ``shard_size=None`` keeps the source's shard layout.
    """
    fraction = _check_fraction(mode, fraction)
    if mode == "partial" and ordering == "uncertainty" and prototypes is None:
        raise BackfillError(
            "ordering 'uncertainty' needs the old model's class prototypes (prototypes=old_model.head.weight)"
        )
    n = source.num_items
    models, codes = _read_provenance(galleries, source)
    if target_model_version not in models:
        models = [*models, target_model_version]
    target = models.index(target_model_version)
    already_new = codes == target
    chosen = np.zeros(n, dtype=bool)
    if mode == "full":
        chosen[:] = True
    elif mode == "partial" and fraction > 0:
        count = backfilled_count(n, fraction)
        if ordering == "uncertainty":
            features = galleries.load_arrays(gallery, source.version).features
            if features is None:
                raise BackfillError(
                    f"gallery {gallery!r} version {source.version!r} stores no features; "
                    "the 'uncertainty' ordering needs them (use 'random')"
                )
            order = backfill_order(
                "uncertainty", features, prototypes=prototypes, score=score, scale=scale, seed=seed
            )
        else:
            order = backfill_order(ordering, np.empty((n, 1), dtype=np.float32), seed=seed)
        chosen[order[:count]] = True
    extract = chosen & ~already_new if mode != "full" else chosen
    provenance = codes.astype(np.uint16).copy()
    provenance[extract] = target
    bounds = _source_bounds(source)
    if shard_size is None:
        cuts = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]
    else:
        if shard_size < 1:
            raise BackfillError(f"shard_size must be at least 1, got {shard_size}")
        cuts = [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)] or [(0, 0)]
    jobs = tuple(
        ShardJob(shard=i, extract=extract[a:b].copy(), source_slices=_slices(bounds, a, b))
        for i, (a, b) in enumerate(cuts)
    )
    return BackfillPlan(
        jobs, tuple(models), provenance, int(extract.sum()), int((chosen & already_new).sum())
    )


# --------------------------------------------------------------------------- public entry points


def _as_galleries(store: ObjectStore | GalleryStore) -> GalleryStore:
    return store if isinstance(store, GalleryStore) else GalleryStore(store)


def _finish(
    writer: VersionWriter,
    galleries: GalleryStore,
    index_builder: IndexBuilder | None,
    publish: bool,
    expected_current: str | None,
    calibration: ScoreCalibration | None = None,
    models: Sequence[str] = (),
) -> GalleryManifest:
    manifest = writer.finalize()
    if index_builder is not None:
        arrays = galleries.load_arrays(writer.gallery, writer.version)
        if arrays.codes is None:
            raise BackfillError(
                "index_builder needs codes, but this version stores none (no codebooks given)"
            )
        manifest = writer.finalize(index_bytes=index_builder(arrays.codes, arrays.ids))
    if calibration is not None:  # before CURRENT can point here: a mixed version goes live calibrated
        write_calibration(galleries, writer.gallery, writer.version, calibration, models=models)
    if publish:
        writer.publish(expected_current=expected_current)
    return manifest


def _already_published(
    galleries: GalleryStore, gallery: str, version: str, metadata: dict[str, JsonValue]
) -> GalleryManifest | None:
    """A finished, sealed version with the same plan is the answer to a rerun; another plan is an error."""
    if not galleries.is_sealed(gallery, version):
        return None
    manifest = galleries.load_manifest(gallery, version)
    if manifest.metadata != metadata:
        raise GalleryError(
            f"gallery {gallery!r} version {version!r} is already published with another plan; "
            "use a new version id"
        )
    return manifest


def run_backfill(
    store: ObjectStore | GalleryStore,
    gallery: str,
    source_version: str,
    mode: Mode,
    new_model: EmbeddingModel | None,
    new_codebooks: DPQCodebooks | None,
    item_source: ItemSource | None,
    fraction: float | None = None,
    ordering: Ordering = "uncertainty",
    shard_size: int | None = None,
    executor: Any | None = None,
    on_shard: ShardCallback | None = None,
    *,
    model_version: str,
    codebook_version: str | None = None,
    version: str | None = None,
    prototypes: np.ndarray | None = None,
    score: UncertaintyScore = DEFAULT_SCORE,
    seed: int = 0,
    workers: int = 2,
    compute_slots: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    index_builder: IndexBuilder | None = None,
    publish: bool = False,
    created_at: datetime | None = None,
    calibration: ScoreCalibration | None = None,
) -> GalleryManifest:
    """Write a new version of ``gallery`` for ``new_model`` from ``source_version``; return its manifest.

    ``mode='skip'`` writes nothing and returns the source manifest. Otherwise a new version
    (``version``, default a fresh time-sortable id; pass the same id to resume an interrupted
    run) stores ids, features (new-model features for re-extracted items, stored ones otherwise)
    and, when ``new_codebooks`` are given, codes from them. ``prototypes`` (the old model's class
    prototypes, e.g. ``old_model.head.weight``) drive the 'uncertainty' ordering. The index is
    built with ``index_builder(codes, ids)`` when given. The version is published (CURRENT
    switched, expecting CURRENT unchanged since the start) only with ``publish=True``.
    ``workers`` threads run shard jobs (when no ``executor`` is given); ``compute_slots`` caps how
    many of them run the model at once (e.g. workers=2, compute_slots=1 overlaps I/O with compute).
    ``calibration`` (components/compat/calibration.py, for queries of ``model_version``, covering every
    model the version will hold) is stored in the version (components/gallery/calibration.py)
    before it can be published; with ``mode='skip'`` it is added to the source version.
    """
    if mode not in MODES:
        raise BackfillError(f"mode {mode!r} is unknown; expected one of {MODES}")
    galleries = _as_galleries(store)
    source = galleries.load_manifest(gallery, source_version)
    if calibration is not None and calibration.query_model != model_version:
        raise BackfillError(
            f"calibration is for queries of model {calibration.query_model!r}, "
            f"the backfill for {model_version!r}"
        )
    if mode == "skip":
        if calibration is not None:
            write_calibration(galleries, gallery, source_version, calibration)
        return source
    if new_codebooks is None and mode == "requantize":
        raise BackfillError("mode 'requantize' needs new_codebooks")
    if mode in ("partial", "full") and (new_model is None or item_source is None):
        raise BackfillError(f"mode {mode!r} needs new_model and item_source to re-extract items")
    if mode != "full" and "features" not in source.arrays:
        raise BackfillError(
            f"gallery {gallery!r} version {source_version!r} stores no features; only 'full' can rebuild it"
        )
    dim = new_model.embedding_dim if new_model is not None else source.feature_dim
    if source.feature_dim is not None and dim != source.feature_dim:
        raise BackfillError(
            f"new model embeds into d={dim}, gallery {gallery!r} version {source_version!r} holds "
            f"d={source.feature_dim}; a compatible model must keep d"
        )
    if new_codebooks is not None and new_codebooks.dim != dim:
        raise BackfillError(f"new_codebooks have dimension {new_codebooks.dim}, the features {dim}")
    plan = plan_backfill(
        galleries,
        gallery,
        source,
        mode,
        model_version,
        fraction=fraction,
        ordering=ordering,
        prototypes=prototypes,
        score=score,
        seed=seed,
        shard_size=shard_size,
    )
    provenance = plan.provenance_bytes
    metadata: dict[str, JsonValue] = {
        "backfill": {
            "mode": mode,
            "fraction": _check_fraction(mode, fraction),
            "ordering": ordering if mode == "partial" else None,
            "score": score if mode == "partial" and ordering == "uncertainty" else None,
            "seed": seed if mode == "partial" and ordering == "random" else None,
            "source_version": source_version,
            "shard_size": shard_size,  # None = the source's layout; a resume must cut shards the same way
            "reextracted": plan.extracted,
            "already_new": plan.already_new,
        },
        "feature_models": list(plan.models),
        "provenance": {"path": PROVENANCE_FILE, "sha256": sha256_hex(provenance), "size": len(provenance)},
    }
    version = version or new_version_id()
    done = _already_published(galleries, gallery, version, metadata)
    if done is not None:
        return done
    expected_current = galleries.read_current(gallery)
    arrays = ("ids", "features", "codes") if new_codebooks is not None else ("ids", "features")
    writer = galleries.begin_version(
        gallery,
        version,
        model_version=model_version,
        codebook_version=codebook_version,
        parent_version=source_version,
        num_shards=len(plan.jobs),
        arrays=arrays,
        metadata=metadata,
        created_at=created_at,
    )
    _write_provenance(writer, provenance)
    if new_model is not None:
        new_model.eval()
    ctx = BackfillContext(
        galleries, gallery, version, source_version, source, new_model, new_codebooks,
        item_source, batch_size, device, writer, compute_slots,
    )  # fmt: skip
    run_shard_jobs(ctx, plan.jobs, executor=executor, workers=workers, on_shard=on_shard)
    present = [plan.models[i] for i in np.unique(plan.provenance)]
    return _finish(writer, galleries, index_builder, publish, expected_current, calibration, present)


def build_gallery_version(
    store: ObjectStore | GalleryStore,
    gallery: str,
    model: EmbeddingModel,
    codebooks: DPQCodebooks | None,
    item_source: ItemSource,
    item_ids: Sequence[Any] | np.ndarray,
    *,
    model_version: str,
    codebook_version: str | None = None,
    version: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    executor: Any | None = None,
    on_shard: ShardCallback | None = None,
    workers: int = 2,
    compute_slots: int | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    index_builder: IndexBuilder | None = None,
    publish: bool = False,
    created_at: datetime | None = None,
) -> GalleryManifest:
    """The first (bootstrap) version of a gallery: every item embedded by ``model``, encoded by
    ``codebooks``; resumable like :func:`run_backfill`. Returns the manifest."""
    ids = np.asarray(item_ids)
    if ids.ndim != 1 or len(ids) == 0:
        raise BackfillError(f"item_ids must be a non-empty 1-D sequence, got shape {ids.shape}")
    if shard_size < 1:
        raise BackfillError(f"shard_size must be at least 1, got {shard_size}")
    if codebooks is not None and codebooks.dim != model.embedding_dim:
        raise BackfillError(
            f"codebooks have dimension {codebooks.dim}, the model embeds into {model.embedding_dim}"
        )
    galleries = _as_galleries(store)
    provenance = npy_bytes(np.zeros(len(ids), dtype=np.uint16))
    metadata: dict[str, JsonValue] = {
        "backfill": {
            "mode": "bootstrap",
            "fraction": 1.0,
            "source_version": None,
            "shard_size": shard_size,
            "reextracted": len(ids),
        },
        "feature_models": [model_version],
        "provenance": {"path": PROVENANCE_FILE, "sha256": sha256_hex(provenance), "size": len(provenance)},
    }
    version = version or new_version_id()
    done = _already_published(galleries, gallery, version, metadata)
    if done is not None:
        return done
    expected_current = galleries.read_current(gallery)
    jobs = tuple(
        ShardJob(
            shard=i, extract=np.ones(len(ids[a : a + shard_size]), dtype=bool), ids=ids[a : a + shard_size]
        )
        for i, a in enumerate(range(0, len(ids), shard_size))
    )
    writer = galleries.begin_version(
        gallery,
        version,
        model_version=model_version,
        codebook_version=codebook_version,
        parent_version=None,
        num_shards=len(jobs),
        arrays=("ids", "features", "codes") if codebooks is not None else ("ids", "features"),
        metadata=metadata,
        created_at=created_at,
    )
    _write_provenance(writer, provenance)
    model.eval()
    ctx = BackfillContext(
        galleries, gallery, version, None, None, model, codebooks, item_source, batch_size, device, writer,
        compute_slots,
    )  # fmt: skip
    run_shard_jobs(ctx, jobs, executor=executor, workers=workers, on_shard=on_shard)
    return _finish(writer, galleries, index_builder, publish, expected_current)
