"""One scenario's world: its own database, stream, keys, processes and logs.

A lab lives on servers it is given (the shared ones, or a scenario's private
restartable ones): it creates a database (migrated) and a stream with names of
its own, registers a publisher key per org the way `trustledger keys create`
does, starts `trustledger <role>` processes with the environment those roles
read (service/config.py), and removes its database and stream at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from service.adapters import broker
from service.adapters.embedded import free_tcp_port
from service.adapters.migrations import migrate
from service.adapters.postgres import LedgerStore
from service.app.keys import register_new_key
from service.config import Settings
from service.domain.signing import SigningKey

REPO = Path(__file__).resolve().parent.parent
EXIT_TIMEOUT_S = 20.0
BATCH_MAX = 100
"""Small batches, so that a kill or a cut lands inside the stream, not between drains."""


def database_url(server_url: str, name: str) -> str:
    """`server_url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def clean_env() -> dict[str, str]:
    """This process's environment without anything that configures the service
    (or steers PostgreSQL clients): each role gets exactly what the scenario sets."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRUSTLEDGER_", "PG")) and k not in ("DATABASE_URL", "NATS_URL")
    }


def _kill_with_parent() -> Callable[[], None] | None:
    """A role process gets SIGKILL if the suite dies: no ingest left running forever."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Proc:
    """A `trustledger` process started by the suite, its output in a log file."""

    def __init__(
        self,
        label: str,
        args: Sequence[str],
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.label = label
        self.log_path = log_path
        self.kills = 0
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "service.cli", *args],
                env=env,
                # `-m service.cli` imports `service` from the working directory first.
                cwd=cwd or REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: `kill_group` also reaches what it spawned
                # (initdb during `up`'s first start), as a crash of the unit would.
                start_new_session=True,
                preexec_fn=_kill_with_parent(),
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive:
            self.popen.kill()
            self.kills += 1
        self.popen.wait(EXIT_TIMEOUT_S)

    def kill_group(self) -> None:
        """SIGKILL the process and every process of its group, then reap it."""
        if self.alive:
            self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(EXIT_TIMEOUT_S)

    async def terminate(self, timeout_s: float = EXIT_TIMEOUT_S) -> int:
        """SIGTERM and wait (SIGKILL after `timeout_s`); the exit code."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class Lab:
    """The database, stream, keys and processes of one scenario."""

    name: str
    root: Path
    server_url: str
    database_url: str
    nats_url: str
    settings: Settings
    store: LedgerStore
    nc: Client
    keys: dict[str, SigningKey] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    stream_created: str = ""
    service_tree: Path | None = None
    """Run the roles from this checkout instead of this one."""
    base_entries: int = 0
    """Entries in the org chains before any publishing (the key registrations)."""
    owned: bool = True
    """Created by the lab (dropped at the end), or attached to a running service's."""

    @classmethod
    async def open(
        cls,
        name: str,
        root: Path,
        server_url: str,
        nats_url: str,
        orgs: Sequence[str],
        service_tree: Path | None = None,
    ) -> Lab:
        """A migrated database on `server_url`, a stream on `nats_url`, a key per org
        (migrated with `service_tree`'s migrations when the roles run from there)."""
        token = secrets.token_hex(4)
        db_name = f"tlf_{token}"
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            await conn.close()
        dsn = database_url(server_url, db_name)
        await migrate(dsn, service_tree / "migrations" if service_tree else None)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        settings = Settings(
            database_url=dsn,
            nats_url=nats_url,
            data_dir=root / "data",
            stream=f"F{token}",
            subject_prefix=f"f{token}",
            consumer=f"ingest-{token}",
            batch_max=BATCH_MAX,
        )
        store = await LedgerStore.connect(dsn, max_size=4)
        nc = await broker.connect(nats_url, name=f"faults-{name}")
        lab = cls(name, root, server_url, dsn, nats_url, settings, store, nc)
        lab.service_tree = service_tree
        lab.stream_created = await broker.ensure_stream(nc.jetstream(), settings)
        for org in orgs:
            lab.keys[org], _ = await register_new_key(lab.store, org, "fault suite")
        lab.base_entries = await lab.chained()
        return lab

    @classmethod
    async def attach(
        cls, name: str, root: Path, settings: Settings, store: LedgerStore, orgs: Sequence[str]
    ) -> Lab:
        """A lab over a running service's database and stream (never dropped)."""
        dsn, nats_url = settings.require_servers()
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        nc = await broker.connect(
            nats_url, name=f"faults-{name}", seed_file=settings.nats_seed_file
        )
        return cls(name, root, dsn, dsn, nats_url, settings, store, nc, owned=False)

    async def close(self, keep: bool = False) -> None:
        """Stop what is still running; drop the database and the stream unless `keep`."""
        keep = keep or not self.owned
        for proc in self.procs:
            if proc.alive:
                await proc.terminate(5)
        await self.store.close()
        if not keep:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.nc.jetstream().delete_stream(self.settings.stream)
        with contextlib.suppress(Exception):
            await self.nc.close()
        if not keep:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                conn = await asyncpg.connect(self.server_url)
                try:
                    name = urlsplit(self.database_url).path.lstrip("/")
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()

    def role_env(
        self,
        database_url: str | None = None,
        nats_url: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment `trustledger <role>` reads, pointed at the given servers."""
        s = self.settings
        env = clean_env()
        env.update(
            {
                "DATABASE_URL": database_url or self.database_url,
                "NATS_URL": nats_url or self.nats_url,
                "TRUSTLEDGER_DATA_DIR": str(s.data_dir),
                "TRUSTLEDGER_STREAM": s.stream,
                "TRUSTLEDGER_SUBJECT_PREFIX": s.subject_prefix,
                "TRUSTLEDGER_CONSUMER": s.consumer,
                "TRUSTLEDGER_BATCH_MAX": str(s.batch_max),
                "TRUSTLEDGER_DUPLICATE_WINDOW_S": str(int(s.duplicate_window_s)),
                "TRUSTLEDGER_LOG_LEVEL": "INFO",
            }
        )
        env.update(extra or {})
        return env

    def start(
        self,
        role: str,
        database_url: str | None = None,
        nats_url: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Proc:
        """`trustledger <role> --port <free>` as a real process."""
        index = sum(1 for p in self.procs if p.label.startswith(role)) + 1
        label = f"{role}-{index}"
        proc = Proc(
            label,
            [role, "--port", str(free_tcp_port())],
            self.role_env(database_url, nats_url, extra),
            self.root / f"{label}.log",
            cwd=self.service_tree,
        )
        self.procs.append(proc)
        return proc

    async def chained(self) -> int:
        """Entries in the org chains (the ledger's own key chain aside)."""
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            value = await self.store.pool.fetchval(
                "SELECT coalesce(sum(head_seq), 0) FROM chains WHERE chain <> '_ledger'"
            )
            return int(value)
        return -1

    async def consumer_pending(self) -> tuple[int, int] | None:
        """(undelivered, delivered but unacked) of the ingest consumer, None if unknown."""
        try:
            info = await self.nc.jetstream().consumer_info(
                self.settings.stream, self.settings.consumer, timeout=2
            )
        except (nats.errors.Error, TimeoutError):
            return None
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)


class PositionWatch:
    """Samples the ingest position row; counts every time it moved backwards."""

    def __init__(self, lab: Lab, interval_s: float = 0.05) -> None:
        self._lab = lab
        self._interval_s = interval_s
        self.backwards = 0
        self.highest = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> PositionWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        last = 0
        while True:
            try:
                seq = await self._lab.store.pool.fetchval(
                    "SELECT stream_seq FROM ingest_positions WHERE consumer = $1",
                    self._lab.settings.consumer,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                seq = None
            if seq is not None:
                if seq < last:
                    self.backwards += 1
                last = int(seq)
                self.highest = max(self.highest, last)
            await asyncio.sleep(self._interval_s)


async def wait_for(
    predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Poll `predicate` (sync or async) until true; False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval_s)
