"""Failure classes a person can act on: each known error becomes one line and an exit code.

The command line must never answer a known failure with a traceback. This module decides, for
any exception, which class of failure it is (bad input, wrong state, busy gallery, unreachable
service, damaged data, storage, or a bug), the exit code of that class, and the one line the
user reads: what is wrong, naming the input or the service, and what to do. The traceback is
for the log file (see flows/cli_errors.py), not for the terminal.

Exit codes (docs/reliability.md repeats this table):

====  ===========  ==========================================================
code  class        meaning
====  ===========  ==========================================================
0     ok           the command did what it says
1     internal     a bug: an exception hotswap does not know; see the log file
2     input        a setting, option, file or data source is invalid
3     state        the registry or gallery is not in a state the command needs
4     busy         another command is changing the same gallery (lease held)
5     service      MLflow, S3 or the Prefect API did not answer (or refused)
6     integrity    stored data fails its checks (checksum, manifest, database file)
7     storage      the store cannot be written (read-only, disk full, permission)
130   interrupted  stopped with Ctrl-C
====  ===========  ==========================================================
"""

from __future__ import annotations

import errno
import sqlite3
from dataclasses import dataclass

from hotswap.components.core.settings import mask_uri_credentials

EXIT_CODES: dict[str, int] = {
    "internal": 1,
    "input": 2,
    "state": 3,
    "busy": 4,
    "service": 5,
    "integrity": 6,
    "storage": 7,
    "interrupted": 130,
}

#: What to do, per class, appended when the message does not already say it.
HINTS: dict[str, str] = {
    "input": "fix it and rerun",
    "state": "see `hotswap status`",
    "busy": "wait for it to finish, or rerun with --wait SECONDS",
    "service": "check that it runs and is reachable, then rerun (a rerun resumes finished work)",
    "integrity": "restore or remove the damaged file, then rerun",
    "storage": "make the store writable (or free space), then rerun",
    "internal": "this is a bug; rerun with --debug for the traceback",
    "interrupted": "rerun to resume",
}


class HotswapError(Exception):
    """Base of errors raised with a ready-made message; ``kind`` picks the exit code."""

    kind = "internal"


class InputError(HotswapError, ValueError):
    """A setting, option or file given by the user is invalid."""

    kind = "input"


class StateError(HotswapError, RuntimeError):
    """The registry or gallery is not in the state the command needs."""

    kind = "state"


class BusyError(HotswapError, RuntimeError):
    """Another command holds the gallery's lease."""

    kind = "busy"


class ServiceError(HotswapError, ConnectionError):
    """A service (MLflow, S3, the Prefect API) did not answer in time or refused."""

    kind = "service"


@dataclass(frozen=True)
class Failure:
    """What the user sees for one exception: its class, exit code and single line."""

    kind: str
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]

    def line(self) -> str:
        """The text after ``error:``, on one line, with the class's hint unless already given."""
        text = " ".join(self.message.split())
        hint = HINTS[self.kind]
        if hint.split(";")[0] in text or "rerun" in text or "run `hotswap" in text:
            return text
        return f"{text} — {hint}"


@dataclass(frozen=True)
class Services:
    """Where the services live, to name them in a message (credentials masked here)."""

    tracking_uri: str | None = None
    store_uri: str | None = None
    s3_endpoint_url: str | None = None
    prefect_api_url: str | None = None

    def s3(self) -> str:
        where = self.store_uri or "the S3 store"
        if self.s3_endpoint_url:
            where += f" at {self.s3_endpoint_url}"
        return mask_uri_credentials(where)

    def mlflow(self) -> str:
        return mask_uri_credentials(self.tracking_uri or "the MLflow tracking server")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _module(exc: BaseException) -> str:
    return type(exc).__module__ or ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def classify(exc: BaseException, services: Services | None = None) -> Failure:
    """The failure class and one-line message for ``exc`` (looks through its cause chain)."""
    services = services or Services()
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", "interrupted; a rerun resumes finished work")
    if isinstance(exc, HotswapError):
        return Failure(exc.kind, str(exc))
    for link in _chain(exc):
        failure = _service_failure(link, services) or _storage_failure(link)
        if failure is not None:
            return failure
    return _known_failure(exc) or Failure("internal", f"{type(exc).__name__}: {_first_line(exc)}")


