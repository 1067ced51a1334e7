"""Training tasks: the first (bootstrap) model and the compatible challenger."""

from __future__ import annotations

from typing import Any

import numpy as np
from hotswap.components.backbones import BackboneSpec, build_model
from hotswap.components.classes import (
    TAG_CLASSES,
    check_classes,
    class_map_of,
    cross_map,
    load_class_map,
    save_class_map,
    to_head_labels,
)
from hotswap.components.compatibility import CompatTarget, train_compatible
from hotswap.components.fingerprint import (
    JOB_BOOTSTRAP,
    JOB_REFRESH,
    TAG_JOB,
    TAG_SETTINGS_HASH,
    TAG_TRAINED_AGAINST,
    settings_hash,
)
from hotswap.components.live import TargetWeight
from hotswap.components.registry import CHALLENGER
from hotswap.components.settings import HotswapSettings
from hotswap.components.training import TrainConfig, train_model
from hotswap.tasks.context import dataset, dataset_version, registry
from hotswap.tasks.links import prefect_run_tags, publish_version_links
from prefect import get_run_logger, task
from prefect.cache_policies import NONE


def _train_config(settings: HotswapSettings) -> TrainConfig:
    t = settings.training
    return TrainConfig(
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        weight_decay=t.weight_decay,
        label_smoothing=t.label_smoothing,
        seed=settings.seed,
        device=settings.torch_device,
    )


def _training_tags(settings: HotswapSettings, job: str) -> dict[str, str]:
    return {TAG_SETTINGS_HASH: settings_hash(settings), TAG_JOB: job}


@task(name="train-first-model", task_run_name="train the first model")
def train_first_model(settings: HotswapSettings) -> str:
    """Train the first model (plain supervised) on the bootstrap classes; returns its registry version.

    The bootstrap classes may be any subset of the data's labels: the head has one row per class
    (0..K−1) and the class map (head row → dataset label) is recorded with the version.
    """
    data = dataset(settings)
    classes = check_classes("data.bootstrap_classes", settings.data.bootstrap_classes, np.unique(data.labels))
    train = data.split("train")
    if classes is not None:
        train = train.with_classes(classes)
    class_map = classes if classes is not None else class_map_of(train)
    spec = BackboneSpec(
        arch=settings.training.old_arch,
        embedding_dim=settings.training.embedding_dim,
        num_classes=len(class_map),
        image_size=settings.data.image_size,
    )
    model = build_model(spec, seed=settings.seed)
    history = train_model(model, to_head_labels(train, class_map), _train_config(settings), progress=False)
    reg = registry(settings)
    tags = _training_tags(settings, JOB_BOOTSTRAP)
    params = {
        "method": "supervised",
        "training": settings.training.model_dump(),
        "data.source": settings.data.source,
        "data.classes": class_map,
        "seed": settings.seed,
        "settings_hash": tags[TAG_SETTINGS_HASH],
    }
    run_tags = prefect_run_tags()
    run_id = reg.log_training_run(
        model,
        params=params,
        history=history,
        dataset_version=data.version,
        run_name="bootstrap",
        tags={**tags, **run_tags},
    )
    save_class_map(reg, run_id, class_map)
    version = reg.register(
        run_id, tags={"hotswap.role": "bootstrap", TAG_CLASSES: len(class_map), **tags, **run_tags}
    )
    publish_version_links(settings, version)
    get_run_logger().info(
        "registered first model as version %s on classes %s (%.1f s of training)",
        version,
        class_map,
        history.seconds,
    )
    return version


def compat_targets_for(
    reg: Any, old_version: str, targets: list[dict[str, Any]] | None, train: Any
) -> tuple[list[TargetWeight], list[CompatTarget], list[int]]:
    """The frozen targets of a compatible training, each with its class map, and the new class map.

    ``targets`` are TargetWeight dicts (None = the champion alone, weight 1); each target's
    recorded class map gives the new → old head rows of its structural terms.
    """
    plan = (
        [TargetWeight.model_validate(t) for t in targets]
        if targets
        else [TargetWeight(version=str(old_version), share=1.0, weight=1.0, champion=True)]
    )
    class_map = class_map_of(train)
    compat_targets = []
    for target in plan:
        model = reg.load_model(target.version)
        old_map = load_class_map(reg, target.version, model.spec.num_classes)
        compat_targets.append(
            CompatTarget(model, target.weight, cross_map(class_map, old_map), name=f"v{target.version}")
        )
    return plan, compat_targets, class_map


