"""Lifecycle tasks over streamed manifests (``stream.enabled``): the same steps as tasks/training.py,
validation.py, quantization.py and gallery.py, but every pass over images goes through a DataLoader
and each model reads its own preprocessing. Tasks still take settings and versions, never tensors.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
from hotswap.components.backbones import BackboneSpec, build_model
from hotswap.components.cross_eval import compatibility_matrix_from_features
from hotswap.components.data import DataError
from hotswap.components.decision import decide_from_features, measure_costs
from hotswap.components.fingerprint import (
    JOB_REFRESH,
    TAG_JOB,
    TAG_SETTINGS_HASH,
    settings_hash,
)
from hotswap.components.metrics import retrieval_metrics
from hotswap.components.model_spec import ModelSpec, build_user_model
from hotswap.components.quantization import prefix_retrieval, train_dpq
from hotswap.components.settings import HotswapSettings
from hotswap.components.streaming import (
    ImageManifest,
    LoaderConfig,
    ManifestItemSource,
    ObjectReader,
    extract_manifest,
    manifest_version,
    read_image_manifest,
)
from hotswap.components.streaming_training import class_map_by_name, train_compatible_streaming
from hotswap.tasks.context import gallery_store, registry
from hotswap.tasks.quantization import CODEBOOK_DIR, load_codebooks
from hotswap.tasks.reporting import publish_table
from hotswap.tasks.training import _train_config, register_challenger
from hotswap.tasks.validation import _record_report
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


def reader(settings: HotswapSettings) -> ObjectReader:
    return ObjectReader(endpoint_url=settings.s3_endpoint_url)


def loader_config(settings: HotswapSettings) -> LoaderConfig:
    s = settings.stream
    return LoaderConfig(batch_size=s.batch_size, workers=s.workers, prefetch_factor=s.prefetch_factor)


def _manifest(path: str, labels: bool) -> ImageManifest:
    """Rows of a manifest file, re-read when the file changes (keyed on its mtime and size)."""
    try:
        stat = os.stat(path)
        key = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = (0, 0)  # read_image_manifest names the missing file
    return _cached_manifest(path, labels, key)


@lru_cache(maxsize=8)
def _cached_manifest(path: str, labels: bool, key: tuple[int, int]) -> ImageManifest:
    return read_image_manifest(path, require_labels=labels, require_splits=labels)


def training_manifest(settings: HotswapSettings) -> ImageManifest:
    """The labelled manifest in ``data.source`` (rows only: nothing is decoded here)."""
    if not settings.data.source.endswith((".csv", ".parquet")):
        raise DataError(
            f"stream.enabled needs data.source to be a manifest file, got {settings.data.source!r}"
        )
    return _manifest(settings.data.source, True)


def gallery_manifest(settings: HotswapSettings) -> ImageManifest:
    """The gallery's own manifest (labels optional); without one, the configured split of the data."""
    if settings.stream.gallery_manifest:
        return _manifest(settings.stream.gallery_manifest, False)
    return training_manifest(settings).split(settings.data.gallery_split)


def dataset_version(settings: HotswapSettings) -> str:
    """sha256 over the manifest rows and object ETags/sizes; fails naming any missing object."""
    return manifest_version(training_manifest(settings), reader(settings))


def class_names_of(model: Any) -> tuple[str, ...]:
    return tuple(getattr(model.spec, "class_names", ()) or ())


def _old_class_map(old_model: Any, manifest: ImageManifest) -> dict[int, int] | None:
    names = class_names_of(old_model)
    return class_map_by_name(names, manifest.class_names) if names else None


def _new_model(settings: HotswapSettings, old_model: Any, manifest: ImageManifest) -> Any:
    spec_fields = settings.stream.new_model
    if spec_fields is None:
        spec = BackboneSpec(
            arch=settings.training.new_arch,
            embedding_dim=old_model.embedding_dim,
            num_classes=manifest.num_classes,
            image_size=settings.data.image_size,
        )
        return build_model(spec, seed=settings.seed)
    spec = ModelSpec.model_validate(
        {
            **spec_fields,
            "embedding_dim": old_model.embedding_dim,
            "num_classes": manifest.num_classes,
            "class_names": manifest.class_names,
        }
    )
    return build_user_model(spec, seed=settings.seed)


