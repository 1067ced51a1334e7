"""Run a command while every core is kept busy: the CI-style check of "a slow start is not a bug".

A user's laptop or a shared CI runner is often busy; hotswap's waits (the local Prefect API's
start, MLflow, S3) must hold there and, when one does run out, name the service (exit 5) rather
than fail as a bug. This starts one busy-loop process per core (a pure-Python ``stress``), runs
the command, stops the loops and reports the wall time, the load average and the exit code; it
exits with the command's code.

    python -m bench.loaded                      # the e2e demo test (what `make test-loaded` runs)
    python -m bench.loaded -- pytest -x tests/e2e/test_cli_startup.py
    python -m bench.loaded --hogs 4 -- hotswap demo --home /tmp/demo

Appends one line per run to bench/results/loaded.md (what ran, under what load, how it ended).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests/e2e/test_demo.py"]


def _spin(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    """Busy-loop until told to stop: one core's worth of load, like `stress --cpu 1`."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def run_loaded(command: list[str], hogs: int) -> tuple[int, float, tuple[float, float, float]]:
    """(exit code, wall seconds, load average at the end) of ``command`` under ``hogs`` busy loops."""
    stop = multiprocessing.Event()
    loops = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(hogs)]
    for loop in loops:
        loop.start()
    try:
        start = time.perf_counter()
        code = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
        wall = time.perf_counter() - start
        load = os.getloadavg()
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=10)
            if loop.is_alive():
                loop.terminate()
    return code, wall, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = os.cpu_count() or 2
    parser.add_argument("--hogs", type=int, default=cores, help="busy loops (default: one per core)")
    parser.add_argument("command", nargs="*", help="the command (default: the e2e demo test)")
    args = parser.parse_args()
    command = args.command or DEFAULT
    before = os.getloadavg()[0]
    code, wall, load = run_loaded(command, args.hogs)
    shown = " ".join([Path(command[0]).name, *command[1:]])
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M} UTC | `{shown}` "
        f"| {args.hogs} busy loops on {os.cpu_count()} cores | {before:.1f} → {load[0]:.1f} "
        f"| {wall:.0f} s | exit {code} |"
    )
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / "loaded.md"
    if not log.exists():
        log.write_text(
            "## Runs under load (bench/loaded.py)\n\n"
            "| when | command | load added | load average (1 min) before → at the end | wall | result |\n"
            "|---|---|---|---|---:|---|\n"
        )
    with log.open("a") as handle:
        handle.write(line + "\n")
    print(line)
    sys.exit(code)


if __name__ == "__main__":
    main()
