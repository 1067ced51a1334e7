"""`hotswap demo` end to end, as `make demo` runs it: real training, Prefect, MLflow, faiss.

Default training settings (the blessing depends on them); only the DPQ epochs and the decision's
timing repeats are reduced to keep the test short. Then `status` and `search` answer from what
the demo left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HOTSWAP = Path(sys.executable).with_name("hotswap")

pytestmark = pytest.mark.slow


def _hotswap(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run([str(HOTSWAP), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"hotswap {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_demo_ends_with_a_blessed_promoted_v2_a_recorded_decision_and_a_searchable_gallery(tmp_path):
    home = tmp_path / "demo"
    env = {
        **os.environ,
        "HOTSWAP_DPQ__EPOCHS": "3",
        "HOTSWAP_DECISION__TIMING_REPEATS": "1",
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "COLUMNS": "200",
    }
    env.pop("PREFECT_API_URL", None)
    output = _hotswap("demo", "--home", str(home), env=env)
    assert "verdict: blessed — all 4 checks passed" in output
    assert "champion v2 promoted: True" in output
    assert "decision:" in output and "mlflow ui --backend-store-uri sqlite:///" in output

    status = json.loads(_hotswap("status", "--json", "--home", str(home), env=env))
    assert status["champion"] == "2" and status["previous"] == "1"
    assert status["last_decision"]["mode"] in ("skip", "transform", "requantize", "partial", "full")
    assert status["latest_version_tags"]["compat.blessed"] == "true"
    live = status["live_gallery_version"]
    assert live is not None and status["live_gallery"]["items"] == 1000

    hits = _hotswap("search", "--home", str(home), "--item-id", status["example_item"], "--k", "3", env=env)
    compact = "".join(hits.split())  # rich may wrap the table title
    assert f"ingallery{live}(modelv2" in compact  # "(model v2)" or "(model v2, calibrated scores)"
    assert hits.count("mnist5k-") == 3