@task(name="train-challenger", task_run_name="train a compatible challenger against v{old_version}")
def train_challenger(
    settings: HotswapSettings, old_version: str, targets: list[dict[str, Any]] | None = None
) -> str:
    """Dual-Tuning (or the configured method) against the frozen targets; alias ``challenger``.

    ``targets`` are TargetWeight dicts (components/live.py: the champion and the model versions
    holding a real share of the live gallery, with loss weights); None = the champion alone.
    Each target's recorded class map gives the new → old head rows of its structural terms.
    """
    reg = registry(settings)
    data = dataset(settings)
    train = data.split("train")
    plan, compat_targets, class_map = compat_targets_for(reg, old_version, targets, train)
    spec = BackboneSpec(
        arch=settings.training.new_arch,
        embedding_dim=compat_targets[0].model.embedding_dim,
        num_classes=len(class_map),
        image_size=settings.data.image_size,
    )
    model, history = train_compatible(
        compat_targets,
        spec,
        to_head_labels(train, class_map),
        settings.compat,
        _train_config(settings),
        progress=False,
    )
    tags = {**_training_tags(settings, JOB_REFRESH), TAG_TRAINED_AGAINST: old_version}
    target_record = [
        {"version": t.version, "weight": round(t.weight, 6), "share": round(t.share, 6)} for t in plan
    ]
    run_tags = prefect_run_tags()
    params = {
        "method": settings.compat.method,
        "compat": settings.compat.model_dump(),
        "training": settings.training.model_dump(),
        "data.source": settings.data.source,
        "data.classes": class_map,
        "old_version": old_version,
        "targets": target_record,
        "seed": settings.seed,
        "settings_hash": tags[TAG_SETTINGS_HASH],
    }
    run_id = reg.log_training_run(
        model,
        params=params,
        history=history,
        dataset_version=data.version,
        run_name=f"challenger-vs-v{old_version}",
        tags={**tags, **run_tags},
    )
    save_class_map(reg, run_id, class_map)
    version = register_challenger(
        settings, run_id, old_version, {TAG_CLASSES: len(class_map), "hotswap.targets": target_record, **tags}
    )
    get_run_logger().info(
        "registered challenger v%s (%s against %s, %.1f s of training)",
        version,
        settings.compat.method,
        ", ".join(f"v{t.version} w={t.weight:.2f}" for t in plan),
        history.seconds,
    )
    return version


def register_challenger(
    settings: HotswapSettings, run_id: str, old_version: str, tags: dict[str, Any]
) -> str:
    """Register a compatible training run as the challenger: its role, its champion, links, alias.

    Shared by the configured training, the streamed one and the compatibility search's winner,
    so each new challenger carries the same lineage and Prefect links.
    """
    reg = registry(settings)
    version = reg.register(
        run_id,
        tags={"hotswap.role": "challenger", TAG_TRAINED_AGAINST: old_version, **tags, **prefect_run_tags()},
    )
    reg.set_alias(CHALLENGER, version)
    publish_version_links(settings, version)
    return version


class DatasetChangedError(ValueError):
    """The data a refresh was started for is not what the data source holds now."""


@task(name="check-dataset-version", task_run_name="check the dataset version", cache_policy=NONE)
def check_dataset_version(settings: HotswapSettings, expected: str | None) -> str:
    """The configured data's version; with ``expected`` (from the dataset event) it must match."""
    version = dataset_version(settings)
    if expected is not None and version != expected:
        raise DatasetChangedError(
            f"data source {settings.data.source!r} is now version {version}, but this refresh was started "
            f"for version {expected}: the data changed after it was registered (or this worker reads it "
            "with another data.split_seed / data.image_size); register it again"
        )
    return version
