"""The bad-input matrix: every case a user can get wrong, what they see, and what a rerun does.

tests/e2e/test_bad_input_matrix.py runs each case against a real home (SQLite MLflow, local
store, real Prefect engine) and checks: exactly one ``error:`` line, the expected exit code and
words, no traceback, and the home's store and MLflow files byte-identical afterwards.
docs/reliability.md is generated from this list (tests/e2e/reliability_doc.py), so the document
cannot drift from what is tested.

Homes: ``live`` has v1 as champion and v2 as a decided challenger (bootstrap + refresh);
``empty`` has an initialised but empty registry; ``scratch`` is a throw-away copy of ``live``
that a case may damage in its ``setup``.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: The settings every case starts from (small and fast, but every part real).
BASE_TOML = """\
model_name = "matrix"
[training]
epochs = 2
embedding_dim = 16
[dpq]
epochs = 2
n_blocks = 2
n_codewords = 16
kmeans_iters = 3
[decision]
partial_fractions = [0.5]
timing_repeats = 1
timing_sample = 32
[backfill]
shard_size = 200
[data]
source = "synthetic:600:6"
bootstrap_classes = [0, 1, 2]
[compat_search]
enabled = false  # six trials per refresh otherwise; the search has its own tests
"""

Setup = Callable[[Path, Path], dict[str, str]]


@dataclass(frozen=True)
class Case:
    """One bad input: the command, how it is broken, what the user must see."""

    id: str
    fault: str
    argv: list[str]
    code: int
    expect: str
    rerun: str = "same error until the input is fixed; nothing was changed"
    env: dict[str, str] = field(default_factory=dict)
    toml: str = ""  # appended to BASE_TOML (later keys win within their table)
    home: str = "live"
    setup: Setup | None = None
    pending: str = ""  # non-empty: the check lands with another change; the case is marked xfail


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _text_file_as_image(home: Path, tmp: Path) -> dict[str, str]:
    (tmp / "not-an-image.png").write_text("hello")
    return {"QUERY": str(tmp / "not-an-image.png")}


_HOLDERS: list[subprocess.Popen] = []


def _foreign_lease(home: Path, tmp: Path) -> dict[str, str]:
    """A live holder: another process of this host, as if it ran a refresh."""
    from datetime import UTC, datetime, timedelta

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _HOLDERS.append(holder)

    now = datetime.now(UTC)
    record = {
        "gallery": "default",
        "holder_id": "matrix-holder",
        "command": "hotswap refresh",
        "pid": holder.pid,
        "host": socket.gethostname(),
        "started_at": now.isoformat(),
        "renewed_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
    }
    path = home / "store" / "galleries" / "default" / "LEASE.json"
    path.write_text(json.dumps(record))
    return {}


def _remove_lease(home: Path) -> None:
    (home / "store" / "galleries" / "default" / "LEASE.json").unlink(missing_ok=True)
    while _HOLDERS:
        holder = _HOLDERS.pop()
        holder.kill()
        holder.wait()


def _garbage_mlflow_db(home: Path, tmp: Path) -> dict[str, str]:
    (home / "mlflow.db").write_bytes(b"this is not a database" * 100)
    return {}


def _corrupt_live_manifest(home: Path, tmp: Path) -> dict[str, str]:
    manifest = home / "store" / "galleries" / "default" / "versions" / "v1-bootstrap" / "manifest.json"
    manifest.write_text('{"gallery": "default", "version": "v1-bootstrap", "num_')
    return {}


def _closed_mlflow(home: Path, tmp: Path) -> dict[str, str]:
    return {"HOTSWAP_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"}


def _closed_mlflow_with_password(home: Path, tmp: Path) -> dict[str, str]:
    return {"HOTSWAP_TRACKING_URI": f"http://alice:s3cr3t-pw@127.0.0.1:{_closed_port()}"}


def _closed_s3(home: Path, tmp: Path) -> dict[str, str]:
    return {
        "HOTSWAP_STORE_URI": "s3://matrix-bucket/galleries",
        "HOTSWAP_S3_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _missing_manifest_csv(home: Path, tmp: Path) -> dict[str, str]:
    return {"HOTSWAP_DATA__SOURCE": str(tmp / "no-such-manifest.csv")}


def _other_labels_manifest(home: Path, tmp: Path) -> dict[str, str]:
    """A manifest whose item ids and labels are not those of the live gallery's data."""
    import numpy as np
    from PIL import Image

    folder = tmp / "other"
    folder.mkdir()
    rows = ["item_id,uri,label,split"]
    rng = np.random.default_rng(0)
    for i in range(40):
        path = folder / f"img{i}.png"
        Image.fromarray((rng.random((28, 28)) * 255).astype("uint8")).save(path)
        rows.append(f"other-{i},{path},{'cat' if i % 2 else 'dog'},{['train', 'val', 'test'][i % 3]}")
    (tmp / "other.csv").write_text("\n".join(rows) + "\n")
    return {"HOTSWAP_DATA__SOURCE": str(tmp / "other.csv")}


