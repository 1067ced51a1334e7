"""Tie Prefect's temporary API server to the CLI process, so a killed CLI leaves no orphan.

Without ``PREFECT_API_URL`` Prefect 3.8 starts a temporary server: ``SubprocessASGIServer``
runs ``python -m uvicorn ...`` as a child process and stops it from an ``atexit`` hook. A
SIGKILL runs no atexit hook, so the uvicorn child lived on, holding its port and the home's
Prefect database. Linux's ``PR_SET_PDEATHSIG`` is no cure here: it fires when the *thread* that
started the child ends, and Prefect may start the server from a short-lived thread.

Instead, right after Prefect starts the server we start a tiny sentinel process beside it. The
sentinel polls once every half second: when its parent (the CLI) is gone it terminates the server
(SIGTERM, then SIGKILL after 3 s) and exits; when the server is gone (stopped normally) it just
exits. Prefect's own start/stop logic is wrapped, not replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

_SENTINEL = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
while alive(server):
    if os.getppid() != parent:
        os.kill(server, signal.SIGTERM)
        for _ in range(30):
            time.sleep(0.1)
            if not alive(server):
                sys.exit(0)
        os.kill(server, signal.SIGKILL)
        sys.exit(0)
    time.sleep(0.5)
"""

_MARK = "_hotswap_tied_to_parent"


def start_sentinel(server_pid: int) -> subprocess.Popen[bytes]:
    """A watcher that stops ``server_pid`` when this process dies."""
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _SENTINEL, str(os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def tie_ephemeral_server_to_this_process() -> None:
    """Wrap Prefect's server start so each temporary server gets a sentinel (idempotent)."""
    from prefect.server.api import server

    original = server.SubprocessASGIServer._run_uvicorn_command
    if getattr(original, _MARK, False):
        return

    def run_uvicorn_tied(self: Any) -> subprocess.Popen[Any]:
        process = original(self)
        start_sentinel(process.pid)
        return process

    setattr(run_uvicorn_tied, _MARK, True)
    server.SubprocessASGIServer._run_uvicorn_command = run_uvicorn_tied  # type: ignore[method-assign]
