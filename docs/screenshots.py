"""Screenshots of what an operator sees, taken from a real run with headless Chromium.

    python docs/screenshots.py [--out docs/images] [--epochs 3]

Starts a Prefect server and an MLflow UI on 127.0.0.1 (free ports, throw-away homes), runs
`hotswap bootstrap`, `hotswap refresh` and a paused `hotswap promote` against them (real
training on MNIST-5k), then drives Chromium over its DevTools protocol: the refresh run page,
the promotion form (after clicking Resume on the paused run), the decision artifact with its
plot, the MLflow experiment and the challenger's MLflow run. The promotion is then rejected so
every process ends. Needs `chromium` on PATH (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WINDOW = (1600, 1100)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def hotswap(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(BIN / "hotswap"), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"hotswap {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


class Browser:
    """Just enough of the Chrome DevTools protocol: navigate, run a script, take a screenshot."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("chromium is not installed: apt-get install -y chromium")
        self.proc = start(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={workdir / 'chromium'}",
                "about:blank",
            ],  # fmt: skip
            dict(os.environ),
            workdir / "chromium.log",
        )
        wait_http(f"http://127.0.0.1:{self.port}/json/version", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list") as response:
            pages = [p for p in json.load(response) if p["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]
        self._id = 0

    async def _call(self, ws: Any, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(await ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def _text_appears(self, ws: Any, text: str, timeout: float) -> bool:
        probe = f"document.body && document.body.innerText.includes({json.dumps(text)})"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = await self._call(ws, "Runtime.evaluate", expression=probe, returnByValue=True)
            if result.get("result", {}).get("value"):
                return True
            await asyncio.sleep(1)
        return False

    async def _shot(self, url: str, path: Path, wait_for: str, script: str | None, then: str | None) -> None:
        import websockets

        async with websockets.connect(self.ws_url, max_size=64 * 2**20) as ws:
            await self._call(ws, "Page.enable")
            await self._call(
                ws, "Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            await self._call(ws, "Page.navigate", url=url)
            if not await self._text_appears(ws, wait_for, 120):
                print(f"  {path.name}: {wait_for!r} never appeared")
            await asyncio.sleep(3)  # let late panels (charts, tables) render
            if script:
                result = await self._call(ws, "Runtime.evaluate", expression=script, returnByValue=True)
                print(f"  {path.name}: {result.get('result', {}).get('value')}")
                if then and not await self._text_appears(ws, then, 60):
                    print(f"  {path.name}: {then!r} never appeared after the script")
                await asyncio.sleep(3)
            shot = await self._call(ws, "Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"  wrote {path}")

    def shot(
        self, url: str, path: Path, wait_for: str, script: str | None = None, then: str | None = None
    ) -> None:
        """Open ``url``, wait until ``wait_for`` is on the page, optionally run ``script`` (and
        wait for ``then``), and save a screenshot."""
        asyncio.run(self._shot(url, path, wait_for, script, then))

    def close(self) -> None:
        stop(self.proc)


CLICK = """(() => {{
  const el = [...document.querySelectorAll('button, a, [role=tab], li')]
    .filter(e => e.textContent.trim() === {text!r}).pop();
  if (!el) return 'no element reading ' + {text!r};
  el.click(); return 'clicked ' + el.tagName;
}})()"""
CLOSE_ASSISTANT = """(() => {
  try {  // MLflow 3.17 opens its assistant panel on a first visit from localhost; keep it shut
    localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
    localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  } catch (e) {}
  const close = [...document.querySelectorAll('button[aria-label="Close"]')].pop();
  if (!close) return 'no close button';
  close.click(); return 'closed the assistant panel';
})()"""
SCROLL_TO_PLOT = """(() => {
  const img = document.querySelector('img[alt^="backfill curve"]');
  if (!img) return 'no plot on the page';
  img.scrollIntoView({block: 'center'}); return 'scrolled to the plot';
})()"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (8, the default, blesses v2)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hotswap-screenshots-"))
    home = work / "home"
    home.mkdir()
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_ui, mlflow_ui = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HOTSWAP_"))}
    base.update({"PREFECT_HOME": str(work / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env = {
        **base,
        "PREFECT_API_URL": f"{prefect_ui}/api",
        "PREFECT_UI_URL": prefect_ui,
        "HOTSWAP_HOME": str(home),
        "HOTSWAP_OPS__MLFLOW_UI_URL": mlflow_ui,
        "HOTSWAP_TRAINING__EPOCHS": str(args.epochs),
        "HOTSWAP_DPQ__EPOCHS": "3",
        "HOTSWAP_DECISION__TIMING_REPEATS": "1",
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "160",
    }
    procs = [
        start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            {**base, "PREFECT_UI_API_URL": f"{prefect_ui}/api"},  # the browser's API (default: port 4200)
            work / "prefect.log",
        )
    ]
    browser = None
    promote = None
    try:
        wait_http(f"{prefect_ui}/api/health")
        print("bootstrap ...")
        hotswap(env, "bootstrap")
        print("refresh ...")
        hotswap(env, "refresh", "--no-auto-promote")
        procs.append(
            start(
                [
                    str(BIN / "mlflow"),
                    "ui",
                    "--backend-store-uri",
                    f"sqlite:///{home / 'mlflow.db'}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                ],  # fmt: skip
                {**base, "MLFLOW_DISABLE_TELEMETRY": "true"},
                work / "mlflow.log",
            )
        )
        print("promote (pauses) ...")
        promote = subprocess.Popen(
            [str(BIN / "hotswap"), "promote"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        sys.path.insert(0, str(ROOT))
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PREFECT_", "HOTSWAP_"))})
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 600
            paused = None
            while paused is None and time.monotonic() < deadline:
                paused = next((r for r in client.read_flow_runs() if r.state and r.state.is_paused()), None)
                time.sleep(1)
            if paused is None:
                raise RuntimeError("the promote run never paused")
            refresh = next(r for r in client.read_flow_runs() if r.name.startswith("refresh v"))
            decision = next(
                a for a in client.read_artifacts() if a.key and a.key.startswith("decision-report-")
            )
        wait_http(f"{mlflow_ui}/health")
        from hotswap.components.registry.mlflow_registry import ModelRegistry
        from hotswap.components.core.settings import load_settings

        registry = ModelRegistry.from_settings(load_settings())
        run_id = registry.resolve("challenger").run_id

        browser = Browser(work)
        print("screenshots ...")
        run_page = f"{prefect_ui}/runs/flow-run/{refresh.id}"
        browser.shot(run_page, args.out / "prefect-refresh-run.png", wait_for="decision for v2")
        browser.shot(
            run_page, args.out / "prefect-refresh-artifacts.png", wait_for="decision for v2",
            script=CLICK.format(text="Artifacts"), then="decision-report-",
        )  # fmt: skip
        artifact_page = f"{prefect_ui}/artifacts/artifact/{decision.id}"
        browser.shot(artifact_page, args.out / "prefect-decision-artifact.png", wait_for="Backfill decision")
        browser.shot(
            artifact_page, args.out / "prefect-decision-plot.png", wait_for="Backfill decision",
            script=SCROLL_TO_PLOT,
        )  # fmt: skip
        browser.shot(
            f"{prefect_ui}/runs/flow-run/{paused.id}", args.out / "prefect-promotion-form.png",
            wait_for="Resume", script=CLICK.format(text="Resume"), then="Backfill decision",
        )  # fmt: skip
        view = "?workflowType=machine_learning"
        browser.shot(
            f"{mlflow_ui}/#/experiments/{registry.experiment_id}{view}",
            args.out / "mlflow-experiment.png",
            wait_for="challenger-vs-v1",
            script=CLOSE_ASSISTANT,
        )
        browser.shot(
            f"{mlflow_ui}/#/experiments/{registry.experiment_id}/runs/{run_id}{view}",
            args.out / "mlflow-run.png",
            wait_for="challenger-vs-v1",
            script=CLOSE_ASSISTANT,
        )
        from prefect.flow_runs import resume_flow_run

        resume_flow_run(paused.id, run_input={"approve": False, "reason": "screenshots only"})
        promote.wait(timeout=300)
    finally:
        if browser is not None:
            browser.close()
        if promote is not None and promote.poll() is None:
            promote.kill()
        for proc in procs:
            stop(proc)
    print(f"done; state kept in {work}")


if __name__ == "__main__":
    main()
