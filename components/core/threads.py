"""Torch's thread count for this process, set without importing torch.

A flow sets it from the settings when it starts. Importing torch there would cost every run
about a second before its first step, and a run that decides it has nothing to do (a refresh
no-op) never needs torch at all. So when torch is not loaded yet, the count goes into
``OMP_NUM_THREADS``, which torch reads when it loads; once it is loaded, it is set directly.
The variable is OpenMP's: faiss, loaded later in the same run, reads it too, which is what the
setting says (``torch_threads``: "OpenMP threads"). Torch caps a count read from the variable at
the machine's cores (more threads than cores do not speed up a CPU-bound run).
"""

from __future__ import annotations

import os
import sys


def limit_torch_threads(threads: int) -> None:
    """Run torch's intra-op work on ``threads`` threads, now or when torch is first imported."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = str(threads)