def _service_failure(exc: BaseException, services: Services) -> Failure | None:
    module = _module(exc)
    name = type(exc).__name__
    if module.startswith(("botocore", "urllib3")) and name in {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "NewConnectionError",
    }:
        return Failure(
            "service",
            f"S3 store {services.s3()} did not answer ({name}); the live gallery is unchanged "
            "and staged shards already written are kept: start the endpoint (or fix s3_endpoint_url), "
            "then rerun to resume",
        )
    if module.startswith("botocore") and name == "NoCredentialsError":
        return Failure("input", f"S3 store {services.s3()}: no credentials found; set AWS_ACCESS_KEY_ID etc.")
    if module.startswith("botocore") and name == "ClientError":
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return Failure(
                "input", f"S3 store {services.s3()}: {code}; check the bucket name and credentials"
            )
    text = str(exc)
    if module.startswith("mlflow") and (
        "Max retries exceeded" in text or "Connection refused" in text or "timed out" in text.lower()
    ):
        return Failure(
            "service",
            f"MLflow tracking server {services.mlflow()} did not answer; the registry is unchanged: "
            "start it (or fix tracking_uri), then rerun",
        )
    if "Timed out while attempting to connect to ephemeral Prefect API server" in text:
        return Failure(
            "service",
            "the temporary Prefect API did not start in time; the machine may be busy: retry, or raise "
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (or set PREFECT_API_URL to a running server)",
        )
    if module.startswith(("httpx", "httpcore")) and name in {"ConnectError", "ConnectTimeout", "ReadTimeout"}:
        where = mask_uri_credentials(services.prefect_api_url or "the Prefect API")
        return Failure(
            "service",
            f"Prefect API {where} did not answer ({name}): start it (or unset PREFECT_API_URL for a "
            "temporary local one), then rerun",
        )
    if isinstance(exc, sqlite3.DatabaseError) or (
        module.startswith("sqlalchemy") and name in {"OperationalError", "DatabaseError"}
    ):
        reason = (
            _first_line(exc)
            .removeprefix("(sqlite3.OperationalError) ")
            .removeprefix("(sqlite3.DatabaseError) ")
        )
        if "locked" in reason:
            return Failure(
                "busy",
                f"MLflow database {services.mlflow()} is locked by another process ({reason}); "
                "wait, then rerun",
            )
        return Failure(
            "integrity",
            f"MLflow database {services.mlflow()} cannot be used ({reason}): restore it from a backup "
            "or point tracking_uri at another database",
        )
    return None


def _storage_failure(exc: BaseException) -> Failure | None:
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EDQUOT):
        where = getattr(exc, "filename", None) or "the store"
        return Failure(
            "storage",
            f"{where}: {exc.strerror}; nothing was published (the live gallery is unchanged): "
            "make it writable or free space, then rerun to resume",
        )
    return None


_STATE_NAMES = {
    "NoChampionError",
    "AlreadyBootstrappedError",
    "NothingToPromoteError",
    "UnknownVersionError",
    "NoLiveGalleryError",
    "VersionNotFoundError",
    "RegistryError",
    "ObjectNotFoundError",
    "VersionImmutableError",
    "VersionIncompleteError",
    "GalleryError",
    "DecisionError",
}
_INPUT_NAMES = {"ParameterTypeError", "ParameterBindError", "SettingsFileError", "SettingsEnvError"}
_INTEGRITY_NAMES = {"ShardCorruptedError", "ManifestError", "ReportFormatError", "ModelFormatError"}


_OURS = ("hotswap.",)


def _raised_by_us(exc: BaseException) -> bool:
    """Whether hotswap's own code raised ``exc`` (a ValueError with a message meant for the user)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    return str(last.tb_frame.f_globals.get("__name__", "")).startswith(_OURS)


def _known_failure(exc: BaseException) -> Failure | None:
    """Errors hotswap raises on purpose: their messages already name the input and the problem."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return Failure("input", validation_line(exc))
    names = {cls.__name__ for cls in type(exc).__mro__}
    ours = _module(exc).startswith(_OURS) or _raised_by_us(exc)
    if names & _INPUT_NAMES:
        return Failure("input", str(exc))
    if names & _INTEGRITY_NAMES:
        return Failure("integrity", str(exc))
    if names & _STATE_NAMES:
        return Failure("state", str(exc))
    if ours and isinstance(exc, ValueError | TypeError):
        return Failure("input", str(exc))
    if ours or isinstance(exc, LookupError):
        return Failure("state", str(exc).strip("'\""))
    if isinstance(exc, ValueError) and "tomllib" in _module(exc):
        return Failure("input", str(exc))
    return None


def validation_line(exc: object) -> str:
    """A pydantic ValidationError as one line: each field's dotted path, problem and bad value."""
    errors = exc.errors()  # type: ignore[attr-defined]
    title = getattr(exc, "title", "input")
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or not where else f" (got {given!r})"
        parts.append(f"{where}: {message}{shown}" if where else message)
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    source = _TITLES.get(title, title)
    return f"invalid {source}: " + "; ".join(parts) + more


_TITLES = {"HotswapSettings": "settings", "PromotionInput": "promote options"}
