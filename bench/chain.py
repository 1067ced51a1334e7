"""Chain benchmark: many upgrades in a row, each refresh deciding by itself, as a live system would.

A class-incremental chain: the first model knows a few classes; each later version is trained on
the classes seen so far and goes through the real ``refresh`` flow with auto-promotion (training,
validation, search when needed, codebooks, decision, backfill, switch) in a throw-away home.
After every step the live system is measured *as served*: queries embedded by the champion,
against the live gallery's stored DPQ codes decoded (the asymmetric search the faiss index runs),
leave-one-out over the gallery items. Policies compared on the same chain:

- ``default``        the default settings: every decision is the refresh's own;
- ``always-full``    every refresh re-extracts the whole gallery (``decision.policy = "full"``);
- ``always-skip``    no refresh ever re-extracts (``decision.policy = "skip"``);
- ``champion-only``  compatible training against the champion alone (``compat.targets = "champion"``).

Three chains: MNIST-5k (digits arriving 4, 6, 8, 10), a procedural 100-class set (25 at a time)
and ``rgb``, rendered RGB shapes that no default was tuned on (bench/rgb_shapes.py: 40 classes
arriving 10 at a time, val and gallery in drawing styles never trained on), written as PNG files
and read through a manifest like a team's own data.

Auto-promotion follows the chosen option (DESIGN.md §16): a step's challenger goes live when its
decision is promotable, i.e. the option beats live as served, with a blessing only for options
that keep old features (a full backfill needs none; always-full no longer stalls on the
compatibility gate). A decision that is not promotable waits for a reviewer, which in a chain
means it stays unpromoted, and its gallery is only planned (built on approval), so it reads no
images.

Per step: live mAP and top-1, the decision, whether it was promotable (and why) and promoted,
gallery images read (embedded by the step's new model in the gallery version its backfill
wrote: promoted, or prebuilt for review; a transform reads none), the transform option's own
quality as served and its share of the full upgrade's gain, (transform − skip)/(full − skip),
from the decision's table, the seconds spent, and the live gallery's share per model version.
Over the chain: AC and AM (components/compat/audit.py) of the models that were live, on the
validation split of every class.

``--set compat.rehearsal_weight=0.5`` (dotted key, JSON value; repeatable) adds a setting to every
step of every policy: that is how the ablations of docs/benchmarks.md are run.

The class subset of a refresh is the ``data.classes`` setting; the policies use
``decision.policy`` and ``compat.targets``. Where the installed hotswap lacks one of these
fields the step fails with one line naming it, and the chain records that failure.

Run from the repository root:
    python -m bench.chain                      # both chains (MNIST-5k 0-3 ... 0-9; synthetic 25 ... 100)
    python -m bench.chain --chains mnist --policies default always-full
    python -m bench.chain --quick              # 2-step synthetic chain, tiny training -> chain-quick.*
    python -m bench.chain --chains rgb --name chain-rgb
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Chain:
    """A class-incremental chain: the data source and the classes each step trains on.

    ``prepare`` (optional) writes the chain's data under a folder and returns the source to read
    (a manifest's path); ``source`` is used as is otherwise.
    """

    name: str
    source: str
    steps: tuple[tuple[int | str, ...], ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    prepare: Callable[[Path], str] | None = None


def _upto(*stops: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(range(stop)) for stop in stops)


def _rgb_shapes(folder: Path) -> str:
    from bench.rgb_shapes import write_rgb_shapes

    return str(write_rgb_shapes(folder / "rgb-shapes", n_classes=40, per_class=60))


CHAINS: dict[str, Chain] = {
    "mnist": Chain(
        "mnist", "mnist5k", _upto(4, 6, 8, 10), description="MNIST-5k, digits 0-3 > 0-5 > 0-7 > 0-9"
    ),
    "synthetic": Chain(
        "synthetic",
        "synthetic:6000:100",
        _upto(25, 50, 75, 100),
        description="procedural images, 100 classes (6,000 items) arriving 25 at a time",
    ),
    "rgb": Chain(
        "rgb",
        "manifest",
        tuple(tuple(f"shape{c:02d}" for c in range(stop)) for stop in (10, 20, 30, 40)),
        description="rendered RGB shapes (bench/rgb_shapes.py), 40 classes (2,400 items) arriving 10 at "
        "a time; val and gallery in held-out styles; read from a manifest",
        prepare=_rgb_shapes,
    ),
}
QUICK = Chain(
    "quick",
    "synthetic:1200:8",
    _upto(4, 8),
    overrides={
        "data": {"image_size": 16},
        "training": {"epochs": 2, "embedding_dim": 32},
        "dpq": {"epochs": 3, "n_blocks": 2, "n_codewords": 64, "kmeans_iters": 5},
        "decision": {"partial_fractions": [0.25, 0.5], "timing_repeats": 1, "timing_sample": 64},
        "compat_search": {"max_trials": 2},
    },
    description="smoke run: procedural images, 8 classes, 4 then 8",
)
POLICIES: dict[str, dict[str, Any]] = {
    "default": {},
    "always-full": {"decision": {"policy": "full"}},
    "always-skip": {"decision": {"policy": "skip"}},
    "champion-only": {"compat": {"targets": "champion"}},
}


class ChainSettingsError(RuntimeError):
    """A step's settings are not accepted by the installed hotswap (e.g. a field it lacks)."""


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: ``extra`` wins; sub-dicts are merged, not replaced."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["compat.rehearsal_weight=0.5", ...]`` → nested overrides (values parsed as JSON, else text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE, e.g. compat.proto_weight=4")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        for part in reversed(key.split(".")):
            value = {part: value}
        out = merge(out, value)
    return out


