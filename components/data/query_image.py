"""A query image as a model reads it: the same decode and transform its gallery items went through.

A query finds its neighbours only if its feature comes from the tensor the gallery's features
came from. The backfill and every streamed extraction decode an image once to uint8 HWC
(components/data/objects.py) and hand it to the model's own preprocessing (components/data/preprocess.py:
size, RGB or grayscale, mean/std). Every query path — the CLI search and the HTTP service — goes
through :func:`query_pixels`, so none of them can drift into a conversion of its own (a grayscale
query for an RGB model, or pixels without the model's normalisation, rank plausibly but wrongly).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from hotswap.components.data.preprocess import Preprocessing


class ReadsPixels(Protocol):
    """Any model hotswap serves: built-in nets, the team's specs and exported programs."""

    @property
    def preprocessing(self) -> Preprocessing: ...


def query_pixels(model: ReadsPixels, data: bytes, where: str = "query image") -> np.ndarray:
    """PNG/JPEG bytes → float32 [1, C, H, W] in ``model``'s own preprocessing.

    Unreadable bytes raise DataError and an image the transform cannot take PreprocessError,
    each one line naming ``where``.
    """
    from hotswap.components.data.objects import decode_uint8

    return model.preprocessing(decode_uint8(data, where), where)[None]
