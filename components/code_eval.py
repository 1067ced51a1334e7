"""Retrieval quality of a DPQ gallery at every code length, from one training.

DPQ's codes are progressive: the first m blocks of a code are the code of the m-block quantizer.
So one encoding is scored at 8, 16, 24, … bits by decoding prefixes. Queries stay float
(asymmetric search), exactly as the faiss index serves them.
"""

from __future__ import annotations

import numpy as np

from components.metrics import retrieval_metrics
from components.quantization import DPQCodebooks


def prefix_retrieval(
    codebooks: DPQCodebooks, features: np.ndarray, labels: np.ndarray
) -> dict[int, dict[str, float]]:
    """Leave-one-out mAP/top-k of float queries against the decoded gallery, per code length (bits).

    Also includes ``0`` → the float (unquantized) ceiling, for comparison.
    """
    codes = codebooks.encode(features)
    result = {0: retrieval_metrics(features, labels).as_dict()}
    for blocks in range(1, codebooks.n_blocks + 1):
        decoded = codebooks.decode(codes, n_blocks=blocks)
        metrics = retrieval_metrics(features, labels, decoded, labels, exclude_self=True)
        result[codebooks.code_bits(blocks)] = metrics.as_dict()
    return result
