"""One shard job of a backfill: what it is, what it needs, and how one shard is built and written.

A job is small and picklable, so any executor can run it (components/gallery/shard_runner.py; on a
Dask cluster each worker builds its context once from a small spec, see
components/gallery/dask_shards.py); a job whose shard is already written and verified returns at
once, which is what makes an interrupted backfill cheap to resume.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from hotswap.components.compat.transform import FeatureTransform
from hotswap.components.compat.transform import apply as apply_transform
from hotswap.components.core.faults import fault_point
from hotswap.components.gallery.records import GalleryManifest
from hotswap.components.gallery.version_writer import VersionWriter
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks


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
    mapped_from: np.ndarray | None = None  # str [count]: source model whose map h_v applies ("" = keep)


@dataclass(frozen=True)
class ShardResult:
    """What a shard job did; ``skipped`` means the shard was already written and verified."""

    shard: int
    items: int
    extracted: int
    skipped: bool
    seconds: dict[str, float] = field(default_factory=dict)
    worker: str = ""  # the Dask worker that ran it (empty on this machine)


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
        transforms: Mapping[str, FeatureTransform] | None = None,
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
        self.transforms = dict(transforms or {})
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
        if job.mapped_from is not None:
            with timer("transform"):
                _map_rows(ctx, job.mapped_from, features)
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


def _map_rows(ctx: BackfillContext, mapped_from: np.ndarray, features: np.ndarray) -> None:
    """Stored features of each source model replaced, in place, by their map h_v (no image read)."""
    for model in sorted(set(mapped_from.tolist()) - {""}):
        rows = mapped_from == model
        features[rows] = apply_transform(ctx.transforms[model], features[rows])[0]


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
