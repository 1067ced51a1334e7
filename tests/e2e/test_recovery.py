"""What the next command repairs: an undone switch step, and MLflow runs a killed process left RUNNING."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from hotswap.components.core.settings import load_settings
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.recovery import recover_live_state
from hotswap.components.gallery.switch_intent import begin_switch, read_intent, roll_back
from hotswap.components.gallery.versions import GalleryStore
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.components.registry.records import TAG_HOST, TAG_PID

from tests.e2e.bad_inputs import copy_home


def _open(home: Path) -> tuple[ModelRegistry, GalleryStore]:
    return ModelRegistry(f"sqlite:///{home / 'mlflow.db'}", "matrix"), GalleryStore(
        LocalObjectStore(home / "store")
    )


def test_roll_back_unseals_the_target_and_restores_the_pair(cli_homes, tmp_path: Path) -> None:
    """A switch step failed (say, the health check) after CURRENT moved and sealed v2's gallery."""
    home = copy_home(cli_homes["live"], tmp_path / "home")
    registry, galleries = _open(home)
    before = registry.aliases()
    intent = begin_switch(registry, galleries, "default", "2", "v2-full")
    registry.promote("2")
    galleries.publish("default", "v2-full")
    assert galleries.is_sealed("default", "v2-full")

    message = roll_back(registry, galleries, intent)

    assert "rolled back" in message and "champion v1" in message
    assert registry.aliases() == before  # challenger restored, previous as it was
    assert galleries.read_current("default") == "v1-bootstrap"
    assert not galleries.is_sealed("default", "v2-full")  # staged again, not "published"
    assert galleries.is_sealed("default", "v1-bootstrap")
    assert read_intent(galleries, "default") is None


def test_runs_left_running_by_a_dead_process_are_marked_failed(cli_homes, tmp_path: Path) -> None:
    home = copy_home(cli_homes["live"], tmp_path / "home")
    registry, _ = _open(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    client, experiment = registry.client, registry.experiment_id
    orphan = client.create_run(experiment, tags={TAG_PID: str(dead.pid), TAG_HOST: host}).info.run_id
    alive = client.create_run(experiment, tags={TAG_PID: "1", TAG_HOST: host}).info.run_id
    remote = client.create_run(
        experiment, tags={TAG_PID: str(dead.pid), TAG_HOST: "another-host"}
    ).info.run_id

    settings = load_settings(home=str(home), model_name="matrix")
    messages = recover_live_state(settings)

    assert any("marked 1 MLflow run(s) FAILED" in m and orphan in m for m in messages), messages
    assert client.get_run(orphan).info.status == "FAILED"
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(remote).info.status == "RUNNING"
    assert recover_live_state(settings) == []  # nothing left to repair