@task(name="train-challenger-streaming", task_run_name="train a compatible challenger against v{old_version}")
def train_challenger_streaming(settings: HotswapSettings, old_version: str) -> str:
    """Dual-Tuning (or the configured method) on the streamed training split; alias ``challenger``."""
    reg = registry(settings)
    old_model = reg.load_model(old_version)
    manifest = training_manifest(settings)
    version = dataset_version(settings)
    train = manifest.split("train")
    model = _new_model(settings, old_model, manifest)
    history = train_compatible_streaming(
        old_model,
        model,
        train,
        reader(settings),
        settings.compat,
        _train_config(settings),
        class_map=_old_class_map(old_model, manifest),
        loader=loader_config(settings),
    )
    params = {
        "method": settings.compat.method,
        "compat": settings.compat.model_dump(),
        "training": settings.training.model_dump(),
        "data.source": settings.data.source,
        "old_version": old_version,
        "seed": settings.seed,
        "streamed": True,
    }
    run_id = reg.log_training_run(
        model,
        params=params,
        history=history,
        dataset_version=version,
        run_name=f"challenger-vs-v{old_version}",
        tags={"hotswap.old_version": old_version},
    )
    # job, settings hash and champion identify the refresh, so an interrupted one is resumed
    identity = {TAG_JOB: JOB_REFRESH, TAG_SETTINGS_HASH: settings_hash(settings)}
    new_version = register_challenger(settings, run_id, old_version, identity)
    get_run_logger().info(
        "registered challenger v%s (%.1f s of streamed training)", new_version, history.seconds
    )
    return new_version


def _held_out(settings: HotswapSettings) -> ImageManifest:
    return training_manifest(settings).split(settings.data.validation_split)


@task(
    name="validate-compatibility-streaming",
    task_run_name="validate v{new_version} against v{old_version}",
    cache_policy=NONE,
)
def validate_compatibility_streaming(
    settings: HotswapSettings, old_version: str, new_version: str
) -> dict[str, Any]:
    """The cross-test on the streamed held-out split (one pass, both models' views)."""
    reg = registry(settings)
    held = _held_out(settings)
    old_model, new_model = reg.load_model(old_version), reg.load_model(new_version)
    old_f, new_f = extract_manifest(
        [old_model, new_model], held, reader(settings), loader_config(settings), device=settings.torch_device
    )
    matrix = compatibility_matrix_from_features({"old": old_f, "new": new_f}, held.labels)
    report = _record_report(settings, matrix, old_version, new_version, dataset_version(settings))
    get_run_logger().info(
        "v%s %s: %s", new_version, "blessed" if report.blessed else "NOT blessed", "; ".join(report.reasons)
    )
    return report.model_dump(mode="json")


@task(name="train-codebooks-streaming", task_run_name="train DPQ codebooks for v{version}", cache_policy=NONE)
def train_codebooks_streaming(settings: HotswapSettings, version: str) -> dict[str, Any]:
    """DPQ on the model's streamed training features; evaluated per prefix on the held-out split."""
    reg = registry(settings)
    info = reg.resolve(version)
    model = reg.load_model(version)
    manifest = training_manifest(settings)
    train, held = manifest.split("train"), _held_out(settings)
    (features,) = extract_manifest(
        [model], train, reader(settings), loader_config(settings), settings.torch_device
    )
    codebooks = train_dpq(
        features,
        train.labels,
        classifier=model.head,
        config=settings.dpq.model_copy(update={"seed": settings.seed}),
    )
    (held_f,) = extract_manifest(
        [model], held, reader(settings), loader_config(settings), settings.torch_device
    )
    return log_codebooks(settings, version, info.run_id, codebooks, held_f, held.labels)


