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
    python -m bench.compat --protocols all --cache bench/results/compat-protocols-runs.jsonl
                                      # 5 protocols (MNIST-5k 0-4 / odd digits / a quarter of the
                                      # training data, synthetic 50 -> 100, sklearn digits as an image
                                      # folder) -> bench/results/compat-protocols.{json,md}; val for
                                      # selection and test for the tables, from one training each
    python -m bench.compat --tune --grid bench/compat_grids/round1.json --name compat-tuning-round1
                                      # weight search on the val split (rounds 1-6 were run on a GPU:
                                      # --device cuda --workers 14; see bench/results/compat-tuning.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hotswap.components.compat.cross_eval import PAIRS, compatibility_criterion, compatibility_matrix
from hotswap.components.compat.dual_tuning import (
    BASELINES,
    DEFAULT_CONFIG,
    PAPER_PRESET,
    SOFTMAX_PRESET,
    train_compatible,
)
from hotswap.components.compat.metrics import RetrievalMetrics
from hotswap.components.core.configs import CompatConfig
from hotswap.components.data.bundled import load_mnist5k, make_synthetic
from hotswap.components.data.images import ImageSet
from hotswap.components.data.objects import read_image_folder
from hotswap.components.models.backbones import BackboneSpec, build_model, model_from_bytes, model_to_bytes
from hotswap.components.models.training import TrainConfig, train_model

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
class Protocol:
    """One upgrade scenario: which data, which classes the old model knew, how much training data.

    ``train_fraction`` < 1 keeps that share of each class's training items (seeded), for the
    data-poor variant; validation and test splits stay whole.
    """

    name: str
    source: str
    old_classes: tuple[int, ...]
    train_fraction: float = 1.0
    description: str = ""


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("mnist-0to4", "mnist5k", OLD_CLASSES, description="MNIST-5k, old on digits 0-4"),
        Protocol("mnist-odd", "mnist5k", (1, 3, 5, 7, 9), description="MNIST-5k, old on the odd digits"),
        Protocol(
            "mnist-quarter",
            "mnist5k",
            OLD_CLASSES,
            train_fraction=0.25,
            description="MNIST-5k with a quarter of the training items, old on digits 0-4",
        ),
        Protocol(
            "synthetic-50to100",
            "synthetic:6000:100",
            tuple(range(50)),
            description="procedural images, 100 classes (6,000 items), old on classes 0-49",
        ),
        Protocol(
            "digits-folder",
            "digits",
            OLD_CLASSES,
            description="scikit-learn's bundled 8x8 digits (1,797) read back as an image folder, old on 0-4",
        ),
    )
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
    protocol: str = "mnist-0to4"


_DATA: dict[str, ImageSet] = {}


def write_digits_folder(root: Path) -> Path:
    """scikit-learn's bundled digits as PNGs, one sub-folder per class (what a user would bring)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / "9").is_dir():
        return root
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * (255.0 / 16.0)).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def _reduce_train(data: ImageSet, fraction: float, seed: int = DATA_SEED) -> ImageSet:
    """Keep ``fraction`` of each class's training items (seeded); other splits untouched."""
    rng = np.random.default_rng(seed)
    keep = data.splits != "train"
    for label in np.unique(data.labels):
        idx = np.flatnonzero((data.labels == label) & (data.splits == "train"))
        keep[rng.permutation(idx)[: max(1, int(round(fraction * len(idx))))]] = True
    return data.subset(keep, name=f"{data.name}/train{fraction:g}")


def load_protocol_data(protocol: Protocol) -> ImageSet:
    if protocol.source == "mnist5k":
        data = load_mnist5k(seed=DATA_SEED)
    elif protocol.source.startswith("synthetic:"):
        _, items, classes = protocol.source.split(":")
        data = make_synthetic(int(items), int(classes), seed=DATA_SEED)
    elif protocol.source == "digits":
        root = write_digits_folder(Path(tempfile.gettempdir()) / "hotswap-bench-digits")
        data = read_image_folder(root, seed=DATA_SEED)  # 8x8 PNGs: each model resizes to its own size
    else:
        raise ValueError(f"protocol {protocol.name}: unknown source {protocol.source!r}")
    return _reduce_train(data, protocol.train_fraction) if protocol.train_fraction < 1 else data


