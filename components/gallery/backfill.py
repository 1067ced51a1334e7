"""The backfill engine: write a new gallery version for a new model, shard by shard, resumably.

Modes (DESIGN.md §7, cheapest first):

- ``skip``: nothing is written; the live version keeps its features, codes and index.
- ``requantize``: no forward pass; the stored features are re-encoded with the new codebooks.
- ``partial``: the first ⌊f·n⌋ items of an ordering (components/decision/ordering.py; computed from the
  *stored* old features, so choosing costs no forward pass) are re-extracted with the new model;
  every item is re-encoded with the new codebooks. The gallery is then mixed.
- ``full``: every item is re-extracted and re-encoded.
- ``transform``: no image is read and no backbone runs (with the default fraction 0): each row's
  stored features are mapped by its provenance model's h_v (components/compat/transform.py) into
  the new model's space and re-encoded with the new codebooks. With a fraction f the first
  ⌊f·n⌋ rows of the ordering are re-extracted and the rest mapped (partial(f) that transforms
  what it does not re-extract). The maps are stored in the version and listed in its manifest
  (components/gallery/transforms.py); mapped rows count as the new model's in the provenance
  (their features live in its space), and ``metadata["backfill"]["mapped"]`` says how many per
  source model.

Safety comes from components/gallery/versions.py: shards are written to a staged version that nothing
reads; a shard counts as done only when its record and checksums verify, so a rerun with the same
version id re-does exactly the unfinished shards (and no forward pass is spent on a finished one);
publishing (a separate, optional step, so a promotion transaction can own it) writes CURRENT last.
The plan (which rows are re-extracted) is a pure function of the stored gallery and the arguments,
and its checksum is part of the staged metadata, so a resumed run cannot silently mix two plans.

The parts: components/gallery/backfill_plan.py (which rows, which shards), components/gallery/shard_jobs.py
(one shard built and written), components/gallery/shard_runner.py (jobs on threads or Dask) and
components/gallery/provenance.py (which model produced each row).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from hotswap.components.compat.calibration import ScoreCalibration
from hotswap.components.compat.transform import FeatureTransform
from hotswap.components.core.configs import DEFAULT_SCORE, Ordering, UncertaintyScore
from hotswap.components.gallery.backfill_plan import MODES, Mode, check_fraction, plan_backfill
from hotswap.components.gallery.calibration import write_calibration
from hotswap.components.gallery.provenance import PROVENANCE_FILE, write_provenance
from hotswap.components.gallery.records import (
    GalleryError,
    GalleryManifest,
    new_version_id,
    npy_bytes,
    sha256_hex,
)
from hotswap.components.gallery.shard_jobs import BackfillContext, BackfillError, ItemSource, ShardJob
from hotswap.components.gallery.shard_runner import ShardCallback, run_shard_jobs
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.transforms import transform_files, transforms_metadata, write_transforms
from hotswap.components.gallery.version_writer import VersionWriter
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.quant.dpq import DPQCodebooks
from pydantic import JsonValue

DEFAULT_SHARD_SIZE = 1024
IndexBuilder = Callable[[np.ndarray, np.ndarray], bytes]


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
    transforms: Mapping[str, FeatureTransform] | None = None,
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
    ``transforms`` (mode 'transform', or the 'transform_uncertainty' ordering): h_v per provenance
    model version of the source; they are stored in the new version.
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
    if mode == "transform" and not transforms:
        raise BackfillError("mode 'transform' needs transforms: one map h_v per provenance model version")
    if mode == "transform" and (fraction or 0) > 0 and (new_model is None or item_source is None):
        raise BackfillError("mode 'transform' with a fraction needs new_model and item_source to re-extract")
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
        transforms=transforms,
    )
    provenance = plan.provenance_bytes
    reorders = mode == "partial" or (mode == "transform" and check_fraction(mode, fraction) > 0)
    used = {
        m: t for m, t in (transforms or {}).items() if m in plan.mapped or ordering == "transform_uncertainty"
    }
    files = transform_files(used) if reorders or mode == "transform" else {}
    metadata: dict[str, JsonValue] = {
        "backfill": {
            "mode": mode,
            "fraction": check_fraction(mode, fraction),
            "ordering": ordering if reorders else None,
            "score": score if reorders and ordering == "uncertainty" else None,
            "seed": seed if reorders and ordering == "random" else None,
            "source_version": source_version,
            "shard_size": shard_size,  # None = the source's layout; a resume must cut shards the same way
            "reextracted": plan.extracted,
            "already_new": plan.already_new,
        },
        "feature_models": list(plan.models),
        "provenance": {"path": PROVENANCE_FILE, "sha256": sha256_hex(provenance), "size": len(provenance)},
    }
    if mode == "transform":
        metadata["backfill"]["mapped"] = dict(plan.mapped)  # type: ignore[index]
    if files:
        metadata["transforms"] = transforms_metadata(files)
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
    write_provenance(writer, provenance)
    write_transforms(writer, files)
    if new_model is not None:
        new_model.eval()
    ctx = BackfillContext(
        galleries, gallery, version, source_version, source, new_model, new_codebooks,
        item_source, batch_size, device, writer, compute_slots, used,
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
    write_provenance(writer, provenance)
    model.eval()
    ctx = BackfillContext(
        galleries, gallery, version, None, None, model, codebooks, item_source, batch_size, device, writer,
        compute_slots,
    )  # fmt: skip
    run_shard_jobs(ctx, jobs, executor=executor, workers=workers, on_shard=on_shard)
    return _finish(writer, galleries, index_builder, publish, expected_current)
