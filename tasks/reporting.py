"""Prefect artifacts: the tables and markdown people read in the Prefect UI.

Artifact keys must be lowercase letters, digits and dashes; :func:`artifact_key` makes one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from hotswap.components.compat.report import CompatibilityReport
from prefect.artifacts import create_markdown_artifact, create_table_artifact


def artifact_key(*parts: object) -> str:
    key = "-".join(str(p) for p in parts).lower()
    return re.sub(r"[^a-z0-9-]+", "-", key).strip("-")[:100]


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    create_table_artifact(key=artifact_key(key), table=[dict(r) for r in rows], description=description)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=markdown, description=description)


def publish_report(report: CompatibilityReport, model_name: str, links: str | None = None) -> None:
    """The compatibility table (old/old, new/new, new/old, old/new) and the full report."""
    rows = [
        {"pair": pair, **{k: round(v, 4) for k, v in values.items()}}
        for pair, values in report.matrix.items()
    ]
    verdict = "blessed" if report.blessed else "NOT blessed"
    against = "first model, no baseline" if report.old_version is None else f"against v{report.old_version}"
    publish_table(
        f"compat-{model_name}-v{report.new_version}",
        rows,
        f"Compatibility of v{report.new_version} ({against}): {verdict}",
    )
    markdown = report.to_markdown() + (f"\n{links}\n" if links else "")
    publish_markdown(
        f"compat-report-{model_name}-v{report.new_version}",
        markdown,
        f"Compatibility report v{report.new_version} ({against})",
    )
