"""The machinery of the bundled path, on an adopted model with its manifests on S3.

One refresh path serves every source, so what the digits' tests show must hold for a team's own
model (import path, safetensors, RGB at its own size) and its S3 manifests too: training against
the live targets (a skip leaves the gallery in the old model's space, so the next challenger has
two targets), the as-served gate, the compatibility search, the no-op check, and resume after a
SIGKILL. The same helpers build and judge the bundled homes in tests/integration/test_live_chain.py,
tests/integration/test_compat_search.py and tests/e2e/test_crash_refresh.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hotswap.components.core.settings import HotswapSettings
from hotswap.components.decision.promotion_gate import WorseThanLiveError
from hotswap.components.registry.mlflow_registry import ModelRegistry
from hotswap.tasks.compat_search import PARENT_RUN_TAG, TRIAL_TAG
from mlflow.tracking import MlflowClient

from tests.fixtures.images import S3ImageSet
from tests.fixtures.s3 import create_bucket
from tests.fixtures.team import NEW_MODEL, TEAM_SPEC, D, write_team_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
GALLERY = 120


def _overrides(root: Path, s3: S3ImageSet, bucket: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "home": str(root / "home"),
        "store_uri": f"s3://{bucket}/store",
        "s3_endpoint_url": s3.endpoint,
        "model_name": "adoptedlife",
        "data": {"source": str(root / "train.parquet"), "validation_split": "val", "gate_split": "val"},
        "gallery": {"manifest": str(root / "gallery.parquet")},
        "stream": {"workers": 0, "batch_size": 50},
        "training": {"epochs": 2, "batch_size": 50, "embedding_dim": D, "new_model": NEW_MODEL},
        "compat": {"min_epoch_steps": 4},
        "compat_search": {"enabled": False},
        "dpq": {"epochs": 2, "n_blocks": 2, "n_codewords": 16, "kmeans_iters": 3},
        "decision": {"partial_fractions": [0.5], "timing_repeats": 1, "timing_sample": 16},
        "backfill": {"shard_size": 60, "workers": 1},
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="module")
def team_home(s3_images: S3ImageSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Adopted v1, then v2 promoted by a forced skip: champion v2 serves a gallery of v1 features."""
    from hotswap.flows.adopt import adopt
    from hotswap.flows.promote import PromotionInput, promote
    from hotswap.flows.refresh import refresh

    root = tmp_path_factory.mktemp("adopted-lifecycle")
    write_team_files(root, s3_images, s3_images.gallery(GALLERY))
    bucket = create_bucket(s3_images.endpoint, "adoptedlife")
    overrides = _overrides(root, s3_images, bucket)
    adopt(
        spec=TEAM_SPEC,
        weights=str(root / "team.safetensors"),
        gallery_features=str(root / "features.parquet"),
        overrides=overrides,
    )
    # a lenient gate and a forced skip: v2 goes live on v1's gallery (nothing re-extracted). A skip
    # is promotable only when it beats live as served, which this set-up does not depend on: the
    # reviewer approves it with force
    skip = _overrides(
        root,
        s3_images,
        bucket,
        decision={"policy": "skip"},
        thresholds={"served_margin": -1.0, "new_new_tolerance": 1.0, "cross_margin": -1.0},
    )
    first = refresh(overrides=skip, auto_promote=False, return_state=True).result()
    assert first["decision"] == "skip" and first["blessed"], first
    approved = promote(
        overrides=skip,
        version=first["challenger"],
        answer=PromotionInput(approve=True, reason="v2 on v1's gallery", force=True),
    )
    assert approved["promoted"] and approved["gallery_version"] == "v1-adopted", approved
    return {"root": root, "overrides": overrides, "bucket": bucket, "s3": s3_images}


def _unpassable(team_home: dict[str, Any]) -> dict[str, Any]:
    """Settings under which no challenger passes: the gate and every option need +1.0 mAP over live."""
    return _overrides(
        team_home["root"],
        team_home["s3"],
        team_home["bucket"],
        thresholds={"served_margin": 1.0},
        decision={"min_gain_over_live": 1.0},
        compat_search={"enabled": True, "max_trials": 1},
    )


