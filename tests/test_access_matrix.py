"""The visibility matrix of docs/api.md, cell by cell, on every route.

One world for the module: orgs `a` and `b` with agents, chained events and
quarantined messages, a checkpoint of `a`, and keys of every kind. Each cell
asks one route as one caller and checks the status, the problem body of a
refusal, and that nothing private to org `a` reaches anyone outside it.

The API app is served in-process (ASGI) with rate limits out of the way: the
limits have their own tests (tests/test_access.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import nats.js.errors
import pytest
from conftest import (
    Servers,
    at,
    bearer,
    database_url,
    declared,
    issue_api_key,
    new_id,
    performed,
    pg_execute,
    registered,
    wait_until,
)

from service.adapters.access_store import AccessStore
from service.adapters.embedded import free_tcp_port
from service.adapters.migrations import migrate
from service.adapters.nats_auth import NatsUsers
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import Publisher
from service.api.access import AccessControl
from service.api.app import create_app
from service.api.nats_credentials import NatsCredentialsSetup
from service.app.access import Authenticator
from service.app.checkpoints import make_checkpoint
from service.app.keys import register_new_key
from service.app.posture import reassess_due
from service.config import Settings
from service.domain.access import MATRIX, ApiKeyRecord, new_api_key, rule_for
from service.domain.events import AgentRegistered
from service.domain.rate_limit import Limit, RateLimiter
from service.roles import Roles, load_ledger_signer, run_roles

PROBLEM_JSON = "application/problem+json"
UNLIMITED = Limit(rate_per_s=1e6, burst=1_000_000)

A_DISPLAY = "A-PRIVATE-DISPLAY-NAME"
"""In org a's chain only (no posture view shows display names)."""
A_RAW = b"A-QUARANTINED-SECRET"
B_RAW = b"B-QUARANTINED-NOTE"
A_PRIVATE = [A_DISPLAY, A_RAW.decode(), base64.b64encode(A_RAW).decode()]
"""Bytes that only org a's auditors (and operators) may ever receive."""

A_NATS_KEY = "{a_nats_key}"
"""Stands in a path for the public key of a NATS user the world issued to org a."""

CALLERS = (
    "anonymous",
    "a_auditor",
    "a_publisher_admin",
    "b_relying_party",
    "b_auditor",
    "operator",
    "revoked",
    "expired",
)
OK = 200

