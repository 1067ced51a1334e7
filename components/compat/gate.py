"""The compatibility gate: apply DESIGN.md §5's criteria to a retrieval matrix and bless or reject.

It takes the cross-model retrieval matrix as input — computing retrieval is the job of
components/compat/cross_eval.py — and returns a CompatibilityReport (components/compat/report.py)
built from these checks:

- cross-test:  M(new→old) > M(old,old) + ``cross_margin``            for every gated metric
- new model:   M(new,new) ≥ M(old,old) − ``new_new_tolerance``       for every gated metric
- update gain: (M(new→old) − M(old,old)) / (M(new,new) − M(old,old)), always reported; a gate
  only when ``min_update_gain`` is set (off by default: DESIGN.md names no default).

With an as-served evaluation (``served``, components/compat/served.py; what a refresh records) the
cross-test is judged against the live system instead (DESIGN.md §11):

- as served:   M(candidate vs composed live gallery) ≥ M(champion vs the same) + ``served_margin``
- new model:   as above (old/old *is* the champion's new/new)

and the pairwise cross-test rows stay in the report for audit, marked ``gating=False``.

The threshold comparisons themselves are made by ``mlflow.validate_evaluation_results`` with
hand-built evaluation results, so the gate and MLflow's validator can never disagree; the cross
test is strict (DESIGN.md says "beats"), so a candidate exactly on its bound fails even though
MLflow's ``>=`` passes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hotswap.components.compat.metrics import RetrievalMetrics, clamp_score, update_gain
from hotswap.components.compat.report import (
    METRIC_LABELS,
    PAIRS,
    CompatCheck,
    CompatibilityReport,
    CompatThresholds,
    MatrixInput,
    ReportFormatError,
)
from hotswap.components.compat.served import ServedQuality


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
