"""What a reviewer and an operator read: the form summary and the decision plot."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hotswap.components.compat.gate import build_report
from hotswap.components.compat.report import CompatThresholds
from hotswap.components.decision.report import decision_plot_png
from hotswap.components.decision.review import review_summary

from tests.unit.test_decision import features, run  # noqa: F401  (module fixture reused)


@pytest.fixture(scope="module")
def record(features):  # noqa: F811
    return run(features)


def _report(blessed: bool):
    matrix = {
        "old/old": {"map": 0.55, "top1": 0.86, "top5": 0.95},
        "new/new": {"map": 0.95, "top1": 0.98, "top5": 0.99},
        "new/old": {"map": 0.75 if blessed else 0.10, "top1": 0.95 if blessed else 0.12, "top5": 0.99},
    }
    return build_report(
        matrix, old_version="3", new_version="4", data_version="d", thresholds=CompatThresholds()
    )


def test_the_form_summary_is_narrow_and_says_verdict_choice_and_where_to_read_more(record):
    text = review_summary(_report(True), record, "MLflow: [MLflow run](http://m/#/x)", "promotion-m-v4")
    assert "v4 against v3: **blessed**" in text and f"Backfill decision: **{record.mode}**" in text
    table_rows = [line for line in text.splitlines() if line.startswith("|")]
    assert max(line.count("|") for line in table_rows) <= 6  # at most five columns: fits the form
    assert sum("←" in line for line in table_rows) == 1  # exactly the chosen option is marked
    assert len([r for r in table_rows if r.startswith("| partial")]) < len(
        [o for o in record.options if o.mode == "partial"]
    )  # not every partial fraction
    assert "promotion-m-v4" in text and "http://m/#/x" in text


def test_an_unblessed_report_shows_why_in_the_form(record):
    text = review_summary(_report(False), record, "", "k")
    assert "**NOT blessed**" in text and "new/old" in text


def test_the_decision_plot_is_a_png_of_curve_and_costs(record):
    from PIL import Image

    png = decision_plot_png(record)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] > 2 * image.size[1] > 500
    pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas
