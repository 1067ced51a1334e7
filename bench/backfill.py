"""Backfill benchmark: orderings, throughput against raw inference, and what each option costs.

Three parts (each can be switched off):

1. Backfill curves on MNIST-5k (the bundled real digits; split seed 0). Old model: "small" (d = 64)
   on digits 0-4 of the train split; new model: "large", Dual-Tuning default, all ten digits, as in
   bench/compat.py. DPQ codebooks: old ones on the old model's train features of digits 0-4, new
   ones on the new model's train features. Curves: 22 points, leave-one-out over the split, new-model
   queries; float features and as served (gallery through the new codebooks). Orderings: random
   (mean ± std over seeds) and uncertainty with each score. The default score is chosen on the val
   split; the test split is reported.
2. Throughput on an N-item synthetic gallery (default 100k): raw inference of the new model
   (``extract_features`` over all images, same batch size, one torch thread) against a full backfill
   (read source shard, fetch images, embed, DPQ-encode, checksum, write) on the local store and on
   moto's S3 server, one shard job at a time so both use one core for compute.
3. Cost of each option on the same gallery: measured wall time of skip, requantize and full
   (and the decision's estimates from its measured per-item costs).

Run from the repository root:
    python -m bench.backfill            # full run -> bench/results/backfill.{json,md}
    python -m bench.backfill --quick    # small sizes -> bench/results/backfill-quick.{json,md}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.core.configs import CompatConfig, DPQConfig
from hotswap.components.data.bundled import load_mnist5k, make_synthetic
from hotswap.components.data.loading import SourceItemSource
from hotswap.components.decision.costs import measure_costs
from hotswap.components.decision.ordering import (
    UNCERTAINTY_SCORES,
    backfill_curve,
    backfill_order,
    order_by_scores,
    random_order,
)
from hotswap.components.gallery.backfill import build_gallery_version, run_backfill
from hotswap.components.gallery.local_store import LocalObjectStore
from hotswap.components.gallery.shard_jobs import ShardResult
from hotswap.components.gallery.store import ObjectStore
from hotswap.components.gallery.store_factory import open_store
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_training import train_dpq

RESULTS = Path(__file__).parent / "results"
OLD_CLASSES = (0, 1, 2, 3, 4)
EMBEDDING_DIM = 64
METRICS = ("map", "top1", "top5")
GALLERY = "bench"


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- part 1: curves


# Dual-Tuning with the weights the project used before tuning (prototype weight 1, O2N 0.2, softmax
# prototypes): a less well calibrated compatible model, to show how the orderings depend on it.
LESS_CALIBRATED = CompatConfig(proto_variant="softmax", proto_weight=1.0, proto_scale=16.0, o2n_weight=0.2)


def train_mnist_models(
    epochs: int, dpq_epochs: int, seed: int, compat: CompatConfig = DEFAULT_CONFIG, codebooks: bool = True
) -> dict[str, Any]:
    data = load_mnist5k(seed=0)
    train = data.split("train")
    old_train = train.with_classes(OLD_CLASSES)
    start = time.perf_counter()
    old = build_model(
        BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=len(OLD_CLASSES)), seed
    )
    train_model(old, old_train, TrainConfig(epochs=epochs, seed=seed), progress=False)
    new, _ = train_compatible(
        old,
        BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=10),
        train,
        compat,
        train_config=TrainConfig(epochs=epochs, seed=seed + 1),
        progress=False,
    )
    old_books = new_books = None
    if codebooks:
        dpq = DPQConfig(epochs=dpq_epochs, seed=seed)
        old_books = train_dpq(extract_features(old, old_train), old_train.labels, old.head, dpq)
        new_books = train_dpq(extract_features(new, train), train.labels, new.head, dpq)
    shift = fit_shift_predictor(extract_features(old, train), extract_features(new, train))
    log(f"  trained old/new models and codebooks in {time.perf_counter() - start:.0f} s")
    return {
        "data": data,
        "old": old,
        "new": new,
        "old_books": old_books,
        "new_books": new_books,
        "shift": shift,
    }


def fit_shift_predictor(old: np.ndarray, new: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Diagnostic, FastFill-style: ridge regression from an old feature to ‖φ_n − φ_o‖² (fitted on the
    train split, where both models' features exist). Not a pipeline ordering: it needs this fit."""
    x = np.hstack([old, np.ones((len(old), 1), dtype=np.float32)]).astype(np.float64)
    target = ((new - old) ** 2).sum(axis=1)
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ target)


