"""Query service under load: QPS and p50/p99 latency at steady state and during a model swap.

    python -m bench.serve [--sizes 100000 1000000] [--kinds flat ivf] [--clients 8]
                          [--swaps 3] [--steady-s 4]

For each gallery size and index kind: two model versions in a SQLite MLflow registry and two
gallery versions of synthetic DPQ codes (M = 4 blocks of K = 256, d = 64; 32-bit codes, int64
ids) in a local gallery store. ``hotswap serve`` runs as its own process (the real CLI) on
127.0.0.1; closed-loop clients (threads with httpx) send queries by item id, so every query runs
the model's forward pass and the faiss search. The bench alternates the two pairs ``--swaps``
times: a steady phase of ``--steady-s``, then a promotion done the way the switch does it (alias,
then CURRENT), with the load kept on. "During the swap" = requests that started between the
promotion and one second after the first answer from the new pair. The server's RSS is sampled
every 20 ms (psutil), so the peak shows both pairs resident.

Writes bench/results/serve.json and .md. Goal: p99 during the swap ≤ 2× steady p99, no errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from hotswap.components.data.sources import open_source
from hotswap.components.gallery.live_state import TAG_GALLERY_VERSION
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.quant.index import build_flat_index, build_ivf_index, index_to_bytes
from hotswap.components.registry.mlflow_registry import ModelRegistry

RESULTS = Path(__file__).resolve().parent / "results"
DIM, BLOCKS, CODEWORDS = 64, 4, 256
QUERY_SOURCE = "synthetic:2000:10"
GALLERY = "bench"
MODEL = "serve-bench"
SHARD = 250_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_gallery(
    galleries: GalleryStore, version: str, model_version: str, n: int, kind: str, seed: int
) -> None:
    """A gallery version of n random 32-bit DPQ codes under random codebooks, with its index."""
    rng = np.random.default_rng(seed)
    books = (rng.standard_normal((BLOCKS, CODEWORDS, DIM)) / np.sqrt(DIM * BLOCKS)).astype(np.float32)
    codes = rng.integers(0, CODEWORDS, size=(n, BLOCKS), dtype=np.uint8)
    ids = np.arange(n, dtype=np.int64) + seed * 10_000_000
    shards = -(-n // SHARD)
    writer = galleries.begin_version(
        GALLERY, version, model_version=model_version, num_shards=shards, arrays=("ids", "codes")
    )
    for s in range(shards):
        writer.write_shard(s, ids[s * SHARD : (s + 1) * SHARD], codes=codes[s * SHARD : (s + 1) * SHARD])
    rows = np.arange(n, dtype=np.int64)
    index = build_flat_index(books, codes, rows) if kind == "flat" else build_ivf_index(books, codes, rows)
    writer.finalize(index_to_bytes(index), check_unique_ids=False)


class Load:
    """Closed-loop clients; every request's start, latency, status and answering model version."""

    def __init__(self, url: str, clients: int, item_ids: np.ndarray) -> None:
        self.url, self.clients, self.item_ids = url, clients, item_ids
        self.records: list[tuple[float, float, int, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def _client(self, c: int) -> None:
        rng = np.random.default_rng(c)
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                item = str(self.item_ids[rng.integers(len(self.item_ids))])
                start = time.perf_counter()
                try:
                    response = http.post("/search/item", json={"item_id": item, "k": 10})
                    status = response.status_code
                    version = response.json().get("model_version", "") if status == 200 else ""
                except httpx.HTTPError:
                    status, version = -1, ""
                with self.lock:
                    self.records.append((start, time.perf_counter() - start, status, version))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.perf_counter(), self.process.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.02)


def _first_answer_from(load: Load, version: str, since: float, wait_s: float = 300) -> float:
    """When the first request started after ``since`` was answered by ``version``."""
    deadline = time.monotonic() + wait_s
    checked = 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        with load.lock:
            fresh = load.records[checked:]
            checked = len(load.records)
        done = [r[0] + r[1] for r in fresh if r[3] == version and r[0] >= since]
        if done:
            return min(done)
    raise RuntimeError(f"the service never answered with v{version}")


def _stats(records: list[tuple[float, float, int, str]], seconds: float) -> dict[str, Any]:
    lat = np.array([r[1] for r in records if r[2] == 200]) * 1000
    return {
        "requests": len(records),
        "errors": sum(r[2] != 200 for r in records),
        "qps": round(len(records) / seconds, 1) if seconds > 0 else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
        "max_ms": round(float(lat.max()), 2) if len(lat) else None,
    }


def run_case(
    root: Path,
    registry: ModelRegistry,
    versions: tuple[str, str],
    n: int,
    kind: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    galleries = GalleryStore(open_store(str(root / "store")))
    old_g, new_g = f"{kind}-{n}-a", f"{kind}-{n}-b"
    built = time.perf_counter()
    _write_gallery(galleries, old_g, versions[0], n, kind, seed=1)
    _write_gallery(galleries, new_g, versions[1], n, kind, seed=2)
    build_s = time.perf_counter() - built
    registry.set_tags(versions[0], {TAG_GALLERY_VERSION: old_g})
    registry.set_tags(versions[1], {TAG_GALLERY_VERSION: new_g})
    registry.restore_aliases({"champion": versions[0]})
    galleries.publish(GALLERY, old_g)

    port = _free_port()
    env = {
        **os.environ,
        "HOTSWAP_MODEL_NAME": MODEL,
        "HOTSWAP_GALLERY_NAME": GALLERY,
        "HOTSWAP_DEVICE": "cpu",
        "HOTSWAP_DATA__SOURCE": QUERY_SOURCE,
        "HOTSWAP_SERVE__POLL_INTERVAL_S": "0.5",
        "HOTSWAP_SERVE__BATCH_SIZE": str(args.batch_size),
        "HOTSWAP_SERVE__MAX_WAIT_MS": str(args.max_wait_ms),
        "OMP_NUM_THREADS": "1",
    }
    log = (root / f"serve-{kind}-{n}.log").open("w")
    cmd = [sys.executable, "-m", "hotswap.flows.cli", "serve", "--home", str(root), "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"server did not start: {(root / f'serve-{kind}-{n}.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        items = open_source(QUERY_SOURCE).item_ids
        rss = RssSampler(server.pid)
        rss.start()
        load = Load(url, args.clients, items)
        load.start()
        time.sleep(1.0)  # warm-up, not measured
        steady_windows, swap_windows, visible, loads = [], [], [], []
        pairs = [(versions[0], old_g), (versions[1], new_g)]
        for swap in range(args.swaps):  # alternate v1 -> v2 -> v1 ...: no pair is favoured
            t_steady = time.perf_counter()
            time.sleep(args.steady_s)
            version, gallery = pairs[(swap + 1) % 2]
            t_swap = time.perf_counter()
            registry.promote(version)  # the switch's order: alias first, then CURRENT
            galleries.publish(GALLERY, gallery)
            first_new = _first_answer_from(load, version, t_swap)
            steady_windows.append((t_steady, t_swap))
            swap_windows.append((t_swap, first_new + 1.0))
            visible.append(first_new - t_swap)
            loads.append(httpx.get(f"{url}/live", timeout=10).json()["live"]["load_seconds"])
            time.sleep(max(0.0, first_new + 1.0 - time.perf_counter()))
        load.finish()
        rss.halt.set()
        live = httpx.get(f"{url}/live", timeout=10).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    def within(windows: list[tuple[float, float]]) -> list[tuple[float, float, int, str]]:
        return [r for r in load.records if any(a <= r[0] < b for a, b in windows)]

    def seconds(windows: list[tuple[float, float]]) -> float:
        return sum(b - a for a, b in windows)

    rss_steady = [m for t, m in rss.samples if any(a <= t < b for a, b in steady_windows)]
    rss_swap = [m for t, m in rss.samples if any(a <= t < b for a, b in swap_windows)]
    result = {
        "items": n,
        "index": kind,
        "swaps": args.swaps,
        "gallery_build_s": round(build_s, 1),
        "steady": _stats(within(steady_windows), seconds(steady_windows)),
        "during_swap": _stats(within(swap_windows), seconds(swap_windows)),
        "errors_total": sum(r[2] != 200 for r in load.records),
        "requests_total": len(load.records),
        "swap_visible_s": round(float(np.mean(visible)), 2),
        "pair_load_s": round(float(np.mean(loads)), 3),
        "rss_steady_mb": round(float(np.median(rss_steady)) / 2**20, 1) if rss_steady else None,
        "rss_peak_swap_mb": round(max(rss_swap) / 2**20, 1) if rss_swap else None,
        "swaps_total": next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("hotswap_serve_swaps_total")
        ),
        "live_after": [live["model_version"], live["gallery_version"]],
    }
    s, d = result["steady"]["p99_ms"], result["during_swap"]["p99_ms"]
    result["p99_ratio"] = round(d / s, 2) if s and d else None
    result["goal_met"] = bool(
        result["p99_ratio"] is not None and result["p99_ratio"] <= 2.0 and result["errors_total"] == 0
    )
    return result


def _markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Query service under load (bench/serve.py)",
        "",
        f"Machine: {payload['machine']}. {payload['clients']} closed-loop clients (item-id queries, k = 10), "
        f"batch ≤ {payload['batch_size']}, wait ≤ {payload['max_wait_ms']} ms, 1 torch + 1 faiss thread. "
        "Gallery: 32-bit DPQ codes (M = 4, K = 256, d = 64); IVF: nlist 256, nprobe 16.",
        "",
        "| items | index | steady QPS | steady p50 / p99 ms | swap QPS | swap p50 / p99 ms | p99 ratio "
        "| errors | swap visible s | pair load s | RSS steady → peak MB | goal |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in payload["cases"]:
        st, sw = r["steady"], r["during_swap"]
        errors = r["errors_total"]
        lines.append(
            f"| {r['items']:,} | {r['index']} | {st['qps']} | {st['p50_ms']} / {st['p99_ms']} | "
            f"{sw['qps']} | {sw['p50_ms']} / {sw['p99_ms']} | {r['p99_ratio']} | {errors} | "
            f"{r['swap_visible_s']} | "
            f"{r['pair_load_s']} | {r['rss_steady_mb']} → {r['rss_peak_swap_mb']} | "
            f"{'met' if r['goal_met'] else 'missed'} |"
        )
    lines += [
        "",
        f"Each case swaps {payload['cases'][0]['swaps'] if payload['cases'] else 0} times, alternating the "
        'two pairs. "Steady" = the settled phases before each swap; "swap" = requests that started',
        "between a promotion and one second after the first answer from the new pair (which is built",
        "beside the old one in that window). Errors count every request of the case. RSS peak: both",
        "pairs resident. p99 ratio = swap p99 / steady p99 (goal ≤ 2, zero errors). Load average of the",
        f"machine (shared with other jobs) at start / end: {payload.get('load_average_start')} / "
        f"{payload.get('load_average_end')}: compare within a row, not across runs.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf"], choices=["flat", "ivf"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steady-s", type=float, default=4.0, help="steady phase before each swap")
    parser.add_argument("--swaps", type=int, default=3, help="swaps per case, alternating the two pairs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="only rewrite serve.md from serve.json")
    args = parser.parse_args()
    if args.render:
        (args.out / "serve.md").write_text(_markdown(json.loads((args.out / "serve.json").read_text())))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server subprocess on the way out
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cases = []
    load_start = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="hotswap-bench-serve-") as tmp:
        root = Path(tmp)
        registry = ModelRegistry(f"sqlite:///{(root / 'mlflow.db').as_posix()}", MODEL)
        versions = []
        for seed, arch in ((1, "small"), (2, "small")):  # same cost: the swap, not the model, is measured
            model = build_model(BackboneSpec(arch=arch, embedding_dim=DIM, num_classes=10), seed=seed).eval()
            versions.append(registry.register(registry.log_training_run(model, dataset_version="bench")))
        for n in args.sizes:
            for kind in args.kinds:
                result = run_case(root, registry, (versions[0], versions[1]), n, kind, args)
                print(json.dumps(result), flush=True)
                cases.append(result)
    payload = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {platform.python_version()}",
        "clients": args.clients,
        "batch_size": args.batch_size,
        "max_wait_ms": args.max_wait_ms,
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "serve.md").write_text(_markdown(payload))
    print(_markdown(payload))


if __name__ == "__main__":
    main()
