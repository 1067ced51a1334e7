"""A rendered RGB image set that no default was tuned on: the chain benchmark's third chain.

Each class is a polygon silhouette (3 to 8 vertices at class-specific radii) with a class hue; an
item draws it rotated, scaled and shifted, in one of twelve *styles*: a fill (solid, outline,
stripes, dots) on a background (flat, gradient, speckled), with hue jitter and noise. Training
items use nine styles; the val and test (gallery) splits use the other three, so queries and
gallery are drawn in combinations the models never trained on (every fill and every background
is seen in training, never these pairs), as a team's new photos would be. Hues of neighbouring
classes overlap, so colour alone does not separate classes: the shape must be learned.

The set is written as PNG files plus a ``manifest.csv`` (item_id, uri, label, split), and the
chain reads it through the manifest like any team's data. Everything is seeded: the same call
writes the same bytes.

    python -m bench.rgb_shapes OUT_DIR [--classes 40] [--per-class 60]
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
import pandas as pd

FILLS, BACKGROUNDS = 4, 3
HELD_OUT_STYLES = (3, 6, 9)  # style = fill·3 + background: (1, 0), (2, 0), (3, 0) are never trained on
TRAIN_STYLES = tuple(s for s in range(FILLS * BACKGROUNDS) if s not in HELD_OUT_STYLES)


def class_shapes(n_classes: int, seed: int) -> list[tuple[np.ndarray, float]]:
    """(vertex radii, hue) per class: the silhouette and colour an item of the class varies."""
    rng = np.random.default_rng(seed)
    shapes = []
    for c in range(n_classes):
        vertices = int(rng.integers(3, 9))
        radii = rng.uniform(0.45, 1.0, size=vertices)
        hue = (c * 0.618034) % 1.0  # golden-ratio steps: neighbouring classes get distant hues...
        shapes.append((radii, hue))
    return shapes


def _polygon(radii: np.ndarray, centre: tuple[float, float], scale: float, angle: float) -> list[tuple]:
    k = len(radii)
    theta = angle + 2 * np.pi * np.arange(k) / k
    return [
        (centre[0] + scale * r * np.cos(t), centre[1] + scale * r * np.sin(t))
        for r, t in zip(radii, theta, strict=True)
    ]


def render(radii: np.ndarray, hue: float, style: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One item as uint8 [size, size, 3]: drawn at 4x and downsampled (anti-aliased)."""
    from PIL import Image, ImageDraw, ImageFilter

    big = size * 4
    hue = (hue + rng.uniform(-0.12, 0.12)) % 1.0  # ...but jitter makes hues of classes overlap
    fg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)))
    bg_hue = rng.uniform(0, 1)
    bg = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(bg_hue, rng.uniform(0, 0.5), rng.uniform(0.05, 0.4)))
    canvas = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(canvas)
    fill, background = divmod(style, BACKGROUNDS)
    if background == 1:  # vertical gradient
        other = tuple(min(255, c + 90) for c in bg)
        for y in range(big):
            t = y / big
            shade = tuple(int((1 - t) * a + t * b) for a, b in zip(bg, other, strict=True))
            draw.line([(0, y), (big, y)], fill=shade)
    elif background == 2:  # speckles
        for _ in range(60):
            x, y = rng.uniform(0, big, size=2)
            r = rng.uniform(1, big / 24)
            tone = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tone)
    centre = (big * (0.5 + rng.uniform(-0.12, 0.12)), big * (0.5 + rng.uniform(-0.12, 0.12)))
    points = _polygon(radii, centre, big * rng.uniform(0.28, 0.4), rng.uniform(0, 2 * np.pi))
    if fill == 0:  # solid
        draw.polygon(points, fill=fg)
    elif fill == 1:  # outline
        draw.polygon(points, outline=fg, width=max(2, big // 16))
    else:  # stripes or dots through a mask of the silhouette
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        pattern = Image.new("L", (big, big), 0)
        pen = ImageDraw.Draw(pattern)
        step = big // 8
        if fill == 2:
            for x in range(-big, big, step):
                pen.line([(x, 0), (x + big, big)], fill=255, width=step // 2)
        else:
            for y in range(step // 2, big, step):
                for x in range(step // 2, big, step):
                    pen.ellipse([x - step // 3, y - step // 3, x + step // 3, y + step // 3], fill=255)
        canvas.paste(fg, mask=Image.composite(pattern, Image.new("L", (big, big), 0), mask))
        draw.polygon(points, outline=fg, width=max(1, big // 32))
    small = canvas.filter(ImageFilter.GaussianBlur(1)).resize((size, size), Image.Resampling.LANCZOS)
    image = np.asarray(small, dtype=np.float32) + rng.normal(0, 8, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_rgb_shapes(
    out: Path, n_classes: int = 40, per_class: int = 60, size: int = 32, seed: int = 0
) -> Path:
    """Write the images and their manifest under ``out``; returns the manifest's path.

    Per class: 60 % of the items train (the nine training styles), 20 % val and 20 % test (the
    three held-out styles).
    """
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    shapes = class_shapes(n_classes, seed)
    rng = np.random.default_rng(seed + 1)
    n_train = int(round(0.6 * per_class))
    n_val = int(round(0.2 * per_class))
    rows = []
    for c, (radii, hue) in enumerate(shapes):
        for i in range(per_class):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            styles = TRAIN_STYLES if split == "train" else HELD_OUT_STYLES
            style = int(styles[i % len(styles)])
            item_id = f"shape{c:02d}-{i:03d}"
            uri = f"images/{item_id}.png"
            Image.fromarray(render(radii, hue, style, size, rng), "RGB").save(out / uri)
            rows.append({"item_id": item_id, "uri": uri, "label": f"shape{c:02d}", "split": split})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_rgb_shapes(args.out, args.classes, args.per_class, args.size, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
