"""`/v1/orgs/{org}/nats-credentials`: a publisher_admin manages its org's NATS users over HTTP.

Against a real nats-server with authentication (`EmbeddedNats(auth=True)`, as
`trustledger up` runs it) whose users folder the API writes, and a real
PostgreSQL for orgs and API keys. The API app is served in-process (ASGI),
with rate limits out of the way.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from conftest import OrgKeyFactory, bearer, issue_api_key, registered, wait_until

from service.adapters import broker
from service.adapters.access_store import AccessStore
from service.adapters.embedded import EmbeddedNats
from service.adapters.nats_auth import NatsUsers, new_user_seed, write_seed_file
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import Publisher, signed_message
from service.api.access import AccessControl
from service.api.app import create_app
from service.api.nats_credentials import NatsCredentialsSetup
from service.app.access import Authenticator
from service.app.nats_credentials import MAX_ACTIVE_USERS_PER_ORG
from service.config import Settings
from service.domain.rate_limit import Limit, RateLimiter
from service.errors import PublishError

PROBLEM_JSON = "application/problem+json"
UNLIMITED = Limit(rate_per_s=1e6, burst=1_000_000)
ADMIT_TIMEOUT_S = 10.0


@pytest.fixture
def auth_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A nats-server with authentication per test, so each starts with no org users
    (a sync fixture: main thread)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("credsnats") / "nats", auth=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _app(store: LedgerStore, setup: NatsCredentialsSetup | None) -> httpx.AsyncClient:
    access = AccessControl(
        Authenticator(AccessStore.of(store)),
        RateLimiter(UNLIMITED),
        RateLimiter(UNLIMITED),
        RateLimiter(UNLIMITED),
    )
    app = create_app(store, {}, access=access, nats_credentials=setup)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar is an ASGI app
    return httpx.AsyncClient(transport=transport, base_url="http://creds.test")


@dataclass
class World:
    http: httpx.AsyncClient
    keys: dict[str, str]
    """caller -> API key: a_admin, b_admin, a_auditor, operator."""
    server: EmbeddedNats
    settings: Settings
    """Pointing at the authenticated server, as the service (its seed)."""
    tmp: Path

    def path(self, org: str, public_key: str = "") -> str:
        return f"/v1/orgs/{org}/nats-credentials" + (f"/{public_key}" if public_key else "")

    async def issue(self, who: str, org: str, label: str = "test") -> dict[str, object]:
        response = await self.http.post(
            self.path(org), json={"label": label}, headers=bearer(self.keys[who])
        )
        assert response.status_code == 201, response.text
        body: dict[str, object] = response.json()
        return body

    def seed_file(self, seed: object) -> Path:
        assert isinstance(seed, str)
        path = self.tmp / f"{secrets.token_hex(4)}.nk"
        write_seed_file(path, seed)
        return path


@pytest.fixture
async def world(
    auth_nats: EmbeddedNats, settings: Settings, store: LedgerStore, tmp_path: Path
) -> AsyncIterator[World]:
    """Orgs a and b, keys of the roles that matter here, the API writing the server's users."""
    assert auth_nats.users is not None
    mine = replace(
        settings, nats_url=auth_nats.url, nats_seed_file=auth_nats.users.service_seed_path
    )
    keys = {
        "a_admin": await issue_api_key(store, "publisher_admin", "a"),
        "b_admin": await issue_api_key(store, "publisher_admin", "b"),
        "a_auditor": await issue_api_key(store, "auditor", "a"),
        "operator": await issue_api_key(store, "operator"),
    }
    nc = await broker.connect(auth_nats.url, "test-setup", seed_file=mine.nats_seed_file)
    try:
        await broker.ensure_stream(nc.jetstream(), mine)
        setup = NatsCredentialsSetup(auth_nats.users, mine.subject_prefix)
        async with _app(store, setup) as http:
            yield World(http, keys, auth_nats, mine, tmp_path)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(mine.stream)
    finally:
        await nc.close()


async def _admitted(url: str, seed: Path) -> bool:
    try:
        nc = await nats.connect(url, nkeys_seed=str(seed), allow_reconnect=False, connect_timeout=3)
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


def _assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


async def test_issued_seed_publishes_on_its_own_orgs_subjects_only_when_issued_over_http(
    world: World, org_key: OrgKeyFactory
) -> None:
    """A's publisher_admin gets a seed that publishes on a's subjects, and never on b's."""
    issued = await world.issue("a_admin", "a")
    user = issued["user"]
    assert isinstance(user, dict)
    prefix = world.settings.subject_prefix
    assert user["org"] == "a"
    assert user["publish"] == [f"{prefix}.ev.a.>"]
    assert issued["inbox_prefix"] == f"_INBOX.{prefix}.a"
    assert issued["applied"] is True
    assert str(issued["seed"]).startswith("SU")
    seed = world.seed_file(issued["seed"])
    await wait_until(lambda: _admitted(world.server.url, seed), ADMIT_TIMEOUT_S, "a admitted")

    key = await org_key("a")
    pub = await Publisher.connect(world.server.url, key, prefix, seed)
    try:
        assert (await pub.publish(registered("a", "bot"))).seq == 1
        data, headers = signed_message(registered("a", "bot2"), key)
        with pytest.raises(PublishError, match="refused"):
            await pub.publish_raw(f"{prefix}.ev.b.bot2", data, headers, attempts=2, timeout_s=1.0)
    finally:
        await pub.close()


