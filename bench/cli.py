"""Command-line start-up: how fast `hotswap` answers, side by side in one run (not a test).

Measures the wall and CPU time (the child's user + system) of:
``--help``; an input error (``bootstrap`` with a manifest that lacks its ``label`` column);
``status`` on a live home; ``search --item-id`` on it (the example item ``status`` names, and
an item whose stored feature the champion produced, searched without torch); and the second of
two consecutive ``refresh`` no-ops; first with no ``PREFECT_API_URL`` (the home's local Prefect
API, started by the first refresh and reused by the second), then with ``PREFECT_API_URL``
pointing at a running server. Each case is repeated; the median is reported with the ratio to ``--help``.

    python -m bench.cli --home DEMO_HOME [--repeats 5]     # a home `hotswap demo` left behind
    python -m bench.cli                                      # runs `hotswap demo` first (minutes)

Writes bench/results/cli.json and cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOTSWAP = str(Path(sys.executable).with_name("hotswap"))
RESULTS = Path(__file__).parent / "results"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, CPU s of the child and its children, exit code) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run([HOTSWAP, *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.returncode


def measure(name: str, argv: list[str], env: dict[str, str], repeats: int, expect: int = 0) -> dict:
    runs = [timed(argv, env) for _ in range(repeats)]
    codes = {code for _, _, code in runs}
    assert codes == {expect}, f"{name}: exit codes {codes}, expected {expect}"
    return {
        "case": name,
        "wall_s": statistics.median(w for w, _, _ in runs),
        "cpu_s": statistics.median(c for _, c, _ in runs),
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
            "input error (bootstrap, manifest without label)",
            ["bootstrap", "--home", str(scratch / "fresh")],
            {**env, "HOTSWAP_DATA__SOURCE": str(bad)},
            repeats,
            expect=2,
        ),
        measure("status (live home)", ["status", *h], env, repeats),
        measure("search --item-id", ["search", "--item-id", status["example_item"], *h], env, repeats),
    ]
    own = champion_item(home, status)
    if own is not None and own != status["example_item"]:
        name = "search --item-id (champion's own feature)"
        rows.append(measure(name, ["search", "--item-id", own, *h], env, repeats))
    first = timed(["refresh", *h], env)  # a no-op: the demo's own settings, v2 is champion
    assert first[2] == 0, "refresh no-op failed"
    rows.append({"case": "refresh no-op, first", "wall_s": first[0], "cpu_s": first[1], "runs": 1})
    rows.append(measure("refresh no-op, second", ["refresh", *h], env, max(1, repeats // 2)))
    return rows


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
    lines = [f"### {title}", "", "| case | wall s | CPU s | wall / --help |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | {row['wall_s'] / help_wall:.2f} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="a live home (`hotswap demo` leaves one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    if args.home is None:
        args.home = Path(tempfile.mkdtemp(prefix="bench-cli-")) / "demo"
        subprocess.run([HOTSWAP, "demo", "--home", str(args.home)], env=env, check=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        local = cases(args.home, env, args.repeats, Path(tmp))
        api = json.loads((args.home / "prefect" / "api.json").read_text())["url"]
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
    ]
    (RESULTS / "cli.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
