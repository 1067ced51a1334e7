"""docs/reliability.md is exactly what tests/e2e/reliability_doc.py renders from the case lists."""

from __future__ import annotations

from tests.e2e.reliability_doc import DOC, FAULTS, ROOT, render


def test_reliability_doc_matches_the_tested_cases() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), "run: python -m tests.e2e.reliability_doc"


def test_every_fault_row_names_an_existing_test() -> None:
    for fault in FAULTS:
        path, name = fault.test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), fault.test