@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
@pytest.mark.parametrize("who", ["b_admin", "a_auditor"])
async def test_caller_is_refused_when_it_is_not_the_orgs_publisher_admin(
    world: World, method: str, who: str
) -> None:
    """B's publisher_admin (and a's auditor) get 403 on a's routes, and learn nothing of a's users."""
    issued = await world.issue("a_admin", "a")
    user = issued["user"]
    assert isinstance(user, dict)
    public_key = str(user["public_key"])
    path = world.path("a", public_key if method == "DELETE" else "")
    response = await world.http.request(method, path, headers=bearer(world.keys[who]))
    body = _assert_problem(response, 403)
    assert str(body["type"]).endswith("/forbidden")
    assert public_key not in response.text
    listed = await world.http.get(world.path("a"), headers=bearer(world.keys["a_admin"]))
    assert [u["public_key"] for u in listed.json()["items"]] == [public_key]


async def test_seed_is_never_listed_logged_or_kept_when_issued(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed is in the 201 answer only: not in the listing, the logs or the users folder."""
    caplog.set_level(logging.DEBUG)
    issued = await world.issue("a_admin", "a", label="gateway 1")
    seed = str(issued["seed"])
    user = issued["user"]
    assert isinstance(user, dict)
    listed = await world.http.get(world.path("a"), headers=bearer(world.keys["a_admin"]))
    assert listed.status_code == 200
    assert [(u["public_key"], u["label"]) for u in listed.json()["items"]] == [
        (user["public_key"], "gateway 1")
    ]
    assert "seed" not in listed.text
    assert user["public_key"] in caplog.text, "the check below could not fail: nothing logged"
    assert seed not in caplog.text
    assert seed[2:] not in caplog.text
    folder = world.server.users
    assert folder is not None
    for path in folder.directory.iterdir():
        if path.is_file() and path.name != "service.nk":
            assert seed.encode() not in path.read_bytes(), path


async def test_seed_is_cut_off_when_its_user_is_deleted(world: World) -> None:
    """DELETE revokes at once: new connections refused, the open one ended, the listing empty."""
    issued = await world.issue("a_admin", "a")
    user = issued["user"]
    assert isinstance(user, dict)
    seed = world.seed_file(issued["seed"])
    await wait_until(lambda: _admitted(world.server.url, seed), ADMIT_TIMEOUT_S, "a admitted")
    nc = await nats.connect(world.server.url, nkeys_seed=str(seed), allow_reconnect=False)
    try:
        response = await world.http.delete(
            world.path("a", str(user["public_key"])), headers=bearer(world.keys["a_admin"])
        )
        assert response.status_code == 200, response.text
        assert response.json()["applied"] is True
        assert response.json()["user"]["revoked_at"] is not None

        async def refused() -> bool:
            return not await _admitted(world.server.url, seed)

        await wait_until(refused, ADMIT_TIMEOUT_S, "the revoked seed refused")
        await wait_until(lambda: not nc.is_connected, ADMIT_TIMEOUT_S, "the open connection cut")
    finally:
        await nc.close()
    listed = await world.http.get(world.path("a"), headers=bearer(world.keys["a_admin"]))
    assert listed.json()["items"] == []


@pytest.mark.parametrize("who", ["a_admin", "operator"])
async def test_delete_answers_404_when_the_key_belongs_to_another_org(
    world: World, who: str
) -> None:
    """B's key under a's route is 'not found', worded as for a key nobody has: it stays active."""
    b_user = (await world.issue("b_admin", "b"))["user"]
    assert isinstance(b_user, dict)
    b_key = str(b_user["public_key"])
    unknown = new_user_seed().public_key
    theirs = await world.http.delete(world.path("a", b_key), headers=bearer(world.keys[who]))
    nobodys = await world.http.delete(world.path("a", unknown), headers=bearer(world.keys[who]))
    body = _assert_problem(theirs, 404)
    assert str(body["detail"]).replace(b_key, "K") == str(
        _assert_problem(nobodys, 404)["detail"]
    ).replace(unknown, "K")
    listed = await world.http.get(world.path("b"), headers=bearer(world.keys["b_admin"]))
    assert [u["public_key"] for u in listed.json()["items"]] == [b_key]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"label": "x" * 200}, 201, id="label-of-200"),
        pytest.param(None, 201, id="no-body"),
        pytest.param({"label": "x" * 201}, 400, id="label-of-201"),
        pytest.param({"label": "line\nbreak"}, 400, id="label-unprintable"),
        pytest.param({"label": 7}, 400, id="label-not-text"),
        pytest.param({"label": "", "seed": "SU..."}, 400, id="unknown-field"),
        pytest.param([1], 400, id="not-an-object"),
    ],
)
async def test_issue_checks_its_body_when_posted(world: World, body: object, status: int) -> None:
    """Labels are at most 200 printable characters; anything else is a 400 problem."""
    headers = bearer(world.keys["a_admin"])
    if body is None:
        response = await world.http.post(world.path("a"), headers=headers)
    else:
        response = await world.http.post(world.path("a"), headers=headers, json=body)
    if status == 201:
        assert response.status_code == 201, response.text
    else:
        assert str(_assert_problem(response, status)["type"]).endswith("/invalid-request")


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", ""), ("GET", ""), ("DELETE", "/" + new_user_seed().public_key)],
)
async def test_routes_answer_404_when_the_org_does_not_exist(
    world: World, method: str, suffix: str
) -> None:
    """An operator naming an org nobody created gets 404 (no user is issued for it)."""
    response = await world.http.request(
        method, world.path("ghost") + suffix, headers=bearer(world.keys["operator"])
    )
    if method == "GET":  # a listing of nothing: nothing to hide
        assert response.status_code == 200
        assert response.json()["items"] == []
    else:
        _assert_problem(response, 404)


async def test_issue_is_refused_with_409_when_the_org_holds_the_most_active_users(
    store: LedgerStore, tmp_path: Path
) -> None:
    """The 21st active user of an org is a 409 problem; revoking one makes room again."""
    users = NatsUsers(tmp_path / "users")
    users.ensure_service_user()
    admin = bearer(await issue_api_key(store, "publisher_admin", "a"))
    other = bearer(await issue_api_key(store, "publisher_admin", "b"))
    async with _app(store, NatsCredentialsSetup(users, "tl")) as http:
        issued = []
        for _ in range(MAX_ACTIVE_USERS_PER_ORG):
            response = await http.post("/v1/orgs/a/nats-credentials", headers=admin)
            assert response.status_code == 201, response.text
            assert response.json()["applied"] is False  # no server runs on this folder
            issued.append(response.json()["user"]["public_key"])
        refused = await http.post("/v1/orgs/a/nats-credentials", headers=admin)
        body = _assert_problem(refused, 409)
        assert str(body["type"]).endswith("/conflict")
        assert (await http.post("/v1/orgs/b/nats-credentials", headers=other)).status_code == 201
        gone = await http.delete(f"/v1/orgs/a/nats-credentials/{issued[0]}", headers=admin)
        assert gone.status_code == 200
        again = await http.post("/v1/orgs/a/nats-credentials", headers=admin)
        assert again.status_code == 201, again.text
        listed = await http.get("/v1/orgs/a/nats-credentials", headers=admin)
        assert len(listed.json()["items"]) == MAX_ACTIVE_USERS_PER_ORG


@pytest.mark.parametrize("configured", ["no setup", "empty folder"])
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
async def test_routes_answer_409_naming_the_setting_when_no_users_folder_is_configured(
    store: LedgerStore, tmp_path: Path, configured: str, method: str
) -> None:
    """Against an external NATS without a users folder: a 409 problem naming what to set."""
    setup = None if configured == "no setup" else NatsCredentialsSetup(NatsUsers(tmp_path), "tl")
    admin = bearer(await issue_api_key(store, "publisher_admin", "a"))
    suffix = "/" + new_user_seed().public_key if method == "DELETE" else ""
    async with _app(store, setup) as http:
        response = await http.request(method, "/v1/orgs/a/nats-credentials" + suffix, headers=admin)
    body = _assert_problem(response, 409)
    assert "TRUSTLEDGER_NATS_USERS_DIR" in str(body["detail"])
    assert str(tmp_path) not in response.text  # no server path in an answer


async def test_openapi_documents_the_routes_when_served(store: LedgerStore) -> None:
    """The served document has the three operations, their parameters and problem answers."""
    key = bearer(await issue_api_key(store, "relying_party", "a"))
    async with _app(store, None) as http:
        document = (await http.get("/schema/openapi.json", headers=key)).json()
    listing = document["paths"]["/v1/orgs/{org}/nats-credentials"]
    one = document["paths"]["/v1/orgs/{org}/nats-credentials/{public_key}"]
    assert set(listing) >= {"get", "post"}
    assert "delete" in one
    for operation in (listing["get"], listing["post"], one["delete"]):
        for code in ("401", "403", "404", "409"):
            assert "application/problem+json" in operation["responses"][code]["content"]
    assert {p["name"] for p in one["delete"]["parameters"]} == {"org", "public_key"}
    assert "201" in listing["post"]["responses"]
