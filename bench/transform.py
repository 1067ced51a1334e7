"""The transform option: how much of the full upgrade's gain a learned map of stored features recovers.

Protocols (bench/compat.py): MNIST-5k with the old model on digits 0-4, and the procedural
100-class set with the old model on classes 0-49. Old: "small" backbone, plain CE on the old
classes. New: "large", either Dual-Tuning default (the pipeline's candidate) or trained
independently (FCT's setting: no compatibility at all). DPQ codebooks per model on its own
training features. h (components/compat/transform.py) is fitted on the train split's features.

Measured on the *test* split (leave-one-out, new-model queries, as served = gallery through
DPQ codes): skip (old features, old codes), requantize (old features, new codes), transform
(h(old), new codes), full (new features, new codes); gain = (transform − skip)/(full − skip) on
mAP. The transform(f) backfill curve (AUC over 22 points) by the maps' uncertainty s against
random orderings. A small sweep of the knobs runs on the *val* split (``--sweep``), each knob varied
alone from the defaults; the defaults in TransformConfig come from it.

    python -m bench.transform            # -> bench/results/transform.{json,md}
    python -m bench.transform --quick    # tiny epochs, for a smoke run (not written to results/)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.compat.transform import TransformConfig, apply, fit_transform
from hotswap.components.core.configs import DPQConfig
from hotswap.components.decision.ordering import backfill_curve, order_by_scores, random_order
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model
from hotswap.components.quant.dpq_training import train_dpq

from bench.compat import EMBEDDING_DIM, PROTOCOLS, class_map, load_protocol_data, machine

RESULTS = Path(__file__).parent / "results"
SWEEP: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hidden 64": {"hidden": 64},
    "blocks 0": {"blocks": 0},
    "epochs 20": {"epochs": 20},
    "lr 5e-4": {"lr": 5e-4},
    "λ 0 (no CE)": {"ce_weight": 0.0},
    "λ 0.1": {"ce_weight": 0.1},
    "λ 1": {"ce_weight": 1.0},
    "no uncertainty head": {"uncertainty": False},
}


def log(message: str) -> None:
    print(message, flush=True)


def train_models(protocol: str, epochs: int, dpq_epochs: int, seed: int, new_kind: str) -> dict[str, Any]:
    proto = PROTOCOLS[protocol]
    data = load_protocol_data(proto)
    train = data.split("train")
    lookup = class_map(proto)
    old_train = train.with_classes(proto.old_classes)
    old_train = dataclasses.replace(
        old_train, labels=np.array([lookup[int(y)] for y in old_train.labels], dtype=np.int64)
    )
    torch.manual_seed(seed)
    old = build_model(BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=len(lookup)), seed)
    train_model(old, old_train, TrainConfig(epochs=epochs, seed=seed), progress=False)
    spec = BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=data.num_classes)
    if new_kind == "dual_tuning":
        new, _ = train_compatible(
            old, spec, train, DEFAULT_CONFIG, TrainConfig(epochs=epochs, seed=seed + 1), class_map=lookup,
            progress=False,
        )  # fmt: skip
    else:
        new = build_model(spec, seed + 1)
        train_model(new, train, TrainConfig(epochs=epochs, seed=seed + 1), progress=False)
    dpq = DPQConfig(epochs=dpq_epochs, seed=seed)
    books = {
        "old": train_dpq(extract_features(old, old_train), old_train.labels, old.head, dpq),
        "new": train_dpq(extract_features(new, train), train.labels, new.head, dpq),
    }
    feats = {
        split: {"old": extract_features(old, part), "new": extract_features(new, part), "labels": part.labels}
        for split in ("train", "val", "test")
        for part in [data.split(split)]
    }
    return {"new": new, "books": books, "feats": feats}


def served(books, feats: np.ndarray) -> np.ndarray:
    return books.decode(books.encode(feats))


def evaluate(run: dict[str, Any], config: TransformConfig, split: str, seeds: int = 3) -> dict[str, Any]:
    tr, ev = run["feats"]["train"], run["feats"][split]
    start = time.perf_counter()
    h = fit_transform(
        tr["old"], tr["new"], tr["labels"], config,
        classifier=run["new"].head.weight.detach().numpy(), classifier_scale=float(run["new"].head.scale),
    )  # fmt: skip
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    mapped, s = apply(h, ev["old"])
    map_us = 1e6 * (time.perf_counter() - start) / len(mapped)
    new, labels, books = ev["new"], ev["labels"], run["books"]

    def m(gallery: np.ndarray) -> dict[str, float]:
        return retrieval_metrics(new, labels, gallery, labels, exclude_self=True).as_dict()

    rows = {
        "skip": m(served(books["old"], ev["old"])),
        "requantize": m(served(books["new"], ev["old"])),
        "transform": m(served(books["new"], mapped)),
        "full": m(served(books["new"], new)),
        "float_skip": m(ev["old"]),
        "float_transform": m(mapped),
        "float_full": m(new),
    }
    gain = (rows["transform"]["map"] - rows["skip"]["map"]) / (rows["full"]["map"] - rows["skip"]["map"])
    transform_books = lambda x: served(books["new"], x)  # noqa: E731
    curve = {}
    if s is not None:
        curve["sigma"] = backfill_curve(
            new, labels, mapped, new, order_by_scores(s), transform=transform_books
        )
        curve["sigma"] = curve["sigma"].auc("map")
    randoms = [
        backfill_curve(new, labels, mapped, new, random_order(len(new), seed), transform=transform_books).auc(
            "map"
        )
        for seed in range(seeds)
    ]
    curve["random"] = {"mean": float(np.mean(randoms)), "std": float(np.std(randoms))}
    return {
        "quality": rows,
        "gain": gain,
        "auc_map": curve,
        "fit_seconds": fit_seconds,
        "map_us_per_item": map_us,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Transform option (FCT / FastFill style, no side information)",
        "",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpu_count']} cores, "
        f"torch threads 1, load average at start {result['load_at_start']}; "
        f"wall {result['wall_seconds']:.0f} s.",
        "",
        "Test split, leave-one-out, new-model queries; served = gallery through DPQ codes. "
        "gain = (transform − skip)/(full − skip) on mAP. AUC: mAP over 22 points of the transform(f) "
        "curve (re-extract f, the rest mapped), σ = the maps' uncertainty ordering.",
        "",
        "| protocol | new model | skip | requantize | transform | full | gain | AUC σ | AUC random "
        "| map µs/item |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in result["runs"].items():
        q = r["test"]["quality"]
        auc = r["test"]["auc_map"]
        protocol, kind = key.split("|")
        lines.append(
            f"| {protocol} | {kind} | {q['skip']['map']:.4f} | {q['requantize']['map']:.4f} | "
            f"{q['transform']['map']:.4f} | {q['full']['map']:.4f} | **{100 * r['test']['gain']:.1f} %** | "
            f"{auc.get('sigma', float('nan')):.4f} | "
            f"{auc['random']['mean']:.4f} ± {auc['random']['std']:.4f} | "
            f"{r['test']['map_us_per_item']:.1f} |"
        )
    if result.get("sweep"):
        lines += ["", "## Knob sweep (val split, mAP of transform as served; each knob alone)", ""]
        for key, rows in result["sweep"].items():
            lines += [f"**{key}**", "", "| setting | transform mAP | gain | AUC σ |", "|---|---:|---:|---:|"]
            for name, r in rows.items():
                lines.append(
                    f"| {name} | {r['quality']['transform']['map']:.4f} | {100 * r['gain']:.1f} % | "
                    f"{r['auc_map'].get('sigma', float('nan')):.4f} |"
                )
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=["mnist-0to4", "synthetic-50to100"])
    parser.add_argument("--new", nargs="+", default=["dual_tuning", "independent"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--dpq-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep", action="store_true", help="also the knob sweep on val")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    epochs = 1 if args.quick else args.epochs
    result: dict[str, Any] = {
        "machine": machine(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {"epochs": epochs, "dpq_epochs": args.dpq_epochs, "seed": args.seed},
        "transform_config": TransformConfig().model_dump(),
        "runs": {},
        "sweep": {},
    }
    for protocol in args.protocols:
        for kind in args.new:
            log(f"{protocol} / {kind}: training old, new, codebooks ({epochs} epochs)")
            run = train_models(protocol, epochs, 1 if args.quick else args.dpq_epochs, args.seed, kind)
            key = f"{protocol}|{kind}"
            config = TransformConfig(epochs=2) if args.quick else TransformConfig()
            result["runs"][key] = {"test": evaluate(run, config, "test"), "val": evaluate(run, config, "val")}
            log(f"  gain {100 * result['runs'][key]['test']['gain']:.1f} % (test)")
            write(result, wall, args.quick)  # after every run: a long run leaves what it measured
            if args.sweep and kind == "dual_tuning":
                result["sweep"][key] = {
                    name: evaluate(run, TransformConfig(**change), "val") for name, change in SWEEP.items()
                }
                write(result, wall, args.quick)
    log(markdown(result))
    return 0


def write(result: dict[str, Any], wall: float, quick: bool) -> None:
    result["wall_seconds"] = time.perf_counter() - wall
    result["load_now"] = [round(x, 2) for x in os.getloadavg()]
    stem = "transform-quick" if quick else "transform"
    out = RESULTS if not quick else Path("/tmp")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float))
    (out / f"{stem}.md").write_text(markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
