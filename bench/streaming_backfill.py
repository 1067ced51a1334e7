"""One full backfill of a streamed gallery, in its own process (run by bench/streaming.py), so
its peak resident memory is the backfill's and not the benchmark's."""

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hotswap.components.data.loading import LoaderConfig, SourceItemSource
from hotswap.components.data.objects import ObjectReader, manifest_from_frame
from hotswap.components.gallery.backfill import run_backfill
from hotswap.components.gallery.imports import write_feature_version
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.model_spec import ModelSpec, build_user_model
from hotswap.components.quant.dpq import DPQCodebooks


def _status(field: str, pid: str = "self") -> int:
    """A /proc/<pid>/status field in KiB (VmRSS: resident now, VmHWM: peak since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _WorkerPeaks:
    """Polls the DataLoader workers (children of the forkserver, not of this process) for their peak RSS."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.5):
            parents = {}
            for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
                try:
                    parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
            servers = {pid for pid, parent in parents.items() if parent == me}
            for pid, parent in parents.items():
                if parent in servers:  # a worker forked by this process's forkserver
                    try:
                        self.peak = max(self.peak, _status("VmHWM", str(pid)))
                    except OSError:
                        continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    frame = pd.read_parquet(args["manifest"])
    model = build_user_model(ModelSpec(**args["spec"]), seed=0).eval()
    d = model.embedding_dim
    books = DPQCodebooks(np.random.default_rng(0).normal(0, 0.2, size=(4, 256, d)).astype("float32"))
    galleries = GalleryStore(LocalObjectStore(args["store"], fsync=False))
    ids = frame["item_id"].to_numpy()
    identity = np.eye(d, dtype="float32")[np.arange(len(ids)) % d]
    write_feature_version(
        galleries,
        "g",
        ids,
        identity,
        books,
        model_version="1",
        codebook_version="1",
        version="v1",
        shard_size=args["shard"],
        publish=True,
    )
    rss_before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    watcher = _WorkerPeaks()
    gallery = manifest_from_frame(frame, require_labels=False, require_splits=False, reader=ObjectReader())
    source = SourceItemSource(gallery, model.preprocessing, LoaderConfig(256, args["workers"]))
    start = time.perf_counter()
    manifest = run_backfill(
        galleries,
        "g",
        "v1",
        "full",
        model,
        books,
        source,
        model_version="2",
        version="v2",
        shard_size=args["shard"],
        workers=1,
        batch_size=256,
    )
    seconds = time.perf_counter() - start
    watcher.stop()
    result = {
        "items": manifest.num_items,
        "seconds": seconds,
        "peak_rss_mib": _status("VmHWM") / 1024,
        "rss_before_mib": rss_before / 1024,
        "worker_peak_rss_mib": watcher.peak / 1024,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