def _data(protocol: str = "mnist-0to4") -> ImageSet:
    if protocol not in _DATA:
        _DATA[protocol] = load_protocol_data(PROTOCOLS[protocol])
    return _DATA[protocol]


def class_map(protocol: Protocol) -> dict[int, int]:
    """New label -> old label: the old model numbers its classes 0..K_old-1 in sorted order."""
    return {new: old for old, new in enumerate(sorted(protocol.old_classes))}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def train_old(seed: int, epochs: int, device: str, protocol: str = "mnist-0to4") -> dict[str, bytes]:
    """The old system: small backbone on the protocol's old classes, plain CE."""
    proto = PROTOCOLS[protocol]
    train = _data(protocol).split("train").with_classes(proto.old_classes)
    lookup = class_map(proto)
    old_labels = np.array([lookup[int(y)] for y in train.labels], dtype=np.int64)
    train = dataclasses.replace(train, labels=old_labels)
    torch.manual_seed(seed)
    spec = BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=len(proto.old_classes))
    model = build_model(spec)
    train_model(model, train, TrainConfig(epochs=epochs, seed=seed, device=device), progress=False)
    return model_to_bytes(model.cpu())


def run_job(job: Job) -> dict[str, Any]:
    """Train one new model against one old model and score the four pairs on the eval split."""
    data = _data(job.protocol)
    old = model_from_bytes(job.old_files, source=f"old model seed {job.seed}")
    spec = BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=data.num_classes)
    new, history = train_compatible(
        old,
        spec,
        data.split("train"),
        job.config,
        TrainConfig(epochs=job.epochs, seed=job.seed, device=job.device),
        class_map=class_map(PROTOCOLS[job.protocol]),
        progress=False,
    )
    # Score val and test from the same model: selection reads val only, the tables report test.
    matrices = {
        split: {
            pair: m.as_dict()
            for pair, m in compatibility_matrix(old, new, data.split(split), device=job.device).items()
        }
        for split in dict.fromkeys((job.eval_split, "val", "test"))
    }
    return {
        "name": job.name,
        "protocol": job.protocol,
        "seed": job.seed,
        "matrix": matrices[job.eval_split],
        "matrices": matrices,
        "train_seconds": history.seconds,
        "epochs_run": len(history.epochs),
        "final_losses": history.final,
    }


def run_all(
    configs: dict[str, CompatConfig],
    seeds: list[int],
    epochs: int,
    eval_split: str,
    workers: int,
    device: str,
    protocols: tuple[str, ...] = ("mnist-0to4",),
    cache: Path | None = None,
) -> list[dict[str, Any]]:
    """Old models first (one per protocol and seed), then every (protocol, method, seed), over workers.

    With ``cache`` (a JSON-lines file) every finished run is appended as it comes, and runs
    already there (same protocol, seed, training and epochs) are read back instead of retrained,
    so an interrupted benchmark resumes where it stopped.
    """
    cached = _read_cache(cache)
    plan, aliases = [], []
    seen: dict[tuple[str, int, str], str] = {}
    for protocol in protocols:
        train_items = len(_data(protocol).split("train"))
        for seed in seeds:
            for name, config in configs.items():
                key = (protocol, seed, _training_key(config, train_items, epochs))
                if key in seen:  # trains exactly like an earlier row: reuse its result
                    aliases.append((protocol, seed, name, seen[key]))
                    continue
                seen[key] = name
                plan.append((key, name, config))
    results = [
        {**cached[_cache_id(key, name)], "matrix": cached[_cache_id(key, name)]["matrices"][eval_split]}
        for key, name, _ in plan
        if _cache_id(key, name) in cached
    ]
    todo = [(key, name, config) for key, name, config in plan if _cache_id(key, name) not in cached]
    keys = list(dict.fromkeys((key[0], key[1]) for key, _, _ in todo))
    with ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(todo))), initializer=_init_worker, initargs=(1,)
    ) as pool:
        olds = dict(
            zip(
                keys,
                pool.map(
                    train_old,
                    [s for _, s in keys],
                    [epochs] * len(keys),
                    [device] * len(keys),
                    [p for p, _ in keys],
                ),
                strict=True,
            )
        )
        jobs = [
            Job(name, config, key[1], olds[(key[0], key[1])], epochs, eval_split, device, key[0])
            for key, name, config in todo
        ]
        if not jobs:
            print("  every run read back from the cache", flush=True)
        for (key, _, _), result in zip(todo, pool.map(run_job, jobs), strict=True):
            print(
                f"  {result['protocol']:<18} {result['name']:<28} seed {result['seed']}: "
                f"{_brief(result['matrix'])}",
                flush=True,
            )
            results.append(result)
            if cache is not None:
                with cache.open("a") as handle:
                    handle.write(json.dumps({"cache_id": _cache_id(key, result["name"]), **result}) + "\n")
    for protocol, seed, name, same_as in aliases:
        source = next(
            r for r in results if (r["protocol"], r["seed"], r["name"]) == (protocol, seed, same_as)
        )
        results.append({**source, "name": name, "same_run_as": same_as})
    order = {name: i for i, name in enumerate(configs)}
    return sorted(results, key=lambda r: (protocols.index(r["protocol"]), r["seed"], order[r["name"]]))