def predicted_shift(weights: np.ndarray, old: np.ndarray) -> np.ndarray:
    return np.hstack([old, np.ones((len(old), 1), dtype=np.float32)]) @ weights


def curves_on_split(models: dict[str, Any], split: str, seeds: int, served: bool) -> dict[str, Any]:
    """AUCs (and the curves) of every ordering on one split, float and optionally as served."""
    part = models["data"].split(split)
    old_f = extract_features(models["old"], part)
    new_f = extract_features(models["new"], part)
    labels = part.labels
    prototypes = models["old"].head.weight.detach().numpy()
    books: DPQCodebooks = models["new_books"]
    views = {"float": None}
    if served:
        views["served"] = lambda x: books.decode(books.encode(x))
    out: dict[str, Any] = {"split": split, "items": len(part), "views": {}}
    for view, transform in views.items():
        result: dict[str, Any] = {"random": [], "uncertainty": {}}
        for s in range(seeds):
            curve = backfill_curve(
                new_f, labels, old_f, new_f, random_order(len(part), s), transform=transform
            )
            result["random"].append(curve.as_dict())
        for score in UNCERTAINTY_SCORES:
            order = backfill_order("uncertainty", old_f, prototypes=prototypes, score=score)
            curve = backfill_curve(new_f, labels, old_f, new_f, order, transform=transform, name=score)
            result["uncertainty"][score] = curve.as_dict()
        # Diagnostics, not pipeline orderings: the oracle needs new features of every gallery item
        # (ml-fct's "distance" ordering); the learned shift needs a fit on both models' features.
        diagnostics = {
            "oracle:distance": order_by_scores(((new_f - old_f) ** 2).sum(axis=1)),
            "learned:ridge_shift": order_by_scores(predicted_shift(models["shift"], old_f)),
        }
        result["diagnostic"] = {
            name: backfill_curve(new_f, labels, old_f, new_f, order, transform=transform, name=name).as_dict()
            for name, order in diagnostics.items()
        }
        result["summary"] = summarise_aucs(result)
        out["views"][view] = result
        log(
            f"  {split}/{view}: "
            + "  ".join(f"{k} {v['map']['mean']:.4f}" for k, v in result["summary"].items())
        )
    new_class_share = np.mean(
        labels[backfill_order("uncertainty", old_f, prototypes=prototypes)[: len(labels) // 5]]
        >= len(OLD_CLASSES)
    )
    out["unseen_class_share_in_first_fifth"] = {
        "uncertainty(default)": float(new_class_share),
        "all items": float(np.mean(labels >= len(OLD_CLASSES))),
    }
    return out


def pair_similarity(models: dict[str, Any], split: str) -> dict[str, float]:
    """Mean cosine of same-class (positive) and other-class (negative) pairs, new query against
    new and against old gallery features: the calibration gap that shapes a mixed gallery."""
    part = models["data"].split(split)
    old_f = extract_features(models["old"], part)
    new_f = extract_features(models["new"], part)
    same = part.labels[:, None] == part.labels[None, :]
    np.fill_diagonal(same, False)
    other = part.labels[:, None] != part.labels[None, :]
    nn, no = new_f @ new_f.T, new_f @ old_f.T
    return {
        "new/new positive": float(nn[same].mean()),
        "new/new negative": float(nn[other].mean()),
        "new/old positive": float(no[same].mean()),
        "new/old negative": float(no[other].mean()),
    }


def summarise_aucs(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    summary = {"random": {m: _mean_std([c["auc"][m] for c in result["random"]]) for m in METRICS}}
    for score, curve in result["uncertainty"].items():
        summary[f"uncertainty:{score}"] = {m: {"mean": curve["auc"][m], "std": 0.0} for m in METRICS}
    for name, curve in result.get("diagnostic", {}).items():
        summary[f"({name})"] = {m: {"mean": curve["auc"][m], "std": 0.0} for m in METRICS}
    return summary


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


# --------------------------------------------------------------------------- part 2 and 3: throughput


def start_moto() -> tuple[Any, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def copy_version(source: ObjectStore, target: ObjectStore, prefix: str) -> None:
    for key in source.list(prefix):
        target.put_bytes(key, source.get_bytes(key))


def timed_backfill(
    store: ObjectStore, mode: str, version: str, workers: int = 1, **kwargs: Any
) -> dict[str, Any]:
    """One backfill run with per-phase seconds summed over shards. ``workers=2`` runs two shard
    jobs at a time but only one forward pass (compute_slots=1): I/O overlaps the model."""
    results: list[ShardResult] = []
    start = time.perf_counter()
    manifest = run_backfill(
        store, GALLERY, "v1", mode, kwargs.pop("model"), kwargs.pop("books"), kwargs.pop("source"),
        version=version, model_version="new", workers=workers, compute_slots=1,
        on_shard=results.append, **kwargs,
    )  # fmt: skip
    wall = time.perf_counter() - start
    phases: dict[str, float] = {}
    for r in results:
        for phase, seconds in r.seconds.items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    return {
        "mode": mode,
        "items": manifest.num_items,
        "shards": manifest.num_shards,
        "seconds": wall,
        "items_per_second": manifest.num_items / wall,
        "phases": phases,
        "outside_shard_jobs": wall - sum(phases.values()),
    }


def throughput(items: int, shard_size: int, batch_size: int, s3: bool) -> dict[str, Any]:
    import tempfile

    log(f"  generating {items} synthetic images")
    data = make_synthetic(items, n_classes=10, image_size=28, seed=0)
    old = build_model(BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=10), seed=0).eval()
    new = build_model(BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=10), seed=1).eval()
    sample = data.native_inputs()[: min(5000, items)]
    books = train_dpq(extract_features(new, sample), config=DPQConfig(epochs=0))  # k-means init only
    old_books = train_dpq(extract_features(old, sample), config=DPQConfig(epochs=0))
    assert old.preprocessing == new.preprocessing  # one item source serves both models
    source = SourceItemSource(data, new.preprocessing)
    out: dict[str, Any] = {"items": items, "shard_size": shard_size, "batch_size": batch_size}

    extract_features(new, data.native_inputs()[:batch_size], batch_size=batch_size)  # warm-up

    def raw_inference() -> float:
        start = time.perf_counter()
        extract_features(new, data, batch_size=batch_size)
        return items / (time.perf_counter() - start)

    # Measured before and after the backfills: on a shared machine the load drifts, and the mean
    # of the two brackets the runs in between.
    raw_rates = [raw_inference()]
    log(f"  raw inference: {raw_rates[0]:.0f} items/s")

    with tempfile.TemporaryDirectory(prefix="hotswap-bench-") as tmp:
        local = LocalObjectStore(Path(tmp) / "store")
        start = time.perf_counter()
        build_gallery_version(
            local, GALLERY, old, old_books, source, data.item_ids, model_version="old",
            version="v1", shard_size=shard_size, workers=1, batch_size=batch_size, publish=True,
        )  # fmt: skip
        out["bootstrap_old_small_model_seconds"] = time.perf_counter() - start
        common = dict(model=new, books=books, source=source, batch_size=batch_size)
        stores = {"local": local}
        server = None
        if s3:
            server, endpoint = start_moto()
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            stores["moto_s3"] = open_store("s3://bench/gallery", endpoint_url=endpoint)
            copy_version(local, stores["moto_s3"], "galleries/")
        try:
            out["backfill"] = {}
            for name, store in stores.items():
                for workers, label in ((1, "sequential"), (2, "pipelined")):
                    run = timed_backfill(store, "full", f"full-{name}-{label}", workers, **dict(common))
                    out["backfill"][f"{name}, {label}"] = run
            raw_rates.append(raw_inference())
            raw = statistics.fmean(raw_rates)
            out["raw_inference"] = {"items_per_second": raw, "runs_items_per_second": raw_rates}
            log(f"  raw inference again: {raw_rates[1]:.0f} items/s")
            for name, run in out["backfill"].items():
                run["vs_raw"] = run["items_per_second"] / raw
                # Load-independent: both measured within the same run.
                run["overhead_share"] = 1.0 - run["phases"]["extract"] / run["seconds"]
                log(
                    f"  full backfill on {name}: {run['items_per_second']:.0f} items/s "
                    f"= {run['vs_raw']:.1%} of raw"
                )
            start = time.perf_counter()
            run_backfill(local, GALLERY, "v1", "skip", new, books, source, model_version="new")
            skip = time.perf_counter() - start
            requantize = timed_backfill(local, "requantize", "requantize", **dict(common))
            full = out["backfill"]["local, sequential"]
            cost = measure_costs(new, books, data.native_inputs()[:1024], batch_size=batch_size)
            out["options"] = {
                "skip": {"seconds": skip},
                "requantize": {"seconds": requantize["seconds"], "phases": requantize["phases"]},
                "full": {"seconds": full["seconds"]},
                "ratio_to_full": {
                    "skip": skip / full["seconds"],
                    "requantize": requantize["seconds"] / full["seconds"],
                },
                "decision_estimate_seconds": {
                    "requantize": items * cost.encode_seconds_per_item,
                    "full": items * (cost.extract_seconds_per_item + cost.encode_seconds_per_item),
                },
            }
            log(
                f"  skip {skip:.2f} s, requantize {requantize['seconds']:.1f} s, full {full['seconds']:.1f} s"
            )
        finally:
            if server is not None:
                server.stop()
    return out


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Backfill benchmark{' (quick)' if result['quick'] else ''}",
        "",
        f"Machine: {result['machine']}",
        "",
    ]
    if "curves" in result:
        c = result["curves"]
        lines += ["## Backfill curve AUC (22 points, mean of the curve), MNIST-5k", ""]
        for split in ("val", "test"):
            if split not in c:
                continue
            for view, res in c[split]["views"].items():
                lines += [
                    f"**{split} split, {view}** ({c[split]['items']} items, leave-one-out, "
                    "new-model queries)",
                    "",
                    "| ordering | AUC mAP | AUC top-1 | AUC top-5 |",
                    "|---|---:|---:|---:|",
                ]
                for name, row in res["summary"].items():
                    cells = " | ".join(
                        f"{row[m]['mean']:.4f}" + (f" ± {row[m]['std']:.4f}" if row[m]["std"] else "")
                        for m in METRICS
                    )
                    lines.append(f"| {name} | {cells} |")
                lines.append("")
        if "less_calibrated" in c:
            weak = c["less_calibrated"]["val"]["views"]["float"]["summary"]
            lines += [
                "**val split, float, less calibrated compatible model** (Dual-Tuning with prototype "
                "weight 1, O2N 0.2, softmax prototypes)",
                "",
                "| ordering | AUC mAP | AUC top-1 | AUC top-5 |",
                "|---|---:|---:|---:|",
            ]
            for name, row in weak.items():
                cells = " | ".join(
                    f"{row[m]['mean']:.4f}" + (f" ± {row[m]['std']:.4f}" if row[m]["std"] else "")
                    for m in METRICS
                )
                lines.append(f"| {name} | {cells} |")
            lines.append("")
        sims = {"default": c["pair_similarity"]}
        if "less_calibrated" in c:
            sims["less calibrated"] = c["less_calibrated"]["pair_similarity"]
        lines += [
            "Mean cosine similarity of a new-model query to gallery items (val):",
            "",
            "| compatible model | new/new positive | new/new negative | new/old positive "
            "| new/old negative |",
            "|---|---:|---:|---:|---:|",
            *[
                f"| {name} | "
                + " | ".join(
                    f"{v[k]:.3f}"
                    for k in ("new/new positive", "new/new negative", "new/old positive", "new/old negative")
                )
                + " |"
                for name, v in sims.items()
            ],
            "",
        ]
        lines += [
            f"Best uncertainty score on val (AUC mAP): `{c['chosen_score']}`. Rows in parentheses are "
            "diagnostics, not pipeline orderings (the oracle uses every item's new feature; the learned "
            "shift is a ridge fit on both models' train features).",
            "",
            "Share of unseen digits (5-9) among the first fifth re-extracted by the default uncertainty "
            f"score (test): {c['test']['unseen_class_share_in_first_fifth']['uncertainty(default)']:.2f} "
            f"(all items: {c['test']['unseen_class_share_in_first_fifth']['all items']:.2f}).",
            "",
        ]
    if "throughput" in result:
        t = result["throughput"]
        raw = t["raw_inference"]["items_per_second"]
        lines += [
            f"## Throughput, {t['items']} synthetic items "
            f"(shards of {t['shard_size']}, batch {t['batch_size']})",
            "",
            "| run | items/s | share of raw inference | overhead (1 − extract/wall) | read | fetch "
            "| extract | encode | write | wait | outside jobs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| raw inference (mean of {len(t['raw_inference']['runs_items_per_second'])} runs: "
            + ", ".join(f"{r:.0f}" for r in t["raw_inference"]["runs_items_per_second"])
            + f") | {raw:.0f} | 100 % | | | | | | | | |",
        ]
        for name, run in t["backfill"].items():
            p = run["phases"]
            phase = " | ".join(
                f"{p.get(k, 0.0):.1f} s" for k in ("read", "fetch", "extract", "encode", "write", "wait")
            )
            lines.append(
                f"| full backfill, {name} | {run['items_per_second']:.0f} | {run['vs_raw']:.1%} "
                f"| {run['overhead_share']:.1%} | {phase} "
                f"| {run['outside_shard_jobs']:.1f} s |"
            )
        o = t["options"]
        lines += [
            "",
            "## Cost of each option (same gallery, local store)",
            "",
            "| option | measured seconds | ratio to full | decision's estimate |",
            "|---|---:|---:|---:|",
            f"| skip | {o['skip']['seconds']:.3f} | {o['ratio_to_full']['skip']:.5f} | 0 |",
            f"| requantize | {o['requantize']['seconds']:.1f} | {o['ratio_to_full']['requantize']:.4f} "
            f"| {o['decision_estimate_seconds']['requantize']:.1f} |",
            f"| full | {o['full']['seconds']:.1f} | 1 | {o['decision_estimate_seconds']['full']:.1f} |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--items", type=int, default=None, help="synthetic gallery size (default 100000)")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; quick 2)")
    parser.add_argument("--dpq-epochs", type=int, default=None, help="DPQ epochs (default 20; quick 2)")
    parser.add_argument("--seeds", type=int, default=None, help="random orderings averaged (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-curves", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--no-weak", action="store_true", help="skip the less calibrated compat model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    items = args.items or (10_000 if args.quick else 100_000)
    epochs = args.epochs or (2 if args.quick else 8)
    dpq_epochs = args.dpq_epochs if args.dpq_epochs is not None else (2 if args.quick else 20)
    seeds = args.seeds or (2 if args.quick else 5)
    result: dict[str, Any] = {
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}",
        "settings": {"items": items, "epochs": epochs, "dpq_epochs": dpq_epochs, "random_seeds": seeds},
    }
    started = time.perf_counter()
    if not args.no_curves:
        log("part 1: backfill curves on MNIST-5k")
        models = train_mnist_models(epochs, dpq_epochs, seed=0)
        val = curves_on_split(models, "val", seeds, served=False)
        scores = val["views"]["float"]["summary"]
        chosen = max(UNCERTAINTY_SCORES, key=lambda s: scores[f"uncertainty:{s}"]["map"]["mean"])
        result["curves"] = {"val": val, "test": curves_on_split(models, "test", seeds, served=True)}
        result["curves"]["chosen_score"] = chosen
        result["curves"]["pair_similarity"] = pair_similarity(models, "val")
        if not args.no_weak:
            log("part 1b: the same on val with a less calibrated compatible model")
            weak = train_mnist_models(epochs, dpq_epochs, seed=0, compat=LESS_CALIBRATED, codebooks=False)
            result["curves"]["less_calibrated"] = {
                "compat": LESS_CALIBRATED.model_dump(),
                "val": curves_on_split(weak, "val", seeds, served=False),
                "pair_similarity": pair_similarity(weak, "val"),
            }
    if not args.no_throughput:
        log("part 2/3: throughput and option costs")
        result["throughput"] = throughput(items, args.shard_size, args.batch_size, s3=not args.no_s3)
    result["total_seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    name = "backfill-quick" if args.quick else "backfill"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    log(f"wrote bench/results/{name}.json and .md in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
