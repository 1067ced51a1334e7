"""Retrieval quality of DPQ codebooks at every code length: one encoding, each prefix decoded.

Because every prefix of a DPQ code is a shorter code of the same training, one evaluation
reports the whole quality/bits trade-off (what the registry logs as ``dpq.<bits>bit.*``).
"""

from __future__ import annotations

import numpy as np
from hotswap.components.quant.dpq import DPQCodebooks, check_features


def prefix_retrieval(
    codebooks: DPQCodebooks, features: np.ndarray, labels: np.ndarray, topk: tuple[int, ...] = (1, 5)
) -> dict[int, dict[str, float]]:
    """Quantized retrieval at every code-length prefix, keyed by bits.

    The protocol is DPQ's asymmetric one, leave-one-out: every item queries with its float
    feature against the decoded codes of all *other* items (tie-aware mAP and CMC, see
    components/compat/metrics.py). ``rel_error`` = Σ‖x − x̂‖² / Σ‖x‖² of the prefix reconstruction.
    """
    from hotswap.components.compat.metrics import (
        retrieval_metrics,  # metrics is numpy-only; imported where used
    )

    x = check_features(features, "features", dim=codebooks.dim)
    codes = codebooks.encode(x)
    out: dict[int, dict[str, float]] = {}
    for m in range(1, codebooks.n_blocks + 1):
        decoded = codebooks.decode(codes, n_blocks=m)
        metrics = retrieval_metrics(x, labels, decoded, labels, topk=topk, exclude_self=True)
        rel_error = float(((x - decoded) ** 2).sum() / max(float((x**2).sum()), 1e-12))
        out[codebooks.code_bits(m)] = {**metrics.as_dict(), "rel_error": rel_error}
    return out
