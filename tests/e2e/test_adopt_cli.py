"""A team's path through the command line, as separate processes: adopt → refresh → promote →
gallery-sync → search (CLI and HTTP), on an RGB manifest on S3 and a model named by import path.

Each step is the real ``hotswap`` executable against the session's Prefect API, moto's S3 server
and a SQLite MLflow. Regressions covered: HTTP image search equals CLI search (the model's own
preprocessing); after a sync, a freshly started service serves the synced gallery, never a
removed item. (A worse challenger rejected on this path and refused by promote:
tests/integration/test_adopted_lifecycle.py.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.fixtures.images import S3ImageSet
from tests.fixtures.s3 import create_bucket
from tests.fixtures.team import write_team_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
HOTSWAP = str(Path(sys.executable).with_name("hotswap"))
FIRST_GALLERY = 150
CONFIG = """\
model_name = "teamcli"
s3_endpoint_url = "{endpoint}"
store_uri = "s3://{bucket}/store"
[data]
source = "{root}/train.parquet"
validation_split = "val"
gate_split = "val"
[gallery]
manifest = "{root}/gallery.parquet"
[stream]
workers = 0
batch_size = 50
[training]
epochs = 2
batch_size = 50
lr = {lr}
[training.new_model]
arch = "tests.fixtures.user_models:convnet"
kwargs = {{ in_channels = 3, width = 12 }}
image_size = 20
channels = "RGB"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[compat]
min_epoch_steps = 4
[compat_search]
enabled = false
[dpq]
epochs = 2
n_blocks = 2
n_codewords = 16
kmeans_iters = 3
[decision]
partial_fractions = [0.5]
timing_repeats = 1
timing_sample = 16
[backfill]
shard_size = 60
"""


def hotswap(home: Path, config: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    result = subprocess.run(
        [HOTSWAP, *argv, "--home", str(home)],
        env={
            **os.environ,
            "HOTSWAP_CONFIG": str(config),
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PYTHONPATH": str(ROOT),  # the team's architecture lives in the test package
            "COLUMNS": "200",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert result.returncode == 0, f"hotswap {' '.join(argv)}: {result.stdout}\n{result.stderr}"
    return result


def last_json(output: str) -> dict[str, Any]:
    """The JSON object a lifecycle command prints last."""
    return json.loads(output[output.rindex("\n{") + 1 :] if "\n{" in output else output[output.index("{") :])


def cli_hits(output: str) -> list[str]:
    return re.findall(r"\b(img-\d{5})\b", output)


def write_config(root: Path, s3: S3ImageSet, bucket: str, lr: float) -> Path:
    path = root / f"hotswap-lr{lr:g}.toml"
    path.write_text(CONFIG.format(endpoint=s3.endpoint, bucket=bucket, root=root.as_posix(), lr=lr))
    return path


@pytest.fixture(scope="module")
def team(s3_images: S3ImageSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The team's model (safetensors), its gallery features, its manifests, a home."""
    root = tmp_path_factory.mktemp("team-cli")
    gallery = s3_images.gallery(FIRST_GALLERY + 40)
    write_team_files(root, s3_images, gallery.head(FIRST_GALLERY))
    bucket = create_bucket(s3_images.endpoint, "teamcli")
    return {"root": root, "home": root / "home", "gallery": gallery, "bucket": bucket, "s3": s3_images}


def test_a_team_runs_the_whole_lifecycle_from_the_command_line(team: dict[str, Any]) -> None:
    root, home, s3 = team["root"], team["home"], team["s3"]

    # given the team's model adopted with its own features (nothing re-extracted)
    config = write_config(root, s3, team["bucket"], lr=2e-3)
    adopted = last_json(
        hotswap(
            home,
            config,
            "adopt",
            "--spec",
            str(root / "spec.json"),
            "--weights",
            str(root / "team.safetensors"),
            "--gallery-features",
            str(root / "features.parquet"),
        ).stdout
    )
    assert adopted["version"] == "1" and adopted["gallery_version"] == "v1-adopted"

    # when a real challenger is trained against the adopted model and promoted
    refreshed = last_json(hotswap(home, config, "refresh").stdout)
    assert refreshed["noop"] is False and refreshed["challenger"] == "2"
    assert set(refreshed["targets"][0]) >= {"version", "weight"}  # trained against the live targets
    if refreshed["decision"] != "reject":
        hotswap(home, config, "promote", "--approve", "--reason", "report reviewed")

    # when the gallery manifest gains 40 items and loses 10, and the gallery is synced
    manifest = pd.concat([team["gallery"].iloc[10:FIRST_GALLERY], team["gallery"].iloc[FIRST_GALLERY:]])
    manifest.to_parquet(root / "gallery.parquet")
    status = json.loads(hotswap(home, config, "status", "--json").stdout)
    assert status["gallery_manifest"]["missing_from_live"] == 40
    assert status["gallery_manifest"]["only_in_live"] == 10
    synced = last_json(hotswap(home, config, "gallery-sync").stdout)
    assert (synced["added"], synced["removed"]) == (40, 10)
    status = json.loads(hotswap(home, config, "status", "--json").stdout)
    assert status["gallery_manifest"]["missing_from_live"] == status["gallery_manifest"]["only_in_live"] == 0

    # then the CLI serves the synced gallery: every added item, no removed one (a whole ranking;
    # the 8-bit test codes tie too often for an added item to be sure of the first place)
    added = str(team["gallery"]["item_id"].iloc[FIRST_GALLERY + 3])
    removed = set(team["gallery"]["item_id"].iloc[:10])
    query = root / "query.jpg"
    query.write_bytes(s3.data[added])
    every = cli_hits(hotswap(home, config, "search", "--image", str(query), "--k", "180").stdout)
    assert set(every) == set(manifest["item_id"]) and not removed & set(every)
    by_image = cli_hits(hotswap(home, config, "search", "--image", str(query), "--k", "5").stdout)
    assert cli_hits(hotswap(home, config, "search", "--item-id", added, "--k", "5").stdout) == by_image

    # and a freshly started service answers the same through HTTP, never with a removed id
    with _service(home, config) as url:
        answer = httpx.post(f"{url}/search/image?k=5", content=s3.data[added], timeout=30).json()
        assert [r["item_id"] for r in answer["results"]] == by_image
        assert answer["gallery_version"] == synced["gallery_version"]
        for item in team["gallery"]["item_id"].iloc[FIRST_GALLERY : FIRST_GALLERY + 10]:
            found = httpx.post(f"{url}/search/item", json={"item_id": str(item), "k": 10}, timeout=30).json()
            assert not removed & {r["item_id"] for r in found["results"]}


class _service:
    """``hotswap serve`` as its own process on a free port, until the block ends."""

    def __init__(self, home: Path, config: Path) -> None:
        self.home, self.config = home, config

    def __enter__(self) -> str:
        from prefect.settings import PREFECT_API_URL

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("hotswap")),
                "serve",
                "--port",
                str(port),
                "--home",
                str(self.home),
            ],
            env={
                **os.environ,
                "HOTSWAP_CONFIG": str(self.config),
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PYTHONPATH": str(ROOT),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hotswap serve exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("hotswap serve did not become healthy")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
