"""Backfill on a Dask cluster against the local thread pool, side by side in one run.

    python -m bench.dask [--items 20000] [--shard 500] [--image-size 32]

A gallery of ``--items`` procedural JPEG files on local disk, streamed through a manifest (item_id,
uri), re-extracted by a full backfill with a ResNet-style model given by import path
(bench/models.py) and DPQ-encoded, written to a local store:

- ``local``: the project's default on one machine: a thread pool of 2 shard jobs, 1 running the
  model at a time (``backfill.workers=2``, ``compute_slots=1``), 1 torch thread;
- ``dask-1`` and ``dask-2``: a real ``dask scheduler`` and 1 or 2 ``dask worker`` processes
  (``--nthreads 1 --no-nanny``) on 127.0.0.1; the driver (this process) only plans, submits and
  finishes the version. Each worker builds the model from its spec and opens the manifest once.

Items/s is the whole backfill (plan, shards, finalize with index) over its wall time; the cluster
is started and its workers have imported hotswap before the clock starts (a long-running cluster
is warm), while each worker's model build and manifest read are timed. Each worker's share of the
shards comes from the results. The versions are checked equal to the local one byte for byte.
Writes bench/results/dask.{json,md} with the load average before and after (the machine is shared).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.streaming import SPEC  # the same model as the streaming benchmark

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(message, flush=True)


def build_model(spec: dict[str, Any]) -> Any:
    """The bench model, the same on every process (seeded): what a worker loads by reference."""
    from hotswap.components.models.model_spec import ModelSpec, build_user_model

    return build_user_model(ModelSpec(**spec), seed=0).eval()


def open_items(manifest: str, preprocessing: Any) -> Any:
    from hotswap.components.data.loading import LoaderConfig, SourceItemSource
    from hotswap.components.data.objects import ObjectReader, manifest_from_frame

    frame = pd.read_csv(manifest, dtype=str)
    gallery = manifest_from_frame(frame, require_labels=False, require_splits=False, reader=ObjectReader())
    return SourceItemSource(gallery, preprocessing, LoaderConfig(256, workers=0))


class Cluster:
    """``dask scheduler`` + ``workers`` ``dask worker`` processes on 127.0.0.1, killed at close."""

    def __init__(self, workers: int, folder: Path) -> None:
        dask = Path(sys.executable).with_name("dask")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        scheduler_file = folder / f"scheduler-{workers}.json"
        self.procs = [
            subprocess.Popen(
                [str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file)],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        ]  # fmt: skip
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        self.procs += [
            subprocess.Popen(
                [str(dask), "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--no-nanny", "--no-dashboard"],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)
            # warm, as a long-running cluster is: hotswap and torch imported (the model load is timed)
            client.run(importlib.import_module, "hotswap.components.gallery.dask_shards")

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def write_gallery(folder: Path, items: int, size: int) -> Path:
    from hotswap.components.data.procedural import procedural_images

    images = folder / "images"
    images.mkdir()
    rows = []
    for i, _, payload in procedural_images(items, 10, size=size, seed=3):
        path = images / f"{i:06d}.jpg"
        path.write_bytes(payload)
        rows.append({"item_id": f"item-{i:06d}", "uri": str(path)})
    manifest = folder / "gallery.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20000)
    parser.add_argument("--shard", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from hotswap.components.gallery.backfill import run_backfill
    from hotswap.components.gallery.dask_shards import DaskShards, Resource, WorkerSetup
    from hotswap.components.gallery.imports import write_feature_version
    from hotswap.components.gallery.local_store import LocalObjectStore
    from hotswap.components.gallery.versions import GalleryStore
    from hotswap.components.quant.dpq import DPQCodebooks

    spec = {**SPEC, "image_size": args.image_size}
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    log(f"writing {args.items} JPEG files and their manifest under a temp folder")
    manifest = write_gallery(folder, args.items, args.image_size)
    model = build_model(spec)
    d = model.embedding_dim
    books = DPQCodebooks(np.random.default_rng(0).normal(0, 0.2, size=(4, 256, d)).astype("float32"))
    galleries = GalleryStore(LocalObjectStore(folder / "store", fsync=False))
    ids = pd.read_csv(manifest, dtype=str)["item_id"].to_numpy()
    write_feature_version(
        galleries, "g", ids, np.eye(d, dtype="float32")[np.arange(len(ids)) % d], books,
        model_version="1", codebook_version="1", version="v1", shard_size=args.shard, publish=True,
    )  # fmt: skip
    common = dict(model_version="2", shard_size=args.shard, batch_size=256)
    runs: dict[str, dict[str, Any]] = {}

    def record(name: str, seconds: float, shares: dict[str, int] | None = None) -> None:
        runs[name] = {"seconds": seconds, "items_per_s": args.items / seconds, "shares": shares or {}}
        log(f"{name}: {seconds:.1f} s, {args.items / seconds:.0f} items/s {shares or ''}")

    start = time.perf_counter()
    run_backfill(
        galleries, "g", "v1", "full", model, books, open_items(str(manifest), model.preprocessing),
        version="local", workers=2, compute_slots=1, **common,
    )  # fmt: skip
    record("local", time.perf_counter() - start)
    setup = WorkerSetup(
        model=Resource("model:bench", functools.partial(build_model, spec)),
        items=Resource(
            f"items:{manifest}", functools.partial(open_items, str(manifest), model.preprocessing)
        ),
        batch_size=256,
        torch_threads=1,
    )
    local_items = open_items(str(manifest), model.preprocessing)  # checked by the engine, read on workers
    for workers in (1, 2):
        cluster = Cluster(workers, folder)
        try:
            runner = DaskShards(cluster.address, setup)
            start = time.perf_counter()
            run_backfill(
                galleries, "g", "v1", "full", model, books, local_items, version=f"dask-{workers}",
                executor=runner, **common,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            shares = dict(sorted(runner.shares.items()))
            record(f"dask-{workers}", seconds, {f"worker {i + 1}": n for i, n in enumerate(shares.values())})
        finally:
            cluster.close()
    reference = galleries.load_arrays("g", "local")
    identical = {}
    for name in ("dask-1", "dask-2"):
        other = galleries.load_arrays("g", name)
        identical[name] = bool(
            np.array_equal(reference.ids, other.ids)
            and np.array_equal(reference.features, other.features)
            and np.array_equal(reference.codes, other.codes)
        )
    load_after = os.getloadavg()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "items": args.items,
        "shard_size": args.shard,
        "image_size": args.image_size,
        "model": SPEC["arch"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "runs": runs,
        "ratios": {
            "dask-2 / dask-1": runs["dask-2"]["items_per_s"] / runs["dask-1"]["items_per_s"],
            "dask-1 / local": runs["dask-1"]["items_per_s"] / runs["local"]["items_per_s"],
        },
        "identical_to_local": identical,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dask.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "dask.md").write_text(markdown(result))
    log((RESULTS / "dask.md").read_text())


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Backfill on a Dask cluster",
        "",
        f"Machine: {result['machine']}. Load average (1, 5, 15 min) before "
        f"{result['load_average_before']}, after {result['load_average_after']} (a shared machine).",
        "",
        f"Full backfill of {result['items']} JPEG files ({result['image_size']}×{result['image_size']}) "
        f"streamed from a manifest, model `{result['model']}`, shards of {result['shard_size']}, "
        "1 torch thread per process, local store.",
        "",
        "| run | wall s | items/s | shards per worker |",
        "|---|---:|---:|---|",
    ]
    for name, run in result["runs"].items():
        shares = ", ".join(f"{w}: {n}" for w, n in run["shares"].items()) or "—"
        lines.append(f"| {name} | {run['seconds']:.1f} | {run['items_per_s']:.0f} | {shares} |")
    ratios = result["ratios"]
    lines += [
        "",
        f"2 workers / 1 worker: {ratios['dask-2 / dask-1']:.2f}×; 1 worker / local thread pool: "
        f"{ratios['dask-1 / local']:.2f}×. Versions identical to the local one byte for byte: "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["identical_to_local"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
