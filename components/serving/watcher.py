"""Follow promotions: poll the champion alias and CURRENT, build the next pair beside the live one, swap.

The watcher is a thread that, every ``interval_s``, reads the target (model version, gallery
version) and compares it with the live pair. A target that is not whole yet (the switch moved
the alias but not CURRENT, or a rollback is half done) is waited for. A whole, new target is
built and health-checked while the old pair keeps answering; only then does ``swap`` assign the
one reference the service reads. A failure leaves the live pair in place, logs one line and is
counted; the same target is retried after ``retry_failed_s`` (a different target at once).

It works through callables so it can follow any source of truth (tests drive ``poll_once``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hotswap.components.gallery.live_state import LiveTarget
from hotswap.components.serving.pair import LivePair

log = logging.getLogger("hotswap.serve")


class PairWatcher:
    def __init__(
        self,
        read_target: Callable[[], LiveTarget],
        build: Callable[[LiveTarget], LivePair],
        current: Callable[[], LivePair | None],
        swap: Callable[[LivePair], None],
        on_failure: Callable[[LiveTarget, BaseException], None] | None = None,
        interval_s: float = 5.0,
        retry_failed_s: float = 60.0,
    ) -> None:
        self.read_target = read_target
        self.build = build
        self.current = current
        self.swap = swap
        self.on_failure = on_failure
        self.interval_s = interval_s
        self.retry_failed_s = retry_failed_s
        self.last_error: str | None = None
        self.last_target: LiveTarget | None = None
        self._failed: dict[tuple[str | None, str | None], float] = {}
        self._waiting_reason: str | None = None
        self._read_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one poll at a time (the thread, or a caller of poll_once)

    def poll_once(self) -> str:
        """One look at the sources of truth; returns what happened (unchanged, waiting, swapped, ...)."""
        with self._lock:
            return self._poll()

    def _poll(self) -> str:
        try:
            target = self.read_target()
        except Exception as exc:  # registry or store unreachable: keep serving, say so once
            message = (
                f"cannot read the live target ({type(exc).__name__}: {exc}); "
                f"still serving {_name(self.current())}"
            )
            if message != self._read_error:
                log.warning(message)
                self._read_error = message
            return "unreadable"
        self._read_error = None
        self.last_target = target
        live = self.current()
        if live is not None and (live.model_version, live.gallery_version) == target.key:
            self._waiting_reason = None
            return "unchanged"
        if not target.whole:
            if target.reason != self._waiting_reason:
                log.info("not swapping yet: %s; serving %s", target.reason, _name(live))
                self._waiting_reason = target.reason
            return "waiting"
        self._waiting_reason = None
        failed_at = self._failed.get(target.key)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_s:
            return "failed-before"
        start = time.perf_counter()
        try:
            pair = self.build(target)
        except Exception as exc:
            self._failed[target.key] = time.monotonic()
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "failed to load model v%s + gallery %s, still serving %s: %s",
                target.model_version,
                target.gallery_version,
                _name(live),
                exc,
            )
            if self.on_failure is not None:
                self.on_failure(target, exc)
            return "failed"
        self._failed.pop(target.key, None)
        self.swap(pair)
        log.info(
            "swapped to model v%s + gallery %s (was %s) after %.2f s",
            pair.model_version,
            pair.gallery_version,
            _name(live),
            time.perf_counter() - start,
        )
        return "swapped"

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hotswap-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:  # never let the watcher die: the service would stop following
                log.exception("watcher poll failed")


def _name(pair: LivePair | None) -> str:
    return "nothing" if pair is None else f"model v{pair.model_version} + gallery {pair.gallery_version}"
