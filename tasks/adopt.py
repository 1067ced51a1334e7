"""Adopt tasks: the team's model as v1, its classifier, codebooks and gallery; the gallery sync.

Each step is what components/lifecycle/adopt.py describes; tasks pass settings, paths and versions. The
data is read through the same catalog as every other step (components/data/catalog.py): the
labelled training data in ``data.source`` and the gallery's own manifest.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from hotswap.components.core.errors import StateError
from hotswap.components.core.preflight import check_gallery_removals
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import TAG_CLASSES, save_class_map
from hotswap.components.data.images import DataError
from hotswap.components.gallery.difference import gallery_difference
from hotswap.components.gallery.live_state import TAG_GALLERY_VERSION, read_live_target
from hotswap.components.gallery.records import new_version_id
from hotswap.tasks.context import dataset, gallery_items, gallery_store, loader_config, registry
from hotswap.tasks.gallery_build import _index_builder, ensure_served_calibration
from hotswap.tasks.quantization import load_codebooks, log_codebooks
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

if TYPE_CHECKING:
    from hotswap.components.models.model_spec import ModelSpec

ROLE_ADOPTED = "adopted"


class LiveNotWholeError(StateError):
    """The champion and CURRENT are not one pair (a switch is in progress or was interrupted)."""


def adopted_spec(settings: HotswapSettings, spec: dict[str, Any]) -> ModelSpec:
    """The team's spec with the classifier rows named after the training data's classes."""
    from hotswap.components.models.model_spec import ModelSpec

    data = dataset(settings)
    fields = {k: v for k, v in spec.items() if k not in ("num_classes", "class_names")}
    try:
        return ModelSpec.model_validate(
            {**fields, "num_classes": len(data.class_names), "class_names": data.class_names}
        )
    except ValueError as exc:
        raise DataError(f"model spec: {exc}") from exc


@task(name="register-adopted-model", task_run_name="register the team's model", cache_policy=NONE)
def register_adopted_model(settings: HotswapSettings, spec: dict[str, Any], weights: str) -> dict[str, Any]:
    """Load the team's model, fit its old classifier on frozen train features, register it as v1."""
    import torch
    from hotswap.components.lifecycle.adopt import file_sha256, fit_cosine_head
    from hotswap.components.models.model_loading import load_team_model
    from hotswap.components.models.training import extract_features

    started = time.perf_counter()
    model_spec = adopted_spec(settings, spec)
    data = dataset(settings)
    version_of_data = data.version  # fails naming a missing object before anything is stored
    model = load_team_model(model_spec, weights)
    train = data.split("train")
    feats = extract_features(model, train, device=settings.torch_device, loader=loader_config(settings))
    head = fit_cosine_head(
        feats, train.labels, model_spec.num_classes, model_spec.classifier_scale, seed=settings.seed
    )
    with torch.no_grad():
        model.head.weight.copy_(head)
    accuracy = float((np.argmax(feats @ head.numpy().T, axis=1) == train.labels).mean())
    reg = registry(settings)
    run_id = reg.log_training_run(
        model,
        params={"method": ROLE_ADOPTED, "weights": str(weights), "data.source": settings.data.source},
        history=None,
        dataset_version=version_of_data,
        metrics={"adopt.classifier_train_accuracy": accuracy},
        run_name="adopt",
        tags={"hotswap.role": ROLE_ADOPTED},
    )
    save_class_map(reg, run_id, list(model_spec.class_names))
    version = reg.register(run_id, tags={"hotswap.role": ROLE_ADOPTED, TAG_CLASSES: model_spec.num_classes})
    get_run_logger().info(
        "registered the team's model as v%s (old head train accuracy %.3f)", version, accuracy
    )
    return {
        "version": version,
        "run_id": run_id,
        "dataset_version": version_of_data,
        "train_items": len(train),
        "classes": model_spec.num_classes,
        "classifier_train_accuracy": accuracy,
        "weights_sha256": file_sha256(weights),
        "spec": model.spec.model_dump(mode="json"),
        "seconds": time.perf_counter() - started,
    }


