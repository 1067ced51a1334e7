"""Class maps: which class (by label name) each row of a model's classifier head stands for.

A model's head has K rows, indexed 0..K−1, but the classes it was trained on may be any subset of
the data's labels (``bootstrap_classes = ["cat", "dog"]``) and a later model may know more
classes. So every model version records its *class map*: ``class_map[i]`` is the label name of
head row i. Between two versions the map from new head rows to old head rows follows from the two
recorded maps (shared label names), never from the assumption "row k is label k", and never from
positions in a sorted label list (which shift when a class is added).

Retrieval never needs the map (it compares labels); training (cross-entropy over head rows) and
the structural compatibility terms (old head on new features) do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from hotswap.components.data.images import DataError, ImageSet

CLASS_MAP_ARTIFACT = "class_map/class_map.json"
TAG_CLASSES = "hotswap.num_classes"


class ClassMapError(DataError):
    """A class list does not fit the data, or a stored class map is malformed."""


def check_classes(
    setting: str, classes: Sequence[str | int] | None, class_names: Sequence[str]
) -> list[str] | None:
    """Validate a configured class list against the data's label names; returns names in data order.

    Classes are named by label. An integer stands for the label with that name, and is accepted only
    where every label is an integer (MNIST's "0".."9"); it is never a position in a sorted list.
    Raises one line naming the setting, e.g. ``data.bootstrap_classes: class 'zebra' is not in the data``.
    """
    if classes is None:
        return None
    names = list(class_names)
    numeric = all(is_integer_label(n) for n in names)
    wanted: list[str] = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, str)):
            raise ClassMapError(f"{setting}: {c!r} is not a label name")
        if isinstance(c, int):
            if not numeric:
                raise ClassMapError(
                    f"{setting}: {c} is a number, but the data's labels are names (e.g. {names[:3]}); "
                    "list the classes by name"
                )
            wanted.append(str(c))
        else:
            wanted.append(c)
    if not wanted:
        raise ClassMapError(f"{setting}: the class list is empty; give at least one class or null for all")
    duplicates = sorted({c for c in wanted if wanted.count(c) > 1})
    if duplicates:
        raise ClassMapError(f"{setting}: class(es) {duplicates} listed more than once")
    missing = [c for c in wanted if c not in names]
    if missing:
        raise ClassMapError(
            f"{setting}: class(es) {missing} are not in the data (it holds {_describe(names)})"
        )
    return [n for n in names if n in set(wanted)]


def is_integer_label(name: str) -> bool:
    """Whether a label name is an integer written plainly ("3", not "03" or "c3")."""
    try:
        return str(int(name)) == name
    except ValueError:
        return False


def _describe(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:8])
    return f"{len(names)} classes: {shown}" + (", …" if len(names) > 8 else "")


def class_map_of(data: ImageSet) -> list[str]:
    """The class map of a head trained on ``data``: the names of its labels, in the data's order."""
    return [data.class_names[int(c)] for c in np.unique(data.labels) if c >= 0]


def identity_map(num_classes: int, names: Sequence[str] = ()) -> list[str]:
    """The map of a model recorded without one: its spec's class names, else "0".."K−1"."""
    return list(names) if len(names) == num_classes else [str(i) for i in range(num_classes)]


def to_head_labels(data: ImageSet, class_map: Sequence[str]) -> ImageSet:
    """The same rows with labels replaced by head rows (for cross-entropy over the head)."""
    index = {str(name): i for i, name in enumerate(class_map)}
    present = [data.class_names[int(c)] for c in np.unique(data.labels) if c >= 0]
    unknown = sorted(set(present) - set(index))
    if unknown or (data.labels < 0).any():
        raise ClassMapError(
            f"{data.name}: label(s) {unknown or ['(none)']} are not in the head's class map {list(class_map)}"
        )
    rows = np.array([index.get(n, -1) for n in data.class_names], dtype=np.int64)
    return replace(data, labels=rows[data.labels], class_names=())


def cross_map(new_map: Sequence[str], old_map: Sequence[str]) -> dict[int, int]:
    """New head row → old head row for every label both models know (by name)."""
    old_index = {str(label): i for i, label in enumerate(old_map)}
    return {i: old_index[str(label)] for i, label in enumerate(new_map) if str(label) in old_index}


# --------------------------------------------------------------------------- storage with a version


def class_map_bytes(class_map: Sequence[str]) -> bytes:
    return json.dumps({"head_to_label": [str(c) for c in class_map]}).encode()


def parse_class_map(data: bytes, source: str = "class map") -> list[str]:
    try:
        value = json.loads(data)["head_to_label"]
        labels = [str(c) for c in value]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClassMapError(f"{source}: not a valid class map ({exc})") from None
    if len(set(labels)) != len(labels):
        raise ClassMapError(f"{source}: a label appears twice in {labels}")
    return labels


def save_class_map(registry: Any, run_id: str, class_map: Sequence[str]) -> None:
    """Store the map in the training run of a version (read back with :func:`load_class_map`)."""
    registry.log_artifact_bytes(run_id, CLASS_MAP_ARTIFACT, class_map_bytes(class_map))


def load_class_map(registry: Any, version: str, num_classes: int, names: Sequence[str] = ()) -> list[str]:
    """The recorded map of ``version``; without one, its spec's class names or "0".."K−1"."""
    from hotswap.components.registry.records import RegistryError

    try:
        data = registry.load_artifact_bytes(version, CLASS_MAP_ARTIFACT)
    except RegistryError:
        return identity_map(num_classes, names)
    labels = parse_class_map(data, source=f"class map of v{version}")
    if len(labels) != num_classes:
        raise ClassMapError(
            f"class map of v{version} has {len(labels)} classes but its model's head has {num_classes}"
        )
    return labels