def test_the_challenger_trains_against_every_live_target_and_is_gated_as_served(
    team_home: dict[str, Any],
) -> None:
    from hotswap.flows.promote import PromotionInput, promote
    from hotswap.flows.refresh import refresh

    # given champion v2 serving a gallery embedded by v1 (share 100 %)
    # when a refresh runs with a gate and a decision no challenger can pass, and a one-trial search
    overrides = _unpassable(team_home)
    summary = refresh(overrides=overrides, return_state=True).result()
    # then its targets are the champion and the model whose features the gallery holds
    assert {t["version"] for t in summary["targets"]} == {"1", "2"}
    registry = ModelRegistry.from_settings(HotswapSettings(**overrides))
    report = registry.load_report(summary["challenger"])
    # and the gate judged it as served: queries against the gate split composed like the live gallery
    assert report.served is not None and not report.blessed
    assert report.served.live_shares == {"1": 1.0} and report.served.champion_version == "2"
    # and the search ran its one trial, nested under the configured challenger's training run
    configured = registry.resolve("3").run_id
    client = MlflowClient(HotswapSettings(**overrides).resolved_tracking_uri)
    trials = client.search_runs(
        [registry.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{configured}'"
    )
    assert len(trials) == 1 and trials[0].data.tags[TRIAL_TAG] == "0"
    # and nothing that is not better than live is promoted: not by the refresh, not by a reviewer
    assert summary["promoted"] is False and summary["decision"] == "reject"
    with pytest.raises(WorseThanLiveError, match="rerun with --force"):  # one line, how to override
        promote(
            overrides=overrides,
            version=summary["challenger"],
            answer=PromotionInput(approve=True, reason="looks fine"),
        )
    assert registry.aliases()["champion"] == "2"


def test_an_unchanged_refresh_is_a_noop(team_home: dict[str, Any]) -> None:
    from hotswap.flows.refresh import refresh

    overrides = _unpassable(team_home)
    # given the refresh above, when it runs again on the same data, settings and champion
    summary = refresh(overrides=overrides, return_state=True).result()
    # then nothing is trained, and it says why
    assert summary["noop"] is True and "training again would reproduce it" in summary["reason"]


def test_a_refresh_killed_in_training_resumes_without_retraining(team_home: dict[str, Any]) -> None:
    from prefect.settings import PREFECT_API_URL

    overrides = _overrides(team_home["root"], team_home["s3"], team_home["bucket"], seed=3)
    config = team_home["root"] / "kill.toml"
    config.write_text(_toml(overrides))
    env = {**os.environ, "HOTSWAP_CONFIG": str(config), "PREFECT_API_URL": PREFECT_API_URL.value()}
    env["PYTHONPATH"] = str(ROOT)
    hotswap = str(Path(sys.executable).with_name("hotswap"))
    home = overrides["home"]
    # given a refresh SIGKILLed right after its challenger was trained and registered
    killed = subprocess.run(
        [hotswap, "refresh", "--home", home],
        env={**env, "HOTSWAP_TEST_KILL_AT": "refresh:trained"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    registry = ModelRegistry.from_settings(HotswapSettings(**overrides))
    interrupted = max(int(v.version) for v in registry.list_versions())
    assert registry.get_tags(str(interrupted)).get("hotswap.refresh.stage") == "trained"
    # when the same refresh runs again
    rerun = subprocess.run(
        [hotswap, "refresh", "--home", home], env=env, capture_output=True, text=True, timeout=900
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    # then it resumed that challenger: no new version was trained
    assert max(int(v.version) for v in registry.list_versions()) == interrupted
    assert registry.get_tags(str(interrupted)).get("hotswap.refresh.stage") == "staged"
    assert "resum" in rerun.stderr.lower() or "resum" in rerun.stdout.lower()


def _toml(overrides: dict[str, Any]) -> str:
    """The overrides as a settings file (what an operator's hotswap.toml holds); home is a flag."""
    lines = [f"{k} = {_value(v)}" for k, v in overrides.items() if not isinstance(v, dict) and k != "home"]
    for name, table in overrides.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)
