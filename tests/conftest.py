"""Fixtures for the integration tests: real PostgreSQL and real NATS, never mocks.

By default a session starts an embedded PostgreSQL and an embedded NATS (JetStream)
in a temporary folder and stops them at the end. When TRUSTLEDGER_TEST_DATABASE_URL
and/or TRUSTLEDGER_TEST_NATS_URL are set, those servers are used instead.

Every test gets its own database (created, migrated, dropped with FORCE), its own
stream, subject prefix and consumer (the stream is deleted afterwards), and, when it
asks for `service`, the API and ingest roles running in-process on a free port.

Test modules import the plain helpers below (`wait_until`, event builders) with
`from conftest import ...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import nats
import nats.js.errors
import pytest

from service.adapters.access_store import AccessStore
from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres, free_tcp_port
from service.adapters.migrations import migrate
from service.adapters.postgres import EntryRow, LedgerStore
from service.adapters.publisher import Publisher
from service.app.access import create_api_key, create_org
from service.app.keys import register_new_key
from service.config import Settings
from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AgentRegistered,
    AgentRetired,
    AuditContext,
    CommitmentAmended,
    CommitmentDeclared,
    CommitmentRevoked,
    CommitmentTerms,
    PublisherKeyRegistered,
    PublisherKeyRevoked,
)
from service.domain.key_proof import registration
from service.domain.signing import SigningKey
from service.roles import Roles, run_roles

DATABASE_URL_ENV = "TRUSTLEDGER_TEST_DATABASE_URL"
NATS_URL_ENV = "TRUSTLEDGER_TEST_NATS_URL"

POLL_INTERVAL_S = 0.05
SERVICE_START_TIMEOUT_S = 20.0
SERVICE_STOP_TIMEOUT_S = 20.0
DUPLICATE_WINDOW_S = 1.0


# ---- helpers ---------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout_s: float = 10.0,
    message: str = "condition",
) -> None:
    """Poll `predicate` every 50 ms until it is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:.1f} s waiting for {message}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def wait_for_chain(store: LedgerStore, org: str, size: int, timeout_s: float = 10.0) -> None:
    """Wait until the chain of `org` holds at least `size` entries."""

    async def reached() -> bool:
        head = await store.chain_head(org)
        return head is not None and head.seq >= size

    await wait_until(reached, timeout_s, f"chain {org} to reach seq {size}")


async def chain_entries(store: LedgerStore, org: str) -> list[EntryRow]:
    """Every entry of a chain, in order."""
    return await store.entries(org, from_seq=1, limit=100_000)


_ids = itertools.count(1)


def new_id(label: str = "ev") -> str:
    """An event id unique within the session."""
    return f"{label}-{next(_ids):06d}-{secrets.token_hex(4)}"


