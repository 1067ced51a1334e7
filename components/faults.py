"""Test hook: kill this process at a named step, to prove a crash there is survived.

Setting ``HOTSWAP_TEST_KILL_AT`` to a step name (or several, comma-separated) makes the process
send itself SIGKILL when it reaches that step: no ``finally``, no rollback hook, no atexit runs,
exactly like a power cut or the OOM killer. The tests in tests/e2e/test_crash_switch.py use it
at every step boundary of the switch. It does nothing unless the variable is set; never set it
in production.

Steps: ``switch:intent-written``, ``switch:previous-moved``, ``switch:champion-moved``,
``switch:aliases-moved``, ``switch:gallery-published``, ``switch:checked``, ``switch:done``;
``backfill:shard-<n>-written`` after shard ``n`` of a backfill is committed.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "HOTSWAP_TEST_KILL_AT"


def fault_point(step: str) -> None:
    """SIGKILL this process if ``HOTSWAP_TEST_KILL_AT`` names ``step``; otherwise nothing."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and step in {name.strip() for name in wanted.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
