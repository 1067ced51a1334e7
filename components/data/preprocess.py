"""Per-model preprocessing: decoded uint8 images → the tensor one particular model reads.

The data layer decodes every image once into uint8 HWC (RGB, or a single channel for grayscale
sources). What a model needs from it — its input size, RGB or grayscale, its normalisation — is
part of that model's spec, not of the data: an old model trained on 28×28 grayscale and its
successor reading 64×64 RGB see the same decoded image through different transforms. The same
transform runs wherever a model meets pixels (training, extraction, the gallery backfill), so a
gallery feature and a query feature of the same image always come from identical tensors.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Channels = Literal["RGB", "L"]


class PreprocessError(ValueError):
    """An image cannot be turned into a model's input (the message names the image)."""


class Preprocessing(BaseModel):
    """Resize to ``image_size``², convert to ``channels``, scale to [0, 1], then (x − mean) / std."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(28, ge=8, description="square input side in pixels")
    channels: Channels = Field("L", description="'RGB' (3 channels) or 'L' (grayscale, 1 channel)")
    mean: tuple[float, ...] = Field((0.0,), description="per-channel mean subtracted after scaling to [0, 1]")
    std: tuple[float, ...] = Field((1.0,), description="per-channel std divided by after the mean")

    @model_validator(mode="after")
    def _check_stats(self) -> Preprocessing:
        n = self.in_channels
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, n):
                raise ValueError(f"{name} has {len(values)} values; {self.channels} input needs 1 or {n}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        return self

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "RGB" else 1

    @property
    def key(self) -> str:
        """A short, stable name: two models with equal preprocessing share one decoded view."""
        return "pp-" + hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def __call__(self, image: np.ndarray, where: str = "image") -> np.ndarray:
        """uint8 [H, W, C] (C = 1 or 3) → float32 [channels, image_size, image_size]."""
        from PIL import Image

        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
            raise PreprocessError(f"{where}: expected uint8 [H, W, 1|3], got {image.dtype} {image.shape}")
        pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        if pil.mode != self.channels:
            pil = pil.convert(self.channels)
        if pil.size != (self.image_size, self.image_size):
            pil = pil.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        array = np.asarray(pil, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.ascontiguousarray((array - mean) / std, dtype=np.float32)


def builtin_preprocessing(image_size: int, in_channels: int = 1) -> Preprocessing:
    """What the built-in nets read: their size and channels (3 = RGB, else grayscale) in [0, 1]."""
    channels: Channels = "RGB" if in_channels == 3 else "L"
    return Preprocessing(image_size=image_size, channels=channels, mean=(0.0,), std=(1.0,))


def select_view(images: object, key: str) -> object:
    """A batch is either one tensor (every model reads it as is) or ``{preprocessing key: tensor}``
    (each model picks its own view); this returns the view a model with ``key`` reads."""
    if isinstance(images, dict):
        try:
            return images[key]
        except KeyError:
            raise PreprocessError(
                f"batch has views {sorted(images)}, none for preprocessing {key!r}"
            ) from None
    return images
