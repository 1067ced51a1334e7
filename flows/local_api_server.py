"""The per-home Prefect API process (flows/local_api.py starts it; never run by hand).

It serves Prefect's API exactly as Prefect's own temporary server does (``create_app`` with
the ephemeral flags: no UI, the ephemeral set of background services) on 127.0.0.1, and
adds one thing: a watcher thread that stops the server once no hotswap command has used it for
``--idle-seconds``. A command marks its use with a file ``api-clients/<pid>`` under
``PREFECT_HOME``; a file whose process is gone is removed. It also stops when ``api.json`` no
longer names it (replaced, or ``hotswap server stop`` raced with it) or the home is deleted.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

from hotswap.flows.local_api import CLIENTS_DIR, STATE_FILE, pid_alive

POLL_SECONDS = 2.0


def _in_use(clients: Path) -> bool:
    busy = False
    for mark in clients.glob("*") if clients.is_dir() else []:
        if mark.name.isdigit() and pid_alive(int(mark.name)):
            busy = True
        else:
            mark.unlink(missing_ok=True)
    return busy


def _still_ours(folder: Path) -> bool:
    try:
        return f'"pid": {os.getpid()},' in (folder / STATE_FILE).read_text()
    except OSError:
        return False


def watch_idle(server: Any, folder: Path, idle_seconds: float) -> None:
    """Set ``server.should_exit`` once idle for ``idle_seconds`` (or no longer the home's server)."""
    last_used = time.monotonic()
    grace_until = time.monotonic() + 60  # the starting command writes api.json right after spawning us
    while not server.should_exit:
        time.sleep(POLL_SECONDS)
        if _in_use(folder / CLIENTS_DIR):
            last_used = time.monotonic()
        replaced = time.monotonic() > grace_until and not _still_ours(folder)
        if replaced or time.monotonic() - last_used > idle_seconds:
            server.should_exit = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-seconds", type=float, required=True)
    args = parser.parse_args(argv)
    # Prefect's own temporary server sets these (prefect/server/api/server.py, SubprocessASGIServer)
    os.environ.update(
        {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    )
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    folder = Path(os.environ["PREFECT_HOME"])
    threading.Thread(target=watch_idle, args=(server, folder, args.idle_seconds), daemon=True).start()
    server.run()


if __name__ == "__main__":
    main()
