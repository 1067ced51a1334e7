"""The gallery's lifecycle lock (its lease) and the dataset check, on the real Prefect engine."""

from __future__ import annotations

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.tasks.lock import GalleryBusyError, lifecycle_lock
from hotswap.tasks.training import DatasetChangedError, check_dataset_version
from prefect import flow

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_run_that_cannot_get_the_gallery_fails_with_a_message_naming_the_holder(tmp_path):
    settings = HotswapSettings(home=tmp_path, gallery_name="busy-gallery", ops={"lock_timeout_seconds": 1})
    ran = []

    @flow
    def second_run() -> None:
        with lifecycle_lock(settings, "refresh"):
            ran.append(True)

    @flow
    def first_run_holding_the_slot() -> None:
        with lifecycle_lock(settings, "refresh"):  # takes the gallery's lease; a nested run must wait
            with pytest.raises(GalleryBusyError) as error:
                second_run()
            raise_if_wrong(str(error.value))

    def raise_if_wrong(message: str) -> None:
        assert "gallery 'busy-gallery' is busy" in message
        assert "held its lease for more than 1 s" in message and "prefect refresh" in message

    first_run_holding_the_slot()
    assert ran == []
    # released afterwards: the next run gets it at once
    second_run()
    assert ran == [True]


def test_an_error_inside_the_locked_work_is_not_reported_as_a_busy_gallery(tmp_path):
    settings = HotswapSettings(home=tmp_path, gallery_name="calm-gallery")

    @flow
    def times_out_inside() -> None:
        with lifecycle_lock(settings, "refresh"):
            raise TimeoutError("the store did not answer")

    with pytest.raises(TimeoutError, match="the store did not answer"):
        times_out_inside()


def test_a_refresh_for_a_registered_version_refuses_data_that_changed(tmp_path):
    settings = HotswapSettings(home=tmp_path, data={"source": "synthetic:60:3", "image_size": 12})
    actual = check_dataset_version.fn(settings, None)
    assert check_dataset_version.fn(settings, actual) == actual
    with pytest.raises(DatasetChangedError, match="is now version .* started for version 0123"):
        check_dataset_version.fn(settings, "0123")
