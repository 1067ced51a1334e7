"""The compatibility gate: criteria, boundaries, knobs, serialisation and rendering."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hotswap.components.compat.gate import build_report
from hotswap.components.compat.metrics import RetrievalMetrics
from hotswap.components.compat.report import CompatibilityReport, CompatThresholds, ReportFormatError
from hotswap.components.core.settings import ThresholdSettings
from PIL import Image


def _m(map_: float, top1: float, top5: float) -> dict[str, float]:
    return {"map": map_, "top1": top1, "top5": top5}


GOOD = {
    "old/old": _m(0.50, 0.75, 0.875),
    "new/new": _m(0.75, 0.875, 0.9375),
    "new/old": _m(0.625, 0.8125, 0.90625),
    "old/new": _m(0.5625, 0.78125, 0.890625),
}


def _with(pair: str, **values: float) -> dict[str, dict[str, float]]:
    matrix = {key: dict(value) for key, value in GOOD.items()}
    matrix[pair].update(values)
    return matrix


def test_compatible_model_is_blessed_with_one_row_per_check_and_update_gain() -> None:
    report = build_report(GOOD, old_version="1", new_version="2", data_version="data-v1")
    assert report.blessed and not report.rubber_stamp
    assert [(c.name, c.metric) for c in report.checks] == [
        ("cross_test", "map"),
        ("new_model", "map"),
        ("cross_test", "top1"),
        ("new_model", "top1"),
    ]
    # (0.625 - 0.5) / (0.75 - 0.5) and (0.8125 - 0.75) / (0.875 - 0.75)
    assert report.update_gain == {"map": 0.5, "top1": 0.5}
    cross_map = report.checks[0]
    assert (cross_map.pair, cross_map.candidate, cross_map.baseline) == ("new/old", 0.625, 0.5)
    assert cross_map.bound == 0.5
    assert cross_map.delta == pytest.approx(0.125)
    assert report.reasons == ["all 4 checks passed"]


def test_cross_test_failure_says_which_pair_metric_and_by_how_much() -> None:
    report = build_report(_with("new/old", map=0.4375), old_version="1", new_version="2", data_version="d")
    assert not report.blessed
    failed = report.failed_checks
    assert [(c.name, c.metric) for c in failed] == [("cross_test", "map")]
    (reason,) = report.reasons
    assert "new/old" in reason and "mAP" in reason and "0.4375" in reason and "short by 0.0625" in reason


def test_cross_test_is_strict_but_new_model_tolerance_is_inclusive() -> None:
    # new/old exactly equal to old/old: MLflow's >= would pass it, DESIGN's "beats" does not.
    tied = build_report(_with("new/old", map=0.5), old_version="1", new_version="2", data_version="d")
    assert [c.name for c in tied.failed_checks] == ["cross_test"]
    # new/new exactly at old/old - tolerance passes; a hair below fails.
    limits = CompatThresholds(new_new_tolerance=0.25)
    at_bound = build_report(_with("new/new", map=0.25), "1", "2", "d", thresholds=limits)
    assert at_bound.blessed
    below = build_report(_with("new/new", map=0.2499), "1", "2", "d", thresholds=limits)
    assert [(c.name, c.metric) for c in below.failed_checks] == [("new_model", "map")]


def test_thresholds_are_configurable() -> None:
    margin = build_report(GOOD, "1", "2", "d", thresholds={"cross_margin": 0.1})
    assert {(c.name, c.metric) for c in margin.failed_checks} == {("cross_test", "top1")}  # +0.0625 < 0.1
    only_top5 = build_report(GOOD, "1", "2", "d", thresholds={"metrics": ["top5"]})
    assert {c.metric for c in only_top5.checks} == {"top5"}
    gain_gate = build_report(GOOD, "1", "2", "d", thresholds={"min_update_gain": 0.6})
    assert [c.name for c in gain_gate.failed_checks] == ["update_gain", "update_gain"]
    settings = ThresholdSettings(new_new_tolerance=0.2, cross_margin=0.05)
    from_settings = CompatThresholds.from_settings(settings)
    assert (from_settings.new_new_tolerance, from_settings.cross_margin) == (0.2, 0.05)


def test_undefined_update_gain_fails_its_gate_and_survives_json() -> None:
    # new/new no better than old/old: the gain has no denominator.
    matrix = _with("new/new", map=0.5)
    report = build_report(matrix, "1", "2", "d", thresholds={"min_update_gain": 0.1, "metrics": ["map"]})
    assert report.update_gain == {"map": None}
    gain_check = [c for c in report.checks if c.name == "update_gain"][0]
    assert not gain_check.passed and "undefined" in gain_check.message
    assert CompatibilityReport.from_json(report.to_json()) == report


def test_first_model_is_rubber_stamped_without_checks() -> None:
    report = build_report({"new/new": GOOD["new/new"]}, None, "1", "d", rubber_stamp=True)
    assert report.blessed and report.rubber_stamp and report.checks == []
    assert "rubber stamp" in report.reasons[0]
    assert report.heatmap_png().startswith(b"\x89PNG")
    with pytest.raises(ReportFormatError, match="rubber_stamp"):
        build_report(GOOD, "1", "2", "d", rubber_stamp=True)
    with pytest.raises(ReportFormatError, match="old_version is required"):
        build_report(GOOD, None, "2", "d")


def test_accepts_retrieval_metrics_from_cross_eval() -> None:
    matrix = {
        pair: RetrievalMetrics(map=v["map"], cmc={1: v["top1"], 5: v["top5"]}, n_queries=10)
        for pair, v in GOOD.items()
    }
    assert build_report(matrix, 1, 2, "d").matrix == build_report(GOOD, 1, 2, "d").matrix


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "new/old"}, "missing pair 'new/old'"),
        ({**GOOD, "new/new": {"map": 0.5, "top5": 0.9}}, "matrix\\['new/new'\\] has no 'top1'"),
        (_with("old/old", map=math.nan), "is not a score"),
        (_with("old/old", map=1.5), "is not a score"),
        ({**GOOD, "mid/old": GOOD["old/old"]}, "unknown pair 'mid/old'"),
        (_with("old/old", map="high"), "is not a number"),
    ],
)
def test_bad_matrix_is_rejected_by_name(matrix: dict, message: str) -> None:
    with pytest.raises(ReportFormatError, match=message):
        build_report(matrix, "1", "2", "d")


def test_json_round_trip_and_malformed_json() -> None:
    report = build_report(_with("new/old", top1=0.5), "3", "4", "data-v7", model_name="m")
    again = CompatibilityReport.from_json(report.to_json())
    assert again == report and not again.blessed and again.reasons == report.reasons
    with pytest.raises(ReportFormatError, match="stored.json"):
        CompatibilityReport.from_json('{"blessed": "maybe"}', source="stored.json")


def test_markdown_has_the_table_the_checks_and_the_verdict() -> None:
    text = build_report(_with("new/old", map=0.4375), "1", "2", "data-v1", model_name="m").to_markdown()
    assert "| Case (query/gallery) | Top-1 (%) | Top-5 (%) | mAP (%) |" in text
    assert "| old/old | 75.00 | 87.50 | 50.00 |" in text
    assert "| new/old | 81.25 | 90.62 | 43.75 |" in text
    assert "| cross_test (new/old) | mAP | 0.4375 | > 0.5000 | -0.0625 | FAIL |" in text
    assert "## Verdict: NOT BLESSED" in text and "data-v1" in text
    assert text.index("## Checks") < text.index("## Verdict")


def test_heatmap_is_a_png_with_one_panel_per_metric() -> None:
    png = build_report(GOOD, "1", "2", "d").heatmap_png()
    image = np.asarray(Image.open(io.BytesIO(png)))
    height, width = image.shape[:2]
    assert width > 2.5 * height  # three side-by-side 2x2 panels