# route -> (method, path, the status each caller gets, in CALLERS order)
ROUTES: dict[str, tuple[str, str, tuple[int, ...]]] = {
    "healthz": ("GET", "/healthz", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "readyz": ("GET", "/readyz", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "metrics": ("GET", "/metrics", (401, 403, 403, 403, 403, OK, 401, 401)),
    "openapi": ("GET", "/schema/openapi.json", (401, OK, OK, OK, OK, OK, 401, 401)),
    "ledger-keys": ("GET", "/v1/ledger/keys", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "checkpoint": ("GET", "/v1/chains/a/checkpoint", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "checkpoints": ("GET", "/v1/chains/a/checkpoints", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "checkpoint-at": ("GET", "/v1/chains/a/checkpoints/4", (OK, OK, OK, OK, OK, OK, 401, 401)),
    "sign-checkpoint": (
        "POST",
        "/v1/chains/a/checkpoints",
        (401, 403, 403, 403, 403, OK, 401, 401),
    ),
    "posture": ("GET", "/v1/agents/a/bot/posture", (401, OK, OK, OK, OK, OK, 401, 401)),
    "commitments": ("GET", "/v1/agents/a/bot/commitments", (401, OK, OK, OK, OK, OK, 401, 401)),
    "timeline": (
        "GET",
        "/v1/agents/a/bot/timeline?from=2024-12-31T00:00:00Z&to=2025-01-02T00:00:00Z",
        (401, OK, OK, OK, OK, OK, 401, 401),
    ),
    "postures": ("GET", "/v1/postures", (401, OK, OK, OK, OK, OK, 401, 401)),
    "postures-of-a": ("GET", "/v1/postures?org=a", (401, OK, OK, 403, 403, OK, 401, 401)),
    "chains": ("GET", "/v1/chains", (401, 403, 403, 403, 403, OK, 401, 401)),
    "chain-head": ("GET", "/v1/chains/a", (401, OK, OK, 403, 403, OK, 401, 401)),
    "entries": ("GET", "/v1/chains/a/entries", (401, OK, 403, 403, 403, OK, 401, 401)),
    "export": ("GET", "/v1/chains/a/export", (401, OK, 403, 403, 403, OK, 401, 401)),
    "quarantine": ("GET", "/v1/quarantine", (401, OK, OK, 403, OK, OK, 401, 401)),
    "quarantine-of-a": ("GET", "/v1/quarantine?org=a", (401, OK, OK, 403, 403, OK, 401, 401)),
    "quarantine-of-a-and-b": (
        "GET",
        "/v1/quarantine?org=b&org=a",
        (401, 403, 403, 403, 403, OK, 401, 401),
    ),
    "issue-nats-creds": (
        "POST",
        "/v1/orgs/a/nats-credentials",
        (401, 403, OK, 403, 403, OK, 401, 401),
    ),
    "nats-users": ("GET", "/v1/orgs/a/nats-credentials", (401, 403, OK, 403, 403, OK, 401, 401)),
    "revoke-nats-user": (
        "DELETE",
        f"/v1/orgs/a/nats-credentials/{A_NATS_KEY}",
        (401, 403, OK, 403, 403, OK, 401, 401),
    ),
}
"""Reads that are allowed to carry org a's private bytes, by caller."""
SEES_A_PRIVATE = {
    ("entries", "a_auditor"),
    ("entries", "operator"),
    ("export", "a_auditor"),
    ("export", "operator"),
    ("quarantine", "a_auditor"),
    ("quarantine", "a_publisher_admin"),
    ("quarantine", "operator"),
    ("quarantine-of-a", "a_auditor"),
    ("quarantine-of-a", "a_publisher_admin"),
    ("quarantine-of-a", "operator"),
    ("quarantine-of-a-and-b", "operator"),
}


@dataclass(frozen=True, slots=True)
class World:
    http: httpx.AsyncClient
    keys: dict[str, str]
    """caller -> API key (none for anonymous)."""
    a_nats_key: str
    """The public key of a NATS user of org a (revoked by the DELETE cells)."""


async def _expired_key(store: LedgerStore, org: str) -> str:
    fresh = new_api_key()
    now = datetime.now(UTC)
    await AccessStore.of(store).add_api_key(
        ApiKeyRecord(
            key_id=fresh.key_id,
            org=org,
            role="auditor",
            label="expired",
            secret_hash=fresh.secret_hash,
            created_at=now - timedelta(days=2),
            expires_at=now - timedelta(days=1),
            revoked_at=None,
            last_used_at=None,
        )
    )
    return fresh.token


@pytest.fixture(scope="module")
async def world(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """Orgs a and b with chained events and quarantined messages; keys of every kind."""
    name = f"tl_{secrets.token_hex(6)}"
    await pg_execute(servers.database_url, f'CREATE DATABASE "{name}"')
    dsn = database_url(servers.database_url, name)
    token = secrets.token_hex(5)
    settings = Settings(
        database_url=dsn,
        nats_url=servers.nats_url,
        data_dir=Path(tmp_path_factory.mktemp("matrix")),
        host="127.0.0.1",
        port=free_tcp_port(),
        stream=f"T{token}",
        subject_prefix=f"t{token}",
        consumer=f"ingest-{token}",
        duplicate_window_s=1.0,
    )
    stop = asyncio.Event()
    ingest: asyncio.Task[None] | None = None
    publishers: list[Publisher] = []
    store: LedgerStore | None = None
    try:
        await migrate(dsn)
        store = await LedgerStore.connect(dsn, max_size=4)
        ingest = asyncio.create_task(
            run_roles(settings, Roles(api=False, ingest=True, scheduler=False), stop)
        )
        prefix = settings.subject_prefix
        for org in ("a", "b"):
            key, _ = await register_new_key(store, org, "matrix")
            publishers.append(await Publisher.connect(servers.nats_url, key, prefix))
        pub_a, pub_b = publishers
        await pub_a.publish(
            AgentRegistered(
                id=new_id("reg"),
                org="a",
                occurred_at=at(0),
                agent="bot",
                display_name=A_DISPLAY,
                principal="owner@a.test",
            )
        )
        await pub_a.publish(declared("a", "bot", "c1", ["x.*"], ["r/*"]))
        await pub_a.publish(performed("a", "bot", "x.read", "r/1", t=10))
        await pub_b.publish(registered("b", "rp-bot"))
        await pub_a.publish_raw(f"{prefix}.ev.a._", A_RAW, {})
        await pub_b.publish_raw(f"{prefix}.ev.b._", B_RAW, {})

        async def settled() -> bool:
            assert store is not None
            a, b = await store.chain_head("a"), await store.chain_head("b")
            chained = a is not None and a.seq == 4 and b is not None and b.seq == 2
            return chained and len(await store.quarantined(None)) == 2

        await wait_until(settled, 20, "the world's events to be chained and quarantined")
        signer = await load_ledger_signer(store, settings)
        await make_checkpoint(store, signer, "a")
        await reassess_due(store, datetime.now(UTC))

        keys = {
            "operator": await issue_api_key(store, "operator"),
            "a_auditor": await issue_api_key(store, "auditor", "a"),
            "a_publisher_admin": await issue_api_key(store, "publisher_admin", "a"),
            "b_relying_party": await issue_api_key(store, "relying_party", "b"),
            "b_auditor": await issue_api_key(store, "auditor", "b"),
            "revoked": await issue_api_key(store, "auditor", "a"),
            "expired": await _expired_key(store, "a"),
        }
        await AccessStore.of(store).revoke_api_key(keys["revoked"][4:16], datetime.now(UTC))
        access = AccessControl(
            Authenticator(AccessStore.of(store)),
            RateLimiter(UNLIMITED),
            RateLimiter(UNLIMITED),
            RateLimiter(UNLIMITED),
        )
        # A users folder of its own (the NATS server here runs without authentication).
        nats_users = NatsUsers(settings.data_dir / "nats-users")
        nats_users.ensure_service_user()
        a_nats = nats_users.issue("a", settings.subject_prefix, "matrix", datetime.now(UTC))
        app = create_app(
            store,
            {"postgres": store.ping},
            signer=signer,
            access=access,
            nats_credentials=NatsCredentialsSetup(nats_users, settings.subject_prefix),
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://matrix.test"
        ) as http:
            yield World(http, keys, a_nats.user.public_key)
    finally:
        for p in publishers:
            await p.close()
        stop.set()
        if ingest is not None:
            await asyncio.wait_for(ingest, 20)
        if store is not None:
            await store.close()
        nc = await nats.connect(servers.nats_url)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(settings.stream)
        finally:
            await nc.close()
        await pg_execute(servers.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CELLS = [
    pytest.param(route, who, expected[i], id=f"{route}-{who}")
    for route, (_, _, expected) in ROUTES.items()
    for i, who in enumerate(CALLERS)
]


@pytest.mark.parametrize(("route", "who", "status"), CELLS)
async def test_each_caller_gets_its_cell_of_the_matrix_when_calling_each_route(
    world: World, route: str, who: str, status: int
) -> None:
    """Right status; a refusal is a problem body; nothing private to org a leaks."""
    method, path, _ = ROUTES[route]
    headers = bearer(world.keys[who]) if who in world.keys else {}
    path = path.replace(A_NATS_KEY, world.a_nats_key)
    response = await world.http.request(method, path, headers=headers)

    if status == OK:
        assert response.status_code in ((200, 201) if method == "POST" else (200,)), response.text
    else:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        body = response.json()
        assert body["status"] == status
        assert body["type"].endswith("/unauthorized" if status == 401 else "/forbidden")
        assert body["title"]
        assert body["detail"]
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    leaked = [marker for marker in A_PRIVATE if marker in response.text]
    if (route, who) in SEES_A_PRIVATE:
        assert leaked, "the check below could not fail: this read must carry a's bytes"
    else:
        assert leaked == []


@pytest.mark.parametrize(
    ("who", "orgs"),
    [
        pytest.param("a_auditor", {"a"}, id="a-auditor"),
        pytest.param("a_publisher_admin", {"a"}, id="a-publisher-admin"),
        pytest.param("b_auditor", {"b"}, id="b-auditor"),
        pytest.param("operator", {"a", "b"}, id="operator"),
    ],
)
async def test_quarantine_shows_only_the_callers_org_when_listed(
    world: World, who: str, orgs: set[str]
) -> None:
    """A refused message is shown to the org its subject names, and to operators."""
    response = await world.http.get("/v1/quarantine", headers=bearer(world.keys[who]))
    assert response.status_code == 200
    items = response.json()["items"]
    assert {i["claimed_org"] for i in items} == orgs
    raws = {base64.b64decode(i["raw_base64"]) for i in items}
    assert raws == {raw for org, raw in (("a", A_RAW), ("b", B_RAW)) if org in orgs}


@pytest.mark.parametrize(
    ("who", "agents"),
    [
        pytest.param("b_relying_party", [("b", "rp-bot")], id="b-relying-party"),
        pytest.param("a_auditor", [("a", "bot")], id="a-auditor"),
        pytest.param("operator", [("a", "bot"), ("b", "rp-bot")], id="operator"),
    ],
)
async def test_posture_list_shows_only_the_callers_org_when_not_an_operator(
    world: World, who: str, agents: list[tuple[str, str]]
) -> None:
    """`/v1/postures` is no directory of every org's agents: own org only, but for operators."""
    response = await world.http.get("/v1/postures", headers=bearer(world.keys[who]))
    assert response.status_code == 200
    assert [(i["org"], i["agent"]) for i in response.json()["items"]] == agents


async def test_readiness_detail_is_for_operators_when_anyone_asks(world: World) -> None:
    """Anyone learns ready or not; only an operator sees which check says what."""
    anonymous = (await world.http.get("/readyz")).json()
    relying = (
        await world.http.get("/readyz", headers=bearer(world.keys["b_relying_party"]))
    ).json()
    operator = (await world.http.get("/readyz", headers=bearer(world.keys["operator"]))).json()
    assert anonymous == relying == {"status": "ready"}
    assert operator == {"status": "ready", "checks": {"postgres": "ok"}}


def test_every_route_of_the_matrix_is_tested_when_the_suite_runs() -> None:
    """Each rule of the matrix has cells above: a new route cannot go untested."""
    tested = {
        (method, _template(path)) for method, path, _ in ROUTES.values() if "schema" not in path
    }
    assert tested == set(MATRIX)
    assert rule_for("GET", "/schema/openapi.json") is not None


def _template(path: str) -> str:
    parts = path.split("?")[0].split("/")
    names = {
        ("v1", "agents", "a"): "{org}",
        ("v1", "agents", "a", "bot"): "{agent}",
        ("v1", "chains", "a"): "{org}",
        ("v1", "chains", "a", "checkpoints", "4"): "{size}",
        ("v1", "orgs", "a"): "{org}",
        ("v1", "orgs", "a", "nats-credentials", A_NATS_KEY): "{public_key}",
    }
    out: list[str] = []
    for i, part in enumerate(parts):
        out.append(names.get(tuple(parts[1 : i + 1]), part))
    return "/".join(out)
