"""Bounds on every wait for MLflow, S3 and the Prefect API, set as their clients' variables.

Apart from tasks/context.py so the command line can set them before it imports any client
(flows/cli_errors.py), at no import cost.
"""

from __future__ import annotations

import os
from typing import Any


def apply_service_timeouts(settings: Any) -> None:
    """Bound every wait on MLflow and S3 by ``service_timeout_seconds`` (unless set explicitly).

    MLflow's HTTP client otherwise waits 120 s per request and retries 7 times with backoff
    (minutes before a stopped server is reported); S3 clients read the same variable.
    """
    timeout = settings.service_timeout_seconds
    os.environ.setdefault("HOTSWAP_SERVICE_TIMEOUT_SECONDS", str(timeout))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # Prefect's API client waits 60 s per request by default; its server can be slow on a busy
    # machine (SQLite), so it gets a longer bound than MLflow and S3, but still a bound.
    os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", str(max(30.0, 3 * timeout)))
