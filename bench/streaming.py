"""Streaming images into hotswap: S3 JPEGs vs in-memory tensors, DataLoader workers, a 100k backfill.

    python -m bench.streaming [--items 2000] [--image-size 64] [--gallery 100000] [--workers 1 2]

Part 1 extracts features of ``--items`` procedural RGB JPEGs with a ResNet-style model given by
import path: (a) from tensors already in memory (the ceiling: model time only), (b) streamed from
moto's S3 server on 127.0.0.1 through the DataLoader (GET, Pillow decode, per-model transform in
worker processes), (c) streamed from local files, each with 1 and 2 workers. Part 2 runs a full
backfill of a ``--gallery``-item gallery streamed from local JPEG files in a fresh process and
reports its wall time and peak resident memory next to what holding the decoded images would need.
Writes bench/results/streaming.json and .md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SPEC = {
    "arch": "bench.models:resnet",
    "kwargs": {"widths": [16, 32, 64]},
    "embedding_dim": 64,
    "num_classes": 10,
    "channels": "RGB",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
}


def _model(image_size: int):
    from hotswap.components.models.model_spec import ModelSpec, build_user_model

    return build_user_model(ModelSpec(**SPEC, image_size=image_size), seed=0).eval()


class _MotoProcess:
    """moto's S3 server in its own process, so serving requests does not compete with the model
    for the benchmark process's interpreter (as an S3 service never would)."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _moto() -> tuple[_MotoProcess, str]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    server = _MotoProcess()
    return server, server.endpoint


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def extraction(items: int, image_size: int, workers: list[int], root: Path) -> dict:
    """img/s of feature extraction from memory, from S3 (moto) and from local files."""
    import boto3
    from hotswap.components.data.loading import LoaderConfig, embed
    from hotswap.components.data.objects import ObjectReader, decode_uint8, manifest_from_frame
    from hotswap.components.data.procedural import procedural_images

    images = list(procedural_images(items, 10, size=image_size, seed=3))
    server, endpoint = _moto()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    (root / "local").mkdir()
    put_start = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda x: client.put_object(Bucket="bench", Key=f"img/{x[0]:06d}.jpg", Body=x[2]), images
            )
        )
    put_seconds = time.perf_counter() - put_start
    for i, _, data in images:
        (root / "local" / f"{i:06d}.jpg").write_bytes(data)
    ids = [f"i{i:06d}" for i, _, _ in images]
    s3 = manifest_from_frame(
        pd.DataFrame({"item_id": ids, "uri": [f"s3://bench/img/{i:06d}.jpg" for i, _, _ in images]}),
        "s3",
        require_labels=False,
        require_splits=False,
        reader=ObjectReader(endpoint),
    )
    local = manifest_from_frame(
        pd.DataFrame({"item_id": ids, "uri": [str(root / "local" / f"{i:06d}.jpg") for i, _, _ in images]}),
        "local",
        require_labels=False,
        require_splits=False,
    )
    model = _model(image_size)
    p = model.preprocessing
    tensor = torch.from_numpy(np.stack([p(decode_uint8(data)) for _, _, data in images]))

    def in_memory() -> None:
        with torch.no_grad():
            for start in range(0, len(tensor), 64):
                model.embed(tensor[start : start + 64])

    in_memory()  # warm-up
    # start the DataLoader's forkserver (it imports torch once) before anything is timed
    embed([model], local.subset(np.arange(64)), LoaderConfig(batch_size=32, workers=max(workers)))
    # On a shared machine the load drifts: each streamed run is paired with an in-memory run just
    # before it, both the fastest of two, and the ratio is taken within the pair.
    rows: dict[str, dict] = {}
    memory_runs = []
    for w in workers:
        for name, manifest in (("s3", s3), ("local", local)):
            config = LoaderConfig(batch_size=64, workers=w)
            memory = min(_time(in_memory) for _ in range(2))
            streamed = min(_time(lambda m=manifest, c=config: embed([model], m, c)) for _ in range(2))
            memory_runs.append(memory)
            rows[f"{name}_{w}w"] = {
                "seconds": streamed,
                "images_per_second": items / streamed,
                "paired_in_memory_images_per_second": items / memory,
                "of_in_memory": memory / streamed,
            }
    best = min(memory_runs)
    rows = {"in_memory": {"seconds": best, "images_per_second": items / best, "of_in_memory": 1.0}, **rows}
    # the store's own ceiling: GETs alone, same parallelism as the best streamed run, no decode/model
    get_start = time.perf_counter()
    with cf.ThreadPoolExecutor(max(workers)) as pool:
        list(
            pool.map(
                lambda i: client.get_object(Bucket="bench", Key=f"img/{i:06d}.jpg")["Body"].read(),
                range(items),
            )
        )
    rows["s3_get_only"] = {"seconds": time.perf_counter() - get_start}
    rows["s3_get_only"]["images_per_second"] = items / rows["s3_get_only"]["seconds"]
    server.stop()
    return {
        "items": items,
        "image_size": image_size,
        "put_seconds": put_seconds,
        "jpeg_bytes_mean": float(np.mean([len(d) for _, _, d in images])),
        "runs": rows,
    }


