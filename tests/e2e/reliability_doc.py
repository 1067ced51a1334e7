"""Generate docs/reliability.md from the tests' own case lists, so the document cannot drift.

``python -m tests.e2e.reliability_doc`` rewrites the file; tests/e2e/test_reliability_doc.py
fails when the file differs from what this module renders (or names a test that does not exist).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from hotswap.components.core.errors import EXIT_CODES, HINTS

from tests.e2e.bad_inputs import CASES
from tests.e2e.test_crash_switch import SWITCH_STEPS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
KIND_BY_CODE = {code: kind for kind, code in EXIT_CODES.items()}


@dataclass(frozen=True)
class Fault:
    """An injected fault (not a bad input), the test that injects it, and what happens."""

    fault: str
    test: str  # tests/<path>::<function>
    user_sees: str
    rerun: str


FAULTS = [
    Fault(
        "PREFECT_API_URL names a Prefect API that does not answer",
        "tests/e2e/test_bad_input_matrix.py::test_unreachable_prefect_api_is_one_line_naming_it",
        "exit 5: `error: Prefect API http://… did not answer (ConnectError): start it (or unset"
        " PREFECT_API_URL …), then rerun`",
        "works once the API answers; nothing was changed",
    ),
    Fault(
        "the S3 endpoint stops in the middle of a backfill (after shard 1), then restarts",
        "tests/e2e/test_s3_outage.py::test_s3_stops_mid_backfill_then_the_rerun_resumes",
        "exit 5: `error: S3 store s3://… at http://… did not answer (EndpointConnectionError); the live"
        " gallery is unchanged and staged shards already written are kept: … then rerun to resume`",
        "after the restart the same command resumes; the version holds every live item once, with model"
        " v1's features",
    ),
    Fault(
        "SIGKILL during a backfill (after shard 1 of 4 is committed)",
        "tests/e2e/test_crash_backfill.py::test_killed_backfill_resumes_and_converges_to_the_uninterrupted_result",
        "the command dies; the target version stays staged (not finalized, not live)",
        "the same command resumes: committed shards are verified and kept, the rest written; ids, features"
        " and codes equal an uninterrupted run's",
    ),
    Fault(
        "SIGKILL of `refresh` during training, then after its `validated` stage, then during its backfill",
        "tests/e2e/test_crash_refresh.py::test_a_refresh_killed_three_times_resumes_and_ends_as_an_uninterrupted_one",
        "the command dies; each stage it finished is recorded on the challenger (`hotswap.refresh.stage`)",
        "`refresh` resumes the same version after its last stage (`recovery`: `resuming the interrupted"
        " refresh of v3 after its stage 'decided'`); versions, aliases, decision, CURRENT and the staged"
        " gallery's ids, features and codes equal an uninterrupted run's",
    ),
    Fault(
        "an interrupted refresh, then a refresh with other settings (or data, champion, live gallery)",
        "tests/e2e/test_crash_refresh.py::test_a_refresh_killed_three_times_resumes_and_ends_as_an_uninterrupted_one",
        "`recovery`: `abandoned the unfinished refresh of v3: it was started with settings hash …; deleted"
        " its staged gallery version(s) v3-full`; `promote 3` is refused (exit 3)",
        "a new challenger is trained and staged",
    ),
    Fault(
        "the MLflow server stops after the refresh registered its challenger, then restarts",
        "tests/e2e/test_service_outages.py::test_mlflow_stops_mid_refresh_then_the_rerun_resumes_the_same_version",
        "exit 5: `error: MLflow tracking server http://… did not answer …`",
        "after the restart `refresh` resumes the same version (none is trained twice); the run the outage"
        " left RUNNING is marked FAILED",
    ),
    Fault(
        "the S3 endpoint stops inside the switch (aliases moved, CURRENT not yet), then restarts",
        "tests/e2e/test_service_outages.py::test_s3_stops_inside_the_switch_then_one_whole_pair_and_the_rerun_switches",
        "exit 5: `error: S3 store s3://… at http://… did not answer …`",
        "the next command shows the old pair whole (champion and CURRENT agree);"
        " `promote --approve` switches",
    ),
    Fault(
        "the store's disk fills up in the middle of a backfill",
        "tests/e2e/test_storage_faults.py::test_disk_full_mid_backfill_is_one_line_and_the_rerun_resumes",
        "exit 7: `error: <file>: No space left on device; nothing was published (the live gallery is"
        " unchanged): make it writable or free space, then rerun to resume`",
        "after space is freed the same command resumes; every live item once",
    ),
    Fault(
        "the store is read-only",
        "tests/e2e/test_storage_faults.py::test_read_only_store_reads_work_and_a_change_is_one_line",
        "`status` and `search` work; `backfill` exits 7: `error: <file>: Read-only file system; …`; the"
        " store and MLflow are byte-identical",
        "works once the store is writable again",
    ),
    Fault(
        "a second lifecycle command (a refresh, or a backfill) on a gallery a refresh is changing",
        "tests/e2e/test_concurrent_commands.py::test_a_second_lifecycle_command_fails_at_once_and_a_killed_cli_leaves_no_orphan",
        "exit 4 at once: `error: gallery 'default' is being changed by `hotswap refresh` (pid …), started …`",
        "`--wait SECONDS` waits (bounded, saying for whom); after the holder ends the command runs",
    ),
    Fault(
        "SIGKILL of a running `refresh` (its home's local Prefect API running)",
        "tests/e2e/test_concurrent_commands.py::test_a_second_lifecycle_command_fails_at_once_and_a_killed_cli_leaves_no_orphan",
        "the home's local Prefect API stops once idle (no live command); no RUNNING MLflow run is left",
        "the dead holder's lease is taken over at once (same host) or after `lease_ttl_seconds`",
    ),
    Fault(
        "the holder of a lease dies on another host",
        "tests/unit/test_lease.py::test_expired_lease_of_another_host_is_taken_over_and_a_live_one_is_not",
        "exit 4 until the lease expires",
        "runs once `lease_ttl_seconds` have passed without renewal",
    ),
    Fault(
        "a process killed while an MLflow run it created was RUNNING",
        "tests/e2e/test_recovery.py::test_runs_left_running_by_a_dead_process_are_marked_failed",
        "`note: marked 1 MLflow run(s) FAILED that a killed process had left RUNNING: …`",
        "runs of live processes and of other hosts are left alone",
    ),
    Fault(
        "a switch step fails after CURRENT moved (e.g. the health check)",
        "tests/e2e/test_recovery.py::test_roll_back_unseals_the_target_and_restores_the_pair",
        "the switch's error; aliases and CURRENT are back as before, the target version is unsealed",
        "`promote --approve` switches again",
    ),
]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Reliability: faults and bad inputs, what you see, what a rerun does",
        "",
        "<!-- generated by `python -m tests.e2e.reliability_doc` from the tests' case lists; do not edit -->",
        "",
        "Every known failure prints exactly one line `error: <what is wrong, naming the input or service>"
        " — <what to do>` and exits with the code of its class. The traceback goes to"
        " `<home>/logs/hotswap.log`; `hotswap --debug <command>` prints it too. Prefect's own console"
        " logging is quieted for command-line runs (its API log handler is not). Notes about repairs"
        " (`note: …`) go to stderr, so JSON output stays parseable.",
        "",
        "## Exit codes",
        "",
        "| code | class | what to do |",
        "|---:|---|---|",
    ]
    lines += [
        f"| {code} | {kind} | {HINTS.get(kind, 'rerun')} |" for kind, code in EXIT_CODES.items() if code
    ]
    lines += [
        "",
        "## Bad inputs",
        "",
        f"{len(CASES)} cases, each run by `tests/e2e/test_bad_input_matrix.py`: one `error:` line with the"
        " words shown, the exit code, no traceback, and the home's store and MLflow files byte-identical"
        " afterwards.",
        "",
        "| case | fault | exit | the error line contains | a rerun |",
        "|---|---|---:|---|---|",
    ]
    for case in CASES:
        pending = f" (pending: {case.pending})" if case.pending else ""
        lines.append(
            f"| `{case.id}` | {_escape(case.fault)}{pending} | {case.code} ({KIND_BY_CODE[case.code]}) |"
            f" `{_escape(case.expect)}` | {_escape(case.rerun)} |"
        )
    lines += [
        "",
        "## SIGKILL inside the switch",
        "",
        "`tests/e2e/test_crash_switch.py` kills `hotswap promote --approve` with SIGKILL at each step"
        " (test hook `HOTSWAP_TEST_KILL_AT=<step>`, components/core/faults.py). The switch writes an intent"
        " record (`galleries/<g>/SWITCH-INTENT.json`) before its first step; the next command that reads"
        " live state (status, search, refresh, promote, backfill) repairs it and says so on stderr.",
        "",
        "| killed after | the next command | state afterwards | a plain `promote --approve` rerun |",
        "|---|---|---|---|",
    ]
    for step, action in SWITCH_STEPS.items():
        if action is None:
            lines.append(
                f"| `{step}` | nothing to repair | v2 + its gallery (switch finished) | not needed |"
            )
        elif action == "rolled back":
            lines.append(
                f"| `{step}` | `note: an interrupted switch … was rolled back` | v1 + its gallery, target"
                " unsealed, challenger alias restored | switches to v2 |"
            )
        else:
            lines.append(
                f"| `{step}` | `note: … had passed its health check and was rolled forward` |"
                " v2 + its gallery | exit 3: `… no version or alias 'challenger' (the champion is v2 …)` |"
            )
    lines += [
        "",
        "## Other faults",
        "",
        "| fault | test | what you see | a rerun |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_escape(f.fault)} | `{f.test.split('::')[1]}` | {_escape(f.user_sees)} | {_escape(f.rerun)} |"
        for f in FAULTS
    ]
    lines += [
        "",
        "## Waits are bounded",
        "",
        "- MLflow and S3 calls time out after `service_timeout_seconds` (default 10 s; MLflow retries"
        " twice with 1 s backoff), then one `error:` line names the service and its URI, credentials"
        " masked (cases `mlflow-down`, `mlflow-down-masked`, `s3-down`).",
        "- A gallery lease is renewed every `lease_ttl_seconds / 3`; a holder that stops renewing"
        " loses it after `lease_ttl_seconds` (default 60 s), a dead process on the same host at once.",
        "- `--wait SECONDS` bounds the wait for a busy gallery and says whom it waits for.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
