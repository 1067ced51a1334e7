"""SIGKILL at every step boundary of the switch: after the next command the state is one whole pair.

``hotswap promote --approve`` runs as a real process with ``HOTSWAP_TEST_KILL_AT`` set
(components/core/faults.py): it kills itself with SIGKILL at that step, so no rollback hook, finally
block or atexit handler runs. The next command (``status``) must find the switch's intent and
roll it back (not yet health-checked) or forward (checked), and say which; champion and CURRENT
then agree, and a plain ``promote --approve`` rerun finishes the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.bad_inputs import copy_home
from tests.e2e.homes import invoke

HOTSWAP = Path(sys.executable).with_name("hotswap")
OLD_PAIR, NEW_PAIR = ("1", "v1-bootstrap"), ("2", "v2-full")

#: step -> what the next command must do with the intent it finds
SWITCH_STEPS = {
    "switch:intent-written": "rolled back",
    "switch:previous-moved": "rolled back",
    "switch:champion-moved": "rolled back",
    "switch:aliases-moved": "rolled back",
    "switch:gallery-published": "rolled back",
    "switch:checked": "rolled forward",
    "switch:done": None,  # the switch had finished: nothing to repair
}


def _api_env(config: Path, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "HOTSWAP_CONFIG": str(config), "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def _status(home: Path, config: Path):
    result = invoke(home, config, ["status", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("step", list(SWITCH_STEPS))
def test_sigkill_inside_the_switch_leaves_one_whole_pair(step: str, cli_homes, tmp_path: Path) -> None:
    home, config = copy_home(cli_homes["live"], tmp_path / "home"), cli_homes["config"]
    killed = subprocess.run(
        [str(HOTSWAP), "promote", "--approve", "--home", str(home)],
        env=_api_env(config, HOTSWAP_TEST_KILL_AT=step),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    status, notes = _status(home, config)
    pair = (status["champion"], status["live_gallery_version"])
    expected = SWITCH_STEPS[step]
    if expected is None:
        assert pair == NEW_PAIR and "interrupted switch" not in notes
    else:
        assert f"was {expected}" in notes, notes
        assert pair == (OLD_PAIR if expected == "rolled back" else NEW_PAIR)
    store = home / "store" / "galleries" / "default"
    assert not (store / "SWITCH-INTENT.json").exists()
    assert (store / "versions" / "v2-full" / "PUBLISHED").exists() == (pair == NEW_PAIR)
    assert _status(home, config)[0]["champion"] == pair[0]  # stable: a second look changes nothing

    if pair == OLD_PAIR:  # a plain rerun of the killed command now completes the switch
        rerun = invoke(home, config, ["promote", "--approve"])
        assert rerun.exit_code == 0, rerun.output
        after, _ = _status(home, config)
        assert (after["champion"], after["live_gallery_version"]) == NEW_PAIR
        assert after["previous"] == "1" and after["challenger"] is None
    else:  # already live: the rerun says so in one line instead of failing obscurely
        rerun = invoke(home, config, ["promote", "--approve"])
        assert rerun.exit_code == 3 and "the champion is v2" in rerun.output, rerun.output
