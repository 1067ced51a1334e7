"""The CompatibilityReport: the one record that says whether a new model may replace the old one.

Downstream steps (promotion, the backfill decision, the audit) read this record; they never
recompute it. It is shaped like TFX's validation result: ``blessed``, ``rubber_stamp`` (the first
model, which has nothing to be compatible with), one row per check, both model versions and the
data version. It takes the cross-model retrieval matrix as input — computing retrieval is the job
of components/compat/cross_eval.py — and applies the criteria of DESIGN.md §5:

- cross-test:  M(new→old) > M(old,old) + ``cross_margin``            for every gated metric
- new model:   M(new,new) ≥ M(old,old) − ``new_new_tolerance``       for every gated metric
- update gain: (M(new→old) − M(old,old)) / (M(new,new) − M(old,old)), always reported; a gate
  only when ``min_update_gain`` is set (off by default: DESIGN.md names no default).

With an as-served evaluation (``served``, components/compat/served.py; what a refresh records) the
cross-test is judged against the live system instead (DESIGN.md §11):

- as served:   M(candidate vs composed live gallery) ≥ M(champion vs the same) + ``served_margin``
- new model:   as above (old/old *is* the champion's new/new)

and the pairwise cross-test rows stay in the report for audit, marked ``gating=False``.

Pair keys read "query/gallery": "new/old" means new-model queries searching an old-model gallery.

The threshold comparisons themselves are made by ``mlflow.validate_evaluation_results`` with
hand-built evaluation results, so the gate and MLflow's validator can never disagree; the cross
test is strict (DESIGN.md says "beats"), so a candidate exactly on its bound fails even though
MLflow's ``>=`` passes it.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from hotswap.components.compat.metrics import RetrievalMetrics, clamp_score, update_gain
from hotswap.components.compat.served import ServedQuality
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PAIRS = ("old/old", "new/new", "new/old", "old/new")
METRICS = ("top1", "top5", "map")
METRIC_LABELS = {"top1": "Top-1", "top5": "Top-5", "map": "mAP"}
SCHEMA_VERSION = 1

MetricName = Literal["map", "top1", "top5"]
MatrixInput = Mapping[str, RetrievalMetrics | Mapping[str, float]]


class ReportFormatError(ValueError):
    """A compatibility matrix or a stored report is malformed."""


class CompatThresholds(BaseModel):
    """The knobs of the compatibility gate (defaults = ThresholdSettings' defaults)."""

    model_config = ConfigDict(extra="forbid")

    metrics: list[MetricName] = Field(
        default_factory=lambda: ["map", "top1"], min_length=1, description="metrics every check runs on"
    )
    cross_margin: float = Field(0.0, description="new/old must beat old/old by more than this")
    new_new_tolerance: float = Field(0.01, ge=0, description="new/new may sit at most this far below old/old")
    min_update_gain: float | None = Field(None, description="gate on update gain; None = report it only")
    served_margin: float = Field(
        0.0, description="as served, the candidate must reach the live system's metric plus this"
    )

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> CompatThresholds:
        """Build from ``HotswapSettings.thresholds`` (or anything with the same attribute names)."""
        values = {
            name: getattr(settings, name)
            for name in ("metrics", "cross_margin", "new_new_tolerance", "min_update_gain", "served_margin")
            if hasattr(settings, name)
        }
        return cls(**{**values, **overrides})


class CompatCheck(BaseModel):
    """One gate row: ``candidate <comparison> bound`` where ``bound`` derives from ``baseline``."""

    model_config = ConfigDict(extra="forbid")

    name: str
    metric: MetricName
    pair: str = Field(description="the pair whose value is judged, or 'update_gain'")
    candidate: float | None = Field(description="the judged value; None when it is undefined")
    baseline: float | None = Field(description="old/old value the bound derives from (None: absolute bound)")
    delta: float | None = Field(description="candidate − bound; negative means the check failed by this much")
    bound: float
    comparison: Literal[">", ">="]
    passed: bool
    message: str
    gating: bool = Field(True, description="False: recorded for audit, not part of the verdict")


class CompatibilityReport(BaseModel):
    """Everything needed to bless or reject a candidate, readable without recomputation."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    model_name: str | None = None
    old_version: str | None
    new_version: str
    data_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    matrix: dict[str, dict[str, float]]
    thresholds: CompatThresholds
    update_gain: dict[str, float | None] = Field(description="per metric; None when new/new brings no gain")
    checks: list[CompatCheck]
    blessed: bool
    rubber_stamp: bool = False
    served: ServedQuality | None = Field(
        None, description="the as-served evaluation against the live gallery's composition (refreshes)"
    )

    @field_validator("matrix")
    @classmethod
    def _known_pairs(cls, matrix: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        unknown = sorted(set(matrix) - set(PAIRS))
        if unknown:
            raise ValueError(f"matrix has unknown pairs {unknown}; allowed: {list(PAIRS)}")
        return matrix

    @property
    def failed_checks(self) -> list[CompatCheck]:
        """Gating checks that failed (audit-only rows never decide the verdict)."""
        return [check for check in self.checks if check.gating and not check.passed]

    @property
    def reasons(self) -> list[str]:
        """Why the verdict is what it is: the failed checks' messages, or why it passed."""
        if self.rubber_stamp:
            return ["rubber stamp: first model, no baseline to be compatible with; no checks ran"]
        failed = self.failed_checks
        if failed:
            return [check.message for check in failed]
        return [f"all {sum(c.gating for c in self.checks)} checks passed"]

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "report") -> CompatibilityReport:
        """Parse a stored report; a malformed one raises ReportFormatError naming ``source``."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ReportFormatError(f"{source}: not a valid compatibility report: {exc}") from exc

    def to_markdown(self) -> str:
        return report_markdown(self)

    def heatmap_png(self) -> bytes:
        return report_heatmap_png(self)

    def flat_metrics(self) -> dict[str, float]:
        """Scalar metrics for a tracking server: ``new_old.map``, ``update_gain.map``, ``blessed``."""
        flat = {
            f"{pair.replace('/', '_')}.{metric}": value
            for pair, values in self.matrix.items()
            for metric, value in values.items()
        }
        flat.update({f"update_gain.{m}": g for m, g in self.update_gain.items() if g is not None})
        if self.served is not None:
            for name in ("candidate", "live", "champion_only"):
                flat.update({f"served.{name}.{m}": v for m, v in getattr(self.served, name).items()})
        flat["blessed"] = float(self.blessed)
        return flat


# ---------------------------------------------------------------------- building


def normalise_matrix(matrix: MatrixInput) -> dict[str, dict[str, float]]:
    """Accept RetrievalMetrics or plain dicts; check pair names and that every value is a finite score."""
    if not isinstance(matrix, Mapping):
        raise ReportFormatError(f"matrix must be a mapping of pair -> metrics, got {type(matrix).__name__}")
    result: dict[str, dict[str, float]] = {}
    for pair, values in matrix.items():
        if pair not in PAIRS:
            raise ReportFormatError(f"matrix: unknown pair {pair!r}; expected keys among {list(PAIRS)}")
        raw = values.as_dict() if isinstance(values, RetrievalMetrics) else values
        if not isinstance(raw, Mapping):
            raise ReportFormatError(f"matrix[{pair!r}] must be RetrievalMetrics or a dict, got {type(raw)}")
        clean: dict[str, float] = {}
        for metric, value in raw.items():
            try:
                number = float(value)
            except (TypeError, ValueError) as exc:
                raise ReportFormatError(f"matrix[{pair!r}][{metric!r}] is not a number: {value!r}") from exc
            number = clamp_score(number) if math.isfinite(number) else number
            if not math.isfinite(number) or not 0.0 <= number <= 1.0:
                raise ReportFormatError(f"matrix[{pair!r}][{metric!r}] = {number} is not a score in [0, 1]")
            clean[str(metric)] = number
        result[pair] = clean
    return result


def _require(matrix: dict[str, dict[str, float]], pairs: tuple[str, ...], metrics: list[str]) -> None:
    for pair in pairs:
        if pair not in matrix:
            raise ReportFormatError(f"matrix is missing pair {pair!r} (has {sorted(matrix)})")
        for metric in metrics:
            if metric not in matrix[pair]:
                raise ReportFormatError(
                    f"matrix[{pair!r}] has no {metric!r}, which the thresholds gate on "
                    f"(has {sorted(matrix[pair])})"
                )


def _mlflow_passes(candidate: float, bound: float) -> bool:
    """MLflow's own validator decides ``candidate >= bound`` (hand-built evaluation results)."""
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import (
        MetricThreshold,
        ModelValidationFailedException,
        validate_evaluation_results,
    )

    thresholds = {"score": MetricThreshold(threshold=float(bound), greater_is_better=True)}
    try:
        with _quiet(logging.getLogger("mlflow.models.evaluation.validation")):
            validate_evaluation_results(
                thresholds, EvaluationResult(metrics={"score": candidate}, artifacts={})
            )
    except ModelValidationFailedException:
        return False
    return True


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """MLflow logs 'Model validation passed!' at INFO for each check; the report itself is the record."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(
    name: str,
    metric: str,
    pair: str,
    candidate: float | None,
    baseline: float | None,
    bound: float,
    strict: bool,
    gating: bool = True,
) -> CompatCheck:
    comparison = ">" if strict else ">="
    if candidate is None:
        passed, delta = False, None
    else:
        passed = _mlflow_passes(candidate, bound) and not (strict and candidate == bound)
        delta = candidate - bound
    label = METRIC_LABELS[metric]
    if candidate is None:
        message = f"{name}: {pair} {label} is undefined (new/new does not improve on old/old)"
    elif passed and not gating:
        message = f"{name} (audit): {pair} {label} {candidate:.4f} {comparison} {bound:.4f}"
    elif not gating:
        message = (
            f"{name} (audit, not gating): {pair} {label} {candidate:.4f} is not {comparison} {bound:.4f}"
        )
    elif passed:
        message = f"{name}: {pair} {label} {candidate:.4f} {comparison} {bound:.4f}"
    else:
        message = (
            f"{name} failed: {pair} {label} {candidate:.4f} is not {comparison} {bound:.4f}"
            f"{_bound_origin(name, baseline)} (short by {bound - candidate:.4f})"
        )
    return CompatCheck(
        name=name,
        metric=metric,
        pair=pair,
        candidate=candidate,
        baseline=baseline,
        delta=delta,
        bound=bound,
        comparison=comparison,
        passed=passed,
        message=message,
        gating=gating,
    )


def _bound_origin(name: str, baseline: float | None) -> str:
    if baseline is None:
        return " (configured minimum)"
    if name == "cross_test":
        return f" (old/old {baseline:.4f} + cross_margin)"
    if name == "as_served":
        return f" (live system {baseline:.4f} + served_margin)"
    return f" (old/old {baseline:.4f} - new_new_tolerance)"


def build_report(
    matrix: MatrixInput,
    old_version: str | int | None,
    new_version: str | int,
    data_version: str,
    thresholds: CompatThresholds | Mapping[str, Any] | None = None,
    rubber_stamp: bool = False,
    model_name: str | None = None,
    served: ServedQuality | None = None,
) -> CompatibilityReport:
    """Apply the compatibility criteria to a retrieval matrix and return the blessing.

    ``rubber_stamp=True`` is for the first model (no ``old_version``): it is blessed without
    checks; the matrix may then hold only "new/new". With ``served`` (the as-served evaluation)
    the gate compares the candidate with the live system as served; the pairwise cross-test is
    kept as audit rows.
    """
    if not isinstance(thresholds, CompatThresholds):
        thresholds = CompatThresholds.model_validate(dict(thresholds or {}))
    if not data_version:
        raise ReportFormatError("data_version must name the dataset the matrix was computed on")
    if rubber_stamp and old_version is not None:
        raise ReportFormatError(
            f"rubber_stamp is for a first model, but old_version={old_version!r} was given"
        )
    if not rubber_stamp and old_version is None:
        raise ReportFormatError("old_version is required unless rubber_stamp=True (first model)")
    clean = normalise_matrix(matrix)
    checks: list[CompatCheck] = []
    gains: dict[str, float | None] = {}
    if not rubber_stamp:
        _require(clean, ("old/old", "new/new", "new/old"), list(thresholds.metrics))
        for metric in thresholds.metrics:
            old_old, new_new, new_old = (clean[p][metric] for p in ("old/old", "new/new", "new/old"))
            gain = update_gain(old_old, new_old, new_new)
            gains[metric] = None if math.isnan(gain) else gain
            if served is not None:
                live = _served_value(served.live, metric, "live")
                checks.append(
                    _check(
                        "as_served",
                        metric,
                        "served",
                        _served_value(served.candidate, metric, "candidate"),
                        live,
                        live + thresholds.served_margin,
                        False,
                    )
                )
            checks.append(
                _check(
                    "cross_test",
                    metric,
                    "new/old",
                    new_old,
                    old_old,
                    old_old + thresholds.cross_margin,
                    True,
                    gating=served is None,
                )
            )
            checks.append(
                _check(
                    "new_model",
                    metric,
                    "new/new",
                    new_new,
                    old_old,
                    old_old - thresholds.new_new_tolerance,
                    False,
                )
            )
            if thresholds.min_update_gain is not None:
                checks.append(
                    _check(
                        "update_gain",
                        metric,
                        "update_gain",
                        gains[metric],
                        None,
                        thresholds.min_update_gain,
                        False,
                    )
                )
    return CompatibilityReport(
        model_name=model_name,
        old_version=None if old_version is None else str(old_version),
        new_version=str(new_version),
        data_version=data_version,
        matrix=clean,
        thresholds=thresholds,
        update_gain=gains,
        checks=checks,
        blessed=rubber_stamp or all(check.passed for check in checks if check.gating),
        rubber_stamp=rubber_stamp,
        served=served,
    )


def _served_value(values: Mapping[str, float], metric: str, role: str) -> float:
    if metric not in values:
        raise ReportFormatError(f"served.{role} has no {metric!r}, which the thresholds gate on")
    return float(values[metric])


# ---------------------------------------------------------------------- rendering


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_markdown(report: CompatibilityReport) -> str:
    """The ml-fct style table (pairs × Top-1/Top-5/mAP, in %), the checks, then verdict and reasons."""
    against = "first model, no baseline" if report.old_version is None else f"vs v{report.old_version}"
    title = report.model_name or "model"
    lines = [
        f"# Compatibility report: {title} v{report.new_version} ({against})",
        "",
        f"Data version: `{report.data_version}` · created {report.created_at.isoformat(timespec='seconds')}",
        "",
        "| Case (query/gallery) | Top-1 (%) | Top-5 (%) | mAP (%) |",
        "|---|---:|---:|---:|",
    ]
    for pair in PAIRS:
        if pair in report.matrix:
            values = report.matrix[pair]
            lines.append(f"| {pair} | " + " | ".join(_pct(values.get(m)) for m in METRICS) + " |")
    if report.update_gain:
        gains = ", ".join(f"{METRIC_LABELS[m]} {_pct(g)}%" for m, g in report.update_gain.items())
        lines += ["", f"Update gain: {gains}"]
    if report.served is not None:
        lines += ["", *served_markdown(report.served)]
    lines += ["", "## Checks", ""]
    if report.checks:
        lines += ["| Check | Metric | Value | Bound | Delta | Result |", "|---|---|---:|---:|---:|---|"]
        for c in report.checks:
            value = "n/a" if c.candidate is None else f"{c.candidate:.4f}"
            delta = "n/a" if c.delta is None else f"{c.delta:+.4f}"
            lines.append(
                f"| {c.name} ({c.pair}) | {METRIC_LABELS[c.metric]} | {value} | {c.comparison} {c.bound:.4f} "
                f"| {delta} | {'pass' if c.passed else 'FAIL'}{'' if c.gating else ' (audit only)'} |"
            )
    else:
        lines.append("No checks ran.")
    verdict = (
        "BLESSED" + (" (rubber stamp)" if report.rubber_stamp else "") if report.blessed else "NOT BLESSED"
    )
    lines += ["", f"## Verdict: {verdict}", ""]
    lines += [f"- {reason}" for reason in report.reasons]
    return "\n".join(lines) + "\n"


def served_markdown(served: ServedQuality) -> list[str]:
    """The as-served section: live composition, targets, and the three served rows."""
    shares = ", ".join(f"v{v} {100 * s:.1f} %" for v, s in served.live_shares.items())
    counts = ", ".join(f"v{v} {c}" for v, c in served.composed_counts.items())
    lines = [
        "## As served",
        "",
        f"Live gallery `{served.gallery_version}` (codebooks v{served.codebook_version}): {shares}. "
        f"Validation gallery ({served.split}, seed {served.seed}) composed as {counts}"
        + ("; scores calibrated per model." if served.calibrated else "."),
    ]
    if served.targets:
        targets = ", ".join(
            f"v{t.version} (share {t.share:.2f}, weight {t.weight:.2f})" for t in served.targets
        )
        lines += ["", f"Training targets: {targets}"]
    lines += ["", "| Queries → gallery | Top-1 (%) | Top-5 (%) | mAP (%) |", "|---|---:|---:|---:|"]
    rows = (
        (f"v{served.candidate_version} → live mix", served.candidate),
        (f"v{served.champion_version} → live mix (today)", served.live),
        (f"v{served.champion_version} → own gallery only", served.champion_only),
    )
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(_pct(values.get(m)) for m in METRICS) + " |")
    return lines


def report_heatmap_png(report: CompatibilityReport, dpi: int = 100) -> bytes:
    """One 2×2 panel per metric: rows = query model, columns = gallery model; empty cells = not measured."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if any(m in values for values in report.matrix.values())]
    fig = Figure(figsize=(3.2 * max(len(metrics), 1), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    models = ("old", "new")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        grid = np.full((2, 2), np.nan)
        for r, query in enumerate(models):
            for c, gallery in enumerate(models):
                grid[r, c] = report.matrix.get(f"{query}/{gallery}", {}).get(metric, np.nan)
        ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap="viridis")
        for r in range(2):
            for c in range(2):
                text = "n/a" if np.isnan(grid[r, c]) else f"{grid[r, c]:.3f}"
                colour = "black" if not np.isnan(grid[r, c]) and grid[r, c] > 0.6 else "white"
                ax.text(c, r, text, ha="center", va="center", color=colour if text != "n/a" else "grey")
        ax.set_xticks([0, 1], [f"{m} gallery" for m in models])
        ax.set_yticks([0, 1], [f"{m} query" for m in models])
        ax.set_title(METRIC_LABELS[metric])
    verdict = "blessed" if report.blessed else "NOT blessed"
    name = f"{report.model_name} " if report.model_name else ""
    old = f"v{report.old_version}" if report.old_version is not None else "no baseline"
    fig.suptitle(f"{name}v{report.new_version} vs {old}: {verdict}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
