"""DPQ codebooks against faiss's own quantizers, at equal bits, on the same features.

    python -m bench.quant            # full run (≈ 15–20 min on 2 busy cores)
    python -m bench.quant --quick    # smoke run (≈ 2 min)

Feature sets (codebooks and peers are trained on the *train* split, everything is measured on
the held-out *test* split; ``--split val`` measures on validation instead, for tuning):
- ``mnist_new``: the new model (3-conv, Dual-Tuning against the old one) on MNIST-5k;
- ``mnist_old``: the old model (2-conv, plain CE) on MNIST-5k;
- ``pixels_rp``: a seeded Gaussian random projection of MNIST-5k pixels to d, L2-normalised;
- ``synth100``: a 2-conv model trained briefly on a 100-class procedural image set.

Methods: DPQ (one training with M = max_bits/8 blocks serves every prefix), DPQ without the
label term (λ = 0), faiss PQ, OPQ+PQ, RQ beam 1 and 5, LSQ; float is the ceiling row. Metrics:
label mAP (leave-one-out, asymmetric: float query vs decoded gallery, tie-aware), ANN 1-recall@1
and @10 of the exact float nearest neighbour (tie-aware), relative reconstruction error
Σ‖x − x̂‖²/Σ‖x‖², training seconds, encode µs per vector. Search speed and bytes per item are
measured on synthetic random galleries (numpy, not a model). An optional section fine-tunes
the new backbone with the DPQ loss (end-to-end) and re-checks compatibility with the old model.

Writes bench/results/quant.json, quant.md and quant_<metric>.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from hotswap.components.compat.dual_tuning import DEFAULT_CONFIG, train_compatible
from hotswap.components.compat.metrics import retrieval_metrics
from hotswap.components.compat.objective import CompatObjective
from hotswap.components.compat.target_constants import class_map_lookup, identity_class_map, old_prototypes
from hotswap.components.core.configs import DPQConfig
from hotswap.components.data.bundled import load_mnist5k, make_synthetic
from hotswap.components.data.images import ImageSet
from hotswap.components.models.backbones import BackboneSpec, EmbeddingModel, build_model
from hotswap.components.models.training import TrainConfig, extract_features, train_model
from hotswap.components.quant.dpq import DPQCodebooks
from hotswap.components.quant.dpq_joint import finetune_with_dpq
from hotswap.components.quant.dpq_training import train_dpq
from hotswap.components.quant.index import build_flat_index, build_ivf_index, bytes_per_item, search

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("pq", "opq", "rq1", "rq5", "lsq")
METRICS = ("map", "recall1", "recall10", "rel_error", "train_s", "encode_us")


@dataclass
class FeatureSet:
    name: str
    description: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    head: torch.nn.Module | None  # the model's classifier for DPQ's label term (None: class means)


# --------------------------------------------------------------------------- feature sets


def _train(arch: str, data: ImageSet, epochs: int, seed: int, dim: int) -> EmbeddingModel:
    torch.manual_seed(seed)
    model = build_model(BackboneSpec(arch=arch, num_classes=data.num_classes, embedding_dim=dim))
    train_model(model, data.split("train"), TrainConfig(epochs=epochs, seed=seed), progress=False)
    return model


def _split(features: np.ndarray, data: ImageSet, split: str) -> tuple[np.ndarray, ...]:
    train, held = data.splits == "train", data.splits == split
    return features[train], data.labels[train], features[held], data.labels[held]


def build_feature_sets(args: argparse.Namespace) -> tuple[list[FeatureSet], dict]:
    """Train the models once and extract every feature set; returns them and the models."""
    mnist = load_mnist5k(seed=args.seed)
    start = time.perf_counter()
    old = _train("small", mnist, args.model_epochs, args.seed, args.dim)
    new, _ = train_compatible(
        old,
        BackboneSpec(arch="large", num_classes=10, embedding_dim=args.dim),
        mnist.split("train"),
        DEFAULT_CONFIG,
        TrainConfig(epochs=args.model_epochs, seed=args.seed),
        progress=False,
    )
    print(f"[models] old + new trained in {time.perf_counter() - start:.0f}s", flush=True)
    sets = []
    wanted = set(args.feature_sets)
    if "mnist_new" in wanted:
        feats = extract_features(new, mnist)
        sets.append(
            FeatureSet(
                "mnist_new",
                "new model (3-conv, Dual-Tuning), MNIST-5k",
                *_split(feats, mnist, args.split),
                new.head,
            )
        )
    if "mnist_old" in wanted:
        feats = extract_features(old, mnist)
        sets.append(
            FeatureSet(
                "mnist_old", "old model (2-conv, CE), MNIST-5k", *_split(feats, mnist, args.split), old.head
            )
        )
    if "pixels_rp" in wanted:
        rng = np.random.default_rng(args.seed)
        pixels = mnist.native_inputs().reshape(len(mnist), -1)
        proj = pixels @ rng.standard_normal((pixels.shape[1], args.dim)).astype(np.float32)
        proj /= np.linalg.norm(proj, axis=1, keepdims=True)
        sets.append(
            FeatureSet(
                "pixels_rp",
                f"random projection of MNIST-5k pixels to d={args.dim}",
                *_split(proj.astype(np.float32), mnist, args.split),
                None,
            )
        )
    if "synth100" in wanted:
        synth = make_synthetic(args.synth_items, args.synth_classes, seed=args.seed)
        model = _train("small", synth, args.synth_epochs, args.seed, args.dim)
        feats = extract_features(model, synth)
        sets.append(
            FeatureSet(
                "synth100",
                f"2-conv model, {args.synth_classes}-class synthetic "
                f"({args.synth_items} items, {args.synth_epochs} epochs)",
                *_split(feats, synth, args.split),
                model.head,
            )
        )
    return sets, {"old": old, "new": new, "mnist": mnist}


# --------------------------------------------------------------------------- metrics


def ann_recall(queries: np.ndarray, gallery: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[int, float]:
    """1-recall@k of the exact float nearest neighbour (self excluded), expected over random tie order."""
    exact = queries @ queries.T
    np.fill_diagonal(exact, -np.inf)
    nearest = exact.argmax(axis=1)
    scores = queries @ gallery.T
    np.fill_diagonal(scores, -np.inf)
    target = scores[np.arange(len(queries)), nearest][:, None]
    above, tied = (scores > target).sum(1), (scores == target).sum(1)
    return {k: float(np.mean(np.clip((k - above) / tied, 0.0, 1.0))) for k in ks}


def quality(x: np.ndarray, y: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    recall = ann_recall(x, decoded)
    return {
        "map": retrieval_metrics(x, y, decoded, y, exclude_self=True).map,
        "recall1": recall[1],
        "recall10": recall[10],
        "rel_error": float(((x - decoded) ** 2).sum() / (x**2).sum()),
    }


def float_row(fs: FeatureSet) -> dict:
    return {
        "set": fs.name,
        "method": "float",
        "bits": 32 * fs.test_x.shape[1],
        "map": retrieval_metrics(fs.test_x, fs.test_y).map,
        "recall1": 1.0,
        "recall10": 1.0,
        "rel_error": 0.0,
        "train_s": 0.0,
        "encode_us": 0.0,
    }


# --------------------------------------------------------------------------- codecs


def faiss_codec(method: str, d: int, bits: int) -> faiss.Index:
    """A faiss codec at ``bits`` (8-bit sub-codes); 'np' = no polysemous training (not a codec step)."""
    m = bits // 8
    factory = {
        "pq": f"PQ{m}x8np",
        "opq": f"OPQ{m},PQ{m}x8np",
        "rq1": f"RQ{m}x8",
        "rq5": f"RQ{m}x8",
        "lsq": f"LSQ{m}x8",
    }[method]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if method.startswith("rq"):
        index.rq.max_beam_size = 1 if method == "rq1" else 5
    return index


def run_peer(fs: FeatureSet, method: str, bits: int) -> dict:
    index = faiss_codec(method, fs.train_x.shape[1], bits)
    start = time.perf_counter()
    index.train(fs.train_x)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    codes = index.sa_encode(fs.test_x)
    encode_us = 1e6 * (time.perf_counter() - start) / len(fs.test_x)
    decoded = index.sa_decode(codes)
    return {
        "set": fs.name,
        "method": method,
        "bits": bits,
        **quality(fs.test_x, fs.test_y, decoded),
        "train_s": train_s,
        "encode_us": encode_us,
    }


def run_dpq(fs: FeatureSet, bits: list[int], config: DPQConfig, name: str) -> tuple[list[dict], DPQCodebooks]:
    """One DPQ training with max(bits)/8 blocks; every shorter code is a prefix of its codes."""
    config = config.model_copy(update={"n_blocks": max(bits) // 8})
    labels = fs.train_y if config.label_weight > 0 else None
    head = fs.head if config.label_weight > 0 else None
    codebooks = train_dpq(fs.train_x, labels, head, config)
    rows = []
    for b in bits:
        m = b // 8
        start = time.perf_counter()
        codes = codebooks.encode(fs.test_x, n_blocks=m)
        encode_us = 1e6 * (time.perf_counter() - start) / len(fs.test_x)
        rows.append(
            {
                "set": fs.name,
                "method": name,
                "bits": b,
                **quality(fs.test_x, fs.test_y, codebooks.decode(codes)),
                "train_s": codebooks.train_seconds,
                "encode_us": encode_us,
            }
        )
    return rows, codebooks


# --------------------------------------------------------------------------- search speed


def _ms_per_query(fn, n_queries: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / n_queries


def search_speed(sizes: list[int], d: int, n_queries: int, seed: int) -> list[dict]:
    """ms/query (k = 10, one thread) and bytes/item on random unit vectors; DPQ at 32 bits."""
    rng = np.random.default_rng(seed)
    n_max = max(sizes)
    x = rng.standard_normal((n_max, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, d), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sample = x[: min(20_000, n_max)]
    codebooks = train_dpq(sample, config=DPQConfig(n_blocks=4, epochs=2, label_weight=0.0))
    start = time.perf_counter()
    codes = codebooks.encode(x)
    print(f"[search] encoded {n_max} vectors in {time.perf_counter() - start:.1f}s", flush=True)
    pq = faiss.index_factory(d, "PQ4x8np", faiss.METRIC_INNER_PRODUCT)
    pq.train(sample)
    rows = []
    for n in sizes:
        ids = np.arange(n, dtype=np.int64)
        flat_float = faiss.IndexFlatIP(d)
        flat_float.add(x[:n])
        pq.reset()
        pq.add(x[:n])
        dpq_flat = build_flat_index(codebooks.codebooks, codes[:n], ids)
        dpq_ivf = build_ivf_index(codebooks.codebooks, codes[:n], ids)
        exact_top = search(dpq_flat, q, 10).ids
        cases = [
            ("float IndexFlatIP (exact)", flat_float, None, 4 * d),
            ("faiss PQ4x8 (IP ADC)", pq, None, pq.code_size),
            ("DPQ 32 bit, flat RQ LUT", dpq_flat, None, bytes_per_item(dpq_flat)),
        ] + [(f"DPQ 32 bit, IVF256 nprobe {p}", dpq_ivf, p, bytes_per_item(dpq_ivf)) for p in (1, 8, 32)]
        for name, index, nprobe, nbytes in cases:
            if nprobe is None:
                ms = _ms_per_query(lambda index=index: index.search(q, 10), n_queries)
                found = index.search(q, 10)[1]
            else:
                ms = _ms_per_query(lambda index=index, p=nprobe: search(index, q, 10, nprobe=p), n_queries)
                found = search(index, q, 10, nprobe=nprobe).ids
            same = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact_top, strict=True)]))
            rows.append(
                {
                    "gallery": n,
                    "index": name,
                    "ms_per_query": ms,
                    "bytes_per_item": int(nbytes),
                    "overlap_with_dpq_flat_top10": same if "DPQ" in name else None,
                }
            )
        print(f"[search] {n}: " + ", ".join(f"{r['index']}={r['ms_per_query']:.2f}ms" for r in rows[-6:]))
    return rows


# --------------------------------------------------------------------------- joint (end-to-end) option


def joint_training(models: dict, args: argparse.Namespace, config: DPQConfig) -> dict:
    """Two-step vs joint: fine-tune the new model k more epochs with its Dual-Tuning objective,
    once without and once with the DPQ loss on the backbone; compare quantized mAP at short codes
    and cross-model compatibility (new queries against the old model's float gallery)."""
    old, new, mnist = models["old"], models["new"], models["mnist"]
    train, held = mnist.split("train"), mnist.split(args.split)
    old.eval().requires_grad_(False)
    lookup = class_map_lookup(identity_class_map(10), 10, 10)
    protos = old_prototypes(old, train, 10)
    objective = CompatObjective(old, DEFAULT_CONFIG, protos, lookup)
    config = config.model_copy(update={"n_blocks": 2})
    train_config = TrainConfig(epochs=args.joint_epochs, lr=args.joint_lr, seed=args.seed)
    old_feats = extract_features(old, held)
    old_old = retrieval_metrics(old_feats, held.labels).map
    out = {"old_old_map": old_old, "epochs": args.joint_epochs, "lr": args.joint_lr, "variants": {}}
    base_books = train_dpq(extract_features(new, train), train.labels, new.head, config)
    for name, weight in (("two-step", 0.0), ("joint", args.joint_weight)):
        model = copy.deepcopy(new)
        start = time.perf_counter()
        tuned_books, _ = finetune_with_dpq(model, train, base_books, train_config, config, objective, weight)
        seconds = time.perf_counter() - start
        if weight == 0.0:  # two-step: codebooks retrained on the fine-tuned features afterwards
            tuned_books = train_dpq(extract_features(model, train), train.labels, model.head, config)
        feats = extract_features(model, held)
        codes = tuned_books.encode(feats)
        row = {
            "seconds": seconds,
            "quant_weight": weight,
            "new_old_map": retrieval_metrics(feats, held.labels, old_feats, held.labels).map,
            "new_new_float_map": retrieval_metrics(feats, held.labels).map,
        }
        for m in (1, 2):
            row[f"map_{8 * m}bit"] = quality(feats, held.labels, tuned_books.decode(codes, m))["map"]
            row[f"recall10_{8 * m}bit"] = quality(feats, held.labels, tuned_books.decode(codes, m))[
                "recall10"
            ]
        row["compatible"] = row["new_old_map"] > old_old
        out["variants"][name] = row
        print(f"[joint] {name}: {row}", flush=True)
    return out


# --------------------------------------------------------------------------- reporting


def write_plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["set"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "float"))
    names = []
    for metric in METRICS:
        fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False)
        for ax, s in zip(axes[0], sets, strict=True):
            for method in methods:
                pts = sorted((r["bits"], r[metric]) for r in rows if r["set"] == s and r["method"] == method)
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
            ceiling = [r for r in rows if r["set"] == s and r["method"] == "float"]
            if ceiling and metric in ("map",):
                ax.axhline(ceiling[0][metric], color="k", ls="--", lw=1, label="float")
            ax.set_xscale("log", base=2)
            ax.set_title(s)
            ax.set_xlabel("bits")
            if metric in ("train_s", "encode_us"):
                ax.set_yscale("log")
        axes[0][0].set_ylabel(metric)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        name = f"quant_{metric}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def _table(rows: list[dict], cols: list[str], fmt: dict[str, str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [format(r[c], fmt.get(c, "")) if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(result: dict, out: Path) -> None:
    rows = result["rows"]
    fmt = {
        "map": ".4f",
        "recall1": ".3f",
        "recall10": ".3f",
        "rel_error": ".4f",
        "train_s": ".2f",
        "encode_us": ".1f",
        "ms_per_query": ".3f",
        "overlap_with_dpq_flat_top10": ".3f",
    }
    parts = [
        "# Quantizers at equal bits: DPQ vs faiss (bench/quant.py)",
        "",
        f"Machine: {result['machine']}; threads: {result['threads']}; split measured: "
        f"`{result['split']}`; wall time {result['wall_s']:.0f}s. Codebooks and peers train on the "
        "train split. mAP: leave-one-out, float query vs decoded gallery, tie-aware. recall@k: "
        "the exact float nearest neighbour within the top k (tie-aware). DPQ is trained once "
        "(max bits) and every shorter code is a prefix, so its train_s is the same on every row.",
        "",
        f"DPQ config: `{json.dumps(result['dpq_config'])}`",
    ]
    for s in dict.fromkeys(r["set"] for r in rows):
        desc = result["feature_sets"][s]
        parts += ["", f"## {s}: {desc}", ""]
        sub = sorted((r for r in rows if r["set"] == s), key=lambda r: (r["method"] != "float", r["bits"]))
        parts.append(_table(sub, ["bits", "method", *METRICS], fmt))
    if result.get("search"):
        parts += ["", f"## Search speed on random unit vectors (d = {result['dim']}, k = 10, 1 thread)", ""]
        parts.append(
            _table(
                result["search"],
                ["gallery", "index", "ms_per_query", "bytes_per_item", "overlap_with_dpq_flat_top10"],
                fmt,
            )
        )
    if result.get("joint"):
        j = result["joint"]
        parts += [
            "",
            f"## End-to-end option (new model, +{j['epochs']} epochs, lr {j['lr']})",
            "",
            f"M(old,old) = {j['old_old_map']:.4f}; compatible = M(new→old) > M(old,old).",
            "",
        ]
        vrows = [{"variant": k, **v} for k, v in j["variants"].items()]
        cols = [
            "variant",
            "quant_weight",
            "map_8bit",
            "map_16bit",
            "recall10_8bit",
            "recall10_16bit",
            "new_new_float_map",
            "new_old_map",
            "compatible",
            "seconds",
        ]
        parts.append(_table(vrows, cols, {c: ".4f" for c in cols} | {"seconds": ".0f"}))
    parts += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in result["plots"]), ""]
    (out / "quant.md").write_text("\n".join(parts))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: small sets, 8/16/32 bits, 20k gallery")
    p.add_argument("--bits", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--methods", nargs="+", default=list(PEERS), choices=PEERS)
    p.add_argument("--feature-sets", nargs="+", default=["mnist_new", "mnist_old", "pixels_rp", "synth100"])
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--model-epochs", type=int, default=8)
    p.add_argument("--synth-items", type=int, default=10_000)
    p.add_argument("--synth-classes", type=int, default=100)
    p.add_argument("--synth-epochs", type=int, default=4)
    p.add_argument("--search-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--joint", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--joint-epochs", type=int, default=2)
    p.add_argument("--joint-lr", type=float, default=5e-4)
    p.add_argument("--joint-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if any(b % 8 or b < 8 for b in args.bits):
        p.error(f"--bits must be multiples of 8, got {args.bits}")
    if args.quick:
        args.bits = [b for b in args.bits if b <= 32]
        args.model_epochs, args.synth_items, args.synth_epochs = 3, 3000, 2
        args.search_sizes, args.queries, args.joint_epochs = [20_000], 50, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    try:  # numpy's OpenBLAS threads stall on a busy machine just like torch's OpenMP threads
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        print("threadpoolctl not installed: numpy BLAS threads are not limited")
    args.out.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter()
    config = DPQConfig(seed=args.seed)
    sets, models = build_feature_sets(args)
    rows: list[dict] = []
    for fs in sets:
        rows.append(float_row(fs))
        dpq_rows, _ = run_dpq(fs, args.bits, config, "dpq")
        rows += dpq_rows
        rows += run_dpq(fs, args.bits, config.model_copy(update={"label_weight": 0.0}), "dpq_unsup")[0]
        for method in args.methods:
            for bits in args.bits:
                rows.append(run_peer(fs, method, bits))
        print(
            f"[{fs.name}] "
            + "; ".join(
                f"{r['method']}@{r['bits']}: mAP {r['map']:.3f} R@10 {r['recall10']:.3f}"
                for r in rows
                if r["set"] == fs.name
            ),
            flush=True,
        )
    result = {
        "machine": f"{platform.machine()} CPU with {os.cpu_count()} cores (shared), "
        f"{torch.get_num_threads()} torch thread(s), "
        f"faiss {faiss.__version__}, torch {torch.__version__}",
        "threads": args.threads,
        "split": args.split,
        "dim": args.dim,
        "bits": args.bits,
        "dpq_config": config.model_copy(update={"n_blocks": max(args.bits) // 8}).model_dump(),
        "feature_sets": {fs.name: fs.description for fs in sets},
        "sizes": {fs.name: {"train": len(fs.train_x), "test": len(fs.test_x)} for fs in sets},
        "rows": rows,
        "search": search_speed(args.search_sizes, args.dim, args.queries, args.seed)
        if args.search_sizes
        else [],
        "joint": joint_training(models, args, config) if args.joint else None,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
    }
    result["plots"] = write_plots(rows, args.out)
    result["wall_s"] = time.perf_counter() - wall
    (args.out / "quant.json").write_text(json.dumps(result, indent=2, default=float))
    write_markdown(result, args.out)
    print(f"wrote {args.out / 'quant.md'} in {result['wall_s']:.0f}s")
    return result


if __name__ == "__main__":
    main()
