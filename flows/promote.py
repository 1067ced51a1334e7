"""promote: a person reads the report and the decision, then approves or rejects the challenger."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, pause_flow_run
from prefect.input import RunInput
from pydantic import model_validator

from components.registry import CHALLENGER, CHAMPION
from flows.switch import switch_live
from tasks.context import settings_from
from tasks.gallery import execute_decision, load_decision, override_decision
from tasks.registry import resolve_alias, tag_version
from tasks.reporting import publish_markdown
from tasks.validation import load_report

BackfillChoice = Literal["as-decided", "skip", "requantize", "partial", "full"]


class PromotionInput(RunInput):
    """The form shown to the reviewer of a paused promote run."""

    approve: bool = False
    reason: str = ""
    backfill_mode: BackfillChoice = "as-decided"
    fraction: float | None = None

    @model_validator(mode="after")
    def _fraction_fits_mode(self) -> PromotionInput:
        """Checked before anything is recorded: a bad fraction must not rewrite the decision."""
        if self.backfill_mode == "partial":
            if self.fraction is None or not 0.0 < self.fraction < 1.0:
                raise ValueError(f"--fraction {self.fraction}: a partial backfill needs 0 < fraction < 1")
        elif self.fraction is not None:
            raise ValueError(f"--fraction {self.fraction} only applies to --backfill-mode partial")
        return self


class NothingToPromoteError(RuntimeError):
    """No challenger (or named version) exists to promote."""


@flow(name="promote", log_prints=True)
def promote(
    overrides: dict[str, Any] | None = None,
    version: str = CHALLENGER,
    answer: PromotionInput | None = None,
    timeout_seconds: int = 24 * 3600,
    poll_interval_seconds: int = 10,
) -> dict[str, Any]:
    """Publish the report, pause for a human decision (unless ``answer`` is given), then switch.

    The switch moves the aliases and the gallery pointer in one transaction (see switch_live).
    """
    settings = settings_from(overrides)
    resolved = version if version.isdigit() else resolve_alias(settings, version)
    if resolved is None:
        champion = resolve_alias(settings, CHAMPION)
        live = f" (the champion is v{champion}; `hotswap status` shows the live pair)" if champion else ""
        raise NothingToPromoteError(
            f"model {settings.model_name!r} has no version or alias {version!r}{live}"
        )
    report = load_report(settings, resolved)
    decision = load_decision(settings, resolved)
    heading = f"## Promote v{resolved} of {settings.model_name}?"
    description = "\n\n".join([heading, report.to_markdown(), decision.to_markdown()])
    publish_markdown(
        f"promotion-{settings.model_name}-v{resolved}", description, f"Promotion request v{resolved}"
    )
    if answer is None:
        answer = pause_flow_run(
            wait_for_input=PromotionInput.with_initial_data(description=description),
            timeout=timeout_seconds,
            poll_interval=poll_interval_seconds,
        )
    if not answer.approve:
        tag_version(settings, resolved, {"promotion.status": "rejected", "promotion.reason": answer.reason})
        return {"version": resolved, "promoted": False, "reason": answer.reason}

    gallery_version = decision.gallery_version
    if answer.backfill_mode != "as-decided" and answer.backfill_mode != decision.mode:
        decision = override_decision(settings, resolved, decision, answer.backfill_mode, answer.fraction)
        gallery_version = execute_decision(settings, resolved, decision.model_dump(mode="json"))
    if gallery_version is None:
        raise NothingToPromoteError(
            f"v{resolved}'s decision is {decision.mode!r}: there is no gallery to switch to; "
            "approve with a backfill mode instead"
        )
    live = switch_live(settings, resolved, gallery_version)
    tag_version(settings, resolved, {"promotion.status": "approved", "promotion.reason": answer.reason})
    return {"version": resolved, "promoted": True, "reason": answer.reason, **live}