def _gallery_labels(settings: HotswapSettings, labels: np.ndarray | None) -> np.ndarray | None:
    """Gallery labels as classifier rows, when every one is a class the model knows."""
    if labels is None:
        return None
    index = {c: i for i, c in enumerate(dataset(settings).class_names)}
    if not all(label in index for label in labels):
        return None
    return np.array([index[label] for label in labels], dtype=np.int64)


@task(
    name="train-gallery-codebooks",
    task_run_name="train DPQ codebooks for v{version} on the gallery",
    cache_policy=NONE,
)
def train_gallery_codebooks(
    settings: HotswapSettings, version: str, features: str, ids: str | None = None
) -> dict[str, Any]:
    """DPQ trained on the imported gallery features themselves (nothing re-extracted)."""
    from hotswap.components.lifecycle.adopt import read_gallery_features
    from hotswap.components.models.training import extract_features
    from hotswap.components.quant.dpq_training import train_dpq

    reg = registry(settings)
    model = reg.load_model(version)
    gallery = read_gallery_features(features, ids, embedding_dim=model.embedding_dim)
    labels = _gallery_labels(settings, gallery.labels)
    config = settings.dpq.model_copy(update={"seed": settings.seed})
    codebooks = train_dpq(
        gallery.features, labels, classifier=model.head if labels is not None else None, config=config
    )
    held = dataset(settings).split(settings.data.validation_split)
    held_f = extract_features(model, held, device=settings.torch_device, loader=loader_config(settings))
    return log_codebooks(settings, version, reg.resolve(version).run_id, codebooks, held_f, held.labels)


@task(name="import-gallery", task_run_name="import the gallery features for v{version}", cache_policy=NONE)
def import_gallery(
    settings: HotswapSettings, version: str, features: str, ids: str | None = None
) -> dict[str, Any]:
    """The imported features as the first gallery version (staged; switch_live publishes it)."""
    from hotswap.components.gallery.imports import write_feature_version
    from hotswap.components.lifecycle.adopt import read_gallery_features

    reg = registry(settings)
    model = reg.load_model(version)
    gallery = read_gallery_features(features, ids, embedding_dim=model.embedding_dim)
    galleries = gallery_store(settings)
    if galleries.read_current(settings.gallery_name) is not None:
        raise DataError(
            f"gallery {settings.gallery_name!r} already has a live version; adopt starts a new one"
        )
    codebooks = load_codebooks(settings, version)
    manifest = write_feature_version(
        galleries,
        settings.gallery_name,
        gallery.ids,
        gallery.features,
        codebooks,
        model_version=version,
        codebook_version=version,
        version=f"v{version}-adopted",
        shard_size=settings.backfill.shard_size,
        index_builder=_index_builder(codebooks),
        metadata={"backfill": {"mode": "adopt", "source": str(features), "reextracted": 0}},
    )
    reg.set_tags(version, {TAG_GALLERY_VERSION: manifest.version})
    return {
        "gallery_version": manifest.version,
        "items": manifest.num_items,
        "labelled": gallery.labels is not None,
        "renormalised": gallery.renormalised,
        "source": gallery.source,
    }


@task(name="record-adopt-report", task_run_name="record the adopt report of v{version}", cache_policy=NONE)
def record_adopt_report(
    settings: HotswapSettings,
    version: str,
    weights: str,
    model_info: dict[str, Any],
    self_test: dict[str, Any],
    codebooks: dict[str, Any],
    gallery: dict[str, Any],
) -> dict[str, Any]:
    """The adopt report as JSON + markdown in MLflow (a record run) and as a Prefect artifact."""
    from hotswap.components.lifecycle.adopt import AdoptReport
    from hotswap.tasks.reporting import publish_markdown

    matrix = self_test.get("matrix", {}).get("new/new", {})
    report = AdoptReport(
        model_name=settings.model_name,
        model_version=version,
        spec=model_info["spec"],
        weights=weights,
        weights_sha256=model_info["weights_sha256"],
        dataset_version=model_info["dataset_version"],
        train_items=model_info["train_items"],
        classes=model_info["classes"],
        classifier_train_accuracy=model_info["classifier_train_accuracy"],
        self_test={k: float(matrix[k]) for k in ("map", "top1", "top5") if k in matrix},
        gallery=settings.gallery_name,
        gallery_source=gallery["source"],
        gallery_items=gallery["items"],
        gallery_labelled=gallery["labelled"],
        gallery_renormalised=gallery["renormalised"],
        gallery_version=gallery["gallery_version"],
        codebook_bits=codebooks["bits"],
        seconds={"register": model_info["seconds"]},
    )
    markdown = report.to_markdown()
    reg = registry(settings)
    reg.log_record_run(
        "adopt",
        f"adopt-v{version}",
        {"report.json": report.model_dump_json(indent=2).encode(), "report.md": markdown.encode()},
        tags={"hotswap.version": version},
        directory="adopt",
    )
    publish_markdown(f"adopt-report-{settings.model_name}", markdown, "What hotswap adopted")
    return report.model_dump(mode="json")


