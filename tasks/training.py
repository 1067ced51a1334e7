"""Training tasks: the first (bootstrap) model and the compatible challenger."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from components.backbones import BackboneSpec, build_model
from components.compatibility import train_compatible
from components.data import ImageDataset
from components.registry import CHALLENGER
from components.settings import HotswapSettings
from components.training import TrainConfig, train_model
from tasks.context import dataset, registry
from tasks.links import prefect_run_tags, publish_version_links


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


def _bootstrap_train_split(settings: HotswapSettings, data: ImageDataset) -> ImageDataset:
    train = data.split("train")
    classes = settings.data.bootstrap_classes
    return train if classes is None else train.with_classes(classes)


@task(name="train-first-model", task_run_name="train the first model")
def train_first_model(settings: HotswapSettings) -> str:
    """Train the first model (plain supervised) on the bootstrap classes; returns its registry version."""
    data = dataset(settings)
    train = _bootstrap_train_split(settings, data)
    num_classes = len(settings.data.bootstrap_classes or range(data.num_classes))
    spec = BackboneSpec(
        arch=settings.training.old_arch,
        embedding_dim=settings.training.embedding_dim,
        num_classes=num_classes,
        image_size=settings.data.image_size,
    )
    model = build_model(spec, seed=settings.seed)
    history = train_model(model, train, _train_config(settings), progress=False)
    reg = registry(settings)
    params = {
        "method": "supervised",
        "training": settings.training.model_dump(),
        "data.source": settings.data.source,
        "data.classes": settings.data.bootstrap_classes,
        "seed": settings.seed,
    }
    run_tags = prefect_run_tags()
    run_id = reg.log_training_run(
        model,
        params=params,
        history=history,
        dataset_version=data.version,
        run_name="bootstrap",
        tags=run_tags,
    )
    version = reg.register(run_id, tags={"hotswap.role": "bootstrap", **run_tags})
    publish_version_links(settings, version)
    get_run_logger().info(
        "registered first model as version %s (%.1f s of training)", version, history.seconds
    )
    return version


@task(name="train-challenger", task_run_name="train a compatible challenger against v{old_version}")
def train_challenger(settings: HotswapSettings, old_version: str) -> str:
    """Dual-Tuning (or the configured method) against the frozen champion; alias ``challenger``."""
    reg = registry(settings)
    old_model = reg.load_model(old_version)
    data = dataset(settings)
    spec = BackboneSpec(
        arch=settings.training.new_arch,
        embedding_dim=old_model.embedding_dim,
        num_classes=data.num_classes,
        image_size=settings.data.image_size,
    )
    model, history = train_compatible(
        old_model, spec, data.split("train"), settings.compat, _train_config(settings), progress=False
    )
    run_tags = prefect_run_tags()
    params = {
        "method": settings.compat.method,
        "compat": settings.compat.model_dump(),
        "training": settings.training.model_dump(),
        "data.source": settings.data.source,
        "old_version": old_version,
        "seed": settings.seed,
    }
    run_id = reg.log_training_run(
        model,
        params=params,
        history=history,
        dataset_version=data.version,
        run_name=f"challenger-vs-v{old_version}",
        tags={"hotswap.old_version": old_version, **run_tags},
    )
    version = reg.register(
        run_id, tags={"hotswap.role": "challenger", "hotswap.old_version": old_version, **run_tags}
    )
    reg.set_alias(CHALLENGER, version)
    publish_version_links(settings, version)
    get_run_logger().info(
        "registered challenger v%s (%s, %.1f s of training)", version, settings.compat.method, history.seconds
    )
    return version


class DatasetChangedError(ValueError):
    """The data a refresh was started for is not what the data source holds now."""


@task(name="check-dataset-version", task_run_name="check the dataset version", cache_policy=NONE)
def check_dataset_version(settings: HotswapSettings, expected: str | None) -> str:
    """The configured data's version; with ``expected`` (from the dataset event) it must match."""
    version = dataset(settings).version
    if expected is not None and version != expected:
        raise DatasetChangedError(
            f"data source {settings.data.source!r} is now version {version}, but this refresh was started "
            f"for version {expected}: the data changed after it was registered (or this worker reads it "
            "with another data.split_seed / data.image_size); register it again"
        )
    return version
