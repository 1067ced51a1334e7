"""promote: a person reads the report and the decision, then approves or rejects the challenger."""

from __future__ import annotations

import sys
from typing import Any, Literal

from hotswap.components.decision.promotion_gate import refusal, refuse
from hotswap.components.decision.review import review_summary
from hotswap.components.registry.records import CHALLENGER, CHAMPION
from hotswap.flows.switch import switch_live
from hotswap.tasks.backfill_decision import (
    check_decision_is_current,
    decision_markdown_with_plot,
    execute_decision,
    load_decision,
    override_decision,
)
from hotswap.tasks.context import settings_from
from hotswap.tasks.links import (
    TAG_FLOW_RUN_ID,
    TAG_FLOW_RUN_URL,
    flow_run_ui_url,
    links_markdown,
    prefect_run_tags,
)
from hotswap.tasks.lock import lifecycle_lock
from hotswap.tasks.naming import promote_run_name
from hotswap.tasks.refresh_progress import check_promotable
from hotswap.tasks.registry import resolve_alias, tag_version
from hotswap.tasks.reporting import artifact_key, publish_markdown
from hotswap.tasks.validation import load_report
from prefect import flow, get_run_logger, pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.states import Completed, State
from pydantic import Field, model_validator

BackfillChoice = Literal["as-decided", "skip", "transform", "requantize", "partial", "full"]


class PromotionInput(RunInput):
    """The form shown to the reviewer of a paused promote run."""

    approve: bool = Field(
        False,
        description="Tick to make this version the champion and switch the live gallery to it (a "
        "gallery planned by the refresh is built first; a build that was interrupted resumes).",
    )
    reason: str = Field(
        "", description="Why you decided so; recorded on the model version (promotion.reason) in MLflow."
    )
    backfill_mode: BackfillChoice = Field(
        "as-decided",
        description="as-decided keeps the recorded decision; skip, transform, requantize, partial or full "
        "overrides it (the gallery is then rebuilt before the switch).",
    )
    fraction: float | None = Field(
        None,
        description="Share of the gallery to re-extract (0 < fraction < 1); only for backfill mode "
        "'partial'.",
    )
    force: bool = Field(
        False,
        description="Tick to promote even a version that is not promotable (a 'reject' decision, "
        "new/new below the champion's, an option that does not beat live as served, or an option "
        "keeping old features of a model that is not blessed).",
    )

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


def _announce_pause(version: str, timeout_seconds: int) -> None:
    """Say where the form is and what to do, in the run's logs and on the terminal that started it."""
    url = flow_run_ui_url()
    where = f"open {url} and press Resume" if url else "open this flow run in the Prefect UI and press Resume"
    message = (
        f"v{version} is waiting for a reviewer: {where}; fill in approve, reason and the backfill mode. "
        f"It waits up to {timeout_seconds / 3600:g} h, then fails. From code: prefect.flow_runs."
        f"resume_flow_run('{flow_run.get_id()}', run_input={{'approve': True, 'reason': '…'}})"
    )
    get_run_logger().info(message)
    if sys.__stderr__ is not None:  # the console is quiet at INFO; this line is for the person waiting
        sys.__stderr__.write(message + "\n")  # not print(): log_prints would log it a second time
        sys.__stderr__.flush()


@flow(name="promote", log_prints=True, flow_run_name=promote_run_name)
def promote(
    overrides: dict[str, Any] | None = None,
    version: str = CHALLENGER,
    answer: PromotionInput | None = None,
    timeout_seconds: int = 24 * 3600,
    poll_interval_seconds: int = 10,
) -> State:
    """Publish the report, pause for a human decision (unless ``answer`` is given), then build and switch.

    An approval of an option that is not promotable (worse than the live system as served, or an
    option keeping old features of an unblessed model) is refused unless ``answer.force``
    (components/decision/promotion_gate.py). On approval the decided gallery version is built
    if the refresh only planned it (or the reviewer chose another backfill mode); the build
    resumes where a killed one stopped. The switch moves the aliases and the gallery pointer in
    one transaction (see switch_live). Build and switch hold the gallery's lifecycle slot; the
    wait for the reviewer holds nothing.
    """
    settings = settings_from(overrides)
    resolved = version if version.isdigit() else resolve_alias(settings, version)
    if resolved is None:
        champion = resolve_alias(settings, CHAMPION)
        live = f" (the champion is v{champion}; `hotswap status` shows the live pair)" if champion else ""
        raise NothingToPromoteError(
            f"model {settings.model_name!r} has no version or alias {version!r}{live}"
        )
    check_promotable(settings, resolved)
    report = load_report(settings, resolved)
    decision = load_decision(settings, resolved)
    request_key = artifact_key(f"promotion-{settings.model_name}-v{resolved}")
    heading = f"# Promote v{resolved} of {settings.model_name}?"
    request = "\n\n".join(
        [heading, report.to_markdown(), decision_markdown_with_plot(settings, resolved, decision)]
    )
    publish_markdown(request_key, request, f"Promotion request v{resolved}")
    if answer is None:
        _announce_pause(resolved, timeout_seconds)
        form = review_summary(report, decision, links_markdown(settings, resolved), request_key)
        answer = pause_flow_run(
            wait_for_input=PromotionInput.with_initial_data(description=form),
            timeout=timeout_seconds,
            poll_interval=poll_interval_seconds,
        )
    review_tags = {"promotion.reason": answer.reason, **_flow_run_url_tag()}
    worse = refusal(report, decision, answer.backfill_mode, answer.fraction) if answer.approve else None
    if worse is not None:
        if not answer.force:  # before the lock and before anything is written
            raise refuse(resolved, worse)
        get_run_logger().warning("v%s is promoted by force although %s", resolved, worse)
        review_tags["promotion.forced"] = worse
    if not answer.approve:
        tag_version(settings, resolved, {"promotion.status": "rejected", **review_tags})
        result = {"version": resolved, "promoted": False, "reason": answer.reason}
        why = f": {answer.reason}" if answer.reason else " (no reason given)"
        return Completed(name="Rejected", message=f"v{resolved} rejected by the reviewer{why}", data=result)

    with lifecycle_lock(settings, f"promotion of v{resolved}"):
        check_decision_is_current(settings, resolved, decision)
        if answer.backfill_mode != "as-decided" and answer.backfill_mode != decision.mode:
            decision = override_decision(settings, resolved, decision, answer.backfill_mode, answer.fraction)
        gallery_version = decision.gallery_version
        if gallery_version is None and decision.mode != "reject":  # planned: built on approval (resumable)
            gallery_version = execute_decision(settings, resolved, decision.model_dump(mode="json"))
        if gallery_version is None:
            raise NothingToPromoteError(
                f"v{resolved}'s decision is {decision.mode!r}: there is no gallery to switch to; "
                "approve with a backfill mode instead"
            )
        live = switch_live(settings, resolved, gallery_version)
        tag_version(settings, resolved, {"promotion.status": "approved", **review_tags})
    result = {"version": resolved, "promoted": True, "reason": answer.reason, **live}
    return Completed(
        name="Promoted",
        message=f"v{resolved} is champion; live gallery {live['gallery_version']} ({decision.mode})",
        data=result,
    )


def _flow_run_url_tag() -> dict[str, str]:
    """The review's flow run on the model version it decided: its UI address, or its id without a UI."""
    tags = prefect_run_tags()
    if TAG_FLOW_RUN_URL in tags:
        return {"promotion.flow_run_url": tags[TAG_FLOW_RUN_URL]}
    return {"promotion.flow_run_id": tags[TAG_FLOW_RUN_ID]} if TAG_FLOW_RUN_ID in tags else {}
