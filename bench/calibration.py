"""Mixed-gallery score calibration: backfill curves ranked raw vs calibrated, per rule, real models.

MNIST-5k (split seed 0). Old model: "small" (d = 64) on digits 0-4 of the train split; new model:
"large", Dual-Tuning on all ten digits, as in bench/backfill.py. Two compatible new models:

- ``default``: the project's default Dual-Tuning settings (well aligned with the old space);
- ``less_calibrated``: the earlier weights (prototype 1, O2N 0.2, softmax prototypes), whose
  new/old similarities sit far below new/new ones — the case where a mixed gallery dips.

and a third dataset, ``digits8x8``: the small digits set bundled with scikit-learn (1,797 8×8
images, upsampled to 28×28; a "digits dataset that is not MNIST-5k"), same protocol (old on 0-4,
default Dual-Tuning new on all ten, seeded 60/20/20 split per class).

For each, new-model queries, leave-one-out, 22-point backfill curve (uncertainty ordering, the
default, and one random ordering), float features and as served (both segments through the new
DPQ codebooks, as a partial backfill stores them). Every calibration rule of
components/compat/calibration_fitting.py is fitted on the *val* split (as the pipeline does) and the curves
are reported on val (where the default rule is chosen) and on test (never used for fitting or choosing).
Per curve: skip (f = 0), the value at f = 1/21 (4.8 %), the minimum, the minimum minus skip (below
zero = the curve dips under skip), and the AUC (mean of the 22 points).

Run from the repository root:
    python -m bench.calibration            # -> bench/results/calibration.{json,md}
    python -m bench.calibration --quick    # 2 epochs -> bench/results/calibration-quick.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hotswap.components.compat.calibration_fitting import CALIBRATION_RULES, fit_calibration
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.core.configs import DEFAULT_RULE, CalibrationConfig, DPQConfig
from hotswap.components.data.bundled import in_memory_set
from hotswap.components.data.images import ImageSet, stratified_splits
from hotswap.components.decision.ordering import backfill_curve, backfill_order, random_order
from hotswap.components.models.backbones import BackboneSpec, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model
from hotswap.components.quant.dpq_training import train_dpq

from bench.backfill import EMBEDDING_DIM, LESS_CALIBRATED, OLD_CLASSES, train_mnist_models

RESULTS = Path(__file__).parent / "results"
METRICS = ("map", "top1")


def log(message: str) -> None:
    print(message, flush=True)


def load_digits8x8(seed: int = 0) -> ImageSet:
    """scikit-learn's bundled 8×8 digits (no download), bilinearly upsampled to 28×28 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]
    images = torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)
    labels = np.asarray(digits.target, dtype=np.int64)
    return in_memory_set(
        images.clamp(0, 1).numpy(),
        labels,
        item_ids=np.array([f"digits8x8-{i:04d}" for i in range(len(labels))]),
        splits=stratified_splits(labels, seed=seed),
        class_names=tuple(str(i) for i in range(10)),
        name="digits8x8",
    )


def train_models(data: ImageSet, epochs: int, dpq_epochs: int, seed: int) -> dict[str, Any]:
    """bench/backfill.py's protocol on another dataset: old small net on 0-4, default Dual-Tuning."""
    train = data.split("train")
    old_train = train.with_classes(OLD_CLASSES)
    old = build_model(
        BackboneSpec(arch="small", embedding_dim=EMBEDDING_DIM, num_classes=len(OLD_CLASSES)), seed
    )
    train_model(old, old_train, TrainConfig(epochs=epochs, seed=seed), progress=False)
    new, _ = train_compatible(
        old,
        BackboneSpec(arch="large", embedding_dim=EMBEDDING_DIM, num_classes=10),
        train,
        DEFAULT_CONFIG,
        train_config=TrainConfig(epochs=epochs, seed=seed + 1),
        progress=False,
    )
    new_books = train_dpq(
        extract_features(new, train), train.labels, new.head, DPQConfig(epochs=dpq_epochs, seed=seed)
    )
    return {"data": data, "old": old, "new": new, "new_books": new_books}


def curve_summary(curve: Any, metric: str) -> dict[str, float]:
    values = curve.values(metric)
    return {
        "skip": values[0],
        "at_4.8%": values[1],
        "min": min(values),
        "min_minus_skip": min(values) - values[0],
        "auc": float(np.mean(values)),
        "full": values[-1],
    }