@task(
    name="gallery-difference",
    task_run_name="compare the gallery manifest with the live gallery",
    cache_policy=NONE,
)
def live_gallery_difference(settings: HotswapSettings) -> dict[str, Any]:
    """How many items the gallery manifest holds that the live gallery lacks, and the reverse."""
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    if live is None:
        raise DataError(
            f"gallery {settings.gallery_name!r} has no live version; run `hotswap bootstrap` first"
        )
    live_ids = galleries.load_ids(settings.gallery_name, live)
    diff = gallery_difference(live_ids, gallery_items(settings).item_ids)
    check_gallery_removals(settings, diff["removed"], len(live_ids))
    return {
        "live_version": live,
        "added": len(diff["added"]),
        "removed": len(diff["removed"]),
        "examples": {k: v[:3] for k, v in diff.items()},
    }


@task(name="sync-gallery", task_run_name="sync the gallery with its manifest", cache_policy=NONE)
def sync_gallery_items(settings: HotswapSettings, publish: bool = True) -> dict[str, Any]:
    """The next gallery version holds exactly the gallery manifest's ids: new ids embedded by the
    champion (encoded with the live codebooks), removed ids absent, nothing else re-extracted.

    Only from a whole live pair, and published only over the version it was made from; the new
    version then stays paired with the champion (components/gallery/sync_lineage.py)."""
    from hotswap.components.gallery.imports import sync_gallery
    from hotswap.components.gallery.worker_resources import dask_shards

    reg = registry(settings)
    galleries = gallery_store(settings)
    target = read_live_target(reg, galleries, settings.gallery_name)
    if target.gallery_version is None:
        raise DataError(f"gallery {settings.gallery_name!r} has no live version; run `hotswap adopt` first")
    if not target.whole:  # the added items would be embedded by a model that does not serve them
        raise LiveNotWholeError(
            f"gallery {settings.gallery_name!r} cannot be synced now: {target.reason}; "
            "run `hotswap status` (it finishes or undoes an interrupted switch), then rerun"
        )
    live, champion = target.gallery_version, str(target.model_version)
    source = galleries.load_manifest(settings.gallery_name, live)
    codebooks = load_codebooks(settings, source.codebook_version or champion)
    model = reg.load_model(champion)
    runner = dask_shards(settings, champion, model.preprocessing)  # new items embedded on the cluster
    embedder = None if runner is None else functools.partial(runner.embed, chunk=settings.backfill.shard_size)

    manifest, counts = sync_gallery(
        galleries,
        settings.gallery_name,
        live,
        gallery_items(settings),
        model,
        codebooks,
        model_version=champion,
        loader=loader_config(settings),
        device=settings.torch_device,
        version=f"{new_version_id()}-sync",
        shard_size=settings.backfill.shard_size,
        index_builder=_index_builder(codebooks),
        publish=False,
        embedder=embedder,
    )
    # a mixed gallery is served through a calibration per query model: the champion's must be in
    # the new version before it goes live (fitted when missing, as for any staged version)
    ensure_served_calibration(settings, manifest.version, champion)
    if publish:
        galleries.publish(
            settings.gallery_name, manifest.version, expected_current=live, verify_checksums=True
        )
    get_run_logger().info("gallery %s → %s: %s", live, manifest.version, counts)
    return {"source_version": live, "gallery_version": manifest.version, "published": publish, **counts}
