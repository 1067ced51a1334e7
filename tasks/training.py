"""Training tasks: the first (bootstrap) model and the compatible challenger."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hotswap.components.core.configs import CompatConfig
from hotswap.components.core.fingerprint import (
    JOB_BOOTSTRAP,
    JOB_REFRESH,
    TAG_JOB,
    TAG_SETTINGS_HASH,
    TAG_TRAINED_AGAINST,
    settings_hash,
)
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.catalog import bootstrap_classes
from hotswap.components.data.classes import (
    TAG_CLASSES,
    class_map_of,
    cross_map,
    load_class_map,
    save_class_map,
    to_head_labels,
)
from hotswap.components.data.images import DataError, ImageSet
from hotswap.components.lifecycle.live import TargetWeight
from hotswap.components.registry.records import CHALLENGER
from hotswap.tasks.context import dataset, dataset_version, loader_config, registry
from hotswap.tasks.links import prefect_run_tags, publish_version_links
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

if TYPE_CHECKING:
    from hotswap.components.compat.objective import CompatTarget
    from hotswap.components.models.training import TrainConfig


def _train_config(settings: HotswapSettings) -> TrainConfig:
    from hotswap.components.models.training import TrainConfig

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


def input_form(settings: HotswapSettings, data: ImageSet) -> tuple[int, int]:
    """(channels, size) a built-in net reads: the settings' when given, else the data's own
    (RGB stays RGB, the images' size), so nothing is converted that nobody asked to convert."""
    height, _, channels = data.source.image_shape()
    wanted = settings.data.channels
    return (3 if wanted == "RGB" else 1) if wanted else channels, settings.data.image_size or height


def build_new_model(
    settings: HotswapSettings,
    data: ImageSet,
    arch: str,
    embedding_dim: int,
    class_map: list[str],
    vertices: Mapping[str, int] | None = None,
) -> Any:
    """A fresh model for ``class_map``: the team's architecture (``training.new_model``) when set
    for a challenger, else the built-in ``arch`` reading the data's channels and size.

    With ``compat.simplex_head`` its head is fixed to simplex vertices (components/models/
    simplex_head.py); ``vertices`` are the champion's, which the classes it knows keep.
    """
    from hotswap.components.models.simplex_head import assign_vertices, fix_simplex_head

    model = _fresh_model(settings, data, arch, embedding_dim, class_map)
    if settings.compat.simplex_head:
        dim = model.head.weight.shape[1]
        fix_simplex_head(model, assign_vertices(class_map, vertices or {}, dim))
    return model


def champion_vertices(settings: HotswapSettings, model: Any, version: str) -> dict[str, int]:
    """The simplex vertex of each class the champion knows (empty when the setting is off or its
    head is a learned one)."""
    from hotswap.components.models.simplex_head import vertices_of

    if not settings.compat.simplex_head:
        return {}
    names = load_class_map(
        registry(settings), version, model.spec.num_classes, getattr(model.spec, "class_names", ())
    )
    return vertices_of(model, names)


def _fresh_model(
    settings: HotswapSettings, data: ImageSet, arch: str, embedding_dim: int, class_map: list[str]
) -> Any:
    from hotswap.components.models.backbones import BackboneSpec, build_model
    from hotswap.components.models.model_spec import ModelSpec, build_user_model

    fields = settings.training.new_model
    if fields is not None and arch == settings.training.new_arch:
        try:
            spec = ModelSpec.model_validate(
                {
                    **fields,
                    "embedding_dim": embedding_dim,
                    "num_classes": len(class_map),
                    "class_names": class_map,
                }
            )
        except ValueError as exc:
            raise DataError(f"training.new_model: {exc}") from None
        return build_user_model(spec, seed=settings.seed)
    channels, size = input_form(settings, data)
    spec = BackboneSpec(
        arch=arch,
        embedding_dim=embedding_dim,
        num_classes=len(class_map),
        in_channels=channels,
        image_size=size,
    )
    return build_model(spec, seed=settings.seed)


@task(name="train-first-model", task_run_name="train the first model")
def train_first_model(settings: HotswapSettings) -> str:
    """Train the first model (plain supervised) on the bootstrap classes; returns its registry version.

    The bootstrap classes may be any subset of the data's labels: the head has one row per class
    (0..K−1) and the class map (head row → label name) is recorded with the version. Its input
    form is the data's own (see :func:`input_form`). Short epochs on a small set get the same step
    floor as compatible training (``compat.min_epoch_steps``), so a first model converges too.
    """
    from hotswap.components.models.training import train_model

    data = dataset(settings)
    classes = bootstrap_classes(settings, data)
    train = data.split("train")
    if classes is not None:
        train = train.with_class_names(classes)
    class_map = classes if classes is not None else class_map_of(train)
    model = build_new_model(
        settings, data, settings.training.old_arch, settings.training.embedding_dim, class_map
    )
    config = _train_config(settings)
    epochs = CompatConfig.model_validate(settings.compat.model_dump()).training_epochs(
        len(train), config.batch_size, config.epochs
    )
    history = train_model(
        model,
        to_head_labels(train, class_map),
        config.model_copy(update={"epochs": epochs}),
        progress=False,
        loader=loader_config(settings),
    )
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
        "registered first model as version %s on classes %s (%s %d px input, %d epochs, %.1f s)",
        version,
        class_map,
        model.preprocessing.channels,
        model.preprocessing.image_size,
        epochs,
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
    from hotswap.components.compat.objective import CompatTarget

    plan = (
        [TargetWeight.model_validate(t) for t in targets]
        if targets
        else [TargetWeight(version=str(old_version), share=1.0, weight=1.0, champion=True)]
    )
    class_map = class_map_of(train)
    compat_targets = []
    for target in plan:
        model = reg.load_model(target.version)
        old_map = load_class_map(
            reg, target.version, model.spec.num_classes, getattr(model.spec, "class_names", ())
        )
        compat_targets.append(
            CompatTarget(model, target.weight, cross_map(class_map, old_map), name=f"v{target.version}")
        )
    return plan, compat_targets, class_map


@task(name="train-challenger", task_run_name="train a compatible challenger against v{old_version}")
def train_challenger(
    settings: HotswapSettings, old_version: str, targets: list[dict[str, Any]] | None = None
) -> str:
    """Dual-Tuning (or the configured method) against the frozen targets; alias ``challenger``.

    ``targets`` are TargetWeight dicts (components/lifecycle/live.py: the champion and the model versions
    holding a real share of the live gallery, with loss weights); None = the champion alone.
    Each target's recorded class map gives the new → old head rows of its structural terms.
    """
    from hotswap.components.compat.dual_tuning import train_compatible

    reg = registry(settings)
    data = dataset(settings)
    train = data.split("train")
    plan, compat_targets, class_map = compat_targets_for(reg, old_version, targets, train)
    champion = compat_targets[0].model  # the plan lists the champion first
    model = build_new_model(
        settings,
        data,
        settings.training.new_arch,
        champion.embedding_dim,
        class_map,
        champion_vertices(settings, champion, old_version),
    )
    model, history = train_compatible(
        compat_targets,
        model,
        to_head_labels(train, class_map),
        settings.compat,
        _train_config(settings),
        progress=False,
        loader=loader_config(settings),
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

    Shared by the configured training and the compatibility search's winner,
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
