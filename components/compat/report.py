"""The CompatibilityReport: the one record that says whether a new model may replace the old one.

Downstream steps (promotion, the backfill decision, the audit) read this record; they never
recompute it. It is shaped like TFX's validation result: ``blessed``, ``rubber_stamp`` (the first
model, which has nothing to be compatible with), one row per check, both model versions and the
data version. How the checks are made from a retrieval matrix lives in components/compat/gate.py;
how the record is drawn as markdown and a heatmap lives in components/compat/report_rendering.py.

Pair keys read "query/gallery": "new/old" means new-model queries searching an old-model gallery.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from hotswap.components.compat.metrics import RetrievalMetrics
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
        from hotswap.components.compat.report_rendering import report_markdown  # it imports this module

        return report_markdown(self)

    def heatmap_png(self) -> bytes:
        from hotswap.components.compat.report_rendering import report_heatmap_png  # it imports this module

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
