"""Run the query service under uvicorn: in the foreground (``hotswap serve``) or in a thread."""

from __future__ import annotations

import threading
import time

import uvicorn
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.serving.app import create_app
from hotswap.components.serving.service import LiveService


def _config(service: LiveService, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_level=log_level,
        access_log=service.config.access_log,
        lifespan="on",
    )


def serve_forever(settings: HotswapSettings, host: str | None = None, port: int | None = None) -> None:
    """Block serving HTTP until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    service = LiveService(settings)
    port = settings.serve.port if port is None else port
    config = _config(service, host or settings.serve.host, port, log_level="info")  # says where it listens
    uvicorn.Server(config).run()


class ServerThread:
    """uvicorn on ``host``:``port`` (0 = a free port) in a background thread; ``url`` once started."""

    def __init__(self, service: LiveService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        self.server = uvicorn.Server(_config(service, host, port))
        self.thread = threading.Thread(target=self.server.run, name="hotswap-http", daemon=True)
        self.url = ""

    def start(self, timeout_s: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the query service did not start (see the log above)")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
