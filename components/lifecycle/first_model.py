"""Did the first model learn anything? Its self-test must clearly beat chance before it is blessed.

A first model has nothing to be compatible with, so its report is a rubber stamp; but a model that
learned nothing (too few steps, labels that do not match the images, a preprocessing that is not
the one the team's model was trained with) would still be blessed, served and used as the anchor
every later model stays compatible with. So the rubber stamp needs one check.

Chance is the top-1 of a random ranking in the self-test's leave-one-out retrieval: the nearest
other item shares the query's class with probability Σ_k n_k(n_k − 1) / (n(n − 1)) (1/K for K
balanced classes). "Clearly beats" means by three standard errors of a top-1 measured on n
queries at that chance rate, and by at least two points: a model that cannot pass that on its
own validation split is refused, with one line saying what it reached and what to change.
"""

from __future__ import annotations

import math

import numpy as np
from hotswap.components.core.errors import InputError

MIN_MARGIN = 0.02


class FirstModelError(InputError):
    """The first model's self-test does not clearly beat chance."""


def chance_top1(labels: np.ndarray) -> float:
    """Top-1 of a random ranking in leave-one-out retrieval over items with these labels."""
    labels = np.asarray(labels)
    n = len(labels)
    if n < 2:
        return 1.0
    counts = np.unique(labels, return_counts=True)[1].astype(np.float64)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def required_top1(labels: np.ndarray) -> float:
    """The top-1 a first model must reach: chance + max(3 standard errors, two points)."""
    chance = chance_top1(labels)
    n = max(len(labels), 1)
    return chance + max(3.0 * math.sqrt(chance * (1.0 - chance) / n), MIN_MARGIN)


def check_first_model(top1: float, labels: np.ndarray, version: str, split: str) -> None:
    """Raise :class:`FirstModelError` unless ``top1`` (the self-test) clearly beats chance."""
    needed = required_top1(labels)
    if top1 < needed:
        raise FirstModelError(
            f"v{version} learned too little to be blessed: its self-test top-1 on the {split!r} split is "
            f"{top1:.3f}, chance is {chance_top1(labels):.3f} ({len(np.unique(labels))} classes, "
            f"{len(labels)} items) and it must reach {needed:.3f}; train longer (training.epochs), check "
            "that data.source's labels match its images (for an adopted model: its spec's preprocessing), "
            "or rerun with --force to bless it anyway"
        )