def scenario(models: dict[str, Any], name: str) -> dict[str, Any]:
    """Calibrations fitted on val; curves for every rule, ordering and view on val and test."""
    data = models["data"]
    books = models["new_books"]
    transform = {"float": None, "served": lambda x: books.decode(books.encode(x))}
    feats = {}
    for split in ("val", "test"):
        part = data.split(split)
        feats[split] = {
            "old": extract_features(models["old"], part),
            "new": extract_features(models["new"], part),
            "labels": part.labels,
        }
    out: dict[str, Any] = {"name": name, "views": {}}
    prototypes = models["old"].head.weight.detach().numpy()
    for view, fn in transform.items():
        fit = feats["val"]
        gallery = {"1": fit["old"], "2": fit["new"]} if fn is None else {
            "1": fn(fit["old"]), "2": fn(fit["new"])
        }  # fmt: skip
        calibrations = {
            rule: fit_calibration("2", fit["new"], fit["labels"], gallery, rule=rule)
            for rule in CALIBRATION_RULES
        }
        view_out: dict[str, Any] = {
            "maps": {r: c.maps["1"].model_dump() for r, c in calibrations.items()},
            "stats": {m: s.model_dump() for m, s in calibrations["identity"].stats.items()},
            "curves": {},
        }
        for split in ("val", "test"):
            f = feats[split]
            orders = {
                "uncertainty": backfill_order("uncertainty", f["old"], prototypes=prototypes),
                "random": random_order(len(f["old"]), 0),
            }
            for ordering, order in orders.items():
                for rule, cal in calibrations.items():
                    curve = backfill_curve(
                        f["new"], f["labels"], f["old"], f["new"], order, transform=fn, calibration=cal
                    )
                    key = f"{split}/{ordering}/{rule}"
                    view_out["curves"][key] = {
                        "values": {m: curve.values(m) for m in METRICS},
                        **{m: curve_summary(curve, m) for m in METRICS},
                    }
                    s = view_out["curves"][key]["map"]
                    log(
                        f"  {name} {view:6s} {key:28s} skip {s['skip']:.4f}  4.8% {s['at_4.8%']:.4f}  "
                        f"min-skip {s['min_minus_skip']:+.4f}  auc {s['auc']:.4f}"
                    )
        out["views"][view] = view_out
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Mixed-gallery score calibration (bench/calibration.py)",
        "",
        f"Machine: {result['machine']}. Settings: {result['settings']}. "
        f"Total {result['total_seconds']:.0f} s.",
        "",
        "Calibrations fitted on val; new-model queries, leave-one-out, 22-point backfill curve.",
        "`min − skip` < 0 means the curve falls below not backfilling at some fraction.",
        "",
    ]
    for sc in result["scenarios"].values():
        for view, v in sc["views"].items():
            lines += [
                f"## {sc['name']} — {view}",
                "",
                "| split / ordering / rule | skip mAP | mAP at 4.8 % | min mAP | min − skip | AUC mAP "
                "| min top-1 − skip | AUC top-1 |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for key, c in v["curves"].items():
                m, t = c["map"], c["top1"]
                lines.append(
                    f"| {key} | {m['skip']:.4f} | {m['at_4.8%']:.4f} | {m['min']:.4f} "
                    f"| {m['min_minus_skip']:+.4f} | {m['auc']:.4f} "
                    f"| {t['min_minus_skip']:+.4f} | {t['auc']:.4f} |"
                )
            lines += [
                "",
                "Maps of the old segment (relative to the new model's own scores): "
                + "; ".join(f"{r}: ×{mp['scale']:.3f} {mp['offset']:+.3f}" for r, mp in v["maps"].items()),
                "",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 training epochs, for a smoke run")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; quick 2)")
    parser.add_argument("--dpq-epochs", type=int, default=None, help="DPQ epochs (default 20; quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-weak", action="store_true", help="skip the less calibrated compat model")
    parser.add_argument("--no-digits", action="store_true", help="skip the scikit-learn 8x8 digits set")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 8)
    dpq_epochs = args.dpq_epochs if args.dpq_epochs is not None else (2 if args.quick else 20)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "quick": args.quick,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}",
        "settings": {
            "epochs": epochs,
            "dpq_epochs": dpq_epochs,
            "old_classes": list(OLD_CLASSES),
            "default_rule": DEFAULT_RULE,
            "calibration": CalibrationConfig().model_dump(),
        },
        "scenarios": {},
    }
    configs = (
        {"default": DEFAULT_CONFIG}
        if args.no_weak
        else {"default": DEFAULT_CONFIG, "less_calibrated": LESS_CALIBRATED}
    )
    for name, compat in configs.items():
        log(f"training {name}")
        models = train_mnist_models(epochs, dpq_epochs, seed=0, compat=compat)
        result["scenarios"][name] = scenario(models, name)
    result["total_seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    out = "calibration-quick" if args.quick else "calibration"
    (RESULTS / f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{out}.md").write_text(markdown(result))
    log(f"wrote bench/results/{out}.json and .md in {result['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