def _cache_id(key: tuple[str, int, str], name: str) -> str:
    """Runs are cached by protocol, seed and row name (the names fix the configs of this bench)."""
    return json.dumps([key[0], key[1], name])


def _read_cache(cache: Path | None) -> dict[str, dict[str, Any]]:
    if cache is None or not cache.exists():
        return {}
    rows = [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]
    return {_cache_id((row["protocol"], row["seed"], ""), row["name"]): row for row in rows}


def _training_key(config: CompatConfig, train_items: int, epochs: int) -> str:
    """Two configs with the same key train bit-identically on CPU: ``min_epoch_steps`` matters
    only through the epochs it yields (e.g. on MNIST-5k every value up to 47 gives 8 epochs)."""
    effective = config.training_epochs(train_items, TrainConfig().batch_size, epochs)
    return config.model_copy(update={"min_epoch_steps": 0}).model_dump_json() + f"|epochs={effective}"


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


def protocol_configs() -> dict[str, CompatConfig]:
    """The rows of the multi-protocol table: the reference, the default and its new knobs off."""
    return {
        "independent": BASELINES["independent"],
        "dual_tuning": DEFAULT_CONFIG,
        **{f"dual_tuning {name}": config for name, config in knob_ablations().items()},
    }


def knob_ablations() -> dict[str, CompatConfig]:
    """The default with each data-adaptive knob at other values: off (the pre-adaptive method)
    and the other candidate the default was chosen against on val."""
    return {
        f"min_epoch_steps={value}": DEFAULT_CONFIG.model_copy(update={"min_epoch_steps": value})
        for value in (0, 24)
    }


# --------------------------------------------------------------------------- tuning


def tuning_configs(grid_file: Path, base: CompatConfig = TUNING_BASE) -> dict[str, CompatConfig]:
    """Independent training (and, for the MNIST rounds, the paper preset), then one config per grid entry.

    Grid entries override ``base`` (the pre-tuning reconstruction for rounds 1-6 on MNIST-5k,
    the current default for the multi-protocol rounds); an empty entry is the base itself.
    """
    grid = json.loads(grid_file.read_text())
    if not isinstance(grid, list) or not all(isinstance(entry, dict) for entry in grid):
        raise ValueError(f"{grid_file}: a grid must be a JSON list of objects (config overrides)")
    configs = {"independent": BASELINES["independent"]}
    if base == TUNING_BASE:
        configs["paper preset"] = PAPER_PRESET
    for overrides in grid:
        name = " ".join(f"{k}={v}" for k, v in overrides.items()) or "base"
        configs[name] = CompatConfig.model_validate({**base.model_dump(), **overrides})
    return configs


