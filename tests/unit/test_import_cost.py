"""What a lifecycle command loads before its flow run starts (tasks/context.py, docs/operations.md).

The CLI imports a flow module after its inputs are checked and before the run starts. The flow
modules, and through them every task module, must not load torch, faiss or MLflow at import:
those are loaded by the task that uses them, so a run starts in about a second of imports and a
no-op refresh never loads torch. Each check runs in a fresh interpreter, because this test
process has loaded all three long before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

FLOW_MODULES = (
    "hotswap.flows.bootstrap",
    "hotswap.flows.adopt",
    "hotswap.flows.refresh",
    "hotswap.flows.promote",
    "hotswap.flows.backfill",
    "hotswap.flows.audit",
    "hotswap.flows.rollback",
    "hotswap.flows.switch",
    "hotswap.tasks.events",  # `hotswap data register`
)
LOADED_BY_TASKS = ("torch", "faiss", "mlflow")


def _loaded_after_importing(modules: tuple[str, ...]) -> dict[str, list[str]]:
    """In one fresh interpreter: which of LOADED_BY_TASKS are loaded after importing each module in
    turn (the first module to load one is the one that imports it)."""
    code = (
        "import importlib, json, sys\n"
        "loaded = {}\n"
        f"for module in {modules!r}:\n"
        "    importlib.import_module(module)\n"
        f"    loaded[module] = [m for m in {LOADED_BY_TASKS!r} if m in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_importing_the_flows_loads_neither_torch_nor_faiss_nor_mlflow() -> None:
    # given: a fresh interpreter; when: the CLI's imports of every flow; then: nothing heavy loaded
    loaded = _loaded_after_importing(FLOW_MODULES)
    assert {module: found for module, found in loaded.items() if found} == {}


def test_the_check_sees_an_import_that_loads_torch() -> None:
    # the check itself: a module that imports torch at its top is caught, and named
    loaded = _loaded_after_importing(("hotswap.flows.refresh", "hotswap.components.models.backbones"))
    assert loaded == {"hotswap.flows.refresh": [], "hotswap.components.models.backbones": ["torch"]}


def test_torch_threads_reach_torch_whether_or_not_it_is_loaded_yet() -> None:
    # given: a fresh interpreter with another OMP_NUM_THREADS; when: the setting is applied before
    # torch loads, then torch loads, then another count is applied; then: torch follows both
    code = (
        "from hotswap.components.core.threads import limit_torch_threads\n"
        "limit_torch_threads(1)\n"
        "import torch\n"
        "before = torch.get_num_threads()\n"
        "limit_torch_threads(3)\n"
        "print(before, torch.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "3"]