S = "status"
CASES: list[Case] = [
    # ------------------------------------------------------------- settings files and values
    Case(
        "config-missing",
        "HOTSWAP_CONFIG names a file that does not exist",
        [S],
        2,
        "does not exist",
        env={"HOTSWAP_CONFIG": "/nonexistent/hotswap.toml"},
    ),
    Case(
        "config-option-missing",
        "--config names a file that does not exist",
        ["--config", "/nonexistent/x.toml", S],
        2,
        "does not exist",
    ),
    Case(
        "toml-syntax",
        "settings file with a TOML syntax error",
        [S],
        2,
        "is not valid TOML",
        toml="[training\nepochs = 3\n",
    ),
    Case(
        "unknown-setting",
        "a misspelt setting (trainig.epochs)",
        [S],
        2,
        "trainig",
        toml="[trainig]\nepochs = 3\n",
    ),
    Case(
        "epochs-zero",
        "training.epochs = 0",
        ["refresh"],
        2,
        "training.epochs",
        env={"HOTSWAP_TRAINING__EPOCHS": "0"},
    ),
    Case(
        "codewords-not-pow2",
        "dpq.n_codewords = 3 (not a power of two)",
        [S],
        2,
        "power of two",
        env={"HOTSWAP_DPQ__N_CODEWORDS": "3"},
    ),
    Case("device-unknown", "device = 'tpu'", [S], 2, "device", env={"HOTSWAP_DEVICE": "tpu"}),
    Case("threads-zero", "torch_threads = 0", [S], 2, "torch_threads", env={"HOTSWAP_TORCH_THREADS": "0"}),
    Case(
        "shard-size-zero",
        "backfill.shard_size = 0",
        [S],
        2,
        "backfill.shard_size",
        env={"HOTSWAP_BACKFILL__SHARD_SIZE": "0"},
    ),
    Case(
        "threshold-metric",
        "thresholds.metrics = ['foo']",
        [S],
        2,
        "thresholds.metrics",
        env={"HOTSWAP_THRESHOLDS__METRICS": '["foo"]'},
    ),
    Case(
        "timeout-negative",
        "service_timeout_seconds = -1",
        [S],
        2,
        "service_timeout_seconds",
        env={"HOTSWAP_SERVICE_TIMEOUT_SECONDS": "-1"},
    ),
    Case(
        "ftp-store",
        "store_uri = ftp://...",
        [S],
        2,
        "unsupported scheme 'ftp'",
        env={"HOTSWAP_STORE_URI": "ftp://example.invalid/galleries"},
    ),
    Case(
        "s3-no-bucket",
        "store_uri = s3:// without a bucket",
        [S],
        2,
        "names no bucket",
        env={"HOTSWAP_STORE_URI": "s3:///prefix"},
    ),
    Case("gallery-dotdot", "gallery_name = '..'", [S], 2, "'..'", env={"HOTSWAP_GALLERY_NAME": ".."}),
    Case(
        "model-name-space", "model_name with a space", [S], 2, "model_name", env={"HOTSWAP_MODEL_NAME": "a b"}
    ),
    Case(
        "synthetic-abc",
        "data.source = 'synthetic:abc:10' (also: no emoji in the message)",
        ["search", "--item-id", "x"],
        2,
        "'synthetic:abc:10'",
        env={"HOTSWAP_DATA__SOURCE": "synthetic:abc:10"},
    ),
    Case(
        "source-brackets",
        "data.source = 'x[nan]' (also: brackets are not eaten as markup)",
        ["search", "--item-id", "x"],
        2,
        "x[nan]",
        env={"HOTSWAP_DATA__SOURCE": "x[nan]"},
    ),
    Case(
        "manifest-missing",
        "data.source names a manifest that does not exist",
        ["refresh"],
        2,
        "no-such-manifest.csv",
        setup=_missing_manifest_csv,
    ),
    Case(
        "bootstrap-classes-unknown",
        "bootstrap_classes = [0, 1, 99] (class 99 does not exist)",
        ["bootstrap"],
        2,
        "99",
        home="empty",
        toml="",
        env={"HOTSWAP_DATA__BOOTSTRAP_CLASSES": "[0, 1, 99]"},
    ),
    # ------------------------------------------------------------- command-line options
    Case("search-no-query", "search without --image or --item-id", ["search"], 2, "exactly one of --image"),
    Case("search-k-zero", "search --k 0", ["search", "--item-id", "x", "--k", "0"], 2, "--k"),
    Case(
        "search-image-missing",
        "search --image of a missing file",
        ["search", "--image", "/nonexistent.png"],
        2,
        "cannot be read",
    ),
    Case(
        "search-image-garbage",
        "search --image of a text file",
        ["search", "--image", "{QUERY}"],
        2,
        "not-an-image.png",
        setup=_text_file_as_image,
    ),
    Case(
        "search-unknown-item",
        "search --item-id that is not in the dataset",
        ["search", "--item-id", "nope-1"],
        2,
        "'nope-1'",
    ),
    Case(
        "promote-fraction-2",
        "promote --backfill-mode partial --fraction 2.0",
        ["promote", "--approve", "--backfill-mode", "partial", "--fraction", "2.0"],
        2,
        "0 < fraction < 1",
        rerun="same error; v2's stored decision is untouched",
    ),
    Case(
        "promote-partial-no-fraction",
        "promote --backfill-mode partial without --fraction",
        ["promote", "--approve", "--backfill-mode", "partial"],
        2,
        "0 < fraction < 1",
    ),
    Case(
        "promote-fraction-wrong-mode",
        "promote --backfill-mode full --fraction 0.5",
        ["promote", "--approve", "--backfill-mode", "full", "--fraction", "0.5"],
        2,
        "only applies",
    ),
    Case(
        "promote-mode-bogus",
        "promote --backfill-mode bogus",
        ["promote", "--approve", "--backfill-mode", "bogus"],
        2,
        "backfill_mode",
    ),
    Case("backfill-mode-bogus", "backfill --mode bogus", ["backfill", "--mode", "bogus"], 2, "'bogus'"),
    Case(
        "backfill-fraction-1.5",
        "backfill --mode partial --fraction 1.5",
        ["backfill", "--mode", "partial", "--fraction", "1.5"],
        2,
        "0 < fraction < 1",
    ),
    Case("unknown-command", "a command that does not exist", ["frobnicate"], 2, "frobnicate"),
    Case("wait-negative", "--wait -1", ["--wait", "-1", S], 2, "--wait"),
    # ------------------------------------------------------------- settings that would be ignored
    Case(
        "refresh-embedding-dim",
        "training.embedding_dim on refresh differs from the champion's",
        ["refresh"],
        2,
        "training.embedding_dim = 24",
        env={"HOTSWAP_TRAINING__EMBEDDING_DIM": "24"},
    ),
    # ------------------------------------------------------------- data that cannot work
    Case(
        "refresh-other-labels",
        "refresh on a manifest whose ids/labels differ from the live gallery's data",
        ["refresh"],
        2,
        "do not match",
        setup=_other_labels_manifest,
        rerun="same error; no challenger is trained and the challenger alias does not move",
    ),
    Case(
        "refresh-fewer-items",
        "refresh on a smaller dataset that lacks gallery items",
        ["refresh"],
        2,
        "lacks",
        env={"HOTSWAP_DATA__SOURCE": "synthetic:300:6"},
    ),
    Case(
        "refresh-dpq-k",
        "refresh with dpq.n_codewords above the training set size",
        ["refresh"],
        2,
        "dpq.n_codewords = 1024",
        env={"HOTSWAP_DPQ__N_CODEWORDS": "1024"},
    ),
    Case(
        "bootstrap-dpq-k",
        "bootstrap with fewer training images than DPQ's K",
        ["bootstrap"],
        2,
        "dpq.n_codewords = 512",
        home="empty",
        env={"HOTSWAP_DPQ__N_CODEWORDS": "512"},
        rerun="same error; no model version is registered",
    ),
    # ------------------------------------------------------------- state
    Case(
        "bootstrap-twice",
        "bootstrap on a home that has a champion",
        ["bootstrap"],
        3,
        "already has a champion",
    ),
    Case("promote-unknown-version", "promote 99", ["promote", "99", "--approve"], 3, "'99'"),
    Case("backfill-unknown-version", "backfill --version 99", ["backfill", "--version", "99"], 3, "'99'"),
    Case(
        "search-empty-home",
        "search before bootstrap",
        ["search", "--item-id", "x"],
        3,
        "champion",
        home="empty",
    ),
    Case("refresh-empty-home", "refresh before bootstrap", ["refresh"], 3, "hotswap bootstrap", home="empty"),
    Case(
        "promote-empty-home",
        "promote before any challenger exists",
        ["promote", "--approve"],
        3,
        "challenger",
        home="empty",
    ),
    # ------------------------------------------------------------- busy, services, damaged files
    Case(
        "gallery-busy",
        "a lifecycle command while another one changes the gallery",
        ["refresh"],
        4,
        "is being changed by `hotswap refresh`",
        setup=_foreign_lease,
        rerun="fails at once while the other command runs; `--wait SECONDS` waits for it",
    ),
    Case(
        "gallery-busy-wait",
        "--wait 1 while another command changes the gallery for longer",
        ["--wait", "1", "refresh"],
        4,
        "(waited 1 s)",
        setup=_foreign_lease,
        rerun="a longer --wait, or a rerun after the other command ends",
    ),
    Case(
        "mlflow-down",
        "MLflow tracking server not reachable",
        [S],
        5,
        "MLflow tracking server",
        setup=_closed_mlflow,
        rerun="works once MLflow answers",
    ),
    Case(
        "mlflow-down-masked",
        "MLflow URI with a password, server not reachable",
        [S],
        5,
        "***@",
        setup=_closed_mlflow_with_password,
        rerun="works once MLflow answers; the password is never printed",
    ),
    Case(
        "s3-down",
        "S3 endpoint not reachable",
        [S],
        5,
        "S3 store s3://matrix-bucket/galleries",
        setup=_closed_s3,
        rerun="works once the endpoint answers",
    ),
    Case(
        "mlflow-db-garbage",
        "mlflow.db is not a database",
        [S],
        6,
        "mlflow.db",
        home="scratch",
        setup=_garbage_mlflow_db,
        rerun="same error until the database is restored",
    ),
    Case(
        "manifest-corrupt",
        "the live gallery's manifest is truncated",
        [S],
        6,
        "manifest",
        home="scratch",
        setup=_corrupt_live_manifest,
        rerun="same error until the manifest is restored",
    ),
]


def cleanup(case: Case, home: Path) -> None:
    """Undo a case's setup on a shared home (only the lease case writes there)."""
    if case.setup is _foreign_lease:
        _remove_lease(home)


def copy_home(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("prefect", "logs"))
    return target
