"""Where a decision lives: beside the new model version, in its MLflow run's artifacts.

The record is stored once, when decided (and again when carried out or overridden), and read back by
the promote flow and ``hotswap status``, never recomputed.
"""

from __future__ import annotations

from typing import Any

from hotswap.components.decision.record import DecisionRecord
from hotswap.components.decision.report import decision_plot_png

DECISION_JSON = "decision/decision.json"
DECISION_MD = "decision/decision.md"
DECISION_PNG = "decision/decision.png"


def save_decision(registry: Any, version: str, record: DecisionRecord) -> None:
    """Store the record (JSON for machines, markdown and a plot for people) in the version's MLflow run."""
    run_id = registry.resolve(version).run_id
    registry.log_artifact_bytes(run_id, DECISION_JSON, record.to_json().encode())
    registry.log_artifact_bytes(run_id, DECISION_MD, record.to_markdown().encode())
    registry.log_artifact_bytes(run_id, DECISION_PNG, decision_plot_png(record))


def load_decision(registry: Any, version: str) -> DecisionRecord:
    """The decision recorded for ``version``, read back (never recomputed)."""
    data = registry.load_artifact_bytes(version, DECISION_JSON)
    return DecisionRecord.from_json(data, source=f"decision of v{version}")
