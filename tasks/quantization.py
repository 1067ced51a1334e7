"""DPQ codebook tasks: train on the model's feature space, evaluate every prefix, store beside the model."""

from __future__ import annotations

from typing import Any

import numpy as np
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import load_class_map, to_head_labels
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_prefix_retrieval import prefix_retrieval
from hotswap.tasks.context import dataset, loader_config, registry
from hotswap.tasks.reporting import publish_table
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

CODEBOOK_DIR = "codebooks"


@task(name="train-codebooks", task_run_name="train DPQ codebooks for v{version}", cache_policy=NONE)
def train_codebooks(settings: HotswapSettings, version: str) -> dict[str, Any]:
    """Train DPQ on the model's training features (label-guided through its head); log and store."""
    from hotswap.components.models.training import extract_features
    from hotswap.components.quant.dpq_training import train_dpq

    reg = registry(settings)
    info = reg.resolve(version)
    model = reg.load_model(version)
    data = dataset(settings)
    names = getattr(model.spec, "class_names", ())
    classes = load_class_map(reg, version, model.spec.num_classes, names)  # the head's classes, recorded
    train = data.split("train").with_class_names(classes)
    loader = loader_config(settings)
    features = extract_features(model, train, device=settings.torch_device, loader=loader)
    config = settings.dpq.model_copy(update={"seed": settings.seed})
    codebooks = train_dpq(
        features, to_head_labels(train, classes).labels, classifier=model.head, config=config
    )

    held_out = data.split(settings.data.validation_split).with_class_names(classes)
    held_feats = extract_features(model, held_out, device=settings.torch_device, loader=loader)
    return log_codebooks(settings, version, info.run_id, codebooks, held_feats, held_out.labels)


def log_codebooks(
    settings: HotswapSettings,
    version: str,
    run_id: str,
    codebooks: DPQCodebooks,
    held_feats: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Store codebooks beside the model version, with retrieval metrics at every code length."""
    reg = registry(settings)
    by_prefix = {0: retrieval_metrics(held_feats, labels).as_dict()}  # 0 bits: the float ceiling
    by_prefix.update(prefix_retrieval(codebooks, held_feats, labels))
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
    get_run_logger().info("DPQ for v%s: %s", version, rows)
    return {"version": version, "bits": codebooks.code_bits(), "prefixes": rows}


def load_codebooks(settings: HotswapSettings, version: str) -> DPQCodebooks:
    """The DPQ codebooks stored beside a model version."""
    reg = registry(settings)
    files = {
        name: reg.load_artifact_bytes(version, f"{CODEBOOK_DIR}/{name}") for name in DPQCodebooks.file_names()
    }
    return DPQCodebooks.from_files(files, source=f"codebooks of v{version}")
