"""Procedural RGB images of any count, encoded as JPEG/PNG: a stand-in for a team's image store.

Each class has a background colour, a coloured disc and a coloured bar at class-specific places;
an item shifts them, varies the brightness and adds noise. Encoded bytes (not arrays) are the
output because the point is to exercise the real path: objects in a store, decoded on read.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np


def class_templates(n_classes: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8-ready float templates [K, size, size, 3] in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n_classes, size, size, 3), dtype=np.float32)
    for c in range(n_classes):
        background = rng.uniform(0.1, 0.6, size=3)
        disc_colour, bar_colour = rng.uniform(0.3, 1.0, size=(2, 3))
        cy, cx = rng.uniform(0.25, 0.75, size=2)
        radius = rng.uniform(0.12, 0.25)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        angle = rng.uniform(0, np.pi)
        bar = np.abs((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)) < 0.06
        img = np.broadcast_to(background, (size, size, 3)).copy()
        img[bar] = bar_colour
        img[disc] = disc_colour
        out[c] = img
    return out


def procedural_images(
    n_items: int, n_classes: int, size: int = 32, seed: int = 0, fmt: str = "JPEG", quality: int = 85
) -> Iterator[tuple[int, int, bytes]]:
    """(item index, label, encoded bytes) for ``n_items`` images, labels cycling through classes."""
    from PIL import Image

    templates = class_templates(n_classes, size, seed)
    rng = np.random.default_rng(seed + 1)
    shift = max(1, size // 10)
    for i in range(n_items):
        label = i % n_classes
        dy, dx = rng.integers(-shift, shift + 1, size=2)
        img = np.roll(templates[label], (int(dy), int(dx)), axis=(0, 1)) * rng.uniform(0.75, 1.0)
        img = np.clip(img + rng.normal(0, 0.08, size=img.shape), 0, 1)
        buffer = io.BytesIO()
        kwargs = {"quality": quality} if fmt == "JPEG" else {}
        Image.fromarray((img * 255).astype(np.uint8), "RGB").save(buffer, format=fmt, **kwargs)
        yield i, label, buffer.getvalue()
