"""Failure classes, their exit codes and one-line messages; rounding-safe scores; settings files."""

from __future__ import annotations

import numpy as np
import pytest
from botocore.exceptions import EndpointConnectionError
from hotswap.components.compat.gate import normalise_matrix
from hotswap.components.compat.metrics import clamp_score, retrieval_metrics
from hotswap.components.compat.report import ReportFormatError
from hotswap.components.core.errors import EXIT_CODES, Services, classify
from hotswap.components.core.settings import SettingsFileError, load_settings

SERVICES = Services(
    tracking_uri="http://bob:hunter2@mlflow.invalid:5000",
    store_uri="s3://bucket/g",
    s3_endpoint_url="http://127.0.0.1:9",
)


def test_unreachable_s3_names_the_store_and_says_a_rerun_resumes() -> None:
    try:
        raise RuntimeError("task failed") from EndpointConnectionError(
            endpoint_url="http://127.0.0.1:9/bucket"
        )
    except RuntimeError as exc:
        failure = classify(exc, SERVICES)
    assert failure.kind == "service" and failure.exit_code == EXIT_CODES["service"] == 5
    assert "S3 store s3://bucket/g at http://127.0.0.1:9 did not answer" in failure.line()
    assert "rerun to resume" in failure.line()


def test_unreachable_mlflow_is_named_with_credentials_masked() -> None:
    from mlflow.exceptions import MlflowException

    exc = MlflowException(
        "API request to http://bob:hunter2@mlflow.invalid:5000/api failed: Max retries exceeded"
    )
    line = classify(exc, SERVICES).line()
    assert "MLflow tracking server http://***@mlflow.invalid:5000" in line and "hunter2" not in line


def test_a_garbage_sqlite_file_is_an_integrity_error_naming_it(tmp_path) -> None:
    import sqlite3

    path = tmp_path / "mlflow.db"
    path.write_bytes(b"garbage" * 200)
    with pytest.raises(sqlite3.DatabaseError) as info:
        sqlite3.connect(path).execute("select 1 from sqlite_master")
    failure = classify(info.value, Services(tracking_uri=f"sqlite:///{path}"))
    assert failure.kind == "integrity" and str(path) in failure.line()


def test_unknown_exceptions_are_bugs_and_known_ones_keep_their_message() -> None:
    assert classify(ZeroDivisionError("division by zero")).exit_code == 1
    line = classify(KeyError("x")).line()
    assert classify(KeyError("x")).kind == "state" and line.startswith("x")
    assert classify(KeyboardInterrupt()).exit_code == 130


def test_messages_are_one_line_with_a_hint_unless_they_say_what_to_do() -> None:
    from hotswap.components.core.errors import Failure

    assert Failure("input", "bad value\nsecond line").line() == "bad value second line — fix it and rerun"
    assert Failure("state", "no champion: run `hotswap bootstrap` first").line().endswith("first")


def test_float_rounding_above_one_is_a_score_and_real_excess_is_not() -> None:
    assert clamp_score(1.0000000000000007) == 1.0 and clamp_score(-1e-12) == 0.0
    assert clamp_score(1.01) == 1.01 and np.isnan(clamp_score(float("nan")))
    matrix = normalise_matrix({"new/new": {"map": 1.0000000000000007, "top1": 1.0}})
    assert matrix["new/new"]["map"] == 1.0
    with pytest.raises(ReportFormatError, match="not a score"):
        normalise_matrix({"new/new": {"map": 1.01}})


def test_a_perfectly_separable_set_scores_at_most_one() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4] * 10
    labels = np.repeat(np.arange(4), 25)
    feats = centres[labels] + rng.normal(0, 1e-3, (100, 8)).astype(np.float32)
    metrics = retrieval_metrics(feats, labels)
    assert metrics.map <= 1.0 and metrics.map == pytest.approx(1.0)


def test_a_named_settings_file_must_exist_and_parse(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOTSWAP_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsFileError, match="missing.toml .HOTSWAP_CONFIG. does not exist"):
        load_settings(home=str(tmp_path))
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nepochs = 2\n")
    monkeypatch.setenv("HOTSWAP_CONFIG", str(bad))
    with pytest.raises(SettingsFileError, match=r"bad.toml is not valid TOML: .*line 1"):
        load_settings(home=str(tmp_path))
    monkeypatch.delenv("HOTSWAP_CONFIG")
    monkeypatch.chdir(tmp_path)  # no ./hotswap.toml: the implicit file is optional
    assert load_settings(home=str(tmp_path)).training.epochs == 8


def test_ctrl_c_is_one_line_with_the_interrupted_exit_code() -> None:
    failure = classify(KeyboardInterrupt())
    assert failure.exit_code == 130 and "rerun resumes" in failure.line()


@pytest.mark.parametrize(
    ("mode", "fraction", "problem"),
    [
        ("sideways", None, "is not a backfill mode"),
        ("partial", None, "needs 0 < fraction < 1"),
        ("transform", 1.0, "re-extracts 0 <= fraction < 1"),
        ("full", 0.5, "only applies to --mode partial or transform"),
    ],
)
def test_a_standalone_backfill_request_is_checked_before_anything_starts(mode, fraction, problem):
    from hotswap.components.core.preflight import InputError, check_backfill_request

    with pytest.raises(InputError, match=problem):
        check_backfill_request(mode, fraction)


@pytest.mark.parametrize(("mode", "fraction"), [("transform", None), ("transform", 0.25), ("partial", 0.5)])
def test_transform_is_a_standalone_backfill_mode(mode, fraction):
    from hotswap.components.core.preflight import check_backfill_request

    check_backfill_request(mode, fraction)
