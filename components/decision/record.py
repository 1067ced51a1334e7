"""What a backfill decision is: its options, its cost model and the record stored beside a model version.

The record is the contract between the decision (components/decision/decide.py), the review and
promotion gate that read it back, and the gallery tasks that carry it out; keeping the models apart
from the computation lets those readers load a record without pulling in models or metrics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from hotswap.components.core.configs import DecisionConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Choice = Literal["skip", "requantize", "partial", "full", "reject", "transform"]
OptionMode = Literal["skip", "requantize", "partial", "full", "transform"]
# ties on cost go to the simpler option; transform (a map, then requantize) sits after requantize
MODE_ORDER = {"skip": 0, "requantize": 1, "transform": 1.5, "partial": 2, "full": 3}
SCHEMA_VERSION = 1
GALLERY_PLANNED = "planned, built on approval"


class DecisionError(ValueError):
    """Inputs the decision cannot work with, or a stored record that does not parse."""


class CostModel(BaseModel):
    """Measured seconds per item on the machine that will run the backfill."""

    model_config = ConfigDict(extra="forbid")

    extract_seconds_per_item: float = Field(ge=0)
    encode_seconds_per_item: float = Field(ge=0)
    overhead_seconds_per_item: float = Field(0.0, ge=0)
    transform_seconds_per_item: float = Field(
        0.0, ge=0, description="mapping one stored feature by h_v (the transform option; no image read)"
    )
    sample_size: int = Field(0, ge=0)
    device: str = "cpu"

    def seconds(self, extract: int, encode: int, touched: int) -> float:
        return (
            extract * self.extract_seconds_per_item
            + encode * self.encode_seconds_per_item
            + touched * self.overhead_seconds_per_item
        )


class BackfillOption(BaseModel):
    """One row of the decision table."""

    model_config = ConfigDict(extra="forbid")

    mode: OptionMode
    fraction: float = Field(ge=0, le=1, description="share of the gallery re-extracted")
    quality: dict[str, float] = Field(description="estimated metrics as served (validation data)")
    float_quality: dict[str, float] = Field(description="the same with float features (no quantization)")
    relative_quality: float = Field(description="quality[metric] / full's quality[metric]")
    items_to_extract: int = Field(ge=0)
    items_to_encode: int = Field(ge=0)
    estimated_seconds: float = Field(ge=0)
    meets_target: bool
    eligible: bool = Field(description="allowed at all (skip and mixed galleries need a blessing)")
    reason: str
    beats_live: bool | None = Field(None, description="beats the live system as served (None: not compared)")


class DecisionRecord(BaseModel):
    """The decision with the evidence behind it; stored beside the model version."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    mode: Choice = Field(
        description="the chosen option: skip, requantize, transform, partial, full, or reject"
    )
    fraction: float | None = Field(description="share re-extracted by the chosen option (None for reject)")
    blessed: bool
    config: DecisionConfig
    reference_quality: float = Field(description="full backfill's metric: the 100 % of relative quality")
    gallery_items: int = Field(ge=0)
    options: list[BackfillOption]
    reasons: list[str]
    cost: CostModel
    curve: dict[str, list[float]] = Field(default_factory=dict, description="backfill curve as served")
    live_quality: dict[str, float] | None = Field(
        None, description="the live system as served: champion queries vs the composed gallery"
    )
    float_live_quality: dict[str, float] | None = Field(None, description="the same with float features")
    live_shares: dict[str, float] | None = Field(None, description="π_v of the live gallery decided on")
    better_than_champion: bool | None = Field(
        None, description="the gate's new_model checks passed (new/new not below the champion's)"
    )
    old_model_version: str | None = None
    new_model_version: str | None = None
    old_codebook_version: str | None = None
    new_codebook_version: str | None = None
    source_gallery_version: str | None = Field(None, description="the live gallery version decided on")
    gallery_version: str | None = Field(None, description="the version the decision was executed into")
    promotable: bool = Field(
        False,
        description="the decided option may go live by itself: as served it beats live by the margin, "
        "and it is blessed if it keeps old features (components/decision/promotability.py)",
    )
    promotable_reason: str = Field("", description="why it is (not) promotable, in one line")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def chosen_option(self) -> BackfillOption | None:
        for option in self.options:
            if option.mode == self.mode and option.fraction == self.fraction:
                return option
        return None

    @property
    def gallery_state(self) -> str:
        return gallery_state(self.mode, self.gallery_version)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "decision record") -> DecisionRecord:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise DecisionError(
                f"{source} is not a valid decision record: {exc.errors()[0]['msg']}"
            ) from None

    def to_markdown(self) -> str:
        from hotswap.components.decision.report import decision_markdown

        return decision_markdown(self)


def implied_fraction(mode: str, fraction: float | None) -> float | None:
    """The share of the gallery a backfill ``mode`` re-extracts: fixed by skip, requantize and full,
    0 for a plain transform, the given one for partial and transform(f) (None: not given)."""
    fixed = {"skip": 0.0, "requantize": 0.0, "full": 1.0}
    if mode in fixed:
        return fixed[mode]
    if mode == "transform" and fraction is None:
        return 0.0
    return fraction


def gallery_state(mode: str, gallery_version: str | None) -> str:
    """The decided gallery: its version once built, ``GALLERY_PLANNED`` until then, or none (reject)."""
    if mode == "reject":
        return "none (rejected)"
    return gallery_version or GALLERY_PLANNED


def pct(value: float) -> str:
    """A share as the decision's tables and reasons print it ("97.5 %")."""
    return f"{100 * value:.1f} %"
