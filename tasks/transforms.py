"""The transform option's maps: trained in a refresh (after codebooks, before the decision), kept
beside the challenger in MLflow, read back by the decision and the gallery build.

One map h_v per model version v whose features the live gallery holds (its provenance), into the
challenger's space (components/compat/transform.py), fitted on the *training* split: features of
frozen v and of the challenger, the challenger's head rows as labels and its cosine head as W_n.
Stored as run artifacts ``transforms/v<v>/transform.{safetensors,json}`` (no pickle).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hotswap.components.core.settings import HotswapSettings
from hotswap.components.data.classes import load_class_map, to_head_labels
from hotswap.components.gallery.provenance import lineage_hops
from hotswap.components.lifecycle.live import LiveComposition
from hotswap.components.registry.records import RegistryError
from hotswap.tasks.context import dataset, loader_config, registry
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

if TYPE_CHECKING:
    from hotswap.components.compat.transform import FeatureTransform

TRANSFORM_DIR = "transforms"


def _path(source: str, name: str) -> str:
    return f"{TRANSFORM_DIR}/v{source}/{name}"


def gallery_versions(champion: str, challenger: str, composition: dict[str, Any] | None) -> list[str]:
    """The model versions whose stored features a transform would map (the challenger's own: none)."""
    counts = LiveComposition.model_validate(composition).counts if composition else {}
    return sorted({str(champion), *map(str, counts)} - {str(challenger)})


@task(name="train-transforms", task_run_name="train feature maps into v{challenger}", cache_policy=NONE)
def train_transforms(
    settings: HotswapSettings, champion: str, challenger: str, composition: dict[str, Any] | None = None
) -> list[str]:
    """Fit h_v for every model version of the live gallery and log them to the challenger's run."""
    from hotswap.components.compat.transform import fit_transform, transform_to_files
    from hotswap.components.models.training import extract_features

    config = settings.decision.transform
    if not config.enabled:
        return []
    reg = registry(settings)
    info = reg.resolve(challenger)
    candidate = reg.load_model(challenger)
    classes = load_class_map(
        reg, challenger, candidate.spec.num_classes, getattr(candidate.spec, "class_names", ())
    )
    train = dataset(settings).split("train").with_class_names(classes)
    labels = to_head_labels(train, classes).labels
    loader, device = loader_config(settings), settings.torch_device
    new_feats = extract_features(candidate, train, device=device, loader=loader)
    versions = gallery_versions(champion, challenger, composition)
    for version in versions:
        old_feats = extract_features(reg.load_model(version), train, device=device, loader=loader)
        fitted = fit_transform(
            old_feats,
            new_feats,
            labels,
            config.model_copy(update={"seed": settings.seed}),
            classifier=candidate.head.weight.detach().cpu().numpy(),
            classifier_scale=float(candidate.head.scale),
            source_model=version,
            target_model=str(challenger),
            device=device,
        )
        for name, data in transform_to_files(fitted).items():
            reg.log_artifact_bytes(info.run_id, _path(version, name), data)
        get_run_logger().info(
            "map v%s → v%s: loss %.4f → %.4f on %d training items",
            version, challenger, fitted.facts["first_loss"], fitted.facts["final_loss"], len(labels),
        )  # fmt: skip
    return versions


def load_transforms(
    settings: HotswapSettings, challenger: str, versions: Iterable[str]
) -> dict[str, FeatureTransform]:
    """The maps logged for ``challenger``, per source version; a version without one is left out."""
    from hotswap.components.compat.transform import CONFIG_FILE, WEIGHTS_FILE, transform_from_files

    reg = registry(settings)
    out: dict[str, FeatureTransform] = {}
    for version in versions:
        try:
            files = {
                name: reg.load_artifact_bytes(challenger, _path(version, name))
                for name in (WEIGHTS_FILE, CONFIG_FILE)
            }
        except RegistryError:
            continue
        out[str(version)] = transform_from_files(files, source=f"map v{version} → v{challenger}")
    return out


def load_lineage_maps(
    settings: HotswapSettings, labels: Iterable[str]
) -> dict[tuple[str, str], FeatureTransform]:
    """The maps (from, into) that rows of the live gallery went through (their provenance
    lineages, components/gallery/provenance.py), each loaded from the run it was trained for."""
    hops = sorted({hop for label in labels for hop in lineage_hops(label)})
    out: dict[tuple[str, str], FeatureTransform] = {}
    for source, target in hops:
        found = load_transforms(settings, target, [source])
        if source in found:
            out[(source, target)] = found[source]
    return out
