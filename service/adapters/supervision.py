"""Supervision of `trustledger up`'s embedded servers: notice a death, restart on the same port.

One thread watches every server. When one has exited (a crash, an OOM kill,
someone's `kill -9`), it logs one line naming the server, how it ended and the end
of its log, and restarts it on the port it had, so that `runtime.json`, the
service's connection pool and NATS client, and every publisher keep their URLs:
they reconnect by themselves once it is back. A restart that fails is tried again
after a growing delay; when every attempt has failed, the supervisor reports it
(`on_give_up`) and stops watching, and `up` stops with a non-zero exit code.

Why a thread and not a task of the event loop: a restart blocks for seconds (crash
recovery of the database), and the parent-death signal of a restarted server is
tied to the thread that spawned it (see `service.adapters.embedded`), so the
spawning thread must live as long as the servers it restarted. Servers restarted
by this thread get their stop signal when it ends, so `close()` belongs after the
roles that use the servers have stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.adapters.embedded import EmbeddedServerError

__all__ = ["RestartPolicy", "Supervised", "Supervisor", "describe_exit"]

_log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 3
_LOG_TAIL_MAX_CHARS = 600


class Supervised(Protocol):
    """What the supervisor needs of a server (`EmbeddedPostgres`, `EmbeddedNats`)."""

    @property
    def kind(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def port(self) -> int | None: ...

    @property
    def log_path(self) -> Path: ...

    def exit_code(self) -> int | None: ...

    def restart(self, cancel: threading.Event | None = None) -> str: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How hard to try: `attempts` restarts, the first at once, then after delays
    doubling from `first_delay_s` up to `max_delay_s` (0.5, 1, 2, 4 s by default:
    a server that cannot come back within ~8 s and 5 tries is not coming back)."""

    attempts: int = 5
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    poll_interval_s: float = 0.25
    """How often the servers are checked: a death is noticed within this."""

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before restart attempt `attempt` (1-based)."""
        if attempt <= 1:
            return 0.0
        return min(self.first_delay_s * 2.0 ** (attempt - 2), self.max_delay_s)


def describe_exit(code: int) -> str:
    """`killed by SIGKILL` for a negative return code, `exited with code N` otherwise."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _log_end(path: Path) -> str:
    """The last few non-empty lines of a server's log, on one line."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 8192))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = " | ".join(lines[-_LOG_TAIL_LINES:]) or "(empty)"
    return tail if len(tail) <= _LOG_TAIL_MAX_CHARS else "..." + tail[-_LOG_TAIL_MAX_CHARS:]


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


class Supervisor:
    """Restarts any of `servers` that dies, from one long-lived thread, until `close()`."""

    def __init__(self, servers: Sequence[Supervised], policy: RestartPolicy | None = None) -> None:
        self._servers = list(servers)
        self._policy = policy or RestartPolicy()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_give_up: Callable[[], None] = lambda: None
        self.failure: EmbeddedServerError | None = None
        """Why supervision gave up (a server could not be restarted); None while all is well."""
        self.restarts: dict[str, int] = {server.kind: 0 for server in self._servers}
        """Successful restarts per server kind."""

    def start(self, on_give_up: Callable[[], None] = lambda: None) -> None:
        """Start watching. `on_give_up` is called, from the supervisor's thread, once a
        server could not be restarted (`failure` says why)."""
        if self._thread is not None:
            raise RuntimeError("supervisor already started")
        if not self._servers:
            return
        self._on_give_up = on_give_up
        self._thread = threading.Thread(target=self._watch, name="embedded-supervisor")
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop watching; a restart in progress is cancelled. Call it only when done with
        the servers: on Linux, those this supervisor restarted get their stop signal (the
        parent-death signal) when its thread ends. Stop every server afterwards as usual."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _watch(self) -> None:
        while not self._closing.wait(self._policy.poll_interval_s):
            for server in self._servers:
                code = server.exit_code()
                if code is None or self._closing.is_set():
                    continue
                if not self._recover(server, code):
                    # Given up: the thread still lives until close(), so that the servers
                    # it restarted earlier serve the roles' shutdown.
                    self._closing.wait()
                    return

    def _recover(self, server: Supervised, code: int) -> bool:
        """Restart a server that ended with `code`; False when supervision must end."""
        died_at = time.monotonic()
        address = f"127.0.0.1:{server.port}"
        _log.error(
            "embedded %s (pid %s, %s) %s; restarting it on the same port; its log (%s) ends: %s",
            server.kind, server.pid, address, describe_exit(code), server.log_path,
            _log_end(server.log_path),
        )  # fmt: skip
        policy = self._policy
        for attempt in range(1, policy.attempts + 1):
            if self._closing.wait(policy.delay_before(attempt)):
                return False
            try:
                server.restart(cancel=self._closing)
            except EmbeddedServerError as e:
                if self._closing.is_set():
                    return False
                if attempt < policy.attempts:
                    _log.warning(
                        "restart %d of %d of embedded %s failed: %s; next try in %.1f s",
                        attempt, policy.attempts, server.kind, _first_line(e),
                        policy.delay_before(attempt + 1),
                    )  # fmt: skip
                    continue
                self.failure = EmbeddedServerError(
                    f"embedded {server.kind} died ({describe_exit(code)}) and could not be "
                    f"restarted on {address} in {policy.attempts} attempts: {_first_line(e)}"
                )
                _log.error("%s; stopping", self.failure)
                self._on_give_up()
                return False
            self.restarts[server.kind] += 1
            _log.info(
                "embedded %s is back on %s (pid %s), restarted in %.1f s",
                server.kind, address, server.pid, time.monotonic() - died_at,
            )  # fmt: skip
            return True
        return False
