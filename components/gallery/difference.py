"""What a gallery sync would change: ids in the gallery's manifest and not live, and the reverse.

Kept apart from the sync itself (components/gallery/imports.py, which embeds new items and so
imports torch) because ``hotswap status`` shows the difference and must not import torch.
"""

from __future__ import annotations

import numpy as np


def gallery_difference(live_ids: np.ndarray, wanted_ids: np.ndarray) -> dict[str, list[str]]:
    """Ids the gallery manifest holds that the live gallery lacks (``added``), and the reverse
    (``removed``): what a sync would change. Both empty = nothing to do."""
    live = np.asarray(live_ids).astype(str)
    wanted = np.asarray(wanted_ids).astype(str)
    return {
        "added": wanted[~np.isin(wanted, live)].tolist(),
        "removed": live[~np.isin(live, wanted)].tolist(),
    }
