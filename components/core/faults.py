"""Test hook: kill this process at a named step, to prove a crash there is survived.

Setting ``HOTSWAP_TEST_KILL_AT`` to a step name (or several, comma-separated) makes the process
send itself SIGKILL when it reaches that step: no ``finally``, no rollback hook, no atexit runs,
exactly like a power cut or the OOM killer. The tests in tests/e2e/test_crash_switch.py use it
at every step boundary of the switch. It does nothing unless the variable is set; never set it
in production.

Steps: ``switch:intent-written``, ``switch:previous-moved``, ``switch:champion-moved``,
``switch:aliases-moved``, ``switch:gallery-published``, ``switch:checked``, ``switch:done``;
``backfill:shard-<n>-written`` after shard ``n`` of a backfill is committed;
``training:epoch-<n>`` after epoch ``n`` of a training; ``refresh:trained``,
``refresh:validated``, ``refresh:quantized``, ``refresh:decided``, ``refresh:staged`` after each
stage of a refresh is recorded (tasks/refresh_progress.py).

``HOTSWAP_TEST_PAUSE_AT`` (same step names) with ``HOTSWAP_TEST_PAUSE_DIR`` instead *pauses* the
process there: it writes ``<dir>/<step>.reached`` and waits (bounded) for ``<dir>/<step>.go``.
A test uses the pause to stop a real server at an exact point of a command, then lets the command
run into the outage.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAULT_ENV = "HOTSWAP_TEST_KILL_AT"
PAUSE_ENV = "HOTSWAP_TEST_PAUSE_AT"
PAUSE_DIR_ENV = "HOTSWAP_TEST_PAUSE_DIR"
PAUSE_LIMIT_SECONDS = 600.0


def _named(variable: str, step: str) -> bool:
    wanted = os.environ.get(variable)
    return bool(wanted) and step in {name.strip() for name in wanted.split(",")}


def fault_point(step: str) -> None:
    """SIGKILL this process if ``HOTSWAP_TEST_KILL_AT`` names ``step``, pause it if
    ``HOTSWAP_TEST_PAUSE_AT`` does; otherwise nothing."""
    if _named(FAULT_ENV, step):
        os.kill(os.getpid(), signal.SIGKILL)
    if _named(PAUSE_ENV, step) and os.environ.get(PAUSE_DIR_ENV):
        folder = Path(os.environ[PAUSE_DIR_ENV])
        (folder / f"{step}.reached").touch()
        go, deadline = folder / f"{step}.go", time.monotonic() + PAUSE_LIMIT_SECONDS
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
