"""Command-line start-up: how fast `hotswap` answers, side by side in one run (not a test).

Measures the wall and CPU time (the child's user + system) of:
``--help``; an input error (``bootstrap`` with a manifest that lacks its ``label`` column);
``status`` on a live home, repeated (answered from its snapshot, components/lifecycle/
status_snapshot.py), after a change made outside hotswap (the snapshot removed first: everything
read) and after a ``refresh`` no-op (a lifecycle command leaves the snapshot of the state it ends in);
``search --item-id`` on it (the example item ``status`` names, and an item whose stored feature
the champion produced, searched without torch); and a ``refresh`` no-op three ways: the first on
a home whose Prefect database does not exist yet (the local API starts and migrates it: what every
command paid when each started its own server), with the home's API stopped (it starts), and
with it running (reused); then the same with ``PREFECT_API_URL`` pointing at a running server.
Each case is repeated; the median is reported with the ratio to ``--help``. For the refresh
cases the bench also reads when the flow run started (its ``start_time`` in the Prefect API, set
when the run enters Running): the command's start-up, before its first step.

The project's modules are byte-compiled first, as an installed package is (a machine that sets
PYTHONDONTWRITEBYTECODE would otherwise compile them again in every run).

    python -m bench.cli --home DEMO_HOME [--repeats 5]     # a home `hotswap demo` left behind
    python -m bench.cli                                      # runs `hotswap demo` first (minutes)

Writes bench/results/cli.json and cli.md.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

HOTSWAP = str(Path(sys.executable).with_name("hotswap"))
RESULTS = Path(__file__).parent / "results"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, float]:
    """(wall s, CPU s of the child and its children, exit code, launch time) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched, start = time.time(), time.perf_counter()
    result = subprocess.run([HOTSWAP, *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.returncode, launched


def home_api_url(home: Path) -> str:
    """The URL of the home's own local Prefect API (flows/local_api.py keeps it in the home)."""
    from hotswap.flows.local_api import local_api_status

    recorded = local_api_status(home / "prefect")
    assert recorded is not None, f"{home} has no local Prefect API"
    return str(recorded["url"])


def run_started_after(home: Path, env: dict[str, str], launched: float) -> float:
    """Seconds from a command's launch until its flow run entered Running (the newest run's
    ``start_time`` in the Prefect API it used: ``PREFECT_API_URL`` or the home's own)."""
    import httpx

    api = env.get("PREFECT_API_URL") or home_api_url(home)
    newest = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_DESC", "limit": 1}).json()[0]
    started = datetime.fromisoformat(newest["start_time"].replace("Z", "+00:00")).timestamp()
    assert started >= launched, f"the newest flow run at {api} started before this command"
    return started - launched


def measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    repeats: int,
    expect: int = 0,
    before: Callable[[], None] | None = None,
    run_of: Path | None = None,
) -> dict:
    """The median of ``repeats`` runs; ``before`` runs ahead of each one, untimed. With ``run_of``
    (the home a lifecycle command ran on) also when its flow run started."""
    runs, starts = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        runs.append(timed(argv, env))
        if run_of is not None:
            starts.append(run_started_after(run_of, env, runs[-1][3]))
    codes = {code for _, _, code, _ in runs}
    assert codes == {expect}, f"{name}: exit codes {codes}, expected {expect}"
    return {
        "case": name,
        "wall_s": statistics.median(w for w, _, _, _ in runs),
        "cpu_s": statistics.median(c for _, c, _, _ in runs),
        "run_starts_s": statistics.median(starts) if starts else None,
        "runs": len(runs),
    }


def cases(home: Path, env: dict[str, str], repeats: int, scratch: Path) -> list[dict]:
    bad = scratch / "no-label.csv"
    bad.write_text("item_id,uri,split\na,a.png,train\n")
    status = json.loads(
        subprocess.run(
            [HOTSWAP, "status", "--json", "--home", str(home)], env=env, capture_output=True, text=True
        ).stdout
    )
    h = ["--home", str(home)]
    rows = [
        measure("--help", ["--help"], env, repeats),
        measure(
            INPUT_ERROR,
            ["bootstrap", "--home", str(scratch / "fresh")],
            {**env, "HOTSWAP_DATA__SOURCE": str(bad)},
            repeats,
            expect=2,
        ),
        measure(STATUS_REPEATED, ["status", *h], env, repeats),
        measure(
            OUTSIDE,
            ["status", *h],
            env,
            repeats,
            before=lambda: (home / "cache" / "status.json").unlink(missing_ok=True),
        ),
        measure(
            STATUS_AFTER_COMMAND,
            ["status", *h],
            env,
            max(1, repeats // 2),
            before=lambda: subprocess.run([HOTSWAP, "refresh", *h], env=env, capture_output=True, check=True),
        ),
        measure(SEARCH, ["search", "--item-id", status["example_item"], *h], env, repeats),
    ]
    own = champion_item(home, status)
    if own is not None and own != status["example_item"]:
        name = "search --item-id (champion's own feature)"
        rows.append(measure(name, ["search", "--item-id", own, *h], env, repeats))
    few = max(1, repeats // 2)
    if "PREFECT_API_URL" not in env:  # the command starts the home's own API (flows/local_api.py)
        fresh = scratch / "fresh-prefect-home"

        def fresh_copy() -> None:  # the demo home without a Prefect database: the API migrates one
            stop_local_api(fresh, env)
            shutil.rmtree(fresh, ignore_errors=True)
            shutil.copytree(home, fresh, ignore=shutil.ignore_patterns("prefect", "logs", "cache"))

        first = ["refresh", "--home", str(fresh)]
        rows.append(measure(FIRST, first, env, few, before=fresh_copy, run_of=fresh))
        stop_local_api(fresh, env)
        name = "refresh no-op, the home's API stopped (it starts)"

        def stopped() -> None:
            stop_local_api(home, env)

        rows.append(measure(name, ["refresh", *h], env, few, before=stopped, run_of=home))
        timed(["refresh", *h], env)  # leaves the API running for the next case
    rows.append(measure(REUSED, ["refresh", *h], env, few, run_of=home))
    return rows


INPUT_ERROR = "input error (bootstrap, manifest without label)"
STATUS_REPEATED = "status (live home, repeated: its snapshot)"
STATUS_AFTER_COMMAND = "status (live home, after a refresh no-op: the command left its snapshot)"
SEARCH = "search --item-id"
FIRST = "refresh no-op, first on the home (API starts, migrates a new database)"
REUSED = "refresh no-op, API running (reused)"
OUTSIDE = "status (live home, after a change outside hotswap: read in full)"


def stop_local_api(home: Path, env: dict[str, str]) -> None:
    subprocess.run([HOTSWAP, "server", "stop", "--home", str(home)], env=env, capture_output=True)


def champion_item(home: Path, status: dict) -> str | None:
    """A live item whose stored feature the champion embedded (its query needs no model)."""
    from hotswap.components.core.settings import load_settings
    from hotswap.components.gallery.provenance import feature_models
    from hotswap.components.gallery.store_factory import open_store
    from hotswap.components.gallery.versions import GalleryStore

    settings = load_settings(home=str(home))
    galleries = GalleryStore(open_store(settings.resolved_store_uri, endpoint_url=settings.s3_endpoint_url))
    live = status["live_gallery_version"]
    models = feature_models(galleries, settings.gallery_name, live)
    rows = (models == str(status["champion"])).nonzero()[0]
    return str(galleries.load_ids(settings.gallery_name, live)[rows[0]]) if len(rows) else None


def table(rows: list[dict], title: str) -> list[str]:
    help_wall = rows[0]["wall_s"]
    lines = [
        f"### {title}",
        "",
        "| case | wall s | CPU s | wall / --help | flow run starts after s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        start = "—" if row.get("run_starts_s") is None else f"{row['run_starts_s']:.2f}"
        lines.append(
            f"| {row['case']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
            f"{row['wall_s'] / help_wall:.2f} | {start} |"
        )
    return [*lines, ""]


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, read off the local-API table."""
    by = {row["case"]: row for row in rows}
    help_wall = rows[0]["wall_s"]

    def ratio(case: str) -> str:
        return f"{by[case]['wall_s'] / help_wall:.2f}x --help"

    return [
        "### Against the goals",
        "",
        f"- input error: {ratio(INPUT_ERROR)} (goal <= 1.5x)",
        f"- status, repeated: {ratio(STATUS_REPEATED)}; after a lifecycle command: "
        f"{ratio(STATUS_AFTER_COMMAND)}; after a change outside hotswap: {ratio(OUTSIDE)} (goal <= 1.5x)",
        f"- search --item-id: {by[SEARCH]['wall_s']:.2f} s (goal < 3 s)",
        "- a lifecycle command on a home whose API runs vs the first on the home: its flow run "
        f"starts {by[FIRST]['run_starts_s'] / by[REUSED]['run_starts_s']:.1f}x sooner (goal >= 5x); "
        f"the whole no-op is {by[FIRST]['wall_s'] / by[REUSED]['wall_s']:.1f}x faster",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a live home (`hotswap demo` leaves one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    root = Path(__file__).resolve().parents[1]
    for package in ("components", "tasks", "flows"):  # as installed: byte-compiled once
        compileall.compile_dir(root / package, quiet=1)
    if args.home is None:
        args.home = Path(tempfile.mkdtemp(prefix="bench-cli-")) / "demo"
        subprocess.run([HOTSWAP, "demo", "--home", str(args.home)], env=env, check=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        local = cases(args.home, env, args.repeats, Path(tmp))
        api = home_api_url(args.home)
        # the same with PREFECT_API_URL naming a running server (the home's own, now a plain server)
        remote = cases(args.home, {**env, "PREFECT_API_URL": api}, args.repeats, Path(tmp))
    result = {
        "machine": f"{os.cpu_count()} CPU cores",
        "load_average_before": load_before,
        "load_average": os.getloadavg(),
        "local_api": local,
        "prefect_api_url": remote,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(result, indent=2))
    md = [
        "## Command-line start-up (bench/cli.py)",
        "",
        f"{result['machine']}, load average (1 min) {load_before[0]:.1f} at the start, "
        f"{result['load_average'][0]:.1f} at the end; "
        "medians of repeated runs.",
        "",
        *table(local, "without PREFECT_API_URL (the home's local Prefect API)"),
        *table(remote, "with PREFECT_API_URL naming a running server"),
        *goals(local),
    ]
    (RESULTS / "cli.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