T0 = datetime(2025, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    """A fixed instant `seconds` after 2025-01-01T00:00:00Z (events carry their own time)."""
    return T0 + timedelta(seconds=seconds)


def terms(
    actions: list[str], resources: list[str], valid_from: datetime = T0, purpose: str = "tests"
) -> CommitmentTerms:
    return CommitmentTerms(
        principal="ops@example.test",
        purpose=purpose,
        allowed_actions=actions,
        resource_bounds=resources,
        valid_from=valid_from,
        audit=AuditContext(policy_version="test-1"),
    )


def registered(org: str, agent: str, t: int = 0) -> AgentRegistered:
    return AgentRegistered(
        id=new_id("reg"),
        org=org,
        occurred_at=at(t),
        agent=agent,
        display_name=f"{agent} of {org}",
        principal=f"owner@{org}.test",
    )


def declared(
    org: str, agent: str, commitment_id: str, actions: list[str], resources: list[str], t: int = 1
) -> CommitmentDeclared:
    return CommitmentDeclared(
        id=new_id("decl"),
        org=org,
        occurred_at=at(t),
        agent=agent,
        commitment_id=commitment_id,
        terms=terms(actions, resources),
    )


def amended(
    org: str,
    agent: str,
    commitment_id: str,
    version: int,
    actions: list[str],
    resources: list[str],
    t: int,
) -> CommitmentAmended:
    return CommitmentAmended(
        id=new_id("amend"),
        org=org,
        occurred_at=at(t),
        agent=agent,
        commitment_id=commitment_id,
        version=version,
        terms=terms(actions, resources, purpose=f"tests v{version}"),
    )


def revoked(org: str, agent: str, commitment_id: str, t: int) -> CommitmentRevoked:
    return CommitmentRevoked(
        id=new_id("revoke"), org=org, occurred_at=at(t), agent=agent, commitment_id=commitment_id
    )


def retired(org: str, agent: str, t: int) -> AgentRetired:
    return AgentRetired(id=new_id("retire"), org=org, occurred_at=at(t), agent=agent)


def performed(org: str, agent: str, action: str, resource: str, t: int) -> ActionPerformed:
    return ActionPerformed(
        id=new_id("act"), org=org, occurred_at=at(t), agent=agent, action=action, resource=resource
    )


def observed(
    org: str, agent_org: str, agent: str, action: str, resource: str, t: int
) -> ActionObserved:
    return ActionObserved(
        id=new_id("obs"),
        org=org,
        occurred_at=at(t),
        agent_org=agent_org,
        agent=agent,
        gateway=f"{org}-gw",
        action=action,
        resource=resource,
    )


def key_registered(org: str, new_key: SigningKey, t: int = 0) -> PublisherKeyRegistered:
    """`org` registers `new_key`, with the proof of possession only its holder can make."""
    return registration(new_key, f"key-{new_key.key_id}", at(t), "test key", org=org)


def key_revoked(org: str, old_key: SigningKey, t: int = 0) -> PublisherKeyRevoked:
    return PublisherKeyRevoked(
        id=new_id("keyrev"), org=org, occurred_at=at(t), key_id=old_key.key_id, reason="rotated"
    )


def database_url(server_url: str, name: str) -> str:
    """`server_url` pointing at database `name` instead."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# ---- servers (session) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Servers:
    """Where the test PostgreSQL (its maintenance database) and NATS answer."""

    database_url: str
    nats_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """Embedded PostgreSQL and NATS for the session, unless the env vars name servers.

    A sync fixture on purpose: it runs on the main thread, whose lifetime bounds the
    servers' parent-death signal. Their folder is a temporary folder of their own,
    not pytest's: pytest prunes old base folders when *another* session starts (and
    resets their modes), which took a running session's PostgreSQL away."""
    started: list[EmbeddedPostgres | EmbeddedNats] = []
    root = Path(tempfile.mkdtemp(prefix="trustledger-test-servers-"))
    # The embedded PostgreSQL runs as an unprivileged user when we are root: it must
    # be able to reach its folder.
    root.chmod(0o755)
    try:
        db_url = os.environ.get(DATABASE_URL_ENV) or None
        nats_url = os.environ.get(NATS_URL_ENV) or None
        if db_url is None:
            postgres = EmbeddedPostgres(root / "postgres")
            started.append(postgres)
            db_url = postgres.start()
        if nats_url is None:
            nats_server = EmbeddedNats(root / "nats")
            started.append(nats_server)
            nats_url = nats_server.start()
        yield Servers(db_url, nats_url)
    finally:
        for server in reversed(started):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---- per test: database, settings, store ---------------------------------------------------


