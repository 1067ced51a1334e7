"""Shared test set-up.

Fixtures live in tests/fixtures/, one module per kind of real component they start
(S3 endpoint, MLflow registry, Prefect harness, trained models). They are loaded here
as plugins so every test folder sees them.
"""

import os
import tempfile

import pytest
import torch

# Deterministic, quiet, single-threaded: two OpenMP threads on a busy 2-core box are
# slower than one, and tests must not depend on the machine's load.
torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Few epochs everywhere (as the tests' own settings do for training and DPQ): the transform option's
# maps are fitted in every refresh; tests/unit/test_transform.py sets its own configs.
os.environ.setdefault("HOTSWAP_DECISION__TRANSFORM__EPOCHS", "10")
# Prefect reads its settings at import time: point it at a throw-away home before anything imports it.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="hotswap-test-prefect-")

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.models",
    "tests.fixtures.s3",
    "tests.fixtures.stores",
    "tests.fixtures.mlflow",
    "tests.fixtures.prefect",
    "tests.fixtures.prefect_server",
    "tests.fixtures.lifecycle",
    "tests.fixtures.serving",
    "tests.fixtures.images",
    "tests.fixtures.ordering",
]


@pytest.fixture(autouse=True)
def _environment_stays_per_test():
    """In-process CLI runs (typer's CliRunner) set process-wide defaults (PREFECT_HOME, console log
    levels, service timeouts); undo them after each test so they never leak into a later test's
    subprocesses (a worker started with a CLI's quiet console settings sends no flow logs)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
