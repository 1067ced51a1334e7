"""The S3 endpoint stops in the middle of a backfill, then comes back: one clear line, then a resume.

A dedicated moto server (its own port, so stopping it touches no other test) holds the gallery.
The backfill runs through the real CLI in-process; a watcher stops the server as soon as the
second shard is committed. The command must end with one ``error:`` line naming S3 and saying
that the live gallery is unchanged and a rerun resumes; after a restart on the same port the
rerun finishes, and the version holds every live item once, with the features model v1 gives.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.gallery.versions import GalleryStore

from tests.e2e.bad_inputs import BASE_TOML
from tests.e2e.homes import error_lines, invoke
from tests.fixtures.s3 import s3_client

SHARD_KEY = "galleries/default/versions/v1-full/shards/000001.json"


@pytest.fixture
def own_moto(s3_endpoint: str):  # s3_endpoint: for the dummy credentials it sets
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    state = {"server": server, "port": port, "url": f"http://{host}:{port}"}
    yield state
    state["server"].stop()


def _stop_when_committed(state: dict, bucket: str, prefix: str, stopped: threading.Event) -> None:
    client = s3_client(state["url"])
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            client.head_object(Bucket=bucket, Key=f"{prefix}/{SHARD_KEY}")
        except ClientError:
            time.sleep(0.01)
            continue
        state["server"].stop()
        stopped.set()
        return


def test_s3_stops_mid_backfill_then_the_rerun_resumes(
    own_moto: dict, prefect_harness, tmp_path: Path
) -> None:
    from moto.server import ThreadedMotoServer

    bucket = f"outage-{uuid.uuid4().hex[:10]}"
    s3_client(own_moto["url"]).create_bucket(Bucket=bucket)
    config = tmp_path / "hotswap.toml"
    config.write_text(
        f'store_uri = "s3://{bucket}/g"\ns3_endpoint_url = "{own_moto["url"]}"\n'
        "service_timeout_seconds = 2\n" + BASE_TOML
    )
    home = tmp_path / "home"
    small = {"HOTSWAP_BACKFILL__SHARD_SIZE": "10", "HOTSWAP_BACKFILL__WORKERS": "1"}
    assert invoke(home, config, ["bootstrap"]).exit_code == 0

    stopped = threading.Event()
    watcher = threading.Thread(
        target=_stop_when_committed, args=(own_moto, bucket, "g", stopped), daemon=True
    )
    watcher.start()
    failed = invoke(home, config, ["backfill", "--version", "1", "--mode", "full"], small)
    assert stopped.is_set(), failed.output
    (line,) = error_lines(failed.output)
    assert failed.exit_code == 5, failed.output
    assert f"S3 store s3://{bucket}/g at {own_moto['url']} did not answer" in line
    assert "live gallery is unchanged" in line and "rerun to resume" in line
    assert "Traceback" not in failed.output

    own_moto["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=own_moto["port"], verbose=False)
    own_moto["server"].start()
    resumed = invoke(home, config, ["backfill", "--version", "1", "--mode", "full"], small)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["gallery_version"] == "v1-full"

    galleries = GalleryStore(open_store(f"s3://{bucket}/g", endpoint_url=own_moto["url"]))
    rebuilt = galleries.load_arrays("default", "v1-full")
    live = galleries.load_arrays("default", galleries.read_current("default"))
    assert list(rebuilt.ids) == list(live.ids)  # every item once, nothing lost or duplicated
    np.testing.assert_allclose(rebuilt.features, live.features, atol=1e-5)  # same model, same images
