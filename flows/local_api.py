"""One local Prefect API per hotswap home, started on first use and reused by later commands.

Why: without ``PREFECT_API_URL`` Prefect 3.8 starts a temporary API server for every process
and stops it at exit. Each start re-imports the server, checks the migrations of the home's
SQLite database and waits for health: seconds on an idle machine, minutes on a busy one
(docs/benchmarks.md, "Command-line start-up"). The runs still land in the home's database, so
a server that outlives one command loses nothing and saves every later command that start.

How (no Prefect import in this module; the CLI calls it before Prefect is imported):

- ``<home>/prefect/api.json`` names the server: pid, port, URL. A command takes
  ``api.lock`` (an flock), reads the file and checks the pid and ``/api/health``; a dead or
  unanswering server is stopped and replaced, a healthy one is reused.
- A new server is ``python -m hotswap.flows.local_api_server`` in its own session (it outlives
  the command), on a free port, with Prefect's own ephemeral-server settings (no UI, the
  ephemeral set of background services), logging to ``api.log``.
- Each command registers itself in ``api-clients/<pid>`` while it runs. The server stops by
  itself once no registered command is alive and ``idle_seconds`` have passed (its own
  watcher thread); ``hotswap server stop`` stops it at once.
- Waiting for a new server is bounded by ``prefect_start_timeout_seconds``; running out is a
  service failure (exit 5) that names the server and what to do, never "this is a bug".
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from hotswap.components.core.errors import ServiceError
from hotswap.components.core.links import LOCAL_PREFECT_API_ENV

STATE_FILE = "api.json"
LOCK_FILE = "api.lock"
LOG_FILE = "api.log"
CLIENTS_DIR = "api-clients"
SERVER_MODULE = "hotswap.flows.local_api_server"
#: Marks a process (and its children) as running on the per-home API, which has no UI.
LOCAL_API_ENV = LOCAL_PREFECT_API_ENV


@dataclass(frozen=True)
class LocalApi:
    """A per-home server as ``api.json`` records it."""

    pid: int
    port: int
    url: str
    started: float

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"


def _read_state(folder: Path) -> LocalApi | None:
    try:
        return LocalApi(**json.loads((folder / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(folder: Path, api: LocalApi) -> None:
    tmp = folder / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(api)))
    tmp.replace(folder / STATE_FILE)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` runs the per-home server (a recycled pid must never be signalled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid_alive(pid)  # no /proc (not Linux): trust the recorded pid
    return SERVER_MODULE in cmdline


def healthy(api: LocalApi, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(api.health_url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _terminate(pid: int, wait_seconds: float = 10.0) -> None:
    """SIGTERM our server, SIGKILL it if it has not gone after ``wait_seconds``."""
    if not pid_alive(pid) or not _is_our_server(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def register_client(folder: Path) -> None:
    """Mark this process as using the server until it exits (the idle watcher reads these)."""
    clients = folder / CLIENTS_DIR
    clients.mkdir(parents=True, exist_ok=True)
    mark = clients / str(os.getpid())
    mark.touch()
    atexit.register(lambda: mark.unlink(missing_ok=True))


def _start(folder: Path, idle_seconds: float) -> tuple[LocalApi, subprocess.Popen[bytes]]:
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(folder)}
    for name in ("PREFECT_API_URL", LOCAL_API_ENV):
        env.pop(name, None)
    with (folder / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "--port", str(port), "--idle-seconds", str(idle_seconds)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; stopped by its idle watcher
            close_fds=True,
        )
    return LocalApi(process.pid, port, f"http://127.0.0.1:{port}/api", time.time()), process


def ensure_local_api(folder: Path, start_timeout: float, idle_seconds: float) -> tuple[LocalApi, bool]:
    """The home's server, reused when healthy, else (re)started; returns (server, started now).

    Raises :class:`ServiceError` when a new server is not healthy within ``start_timeout``.
    """
    with _locked(folder):
        register_client(folder)  # before the check: the watcher must not stop a server in use
        current = _read_state(folder)
        if current is not None:
            if pid_alive(current.pid) and _is_our_server(current.pid) and healthy(current, timeout=10):
                return current, False
            _terminate(current.pid)
            (folder / STATE_FILE).unlink(missing_ok=True)
        api, process = _start(folder, idle_seconds)
        _write_state(folder, api)
        deadline = time.monotonic() + start_timeout
        while not healthy(api, timeout=2):
            if process.poll() is not None:
                (folder / STATE_FILE).unlink(missing_ok=True)
                raise ServiceError(
                    f"the local Prefect API for {folder} exited while starting (code {process.returncode}; "
                    f"its log: {folder / LOG_FILE}): fix what the log says, or set PREFECT_API_URL to a "
                    "running Prefect server, then rerun"
                )
            if time.monotonic() > deadline:
                _terminate(process.pid, wait_seconds=3)
                (folder / STATE_FILE).unlink(missing_ok=True)
                raise ServiceError(
                    f"the local Prefect API did not start within {start_timeout:g} s; the machine may be "
                    "busy: retry, or raise prefect_start_timeout_seconds "
                    "(HOTSWAP_PREFECT_START_TIMEOUT_SECONDS)"
                )
            time.sleep(0.25)
        return api, True


def local_api_status(folder: Path) -> dict[str, object] | None:
    """What ``hotswap server status`` prints: the recorded server and whether it answers."""
    api = _read_state(folder)
    if api is None:
        return None
    alive = pid_alive(api.pid) and _is_our_server(api.pid)
    clients = folder / CLIENTS_DIR
    users = (
        [p.name for p in clients.iterdir() if p.name.isdigit() and pid_alive(int(p.name))]
        if clients.is_dir()
        else []
    )
    return {
        **asdict(api),
        "running": alive,
        "healthy": alive and healthy(api, timeout=5),
        "commands_using_it": sorted(users),
    }


def stop_local_api(folder: Path) -> LocalApi | None:
    """Stop the home's server now (``hotswap server stop``); returns what was stopped, if any."""
    with _locked(folder):
        api = _read_state(folder)
        if api is None:
            return None
        _terminate(api.pid)
        (folder / STATE_FILE).unlink(missing_ok=True)
        return api
