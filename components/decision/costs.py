"""What a backfill costs on this machine, measured rather than assumed.

Cost = items to extract × measured seconds per extracted item + items to encode × measured seconds
per encoded item (+ an optional per-item overhead for I/O), measured on a sample of validation
images with the new model and codebooks on this machine (``measure_costs``).
"""

from __future__ import annotations

import time

import numpy as np
from hotswap.components.decision.record import CostModel, DecisionError
from hotswap.components.models.backbones import EmbeddingModel
from hotswap.components.models.training import extract_features
from hotswap.components.quant.dpq import DPQCodebooks


def measure_costs(
    new_model: EmbeddingModel,
    new_codebooks: DPQCodebooks | None,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
    repeats: int = 3,
    overhead_seconds_per_item: float = 0.0,
    encode_items: int = 8192,
    encode_chunk: int = 1024,
) -> CostModel:
    """Seconds per item of extraction and of DPQ encoding, timed on ``images`` (a sample).

    One warm-up pass first (allocations, lazy initialisation), then the fastest of ``repeats``
    runs: on a shared machine the fastest run is the one least disturbed by other load. Encoding
    is timed on the sample's features repeated to ``encode_items`` rows, in calls of
    ``encode_chunk`` rows (a shard's worth, as the backfill encodes): it is so cheap per item that
    a few hundred rows would measure mostly per-call overhead.
    """
    if len(images) == 0:
        raise DecisionError("measure_costs needs at least one image to time")
    extract_features(new_model, images[: min(len(images), 8)], batch_size=batch_size, device=device)
    best_extract, feats = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        feats = extract_features(new_model, images, batch_size=batch_size, device=device)
        best_extract = min(best_extract, time.perf_counter() - start)
    per_item_encode = 0.0
    if new_codebooks is not None:
        rows = np.resize(feats, (max(len(feats), encode_items), feats.shape[1]))
        new_codebooks.encode(rows[: min(len(rows), 256)])  # warm-up
        best_encode = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for begin in range(0, len(rows), max(1, encode_chunk)):
                new_codebooks.encode(rows[begin : begin + encode_chunk])
            best_encode = min(best_encode, time.perf_counter() - start)
        per_item_encode = best_encode / len(rows)
    return CostModel(
        extract_seconds_per_item=best_extract / len(images),
        encode_seconds_per_item=per_item_encode,
        overhead_seconds_per_item=overhead_seconds_per_item,
        sample_size=len(images),
        device=device,
    )
