"""Ablation of the long-chain knobs on the MNIST-5k chain (default policy), one chain per setting.

Each knob is switched on alone from the defaults (docs/compatible-training.md, "Long chains"):
RACT's new-to-new negatives, the fixed d-simplex head, target weights by age, and the decision
judging only the trained classes (``decision.validation_classes = "trained"``, the behaviour
before it judged every labelled class). A knob is *chosen on validation data*: the column that
decides is what the last step's chosen option reached on the val split as served ("val, last
step"); the live mAP on the gallery (the test split) and the images read are reported beside it,
never used to choose.

    python -m bench.chain_ablation                  # runs every setting (~5 min each on 2 cores)
    python -m bench.chain_ablation --from base=bench/results/chain.json ract=RUNS/ract.json ...
                                                    # assembles runs made with bench.chain --set
    (the committed table: base = bench/results/chain.json, the others bench/results/chain-ablation/*.json)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SETTINGS: dict[str, list[str]] = {
    "base": [],
    "ract": ["compat.ract_weight=1.0"],
    "simplex": ["compat.simplex_head=true"],
    "age": ["compat.target_age_decay=0.5"],
    "trained-val": ["decision.validation_classes=trained"],
}
LABELS = {
    "base": "defaults",
    "ract": "RACT negatives (weight 1, τ 0.01)",
    "simplex": "fixed d-simplex head",
    "age": "target weights by age (γ 0.5)",
    "trained-val": "decision judged on trained classes only",
}


def row(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One setting's figures from its chain results (the default policy's run)."""
    run = next(r for r in data["runs"] if r["policy"] == "default")
    steps = run["steps"]
    audit = run.get("audit", {})
    return {
        "setting": name,
        "val_last_step": steps[-1].get("chosen_val"),
        "final_live_map": steps[-1]["live"]["map"],
        "images_read": sum(s["re_extracted"] for s in steps[1:]),
        "decisions": [s["decision"] for s in steps[1:]],
        "ac_map": audit.get("ac", {}).get("map"),
        "am_map": audit.get("am", {}).get("map"),
        "error": run.get("error"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Ablation of the long-chain knobs (MNIST-5k chain, default policy)",
        "",
        "Chosen on **val, last step** (the last step's chosen option as served on the val split); "
        "the gallery (test split) columns are reported, not used to choose. Images read: gallery "
        "images embedded after the first extraction, summed over steps 2-4.",
        "",
        "| setting | val, last step | final live mAP | images read | decisions (steps 2-4) "
        "| AC mAP | AM mAP |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        val = "n/a" if r["val_last_step"] is None else f"{r['val_last_step']:.3f}"
        am = "n/a" if r["am_map"] is None else f"{r['am_map']:.3f}"
        ac = "n/a" if r["ac_map"] is None else f"{r['ac_map']:.2f}"
        lines.append(
            f"| {LABELS.get(r['setting'], r['setting'])} | {val} | {r['final_live_map']:.3f} | "
            f"{r['images_read']} | {', '.join(r['decisions'])} | {ac} | {am} |"
            + (f" failed: {r['error']}" if r["error"] else "")
        )
    return "\n".join(lines) + "\n"


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "chain-ablation.json").write_text(json.dumps({"rows": rows}, indent=2))
    (out / "chain-ablation.md").write_text(markdown(rows))
    print(markdown(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="sources", nargs="+", metavar="NAME=FILE", help="assemble runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    files: dict[str, Path] = {}
    if args.sources:
        for pair in args.sources:
            name, _, path = pair.partition("=")
            files[name] = Path(path)
    else:
        work = Path(tempfile.mkdtemp(prefix="hotswap-ablation-"))
        for name, pairs in SETTINGS.items():
            command = [sys.executable, "-m", "bench.chain", "--chains", "mnist", "--policies", "default"]
            command += ["--out", str(work), "--name", name] + [a for p in pairs for a in ("--set", p)]
            print(f"{name}: {' '.join(pairs) or 'defaults'}", flush=True)
            subprocess.run(command, check=False)
            files[name] = work / f"{name}.json"
    rows = [row(name, json.loads(path.read_text())) for name, path in files.items() if path.is_file()]
    write(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