def step_overrides(
    chain: Chain,
    policy: str,
    step: int,
    home: Path,
    num_classes: int,
    source: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings of one step: the chain's data and size, the policy, the step's classes."""
    classes = list(chain.steps[step])
    overrides = merge(
        {"home": str(home), "model_name": f"chain-{chain.name}", "data": {"source": source or chain.source}},
        chain.overrides,
    )
    overrides = merge(overrides, POLICIES[policy])
    overrides = merge(overrides, extra or {})
    if step == 0:
        overrides = merge(overrides, {"data": {"bootstrap_classes": classes}})
    elif len(classes) < num_classes:  # the full class set is the data set itself: no subset field needed
        overrides = merge(overrides, {"data": {"classes": classes}})
    return overrides


def unknown_fields(model: type, values: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names in ``values`` that the settings model (or its sub-models) does not define.

    Needed because some settings sections ignore unknown keys instead of rejecting them, and a
    chain step whose class subset were silently dropped would measure the wrong thing.
    """
    from pydantic import BaseModel

    missing = []
    for key, value in values.items():
        field = model.model_fields.get(key)
        if field is None:
            missing.append(prefix + key)
            continue
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            missing += unknown_fields(sub, value, f"{prefix}{key}.")
    return missing


def check_settings(overrides: dict[str, Any], where: str) -> None:
    """Fail with one line when the installed settings lack or reject a field the chain needs."""
    from hotswap.components.core.settings import HotswapSettings
    from pydantic import ValidationError

    missing = unknown_fields(HotswapSettings, overrides)
    if missing:
        raise ChainSettingsError(f"{where}: settings field(s) {', '.join(missing)} unknown to this hotswap")
    try:
        HotswapSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ChainSettingsError(f"{where}: settings rejected ({problems})") from None


def live_quality(overrides: dict[str, Any]) -> dict[str, Any]:
    """The live system as served: champion queries vs the live gallery's decoded DPQ codes,
    a mixed gallery ranked by its stored calibration for the champion (identity when single-model).

    Leave-one-out over the gallery's items (each query's own row excluded). Also returns the
    gallery's share of items per model version (its provenance).
    """
    from hotswap.components.compat.metrics import retrieval_metrics
    from hotswap.components.data.catalog import gallery_items
    from hotswap.components.gallery.calibration import calibration_for
    from hotswap.components.gallery.provenance import feature_models, feature_spaces
    from hotswap.components.models.training import extract_features
    from hotswap.components.registry.records import CHAMPION
    from hotswap.tasks.context import gallery_store, registry, settings_from
    from hotswap.tasks.quantization import load_codebooks

    settings = settings_from(overrides)
    reg = registry(settings)
    champion = reg.resolve(CHAMPION).version
    galleries = gallery_store(settings)
    live = galleries.read_current(settings.gallery_name)
    manifest = galleries.load_manifest(settings.gallery_name, live)
    arrays = galleries.load_arrays(settings.gallery_name, live)
    data = gallery_items(settings)
    rows = {item: i for i, item in enumerate(data.item_ids)}
    index = np.array([rows[str(item)] for item in arrays.ids])
    labels = data.labels[index]
    codebooks = load_codebooks(settings, manifest.codebook_version or manifest.model_version)
    served = codebooks.decode(arrays.codes) if arrays.codes is not None else arrays.features
    # each query is read through the champion's own preprocessing, as the service reads it
    queries = extract_features(reg.load_model(champion), data.subset(index), device=settings.torch_device)
    models = feature_models(galleries, settings.gallery_name, live)  # lineage kept: '1>3' = v1 mapped
    spaces = feature_spaces(galleries, settings.gallery_name, live)
    # a mixed gallery is ranked by the calibration stored for the champion's queries, as served
    calibration, _ = calibration_for(
        galleries, settings.gallery_name, live, champion, require=False, models=sorted(set(spaces.tolist()))
    )
    metrics = retrieval_metrics(
        queries,
        labels,
        served,
        labels,
        exclude_self=True,
        score_adjust=lambda scores: calibration.adjust(scores, spaces),
    )
    values, counts = np.unique(models, return_counts=True)
    return {
        "champion": champion,
        "gallery_version": live,
        "map": metrics.map,
        "top1": metrics.top1,
        "items": int(len(models)),
        "share": {str(v): int(c) / len(models) for v, c in zip(values, counts, strict=True)},
        "by_champion": int((models == champion).sum()),
    }


def extracted_items(overrides: dict[str, Any], gallery_version: str | None, model_version: str | None) -> int:
    """Gallery images a step's backfill read and embedded with its new model (work done, promoted
    or not): the count its gallery version records. A transform maps stored features and reads
    none, although its mapped rows count as the new model's in the provenance."""
    if gallery_version is None or model_version is None:
        return 0
    from hotswap.components.gallery.provenance import feature_models
    from hotswap.tasks.context import gallery_store, settings_from

    settings = settings_from(overrides)
    galleries = gallery_store(settings)
    manifest = galleries.load_manifest(settings.gallery_name, gallery_version)
    recorded = (manifest.metadata.get("backfill") or {}).get("reextracted")
    if isinstance(recorded, int):
        return recorded
    models = feature_models(galleries, settings.gallery_name, gallery_version)
    return int((models == str(model_version)).sum())


def option_quality(overrides: dict[str, Any], challenger: str | None) -> dict[str, Any]:
    """From the step's decision table: each option's quality as served on the decision's metric,
    and the transform's share of the full upgrade's gain, (transform − skip)/(full − skip)."""
    if challenger is None:
        return {}
    from hotswap.components.decision.storage import load_decision
    from hotswap.tasks.context import registry, settings_from

    settings = settings_from(overrides)
    try:
        record = load_decision(registry(settings), str(challenger))
    except Exception:  # a step with no decision (no-op) has nothing to report
        return {}
    metric = record.config.metric
    best: dict[str, float] = {}
    for option in record.options:  # transform(f) rows re-extract a share: the plain map has f = 0
        plain_map = option.mode == "transform" and not option.fraction
        if option.mode in ("skip", "requantize", "full") or plain_map:
            best[option.mode] = option.quality[metric]
    gain = None
    if {"skip", "transform", "full"} <= best.keys() and best["full"] != best["skip"]:
        gain = (best["transform"] - best["skip"]) / (best["full"] - best["skip"])
    chosen = record.chosen_option
    return {
        "metric": metric,
        "options": best,
        "transform_gain": gain,
        "live": record.live_quality,
        "chosen_val": None if chosen is None else chosen.quality[metric],  # what the step expects (val)
    }


def chain_audit(overrides: dict[str, Any], versions: list[str]) -> dict[str, Any]:
    """AC and AM over the versions that were live, on the val split of every class."""
    from hotswap.components.compat.audit import audit_models
    from hotswap.tasks.context import dataset, registry, settings_from

    settings = settings_from(overrides)
    reg = registry(settings)
    held_out = dataset(settings).split("val")
    result = audit_models({v: reg.load_model(v) for v in versions}, held_out, device=settings.torch_device)
    return {
        "versions": versions,
        "ac": {m: result.ac(m) for m in ("map", "top1")},
        "am": {m: result.am(m) for m in ("map", "top1")},
        "matrix": {m: result.matrices[m].round(4).to_dict() for m in ("map", "top1")},
    }


def run_chain(
    chain: Chain, policy: str, home: Path, source: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Bootstrap, then one auto-promoting refresh per later step; measure after each step."""
    from hotswap.components.data.sources import open_source
    from hotswap.flows.bootstrap import bootstrap
    from hotswap.flows.refresh import refresh

    source = source or chain.source
    num_classes = open_source(source).num_classes
    steps: list[dict[str, Any]] = []
    live_versions: list[str] = []
    record: dict[str, Any] = {"chain": chain.name, "policy": policy, "steps": steps}
    start = time.perf_counter()
    try:
        for k in range(len(chain.steps)):
            overrides = step_overrides(chain, policy, k, home, num_classes, source, extra)
            where = f"chain {chain.name}, policy {policy}, step {k + 1}"
            check_settings(overrides, where)
            t0 = time.perf_counter()
            if k == 0:
                result = bootstrap(overrides=overrides)
                flow = {
                    "decision": "initial",
                    "blessed": True,
                    "promotable": True,
                    "promoted": True,
                    "challenger": result["version"],
                }
            else:
                flow = refresh(overrides=overrides, auto_promote=True)
            seconds = time.perf_counter() - t0
            live = live_quality(overrides)
            if live["champion"] not in live_versions:
                live_versions.append(live["champion"])
            built = flow.get("gallery_version")
            if k and built == (steps[-1]["live"]["gallery_version"] if steps else None):
                built = None  # a skip keeps the live version: nothing was read or written
            re_extracted = (
                live["items"] if k == 0 else extracted_items(overrides, built, flow.get("challenger"))
            )
            options = option_quality(overrides, flow.get("challenger")) if k else {}
            steps.append(
                {
                    "step": k + 1,
                    "classes": len(chain.steps[k]),
                    "challenger": flow.get("challenger"),
                    "blessed": flow.get("blessed"),
                    "decision": flow.get("decision"),
                    "promotable": flow.get("promotable"),
                    "promotable_reason": flow.get("promotable_reason"),
                    "gallery": flow.get("gallery"),
                    "promoted": flow.get("promoted"),
                    "skipped": flow.get("skipped") or flow.get("noop"),
                    "live": live,
                    "re_extracted": re_extracted,
                    "options": options.get("options", {}),
                    "transform_gain": options.get("transform_gain"),
                    "chosen_val": options.get("chosen_val"),
                    "seconds": seconds,
                }
            )
            print(
                f"  {chain.name}/{policy} step {k + 1}: {flow.get('decision')} "
                f"(promoted {flow.get('promoted')}) live mAP {live['map']:.3f} top-1 {live['top1']:.3f}, "
                f"read {re_extracted}, options {options.get('options')}, {seconds:.0f} s",
                flush=True,
            )
        record["audit"] = chain_audit(
            step_overrides(chain, policy, len(chain.steps) - 1, home, num_classes, source, extra),
            live_versions,
        )
    except ChainSettingsError as exc:
        record["error"] = str(exc)
        print(f"  {exc}", flush=True)
    except Exception as exc:  # a step failed: keep what was measured and say why
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=5)
        print(f"  chain {chain.name}, policy {policy}: {record['error']}", flush=True)
    record["seconds"] = time.perf_counter() - start
    return record


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per chain: each policy's final live quality, items re-extracted (after the first
    extraction) relative to always-full, monotonicity of live mAP, AC/AM."""
    out: dict[str, Any] = {}
    for chain in dict.fromkeys(r["chain"] for r in records):
        rows = {r["policy"]: r for r in records if r["chain"] == chain}
        full = rows.get("always-full")
        full_items = (
            sum(s["re_extracted"] for s in full["steps"][1:]) if full and not full.get("error") else None
        )
        full_map = (
            full["steps"][-1]["live"]["map"] if full and not full.get("error") and full["steps"] else None
        )
        out[chain] = {}
        for policy, r in rows.items():
            live = [s["live"]["map"] for s in r["steps"]]
            items = sum(s["re_extracted"] for s in r["steps"][1:])
            out[chain][policy] = {
                "complete": not r.get("error"),
                "error": r.get("error"),
                "final_map": live[-1] if live else None,
                "final_top1": r["steps"][-1]["live"]["top1"] if r["steps"] else None,
                "never_falls": all(b >= a for a, b in zip(live, live[1:], strict=False)),
                "re_extracted": items,
                "re_extracted_vs_full": items / full_items if full_items else None,
                "final_map_vs_full": (live[-1] / full_map) if live and full_map else None,
                "ac_map": r.get("audit", {}).get("ac", {}).get("map"),
                "am_map": r.get("audit", {}).get("am", {}).get("map"),
                "ac_top1": r.get("audit", {}).get("ac", {}).get("top1"),
                "am_top1": r.get("audit", {}).get("am", {}).get("top1"),
            }
    return out


def _f(value: Any, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return f"{100 * value:.1f}" if pct else f"{value:.2f}"


def markdown(stem: str, records: list[dict[str, Any]], summary: dict[str, Any], wall: float) -> str:
    lines = [
        f"# Chain benchmark ({stem})",
        "",
        "Each step is a real `bootstrap`/`refresh` flow with auto-promotion on the chain's default "
        "settings plus the policy (a step goes live when its decision is promotable: the chosen option "
        "beats live as served; options keeping old features also need the blessing); live quality is "
        "measured as served (champion queries against the live gallery's DPQ codes, leave-one-out over "
        "the gallery). Numbers in %.",
        "",
    ]
    for chain, policies in summary.items():
        lines += [
            f"## {chain}",
            "",
            "| policy | final live mAP | final top-1 | live mAP never falls "
            "| items re-extracted | vs always-full | final mAP vs always-full | AC mAP | AM mAP | AC top-1 "
            "| AM top-1 | complete |",
            "|" + "---|" * 12,
        ]
        for policy, s in policies.items():
            lines.append(
                f"| {policy} | {_f(s['final_map'])} | {_f(s['final_top1'])} | {_f(s['never_falls'])} | "
                f"{s['re_extracted']} | {_f(s['re_extracted_vs_full'])} | {_f(s['final_map_vs_full'])} | "
                f"{_f(s['ac_map'])} | {_f(s['am_map'])} | {_f(s['ac_top1'])} | {_f(s['am_top1'])} | "
                f"{'yes' if s['complete'] else 'no: ' + str(s['error'])} |"
            )
        lines += [
            "",
            "| policy | step | classes | decision | blessed | promotable | promoted | live mAP | live top-1 "
            "| images read | skip / transform / full (as served) | transform's share of the gain "
            "| gallery share per version | seconds |",
            "|" + "---|" * 14,
        ]
        for r in records:
            if r["chain"] != chain:
                continue
            for s in r["steps"]:
                share = ", ".join(f"v{v} {100 * p:.0f}%" for v, p in s["live"]["share"].items())
                opts = s.get("options") or {}
                served = " / ".join(_f(opts.get(m)) for m in ("skip", "transform", "full")) if opts else "–"
                lines.append(
                    f"| {r['policy']} | {s['step']} | {s['classes']} | {s['decision']} | {s['blessed']} | "
                    f"{s.get('promotable')} | {s['promoted']} | {_f(s['live']['map'])} | "
                    f"{_f(s['live']['top1'])} | "
                    f"{s['re_extracted']} | {served} | {_f(s.get('transform_gain'))} | "
                    f"{share} | {s['seconds']:.0f} |"
                )
        lines.append("")
    lines.append(f"Wall time {wall / 60:.1f} min, {os.cpu_count()} CPU core(s).")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Per chain (one column): live mAP as served per step (top) and gallery images read so far
    (bottom), one line per policy; each point of the default policy is labelled with its option."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = list(dict.fromkeys(r["chain"] for r in records))
    fig, axes = plt.subplots(2, len(chains), figsize=(6 * len(chains), 7), squeeze=False, sharex="col")
    for col, chain in enumerate(chains):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in records if r["chain"] == chain):
            xs = [s["step"] for s in r["steps"]]
            label = r["policy"] + (" (did not run)" if r.get("error") and not r["steps"] else "")
            top.plot(xs, [s["live"]["map"] for s in r["steps"]], marker="o", label=label)
            bottom.plot(xs, np.cumsum([s["re_extracted"] for s in r["steps"]]), marker="o", label=label)
            if r["policy"] == "default":
                for s in r["steps"][1:]:
                    note = f"{s['decision']}, {s['re_extracted']} read"
                    top.annotate(note, (s["step"], s["live"]["map"]), fontsize=7,
                                 textcoords="offset points", xytext=(4, -10))  # fmt: skip
        top.set_title(f"{chain}: live mAP as served")
        top.set_ylabel("mAP")
        bottom.set_title(f"{chain}: gallery images read (cumulative)")
        bottom.set_xlabel("step")
        bottom.set_ylabel("images")
        steps = sorted({s["step"] for r in records if r["chain"] == chain for s in r["steps"]})
        for ax in (top, bottom):
            if steps:
                ax.set_xticks(steps)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rerender(path: Path) -> None:
    """Recompute a results file's summary, markdown and plot from its per-step records (after a
    fix to how a step is counted), without running the chain again."""
    data = json.loads(path.read_text())
    records = data["runs"]
    for r in records:
        previous = None
        for s in r["steps"]:
            if s["step"] > 1 and s["live"]["gallery_version"] == previous and s["decision"] == "skip":
                s["re_extracted"] = 0  # the live version was kept: its own extraction is not this step's
            previous = s["live"]["gallery_version"]
    data["summary"] = summarise(records)
    path.write_text(json.dumps(data, indent=2, default=str))
    stem = path.stem
    path.with_suffix(".md").write_text(markdown(stem, records, data["summary"], data["wall_seconds"]))
    plot(records, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", nargs="+", choices=list(CHAINS), default=list(CHAINS))
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), help="default: all four")
    parser.add_argument("--quick", action="store_true", help="a 2-step synthetic chain with tiny training")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="results file stem (default chain / chain-quick)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every step (dotted key, JSON value), e.g. compat.proto_weight=4; repeatable",
    )
    args = parser.parse_args(argv)
    extra = parse_settings(args.settings)

    chains = [QUICK] if args.quick else [CHAINS[c] for c in args.chains]
    policies = args.policies or (["default"] if args.quick else list(POLICIES))
    stem = args.name or ("chain-quick" if args.quick else "chain")
    workdir = Path(tempfile.mkdtemp(prefix="hotswap-chain-"))
    # Prefect reads its home at import: a throw-away one, set before any flow module is imported.
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    start = time.perf_counter()
    records = []
    for chain in chains:
        source = chain.prepare(workdir) if chain.prepare else chain.source
        for policy in policies:
            print(f"{chain.name} / {policy}", flush=True)
            records.append(run_chain(chain, policy, workdir / f"{chain.name}-{policy}", source, extra))
    wall = time.perf_counter() - start
    summary = summarise(records)
    args.out.mkdir(parents=True, exist_ok=True)
    chains_info = {
        c.name: {
            "source": c.source,
            "steps": [len(s) for s in c.steps],
            "overrides": c.overrides,
            "description": c.description,
        }
        for c in chains
    }
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "benchmark": "chain",
                "chains": chains_info,
                "policies": {p: POLICIES[p] for p in policies},
                "settings": extra,
                "summary": summary,
                "runs": records,
                "wall_seconds": wall,
            },
            indent=2,
            default=str,
        )
    )
    (args.out / f"{stem}.md").write_text(markdown(stem, records, summary, wall))
    plot(records, args.out / f"{stem}.png")
    print((args.out / f"{stem}.md").read_text())
    return 0 if all(not r.get("error") for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