def log_codebooks(
    settings: HotswapSettings,
    version: str,
    run_id: str,
    codebooks: Any,
    held_f: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Store codebooks beside the model version (as tasks/quantization.py does) with prefix metrics."""
    reg = registry(settings)
    by_prefix = {0: retrieval_metrics(held_f, labels).as_dict()}
    by_prefix.update(prefix_retrieval(codebooks, held_f, labels))
    for name, data_bytes in codebooks.to_files().items():
        reg.log_artifact_bytes(run_id, f"{CODEBOOK_DIR}/{name}", data_bytes)
    reg.log_metrics(
        run_id,
        {
            f"dpq.{bits}bit.{metric}" if bits else f"dpq.float.{metric}": value
            for bits, m in by_prefix.items()
            for metric, value in m.items()
        },
    )
    reg.set_tags(version, {"codebooks.bits": codebooks.code_bits(), "codebooks.blocks": codebooks.n_blocks})
    rows = [
        {"bits": bits or "float", **{k: round(v, 4) for k, v in m.items()}} for bits, m in by_prefix.items()
    ]
    publish_table(f"dpq-{settings.model_name}-v{version}", rows, f"DPQ retrieval per code length, v{version}")
    return {"version": version, "bits": codebooks.code_bits(), "prefixes": rows}


@task(
    name="decide-backfill-streaming",
    task_run_name="decide the backfill for v{new_version}",
    cache_policy=NONE,
)
def decide_backfill_streaming(
    settings: HotswapSettings, old_version: str, new_version: str, report: dict[str, Any]
) -> dict[str, Any]:
    """Every option's quality on streamed validation features, costs timed on a decoded sample."""
    from hotswap.tasks.gallery import store_decision

    reg = registry(settings)
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise RuntimeError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap adopt`")
    manifest = galleries.load_manifest(settings.gallery_name, live)
    old_codebook_version = manifest.codebook_version or old_version
    old_model, new_model = reg.load_model(old_version), reg.load_model(new_version)
    held = _held_out(settings)
    old_f, new_f = extract_manifest(
        [old_model, new_model], held, reader(settings), loader_config(settings), device=settings.torch_device
    )
    config = settings.decision
    sample = np.sort(np.random.default_rng(config.seed).permutation(len(held))[: config.timing_sample])
    images = ManifestItemSource(
        held, new_model.preprocessing, reader(settings), loader_config(settings)
    ).images(held.item_ids[sample])
    new_codebooks = load_codebooks(settings, new_version)
    cost = measure_costs(
        new_model,
        new_codebooks,
        images,
        batch_size=config.batch_size,
        device=settings.torch_device,
        repeats=config.timing_repeats,
        overhead_seconds_per_item=config.overhead_seconds_per_item,
    )
    record = decide_from_features(
        old_f,
        new_f,
        held.labels,
        gallery_items=manifest.num_items,
        blessed=bool(report["blessed"]),
        cost=cost,
        old_codebooks=load_codebooks(settings, old_codebook_version),
        new_codebooks=new_codebooks,
        prototypes=old_model.head.weight.detach().cpu().numpy(),
        config=config,
        versions={
            "old_model_version": old_version,
            "new_model_version": new_version,
            "old_codebook_version": old_codebook_version,
            "new_codebook_version": new_version,
            "source_gallery_version": live,
        },
    )
    store_decision(settings, new_version, record)
    get_run_logger().info("decision for v%s: %s — %s", new_version, record.mode, "; ".join(record.reasons))
    return record.model_dump(mode="json")


def gallery_item_source(settings: HotswapSettings, model: Any) -> ManifestItemSource:
    """Gallery images for a backfill, streamed shard by shard in ``model``'s preprocessing."""
    return ManifestItemSource(
        gallery_manifest(settings), model.preprocessing, reader(settings), loader_config(settings)
    )


def streamed_audit(settings: HotswapSettings, models: dict[str, Any]) -> Any:
    """The audit matrix from one streamed pass over the held-out split (every version's view)."""
    from hotswap.components.audit import audit_features

    held = _held_out(settings)
    versions = list(models)
    feats = extract_manifest(
        [models[v] for v in versions], held, reader(settings), loader_config(settings), settings.torch_device
    )
    return audit_features(dict(zip(versions, feats, strict=True)), held.labels)