def rank_tuning(*summaries: dict[str, Any]) -> list[tuple[str, float]]:
    """Most (protocol, seed, metric) criterion passes first, then the mean of the mAP and top-1
    update gains over protocols. One summary per protocol; a single summary ranks one protocol."""
    scored = []
    for name in summaries[0]:
        if name == "independent":
            continue
        passes, gains = 0, []
        for summary in summaries:
            s = summary[name]
            passes += s["passed"]["map"] + s["passed"]["top1"]
            gains += [s["gain"][m]["mean"] for m in CRITERION_METRICS]
        gain = statistics.fmean(gains) if all(g is not None for g in gains) else -1.0
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
    parser.add_argument(
        "--protocols",
        nargs="+",
        help=f"run these protocols ({', '.join(PROTOCOLS)} or 'all') with the protocol table "
        "(independent, default, knob ablations); without it: the MNIST-5k method table",
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, help="epochs for old and new models (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="parallel processes, 1 torch thread each")
    parser.add_argument("--device", default="cpu", help="torch device for training and extraction")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--name", help="results file stem (default compat / compat-quick / compat-tuning)")
    parser.add_argument("--cache", type=Path, help="JSON-lines file of finished runs: resume from it")
    args = parser.parse_args(argv)

    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    epochs = args.epochs or (3 if args.quick else 8)
    if args.protocols:
        protocols = tuple(PROTOCOLS) if args.protocols == ["all"] else tuple(args.protocols)
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            parser.error(f"unknown protocol(s) {unknown}; known: {', '.join(PROTOCOLS)}")
    else:
        protocols = ("mnist-0to4",)
    multi = bool(args.protocols)
    if args.tune:
        base = DEFAULT_CONFIG if multi else TUNING_BASE
        configs, split = tuning_configs(args.grid, base), "val"
        stem = "compat-protocols-tuning" if multi else "compat-tuning"
    elif multi:
        configs, split = protocol_configs(), "val"  # selection on val; the tables report test too
        stem = "compat-protocols-quick" if args.quick else "compat-protocols"
    else:
        configs, split = method_configs(), "test"
        stem = "compat-quick" if args.quick else "compat"
    stem = args.name or stem
    print(
        f"{len(protocols)} protocol(s) x {len(configs)} configs x {len(seeds)} seeds, {epochs} epochs, "
        f"{split} split, {args.workers} workers"
    )
    start = time.perf_counter()
    results = run_all(configs, seeds, epochs, split, args.workers, args.device, protocols, args.cache)
    wall = time.perf_counter() - start
    summaries = {p: summarise([r for r in results if r["protocol"] == p]) for p in protocols}
    test_summaries = {
        p: summarise([{**r, "matrix": r["matrices"]["test"]} for r in results if r["protocol"] == p])
        for p in protocols
    }
    record = {
        "benchmark": "compat",
        "protocol": {
            "protocols": {p: dataclasses.asdict(PROTOCOLS[p]) for p in protocols},
            "old": "small backbone, d=64, the protocol's old classes of train (plain CE)",
            "new": "large backbone, d=64, every class of train",
            "eval": f"leave-one-out retrieval on the {split} split (all classes)",
            "criterion": f"new/old > old/old and new/new >= independent new/new - {NEW_NEW_TOLERANCE}",
            "seeds": seeds,
            "epochs": epochs,
            "device": args.device,
            "workers": args.workers,
        },
        "configs": {name: c.model_dump() for name, c in configs.items()},
        "summary": summaries if multi else summaries[protocols[0]],
        **({"summary_test": test_summaries} if multi else {}),
        "runs": results,
        "wall_seconds": wall,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    if multi and not args.tune:
        test_results = [{**r, "matrix": r["matrices"]["test"]} for r in results]
        lines = protocols_markdown(stem, test_summaries, test_results, "test", seeds, epochs)
        lines += ["", "## Selection on the val split", ""]
        lines += [
            "| config | " + " | ".join(f"{p} mAP | {p} top-1" for p in protocols) + " |",
            "|---|" + "---|---|" * len(protocols),
        ]
        for name in configs:
            if name == "independent":
                continue
            cells = [
                f"{summaries[p][name]['passed'][m]}/{summaries[p][name]['n_seeds']}"
                for p in protocols
                for m in CRITERION_METRICS
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Ranking on val (criterion passes over protocols and seeds, then mean gain):", ""]
        ranking = rank_tuning(*summaries.values())
        lines += [f"{i + 1}. {name} ({score:.3f})" for i, (name, score) in enumerate(ranking)]
    elif multi:
        lines = protocols_markdown(stem, summaries, results, split, seeds, epochs)
    else:
        lines = [
            f"# Compatibility benchmark ({stem})",
            "",
            f"MNIST-5k, old = small backbone on digits 0-4, new = large backbone on all ten digits; "
            f"leave-one-out retrieval on the {split} split; {len(seeds)} seed(s) {seeds}, {epochs} epochs; "
            f"numbers in % (gain as a fraction), mean ± std over seeds; criterion = seeds where "
            f"new/old > old/old and new/new >= independent - {NEW_NEW_TOLERANCE * 100:.0f} point.",
            "",
            markdown_table(summaries[protocols[0]]),
        ]
    lines += [
        "",
        f"Wall time {wall / 60:.1f} min, {args.workers} worker(s), {machine()['cpu_count']} CPU core(s), "
        f"device {args.device}.",
    ]
    if args.tune:
        lines += ["", "Ranking (criterion passes over protocols and seeds, then mean gain):", ""]
        ranking = rank_tuning(*summaries.values())
        lines += [f"{i + 1}. {name} ({score:.3f})" for i, (name, score) in enumerate(ranking)]
    elif not multi:
        plot(summaries[protocols[0]], args.out / f"{stem}.png")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def headline_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """One row per protocol and Dual-Tuning row: the criterion counts next to the means they judge."""
    lines = [
        "| protocol | config | old/old mAP | new/old mAP | new/new mAP | indep. new/new mAP | old/old top-1 "
        "| new/old top-1 | new/new top-1 | indep. new/new top-1 | pass mAP | pass top-1 |",
        "|" + "---|" * 12,
    ]
    for protocol, summary in summaries.items():
        ind = summary.get("independent", {}).get("stats", {}).get("new/new")
        for name, s in summary.items():
            if name == "independent":
                continue
            st, n = s["stats"], s["n_seeds"]
            cells = [_fmt(st[p]["map"]) for p in ("old/old", "new/old", "new/new")]
            cells.append(_fmt(ind["map"]) if ind else "n/a")
            cells += [_fmt(st[p]["top1"]) for p in ("old/old", "new/old", "new/new")]
            cells.append(_fmt(ind["top1"]) if ind else "n/a")
            cells += [f"{s['passed'][m]}/{n}" for m in CRITERION_METRICS]
            lines.append(f"| {protocol} | {name} | " + " | ".join(cells) + " |")
    return lines


def protocols_markdown(
    stem: str,
    summaries: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    split: str,
    seeds: list[int],
    epochs: int,
) -> list[str]:
    """A per-protocol table of means and a per-seed table (old/old, new/new, new/old,
    independent new/new, criterion on mAP and top-1), so a miss on one seed is visible."""
    lines = [
        f"# Compatibility benchmark over protocols ({stem})",
        "",
        f"Old = small backbone on the protocol's old classes, new = large backbone on every class; "
        f"leave-one-out retrieval on the {split} split; seeds {seeds}, {epochs} configured epochs "
        f"(the compatible trainer raises them where an epoch is shorter than `min_epoch_steps`); "
        f"numbers in %, mean ± std; "
        f"criterion = new/old > old/old and new/new >= independent - {NEW_NEW_TOLERANCE * 100:.0f} point.",
        "",
    ]
    lines += headline_table(summaries) + [""]
    for protocol, summary in summaries.items():
        lines += [f"## {protocol}: {PROTOCOLS[protocol].description}", "", markdown_table(summary), ""]
    lines += [
        "## Per seed",
        "",
        "| protocol | method | seed | epochs | old/old mAP | new/new mAP | new/old mAP | indep. new/new mAP "
        "| old/old top-1 | new/new top-1 | new/old top-1 | indep. new/new top-1 | pass mAP | pass top-1 |",
        "|" + "---|" * 14,
    ]
    indep = {
        (r["protocol"], r["seed"]): r["matrix"]["new/new"] for r in results if r["name"] == "independent"
    }
    for protocol, summary in summaries.items():
        for name, s in summary.items():
            if name == "independent":
                continue
            for per_seed in s["per_seed"]:
                seed = per_seed["seed"]
                run = next(
                    r
                    for r in results
                    if r["protocol"] == protocol and r["name"] == name and r["seed"] == seed
                )
                m, ref, c = run["matrix"], indep.get((protocol, seed), {}), per_seed["checks"]
                cells = [f"{100 * m[p][k]:.1f}" for k in ("map",) for p in ("old/old", "new/new", "new/old")]
                cells.append(f"{100 * ref['map']:.1f}" if ref else "n/a")
                cells += [f"{100 * m[p]['top1']:.1f}" for p in ("old/old", "new/new", "new/old")]
                cells.append(f"{100 * ref['top1']:.1f}" if ref else "n/a")
                cells += ["yes" if c[k]["passed"] else "**no**" for k in CRITERION_METRICS]
                lines.append(
                    f"| {protocol} | {name} | {seed} | {run['epochs_run']} | " + " | ".join(cells) + " |"
                )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