def gallery_backfill(n: int, image_size: int, workers: int, root: Path, shard: int = 2048) -> dict:
    from hotswap.components.data.procedural import procedural_images

    folder = root / "gallery"
    folder.mkdir()
    write_start = time.perf_counter()
    uris = []
    for i, _, data in procedural_images(n, 10, size=image_size, seed=5):
        path = folder / f"{i // 10000:02d}" / f"{i:07d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        uris.append(str(path))
    pd.DataFrame({"item_id": [f"g{i:07d}" for i in range(n)], "uri": uris}).to_parquet(
        root / "gallery.parquet"
    )
    write_seconds = time.perf_counter() - write_start
    spec = {**SPEC, "kwargs": {"widths": [8, 16, 32]}, "embedding_dim": 32, "image_size": image_size}
    args = {
        "manifest": str(root / "gallery.parquet"),
        "spec": spec,
        "store": str(root / "store"),
        "workers": workers,
        "shard": shard,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "bench.streaming_backfill", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(
        write_seconds=write_seconds,
        image_size=image_size,
        workers=workers,
        shard_size=shard,
        images_per_second=result["items"] / result["seconds"],
        all_images_mib=n * 3 * image_size * image_size * 4 / 2**20,
    )
    return result


def to_markdown(result: dict) -> str:
    ext = result["extraction"]
    runs = ext["runs"]
    lines = [
        "# Streaming benchmark",
        "",
        f"Machine: {result['machine']}; 1 torch thread. Model: `{SPEC['arch']}` {SPEC['kwargs']} "
        f"at {ext['image_size']}×{ext['image_size']} RGB, d = {SPEC['embedding_dim']}.",
        "",
        f"## Feature extraction, {ext['items']} procedural JPEGs (mean {ext['jpeg_bytes_mean']:.0f} bytes)",
        "",
        "| source | DataLoader workers | img/s | in-memory img/s just before | streamed / in-memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in runs.items():
        if name == "s3_get_only":
            continue
        source, _, w = ("", "", "") if name == "in_memory" else name.rpartition("_")
        label = {"": "tensors in memory", "s3": "moto S3 (HTTP, own process)", "local": "local files"}[source]
        lines.append(
            f"| {label} | {w.rstrip('w') if source else '–'} | {row['images_per_second']:.0f} | "
            f"{row.get('paired_in_memory_images_per_second', row['images_per_second']):.0f} | "
            f"{row['of_in_memory']:.0%} |"
        )
    lines += [
        "",
        f"The S3 server alone (GETs, no decode, no model, same parallelism): "
        f"{runs['s3_get_only']['images_per_second']:.0f} objects/s; "
        f"writing the set took {ext['put_seconds']:.1f} s.",
    ]
    b = result["backfill"]
    lines += [
        "",
        f"## Full backfill of a {b['items']:,}-item gallery (local JPEG files, "
        f"{b['image_size']}×{b['image_size']} RGB, {b['workers']} workers, shards of {b['shard_size']})",
        "",
        f"- {b['seconds']:.1f} s ({b['images_per_second']:.0f} img/s); "
        f"writing the images took {b['write_seconds']:.0f} s",
        f"- peak resident memory of the backfill process during the backfill: {b['peak_rss_mib']:.0f} MiB "
        f"(resident {b['rss_before_mib']:.0f} MiB when it started: torch, the model, the source version; "
        "peak reset through /proc/self/clear_refs); largest DataLoader worker "
        f"{b['worker_peak_rss_mib']:.0f} MiB",
        f"- the decoded images alone would need {b['all_images_mib']:.0f} MiB held at once",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--gallery-image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hotswap-bench-") as tmp:
        root = Path(tmp)
        (root / "x").mkdir()
        extraction_result = extraction(args.items, args.image_size, args.workers, root / "x")
        (root / "y").mkdir()
        backfill_result = gallery_backfill(
            args.gallery, args.gallery_image_size, max(args.workers), root / "y"
        )
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared",
        "extraction": extraction_result,
        "backfill": backfill_result,
        "peak_rss_bench_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "streaming.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
