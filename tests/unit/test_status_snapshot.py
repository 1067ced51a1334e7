"""The status snapshot (components/lifecycle/status_snapshot.py): kept while nothing status reads
has changed, read again in full as soon as one thing has, never used while a command holds the
gallery or for inputs that cannot be identified without reading them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.lifecycle.status_snapshot import cached_status, fingerprint


def _home(tmp_path: Path, **overrides) -> HotswapSettings:
    (tmp_path / "mlflow.db").write_bytes(b"db")
    gallery = tmp_path / "store" / "galleries" / "default"
    gallery.mkdir(parents=True)
    (gallery / "CURRENT").write_text('{"version": "v1"}')
    return HotswapSettings(home=tmp_path, **overrides)


def _touch_later(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a later time even on a coarse clock


class Reads:
    """A status reader that counts its calls and can change the home while it reads."""

    def __init__(self, during=None) -> None:
        self.calls, self.during = 0, during

    def __call__(self, settings):
        self.calls += 1
        if self.during is not None:
            self.during()
        return {"champion": str(self.calls)}


def test_a_second_status_is_the_first_answer_until_the_registry_or_current_moves(tmp_path):
    settings = _home(tmp_path)
    read = Reads()
    assert cached_status(settings, read) == {"champion": "1"}
    assert cached_status(settings, read) == {"champion": "1"} and read.calls == 1  # kept
    _touch_later(tmp_path / "mlflow.db", "an alias moved")
    assert cached_status(settings, read) == {"champion": "2"}
    _touch_later(tmp_path / "store" / "galleries" / "default" / "CURRENT", '{"version": "v2"}')
    assert cached_status(settings, read) == {"champion": "3"}
    (tmp_path / "mlflow.db-wal").write_bytes(b"a write not yet checkpointed")
    assert cached_status(settings, read) == {"champion": "4"} and read.calls == 4


def test_other_settings_and_a_changed_manifest_or_image_folder_are_other_fingerprints(tmp_path):
    manifest = tmp_path / "gallery.csv"
    manifest.write_text("item_id,uri\na,a.png\n")
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(b"x")
    settings = _home(tmp_path, data={"source": str(tmp_path / "images")}, gallery={"manifest": str(manifest)})
    first = fingerprint(settings)
    assert first is not None and first == fingerprint(settings)
    assert fingerprint(settings.model_copy(update={"gallery_name": "other"})) != first
    # a training knob is not something status shows: the same fingerprint
    assert fingerprint(settings.model_copy(update={"seed": 7})) == first
    _touch_later(manifest, "item_id,uri\na,a.png\nb,b.png\n")
    second = fingerprint(settings)
    assert second != first
    (folder / "2.png").write_bytes(b"y")
    os.utime(folder, ns=(folder.stat().st_mtime_ns + 10**9,) * 2)
    assert fingerprint(settings) != second


@pytest.mark.parametrize("held", ["LEASE.json", "SWITCH-INTENT.json"])
def test_no_snapshot_while_a_command_holds_the_gallery_or_left_a_switch(tmp_path, held):
    settings = _home(tmp_path)
    (tmp_path / "store" / "galleries" / "default" / held).write_text("{}")
    read = Reads()
    cached_status(settings, read), cached_status(settings, read)
    assert fingerprint(settings) is None and read.calls == 2


@pytest.mark.parametrize(
    "overrides",
    [
        {"tracking_uri": "http://127.0.0.1:5000"},
        {"store_uri": "s3://bucket/galleries"},
        {"gallery": {"manifest": "s3://bucket/gallery.csv"}},
    ],
)
def test_inputs_that_cannot_be_identified_without_reading_them_have_no_fingerprint(tmp_path, overrides):
    assert fingerprint(_home(tmp_path, **overrides)) is None


def test_an_answer_read_while_the_home_changed_is_not_kept(tmp_path):
    settings = _home(tmp_path)
    read = Reads(during=lambda: _touch_later(tmp_path / "mlflow.db", "a refresh wrote"))
    cached_status(settings, read)
    read.during = None
    cached_status(settings, read)
    assert read.calls == 2  # the first answer was not kept: it may mix two states
    cached_status(settings, read)
    assert read.calls == 2
