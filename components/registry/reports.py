"""Compatibility reports in the registry: each one its own run, and the gate's record on the version.

A report run holds the matrix as metrics, the thresholds as params and ``compat/report.json`` /
``report.md`` / ``heatmap.png``; the gated version carries ``compat.blessed``,
``compat.old_version`` and ``compat.report_uri``. Readers load the stored report, never recompute it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotswap.components.compat.report import CompatibilityReport
from hotswap.components.registry.artifacts import RegistryArtifacts
from hotswap.components.registry.records import (
    REPORT_DIR,
    TAG_BASELINE_VERSION,
    TAG_BLESSED,
    TAG_DATA_VERSION,
    TAG_KIND,
    TAG_MODEL_NAME,
    TAG_NEW_VERSION,
    TAG_OLD_VERSION,
    TAG_REPORT_URI,
    _tag_value,
    mask_secret,
)
from hotswap.components.registry.runs import _all_runs
from mlflow.entities import Metric, RunStatus


class RegistryReports(RegistryArtifacts):
    """Log compatibility reports (reading them back: components/registry/reading.py)."""

    def log_report(
        self,
        report: CompatibilityReport,
        tag_version: bool = True,
        run_tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Log a report as its own run (metrics, thresholds, JSON, markdown, heatmap); returns its URI.

        With ``tag_version`` the new version gets ``compat.blessed``, ``compat.old_version`` and
        ``compat.report_uri`` — the gate's record. An audit that re-checks old pairs passes False.
        """
        if report.model_name not in (None, self.model_name):
            raise ValueError(
                f"report is about model {report.model_name!r}, this registry is {self.model_name!r}"
            )
        new = self.resolve(report.new_version)
        if report.old_version is not None:
            self.resolve(report.old_version)
        old_label = report.old_version or "none"
        tags = {
            TAG_KIND: "compatibility",
            TAG_MODEL_NAME: self.model_name,
            TAG_NEW_VERSION: new.version,
            TAG_BASELINE_VERSION: old_label,
            TAG_DATA_VERSION: report.data_version,
            TAG_BLESSED: _tag_value(report.blessed),
        }
        tags.update({key: mask_secret(key, _tag_value(value)) for key, value in (run_tags or {}).items()})
        run = self.client.create_run(
            self.experiment_id, run_name=f"compat-v{new.version}-vs-{old_label}", tags=tags
        )
        run_id = run.info.run_id
        try:
            timestamp = run.info.start_time
            metrics = [Metric(key, value, timestamp, 0) for key, value in report.flat_metrics().items()]
            self._log_batch(run_id, {"thresholds": report.thresholds.model_dump()}, metrics)
            self._log_files(
                run_id,
                REPORT_DIR,
                {
                    "report.json": report.to_json().encode(),
                    "report.md": report.to_markdown().encode(),
                    "heatmap.png": report.heatmap_png(),
                },
            )
        except BaseException:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
            raise
        self.client.set_terminated(run_id)
        uri = f"runs:/{run_id}/{REPORT_DIR}/report.json"
        if tag_version:
            self.set_tags(
                new,
                {TAG_BLESSED: report.blessed, TAG_OLD_VERSION: old_label, TAG_REPORT_URI: uri},
            )
        return uri

    def list_reports(self, new_version: str | int | None = None) -> list[CompatibilityReport]:
        """Every logged report of this model (optionally of one new version), oldest first; for audits."""
        query = f"tags.`{TAG_KIND}` = 'compatibility' AND tags.`{TAG_MODEL_NAME}` = '{self.model_name}'"
        if new_version is not None:
            query += f" AND tags.`{TAG_NEW_VERSION}` = '{new_version}'"
        runs = _all_runs(self.client, self.experiment_id, query)
        return [
            self.load_report_uri(f"runs:/{run.info.run_id}/{REPORT_DIR}/report.json")
            for run in sorted(runs, key=lambda r: r.info.start_time)
        ]
