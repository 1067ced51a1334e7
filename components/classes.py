"""Class maps: which dataset label each row of a model's classifier head stands for.

A model's head has K rows, indexed 0..K−1, but the classes it was trained on may be any subset of
the dataset's labels (``bootstrap_classes = [1, 3, 5, 7, 9]``) and a later model may know more
classes. So every model version records its *class map*: ``class_map[i]`` is the dataset label of
head row i. Between two versions the map from new head rows to old head rows follows from the two
recorded maps (shared dataset labels), never from the assumption "row k is label k".

Retrieval never needs the map (it compares dataset labels); training (cross-entropy over head
rows) and the structural compatibility terms (old head on new features) do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from hotswap.components.data import DataError, ImageDataset

CLASS_MAP_ARTIFACT = "class_map/class_map.json"
TAG_CLASSES = "hotswap.num_classes"


class ClassMapError(DataError):
    """A class list does not fit the data, or a stored class map is malformed."""


def check_classes(setting: str, classes: Sequence[int] | None, available: Iterable[int]) -> list[int] | None:
    """Validate a configured class list against the labels the data holds; sorted, no duplicates.

    Raises one line naming the setting, e.g. ``data.bootstrap_classes: class 99 is not in the data``.
    """
    if classes is None:
        return None
    have = sorted({int(c) for c in available})
    wanted = [int(c) for c in classes]
    if not wanted:
        raise ClassMapError(f"{setting}: the class list is empty; give at least one class or null for all")
    duplicates = sorted({c for c in wanted if wanted.count(c) > 1})
    if duplicates:
        raise ClassMapError(f"{setting}: class(es) {duplicates} listed more than once")
    missing = sorted(set(wanted) - set(have))
    if missing:
        raise ClassMapError(
            f"{setting}: class(es) {missing} are not in the data (it holds {_describe(have)})"
        )
    return sorted(wanted)


def _describe(labels: list[int]) -> str:
    if labels and labels == list(range(labels[0], labels[-1] + 1)):
        return f"labels {labels[0]}..{labels[-1]}"
    return f"labels {labels}"


def class_map_of(data: ImageDataset) -> list[int]:
    """The class map of a head trained on ``data``: its distinct labels, ascending."""
    return sorted(int(c) for c in np.unique(data.labels))


def identity_map(num_classes: int) -> list[int]:
    """The map of a model recorded before class maps existed: head row k is dataset label k."""
    return list(range(num_classes))


def to_head_labels(data: ImageDataset, class_map: Sequence[int]) -> ImageDataset:
    """The same rows with labels replaced by head indices (for cross-entropy over the head's rows)."""
    index = {int(label): i for i, label in enumerate(class_map)}
    unknown = sorted({int(c) for c in np.unique(data.labels)} - set(index))
    if unknown:
        raise ClassMapError(
            f"{data.name}: label(s) {unknown} are not in the head's class map {list(class_map)}"
        )
    head = np.fromiter((index[int(c)] for c in data.labels), dtype=np.int64, count=len(data))
    return replace(data, labels=head, class_names=())


def cross_map(new_map: Sequence[int], old_map: Sequence[int]) -> dict[int, int]:
    """New head row → old head row for every dataset label both models know."""
    old_index = {int(label): i for i, label in enumerate(old_map)}
    return {i: old_index[int(label)] for i, label in enumerate(new_map) if int(label) in old_index}


# --------------------------------------------------------------------------- storage with a version


def class_map_bytes(class_map: Sequence[int]) -> bytes:
    return json.dumps({"head_to_label": [int(c) for c in class_map]}).encode()


def parse_class_map(data: bytes, source: str = "class map") -> list[int]:
    try:
        value = json.loads(data)["head_to_label"]
        labels = [int(c) for c in value]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClassMapError(f"{source}: not a valid class map ({exc})") from None
    if len(set(labels)) != len(labels):
        raise ClassMapError(f"{source}: a dataset label appears twice in {labels}")
    return labels


def save_class_map(registry: Any, run_id: str, class_map: Sequence[int]) -> None:
    """Store the map in the training run of a version (read back with :func:`load_class_map`)."""
    registry.log_artifact_bytes(run_id, CLASS_MAP_ARTIFACT, class_map_bytes(class_map))


def load_class_map(registry: Any, version: str, num_classes: int) -> list[int]:
    """The recorded map of ``version``; versions recorded without one are the identity map."""
    from hotswap.components.registry import RegistryError

    try:
        data = registry.load_artifact_bytes(version, CLASS_MAP_ARTIFACT)
    except RegistryError:
        return identity_map(num_classes)
    labels = parse_class_map(data, source=f"class map of v{version}")
    if len(labels) != num_classes:
        raise ClassMapError(
            f"class map of v{version} has {len(labels)} classes but its model's head has {num_classes}"
        )
    return labels
