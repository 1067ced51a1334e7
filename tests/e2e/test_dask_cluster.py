"""Backfills through the CLI on a real Dask cluster: a ``dask scheduler`` and ``dask worker``
processes on 127.0.0.1 (one thread each, no nanny), the gallery on moto's S3, its items read from
a manifest of image files, the model loaded by each worker from the registry.

The cluster starts once for the module (its second worker is killed by one test, so the single
worker test follows it); every run gets its own copy of the store on S3.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore
from PIL import Image

from tests.e2e.bad_inputs import copy_home
from tests.e2e.homes import error_lines, invoke
from tests.fixtures.s3 import create_bucket, s3_client

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dask-cluster")]

DASK = Path(sys.executable).with_name("dask")
ARGS = ["backfill", "--version", "2", "--mode", "full"]
TARGET = "v2-full"
PAUSED_SHARD = 3
PAUSE_STEP = f"backfill:shard-{PAUSED_SHARD}-written"
#: small shards, so a gallery of ~100 items makes enough tasks for two workers
SMALL_SHARDS = {"HOTSWAP_BACKFILL__SHARD_SIZE": "8"}


class Cluster:
    """A scheduler and ``workers`` worker processes; everything is SIGKILLed at close."""

    def __init__(self, folder: Path, workers: int, env: dict[str, str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.env = folder, env
        scheduler_file = folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        options = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file"]
        self.procs.append(self._start("scheduler", [DASK, "scheduler", *options, scheduler_file]))
        deadline = time.monotonic() + 120
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        options = ["--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard"]
        self.workers = [
            self._start(f"worker-{i}", [DASK, "worker", self.address, *options, "--name", f"w{i}"])
            for i in range(workers)
        ]
        self.procs += self.workers
        with self.client() as client:
            client.wait_for_workers(workers, timeout=120)
            self.pids: dict[str, int] = client.run(os.getpid)

    def _start(self, name: str, argv: list) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen([str(a) for a in argv], env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.folder.glob("*.log")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=30)


def _worker_env(pause_dir: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.update({"HOTSWAP_TEST_PAUSE_AT": PAUSE_STEP, "HOTSWAP_TEST_PAUSE_DIR": str(pause_dir)})
    return env


@pytest.fixture(scope="module")
def pause_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dask-pause")
    (folder / f"{PAUSE_STEP}.go").touch()  # open unless a test closes it
    return folder


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, pause_dir: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("dask-two"), 2, _worker_env(pause_dir))
    try:
        yield cluster
    finally:
        cluster.close()


@dataclass(frozen=True)
class Homes:
    """Copies of the CLI tests' live home whose store lives on S3 and whose gallery is a manifest."""

    template: Path
    config: Path
    endpoint: str
    bucket: str
    manifest: Path
    root: Path

    def new(self, name: str) -> tuple[Path, dict[str, str], str]:
        """A home, the environment that points it at its own copy of the store, and its store URI.

        The refresh's own staged target is left out: each test writes that version itself."""
        home = copy_home(self.template, self.root / name)
        client = s3_client(self.endpoint)
        store = home / "store"
        staged = store / "galleries" / "default" / "versions" / TARGET
        for path in sorted(p for p in store.rglob("*") if p.is_file() and staged not in p.parents):
            client.put_object(
                Bucket=self.bucket, Key=f"{name}/{path.relative_to(store).as_posix()}", Body=path.read_bytes()
            )
        uri = f"s3://{self.bucket}/{name}"
        env = {
            **SMALL_SHARDS,
            "HOTSWAP_STORE_URI": uri,
            "HOTSWAP_S3_ENDPOINT_URL": self.endpoint,
            "HOTSWAP_GALLERY__MANIFEST": str(self.manifest),
        }
        return home, env, uri

    def galleries(self, uri: str) -> GalleryStore:
        return GalleryStore(open_store(uri, endpoint_url=self.endpoint))