@pytest.fixture
async def blank_database(servers: Servers) -> AsyncIterator[str]:
    """A new empty database on the test server; dropped (FORCE) afterwards. Yields its DSN."""
    name = f"tl_{secrets.token_hex(6)}"
    await pg_execute(servers.database_url, f'CREATE DATABASE "{name}"')
    try:
        yield database_url(servers.database_url, name)
    finally:
        await pg_execute(servers.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database(blank_database: str) -> str:
    """A fresh database with every migration applied. Yields its DSN."""
    await migrate(blank_database)
    return blank_database


@pytest.fixture
async def settings(servers: Servers, database: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings for one test: its database, its own stream, prefix and consumer, a free port."""
    token = secrets.token_hex(5)
    settings = Settings(
        database_url=database,
        nats_url=servers.nats_url,
        data_dir=tmp_path,
        host="127.0.0.1",
        port=free_tcp_port(),
        stream=f"T{token}",
        subject_prefix=f"t{token}",
        consumer=f"ingest-{token}",
        duplicate_window_s=DUPLICATE_WINDOW_S,
    )
    yield settings
    nc = await nats.connect(servers.nats_url)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(settings.stream)
    finally:
        await nc.close()


@pytest.fixture
async def store(database: str) -> AsyncIterator[LedgerStore]:
    """A LedgerStore on the test's database."""
    store = await LedgerStore.connect(database, max_size=4)
    try:
        yield store
    finally:
        await store.close()


OrgKeyFactory = Callable[[str], Awaitable[SigningKey]]


@pytest.fixture
def org_key(store: LedgerStore) -> OrgKeyFactory:
    """Make an org key and register it the way `trustledger keys create` does."""

    async def make(org: str) -> SigningKey:
        key, _ = await register_new_key(store, org, "operator")
        return key

    return make


PublisherFactory = Callable[[SigningKey], Awaitable[Publisher]]


@pytest.fixture
async def publisher(settings: Settings) -> AsyncIterator[PublisherFactory]:
    """Publishers on the test's subject prefix; every one is closed afterwards."""
    made: list[Publisher] = []

    async def make(key: SigningKey) -> Publisher:
        assert settings.nats_url is not None
        p = await Publisher.connect(settings.nats_url, key, settings.subject_prefix)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.close()


# ---- the service in-process ------------------------------------------------------------------


async def issue_api_key(
    store: LedgerStore, role: str, org: str | None = None, days: int = 30, label: str = ""
) -> str:
    """An API key of `role` for `org` (created when new; None for operators), made the
    way `trustledger apikeys create` makes it. Returns the key."""
    access = AccessStore.of(store)
    now = datetime.now(UTC)
    if org is not None and await access.org(org) is None:
        await create_org(access, org, "", now)
    issued = await create_api_key(access, role, org, now, days=days, label=label)
    return issued.token


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(slots=True)
class RunningService:
    """The API and ingest roles running in this process, and handles to look at them."""

    settings: Settings
    base_url: str
    http: httpx.AsyncClient
    store: LedgerStore
    stop: asyncio.Event
    task: asyncio.Task[None]
    closed: bool = field(default=False)
    operator_key: str = ""
    """`http` sends it: an operator sees everything (tests of other roles use `issue_api_key`)."""

    async def shutdown(self) -> None:
        """Stop the roles and wait for them; re-raises whatever the service died of."""
        if self.closed:
            return
        self.closed = True
        await self.http.aclose()
        self.stop.set()
        await asyncio.wait_for(self.task, SERVICE_STOP_TIMEOUT_S)


ServiceFactory = Callable[[], Awaitable[RunningService]]


@pytest.fixture
async def start_service(settings: Settings, store: LedgerStore) -> AsyncIterator[ServiceFactory]:
    """Start the service on demand (a test may publish before it starts); stopped afterwards."""
    running: list[RunningService] = []

    async def start() -> RunningService:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_roles(settings, Roles(api=True, ingest=True, scheduler=False), stop),
            name="trustledger-under-test",
        )
        base_url = f"http://{settings.host}:{settings.port}"
        key = await issue_api_key(store, "operator")
        http = httpx.AsyncClient(base_url=base_url, timeout=10, headers=bearer(key))
        svc = RunningService(settings, base_url, http, store, stop, task, operator_key=key)
        running.append(svc)

        async def ready() -> bool:
            if task.done():
                task.result()  # raises what the service died of
                pytest.fail("the service stopped before it became ready")
            try:
                response = await svc.http.get("/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await wait_until(ready, SERVICE_START_TIMEOUT_S, "GET /readyz to answer 200")
        return svc

    yield start
    for svc in running:
        await svc.shutdown()


@pytest.fixture
async def service(start_service: ServiceFactory) -> RunningService:
    """The API and ingest roles, started and ready."""
    return await start_service()