@pytest.fixture(scope="module")
def homes(cli_homes, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Homes:
    """The live home's gallery items written out as PNG files with a manifest; its store to S3."""
    from hotswap.components.core.settings import load_settings
    from hotswap.components.data.catalog import gallery_items

    root = tmp_path_factory.mktemp("dask-homes")
    config = cli_homes["config"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOTSWAP_CONFIG", str(config))
        items = gallery_items(load_settings(home=str(cli_homes["live"])))
    images = root / "images"
    images.mkdir()
    rows = []
    for position, item in zip(items.positions, items.item_ids, strict=True):
        pixels = np.asarray(items.source.image(int(position)))
        path = images / f"{item}.png"
        Image.fromarray(pixels.squeeze()).save(path)
        rows.append({"item_id": item, "uri": str(path)})
    manifest = root / "gallery.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    bucket = create_bucket(s3_endpoint, "dask")
    return Homes(cli_homes["live"], config, s3_endpoint, bucket, manifest, root)


@pytest.fixture(scope="module")
def reference(homes: Homes) -> dict[str, bytes]:
    """The same backfill on this machine's thread pool: the shard files every cluster run must equal."""
    home, env, uri = homes.new("local")
    result = invoke(home, homes.config, ARGS, env)
    assert result.exit_code == 0, result.output
    return _shard_arrays(homes.galleries(uri))


def _shard_arrays(galleries: GalleryStore) -> dict[str, bytes]:
    """The bytes of every ids/features/codes file of the target version."""
    prefix = galleries.version_key("default", TARGET, "shards/")
    keys = [k for k in galleries.store.list(prefix) if k.endswith(".npy")]
    return {k.rsplit("/", 1)[1]: galleries.store.get_bytes(k) for k in sorted(keys)}


def _assert_every_item_once(galleries: GalleryStore, reference: dict[str, bytes]) -> None:
    source = galleries.load_ids("default", galleries.read_current("default"))
    arrays = galleries.load_arrays("default", TARGET)
    assert len(set(arrays.ids)) == len(arrays.ids) and sorted(arrays.ids) == sorted(source)
    assert _shard_arrays(galleries) == reference  # ids, features and codes, byte for byte


def _shard_workers(stream: list[dict]) -> dict[str, str]:
    """Shard task key → the worker that finished it."""
    return {str(t["key"]): t["worker"] for t in stream if str(t["key"]).startswith("shard-")}


def test_backfill_on_two_workers_is_byte_identical_to_the_local_one(two_workers, homes, reference):
    from distributed import get_task_stream

    home, env, uri = homes.new("two-workers")
    with two_workers.client() as client, get_task_stream(client) as stream:
        result = invoke(home, homes.config, [*ARGS, "--dask", two_workers.address], env)
        threads = client.run(lambda: __import__("torch").get_num_threads())
    assert result.exit_code == 0, result.output + two_workers.logs()
    assert json.loads(result.stdout)["gallery_version"] == TARGET
    ran_on = _shard_workers(stream.data)
    assert len(ran_on) == len([k for k in reference if k.endswith(".ids.npy")])
    assert set(ran_on.values()) == set(two_workers.pids)  # both workers ran shards
    assert set(threads.values()) == {1}  # the torch_threads setting, on every worker
    _assert_every_item_once(homes.galleries(uri), reference)


def test_gallery_sync_embeds_the_new_items_on_the_cluster(two_workers, homes):
    """New items in the gallery manifest are embedded by tasks on the workers, with the champion."""
    import shutil

    from distributed import get_task_stream
    from hotswap.components.data.loading import SourceItemSource
    from hotswap.components.data.sources import open_manifest
    from hotswap.components.models.training import extract_features
    from hotswap.components.registry.mlflow_registry import ModelRegistry

    home, env, uri = homes.new("sync")
    frame = pd.read_csv(homes.manifest, dtype=str)
    added = frame.head(6).assign(item_id=lambda f: "new-" + f["item_id"])
    for old, new in zip(frame.head(6)["uri"], added["uri"].str.replace(".png", "-new.png"), strict=True):
        shutil.copy(old, new)
    added["uri"] = added["uri"].str.replace(".png", "-new.png")
    manifest = homes.root / "gallery-grown.csv"
    pd.concat([frame, added]).to_csv(manifest, index=False)
    env = {**env, "HOTSWAP_GALLERY__MANIFEST": str(manifest)}
    argv = ["gallery-sync", "--no-publish", "--dask", two_workers.address, "--home", str(home)]
    with two_workers.client() as client, get_task_stream(client) as stream:
        result = invoke(home, homes.config, argv, env)
    assert result.exit_code == 0, result.output + two_workers.logs()
    synced = json.loads(result.stdout)
    assert (synced["added"], synced["removed"]) == (6, 0)
    assert any(str(t["key"]).startswith("embed-") for t in stream.data)  # embedded on the workers
    arrays = homes.galleries(uri).load_arrays("default", synced["gallery_version"])
    rows = [list(arrays.ids).index(i) for i in added["item_id"]]
    model = ModelRegistry(f"sqlite:///{home / 'mlflow.db'}", "matrix").load_model("1")
    items = SourceItemSource(open_manifest(str(manifest)), model.preprocessing)
    images = items.images(added["item_id"].to_numpy())
    np.testing.assert_allclose(arrays.features[rows], extract_features(model, images), atol=1e-5)


def test_ctrl_c_cancels_the_shards_and_the_rerun_resumes(two_workers, homes, reference, pause_dir):
    """Ctrl-C while a worker is in shard 3: one line, exit 130, no task of the run left on the
    cluster; the staged version resumes and ends equal to an uninterrupted run."""
    home, env, uri = homes.new("ctrl-c")
    go, reached = pause_dir / f"{PAUSE_STEP}.go", pause_dir / f"{PAUSE_STEP}.reached"
    go.unlink()
    reached.unlink(missing_ok=True)

    def interrupt_when_paused() -> None:
        while not reached.exists():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the driver's main thread

    threading.Thread(target=interrupt_when_paused, daemon=True).start()
    try:
        interrupted = invoke(home, homes.config, [*ARGS, "--dask", two_workers.address], env)
        with two_workers.client() as client:
            left = {w: keys for w, keys in client.processing().items() if keys}
    finally:
        go.touch()
    assert interrupted.exit_code == 130, interrupted.output
    assert len(error_lines(interrupted.output)) == 1 and "Traceback" not in interrupted.output
    assert left == {}  # its tasks were cancelled, not left running for a driver that is gone
    resumed = invoke(home, homes.config, [*ARGS, "--dask", two_workers.address], env)
    assert resumed.exit_code == 0, resumed.output + two_workers.logs()
    _assert_every_item_once(homes.galleries(uri), reference)


def test_a_worker_killed_mid_backfill_costs_nothing(two_workers, homes, reference, pause_dir):
    """Whichever worker writes shard 3 pauses there and is SIGKILLed: the other finishes the run,
    skipping the shard already written, and every item is in the version exactly once."""
    home, env, uri = homes.new("killed-worker")
    go, reached = pause_dir / f"{PAUSE_STEP}.go", pause_dir / f"{PAUSE_STEP}.reached"
    go.unlink()
    reached.unlink(missing_ok=True)
    outcome: dict = {}
    run = threading.Thread(
        target=lambda: outcome.update(
            result=invoke(home, homes.config, [*ARGS, "--dask", two_workers.address], env)
        )
    )
    with two_workers.client() as client:
        run.start()
        try:
            deadline = time.monotonic() + 300
            while not reached.exists():
                assert run.is_alive() and time.monotonic() < deadline, two_workers.logs()
                time.sleep(0.05)
            marker = f"-{PAUSED_SHARD:06d}-"
            paused = next(w for w, keys in client.processing().items() if any(marker in str(k) for k in keys))
            os.kill(two_workers.pids[paused], signal.SIGKILL)
        finally:
            go.touch()
            run.join(timeout=300)
        survivors = set(client.scheduler_info()["workers"])
    result = outcome["result"]
    assert result.exit_code == 0, result.output + two_workers.logs()
    assert paused not in survivors and len(survivors) == 1
    _assert_every_item_once(homes.galleries(uri), reference)


def test_a_single_one_thread_worker_completes(two_workers, homes, reference):
    """One worker with one thread is enough: no task waits on a worker for another. (After the
    test above one worker is left; run alone, this test retires one itself.)"""
    home, env, uri = homes.new("one-worker")
    with two_workers.client() as client:
        workers = sorted(client.scheduler_info()["workers"])
        if len(workers) > 1:
            client.retire_workers(workers[1:], close_workers=True)
        assert len(client.scheduler_info()["workers"]) == 1
        result = invoke(home, homes.config, [*ARGS, "--dask", two_workers.address], env)
    assert result.exit_code == 0, result.output + two_workers.logs()
    _assert_every_item_once(homes.galleries(uri), reference)


def test_an_unreachable_scheduler_is_one_line_naming_it(cli_homes):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    result = invoke(cli_homes["live"], cli_homes["config"], [*ARGS, "--dask", address])
    assert result.exit_code == 5, result.output
    lines = error_lines(result.output)
    assert len(lines) == 1 and address in lines[0] and "Traceback" not in result.output
