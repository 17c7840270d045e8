"""API keys, roles, rate limits and the API's abuse bounds (docs/api.md).

Pure rules first (key format, the matrix's decisions, token buckets), then
keys in a real PostgreSQL, then the HTTP API: 429s, extreme inputs, exports
that sign nothing, slow clients, and secrets that never leak.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    bearer,
    issue_api_key,
    performed,
    registered,
    wait_for_chain,
    wait_until,
)

from service.adapters.access_store import AccessStore
from service.adapters.embedded import free_tcp_port
from service.adapters.postgres import LedgerStore
from service.api import server
from service.api.access import AccessControl
from service.api.app import create_app
from service.app.access import (
    OPERATOR_KEY_FILE,
    Authenticator,
    AuthFailure,
    bootstrap_operator_key,
    create_api_key,
    create_org,
)
from service.cli import main
from service.domain.access import (
    ANY_KEY,
    OPERATOR,
    PUBLIC,
    Principal,
    Rule,
    decide,
    hash_api_key,
    key_matches,
    new_api_key,
    parse_api_key,
    rule_for,
)
from service.domain.rate_limit import Limit, RateLimiter
from service.errors import ConfigError, NotFoundError

PROBLEM_JSON = "application/problem+json"
UNLIMITED = Limit(rate_per_s=1e6, burst=1_000_000)
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# ---- keys, rules, buckets (pure) -------------------------------------------------------------


def test_api_key_carries_its_id_and_256_random_bits_when_generated() -> None:
    """`tlk_<12 hex>_<43 base64url>`; the id parses back; two keys never repeat."""
    first, second = new_api_key(), new_api_key()
    assert first.token.startswith(f"tlk_{first.key_id}_")
    assert len(first.token) == 4 + 12 + 1 + 43
    assert len(base64.urlsafe_b64decode(first.token[17:] + "=")) == 32
    assert parse_api_key(first.token) == first.key_id
    assert first.secret_hash == hash_api_key(first.token)
    assert len(first.secret_hash) == 32
    assert first.secret_hash != hash_api_key(first.token[17:])  # the hash covers the whole key
    assert (first.key_id, first.token) != (second.key_id, second.token)


_VALID = "tlk_0123456789ab_" + "A" * 43


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("tlk_", id="scheme-only"),
        pytest.param(_VALID[:-1], id="secret-too-short"),
        pytest.param(_VALID + "A", id="secret-too-long"),
        pytest.param(_VALID.replace("tlk_", "tlx_"), id="other-scheme"),
        pytest.param(_VALID.replace("0123456789ab", "0123456789AB"), id="uppercase-id"),
        pytest.param(_VALID.replace("0123456789ab", "0123456789a"), id="short-id"),
        pytest.param(_VALID[:-1] + "=", id="padding"),
        pytest.param(_VALID[:-1] + "+", id="not-base64url"),
        pytest.param(_VALID + "\n", id="trailing-newline"),
        pytest.param("x" * 10_000, id="huge"),
    ],
)
def test_key_is_not_looked_up_when_malformed(token: str) -> None:
    """Only a well-formed key yields a key id to look up."""
    assert parse_api_key(token) is None
    assert parse_api_key(_VALID) == "0123456789ab"


def test_key_matches_only_its_own_hash_when_compared() -> None:
    """A key matches its stored hash; any other key with the same id does not."""
    key = new_api_key()
    forged = key.token[:-1] + ("A" if key.token[-1] != "A" else "B")
    assert key_matches(key.token, key.secret_hash)
    assert not key_matches(forged, key.secret_hash)


A_AUDITOR = Principal("aaaaaaaaaaaa", "a", "auditor")
B_RELYING = Principal("bbbbbbbbbbbb", "b", "relying_party")
OPERATOR_KEY = Principal("cccccccccccc", None, "operator")
PATH_ORG = Rule(frozenset({"auditor", "operator"}), "path_org")
OWN_ORG = Rule(frozenset({"auditor", "operator"}), "own_org")


@pytest.mark.parametrize(
    ("rule", "caller", "named_org", "status"),
    [
        pytest.param(PUBLIC, None, None, None, id="public-anonymous"),
        pytest.param(ANY_KEY, None, "a", 401, id="any-key-anonymous"),
        pytest.param(ANY_KEY, B_RELYING, "a", None, id="any-key-other-org"),
        pytest.param(OPERATOR, A_AUDITOR, None, 403, id="operator-route-auditor"),
        pytest.param(OPERATOR, OPERATOR_KEY, None, None, id="operator-route-operator"),
        pytest.param(PATH_ORG, A_AUDITOR, "a", None, id="path-own-org"),
        pytest.param(PATH_ORG, A_AUDITOR, "b", 403, id="path-other-org"),
        pytest.param(PATH_ORG, A_AUDITOR, None, 403, id="path-no-org"),
        pytest.param(PATH_ORG, B_RELYING, "b", 403, id="path-wrong-role"),
        pytest.param(PATH_ORG, OPERATOR_KEY, "b", None, id="path-operator"),
        pytest.param(OWN_ORG, A_AUDITOR, None, None, id="listing-unfiltered"),
        pytest.param(OWN_ORG, A_AUDITOR, "a", None, id="listing-own-filter"),
        pytest.param(OWN_ORG, A_AUDITOR, "b", 403, id="listing-other-filter"),
        pytest.param(OWN_ORG, A_AUDITOR, "", 403, id="listing-two-filters"),
        pytest.param(None, OPERATOR_KEY, None, 403, id="route-without-rule"),
    ],
)
def test_decision_follows_role_and_org_scope_when_a_rule_is_applied(
    rule: Rule | None, caller: Principal | None, named_org: str | None, status: int | None
) -> None:
    """401 without a key, 403 for a role or org out of scope, None when allowed."""
    refusal = decide(rule, caller, named_org)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert "b" not in refusal.detail.split()
        assert "'b'" not in refusal.detail


@pytest.mark.parametrize(
    ("method", "template", "rule"),
    [
        pytest.param("GET", "/schema/openapi.json", ANY_KEY, id="openapi"),
        pytest.param("GET", "/schema", ANY_KEY, id="openapi-root"),
        pytest.param("OPTIONS", "/metrics", OPERATOR, id="options-follows-get"),
        pytest.param("DELETE", "/v1/chains", None, id="unknown-method"),
        pytest.param("GET", "/schemas", None, id="not-the-openapi-prefix"),
    ],
)
def test_rule_is_found_by_route_template_when_looked_up(
    method: str, template: str, rule: Rule | None
) -> None:
    """The OpenAPI prefix needs a key; OPTIONS follows GET; anything unknown has no rule."""
    assert rule_for(method, template) == rule


def test_bucket_refuses_with_the_seconds_to_wait_when_empty() -> None:
    """A burst passes, the next request waits for a token, a refill lets it through."""
    limiter = RateLimiter(Limit(rate_per_s=0.5, burst=3))
    assert [limiter.take("k", 100.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.take("k", 100.0) == 2  # one token every 2 s
    assert limiter.peek("k", 100.0) == 2
    assert limiter.take("other", 100.0) == 0  # buckets are per caller
    assert limiter.take("k", 101.0) == 1
    assert limiter.peek("k", 102.0) == 0  # peek takes nothing...
    assert limiter.take("k", 102.0) == 0  # ...so the token is still there
    assert limiter.take("k", 50.0) == 2  # a clock stepping back refills nothing


def test_buckets_stay_bounded_when_callers_are_countless() -> None:
    """At most `max_buckets` callers are remembered; the least recently seen go first."""
    limiter = RateLimiter(Limit(rate_per_s=1, burst=1), max_buckets=100)
    limiter.take("kept", 0.0)
    for n in range(10_000):
        limiter.take(f"addr-{n}", 0.0)
        if n % 50 == 0:
            limiter.take("kept", 0.0)  # refused, but seen
    assert len(limiter) == 100
    assert limiter.take("kept", 0.0) == 1  # still remembered as empty


@pytest.mark.parametrize(
    ("limit"),
    [
        pytest.param((0.0, 1), id="no-rate"),
        pytest.param((1.0, 0), id="no-burst"),
        pytest.param((-1.0, 5), id="negative-rate"),
    ],
)
def test_limit_is_refused_when_it_could_never_pass_a_request(limit: tuple[float, int]) -> None:
    """A bucket that never holds a token is a configuration error."""
    with pytest.raises(ValueError, match="rate limit"):
        Limit(*limit)


# ---- keys in the database ---------------------------------------------------------------------


async def test_key_authenticates_until_revoked_or_expired_when_presented(
    store: LedgerStore,
) -> None:
    """A live key is its principal; revoked or expired it says so, to its holder only."""
    access = AccessStore.of(store)
    await create_org(access, "acme", "Acme", NOW)
    issued = await create_api_key(access, "auditor", "acme", NOW, label="ci", days=1)
    auth = Authenticator(access)

    assert await auth.authenticate(issued.token, NOW) == Principal(
        issued.record.key_id, "acme", "auditor"
    )
    forged = issued.token[:-1] + ("A" if issued.token[-1] != "A" else "B")
    assert await auth.authenticate(forged, NOW) == AuthFailure("not a valid API key")
    assert await auth.authenticate(new_api_key().token, NOW) == AuthFailure("not a valid API key")
    assert await auth.authenticate(issued.token, NOW + timedelta(days=1)) == AuthFailure(
        f"API key {issued.record.key_id} is expired"
    )

    await access.revoke_api_key(issued.record.key_id, NOW)
    assert await auth.authenticate(issued.token, NOW) == AuthFailure(
        f"API key {issued.record.key_id} is revoked"
    )


async def test_last_use_is_written_at_most_once_an_interval_when_a_key_is_busy(
    store: LedgerStore,
) -> None:
    """Reads stay reads: the last use is stored once per interval, never moved back."""
    access = AccessStore.of(store)
    issued = await create_api_key(access, "operator", None, NOW)
    key_id = issued.record.key_id
    throttled = Authenticator(access, last_use_interval_s=3600)
    for minute in range(3):
        await throttled.authenticate(issued.token, NOW + timedelta(minutes=minute))
    stored = await access.api_key(key_id)
    assert stored is not None
    assert stored.last_used_at == NOW

    eager = Authenticator(access, last_use_interval_s=0)
    await eager.authenticate(issued.token, NOW + timedelta(minutes=5))
    await eager.authenticate(issued.token, NOW + timedelta(minutes=1))  # an older clock
    stored = await access.api_key(key_id)
    assert stored is not None
    assert stored.last_used_at == NOW + timedelta(minutes=5)


@pytest.mark.parametrize(
    ("role", "org", "days", "error"),
    [
        pytest.param("admin", "acme", 30, ConfigError, id="unknown-role"),
        pytest.param("operator", "acme", 30, ConfigError, id="operator-with-org"),
        pytest.param("auditor", None, 30, ConfigError, id="auditor-without-org"),
        pytest.param("auditor", "ghost", 30, NotFoundError, id="unknown-org"),
        pytest.param("auditor", "acme", 0, ConfigError, id="zero-days"),
        pytest.param("auditor", "acme", 3651, ConfigError, id="over-ten-years"),
    ],
)
async def test_key_is_refused_when_role_org_or_lifetime_is_wrong(
    store: LedgerStore, role: str, org: str | None, days: int, error: type[Exception]
) -> None:
    """Operators name no org, every other role names an existing one; 1-3650 days."""
    access = AccessStore.of(store)
    await create_org(access, "acme", "", NOW)
    with pytest.raises(error):
        await create_api_key(access, role, org, NOW, days=days)
    assert await access.api_keys() == []


@pytest.mark.parametrize(
    "org",
    [
        pytest.param("Acme", id="uppercase"),
        pytest.param("_ledger", id="the-ledger-chain"),
        pytest.param("-acme", id="leading-dash"),
        pytest.param("a" * 64, id="too-long"),
        pytest.param("acme", id="taken"),
    ],
)
async def test_org_is_refused_when_its_id_is_bad_or_taken(store: LedgerStore, org: str) -> None:
    """Org ids are slugs like the chains they name, and unique."""
    access = AccessStore.of(store)
    await create_org(access, "acme", "", NOW)
    with pytest.raises(ConfigError):
        await create_org(access, org, "", NOW)
    assert [o.org for o in await access.orgs()] == ["acme"]


async def test_operator_key_is_written_once_readable_by_its_user_when_data_folder_is_new(
    store: LedgerStore, tmp_path: Path
) -> None:
    """`up`'s first key: a 0600 file and a live operator key; nothing on later starts."""
    access = AccessStore.of(store)
    token = await bootstrap_operator_key(access, tmp_path)
    assert token is not None
    path = tmp_path / OPERATOR_KEY_FILE
    assert path.read_text() == token + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = await Authenticator(access).authenticate(token, datetime.now(UTC))
    assert isinstance(principal, Principal)
    assert principal.role == "operator"

    assert await bootstrap_operator_key(access, tmp_path) is None  # the file exists
    other = tmp_path / "other"
    other.mkdir()
    assert await bootstrap_operator_key(access, other) is None  # a live operator key exists
    assert not (other / OPERATOR_KEY_FILE).exists()
    assert len(await access.api_keys()) == 1


def test_cli_prints_a_key_once_and_lists_it_without_its_secret_when_managing_keys(
    database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`orgs create`, `apikeys create|list|revoke`: the key alone on stdout, never again."""
    monkeypatch.setenv("DATABASE_URL", database)
    data = ["--data-dir", str(tmp_path)]
    assert main(["orgs", "create", "acme", "--name", "Acme", *data]) == 0
    assert main(["orgs", "create", "acme", *data]) == 2  # taken
    capsys.readouterr()
    assert main(["apikeys", "create", "--role", "auditor", "--org", "acme", *data]) == 0
    created = capsys.readouterr()
    token = created.out.strip()
    key_id = parse_api_key(token)
    assert key_id is not None
    assert created.out == token + "\n"
    assert key_id in created.err
    assert token not in created.err

    assert main(["apikeys", "list", "--org", "acme", *data]) == 0
    listed = capsys.readouterr().out
    assert key_id in listed
    assert "active" in listed
    assert token[17:] not in listed
    assert main(["apikeys", "revoke", token, *data]) == 0  # the whole key names its id
    assert main(["apikeys", "list", *data]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["apikeys", "revoke", "0123456789ab", *data]) == 2  # no such key
    assert main(["apikeys", "create", "--role", "auditor", "--org", "ghost", *data]) == 2


# ---- the HTTP API ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
async def limited(store: LedgerStore) -> AsyncIterator[tuple[httpx.AsyncClient, Clock]]:
    """The API app in-process with small buckets and a clock the test moves."""
    clock = Clock()
    access = AccessControl(
        Authenticator(AccessStore.of(store)),
        RateLimiter(Limit(rate_per_s=1, burst=2)),
        RateLimiter(Limit(rate_per_s=1, burst=3)),
        RateLimiter(Limit(rate_per_s=1, burst=2)),
        monotonic_s=clock,
    )
    app = create_app(store, {}, access=access)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://limits.test") as http:
        yield http, clock


def _assert_rate_limited(response: httpx.Response, retry_after_s: int) -> None:
    assert response.status_code == 429
    assert response.headers["retry-after"] == str(retry_after_s)
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"].endswith("/rate-limited")
    assert body["status"] == 429
    assert body["detail"]


async def test_key_gets_429_with_retry_after_when_it_exceeds_its_bucket(
    store: LedgerStore, limited: tuple[httpx.AsyncClient, Clock]
) -> None:
    """Per key: a burst passes, then 429 + Retry-After; other keys are unaffected."""
    http, clock = limited
    first = await issue_api_key(store, "operator")
    second = await issue_api_key(store, "operator")
    assert [(await http.get("/healthz", headers=bearer(first))).status_code for _ in range(2)] == [
        200,
        200,
    ]
    _assert_rate_limited(await http.get("/v1/chains", headers=bearer(first)), 1)
    assert (await http.get("/healthz", headers=bearer(second))).status_code == 200
    clock.now_s += 1
    assert (await http.get("/healthz", headers=bearer(first))).status_code == 200


async def test_anonymous_address_gets_429_when_it_exceeds_its_bucket(
    limited: tuple[httpx.AsyncClient, Clock],
) -> None:
    """Callers without a key share their address's bucket."""
    http, clock = limited
    assert [(await http.get("/healthz")).status_code for _ in range(3)] == [200] * 3
    _assert_rate_limited(await http.get("/healthz"), 1)
    clock.now_s += 2
    assert (await http.get("/healthz")).status_code == 200


async def test_refused_keys_are_held_to_a_slow_rate_when_an_address_guesses(
    store: LedgerStore, limited: tuple[httpx.AsyncClient, Clock]
) -> None:
    """Two refused keys empty the address's bucket: the next key is not even looked up."""
    http, clock = limited
    good = await issue_api_key(store, "operator")
    for _ in range(2):
        assert (await http.get("/healthz", headers=bearer(new_api_key().token))).status_code == 401
    _assert_rate_limited(await http.get("/healthz", headers=bearer(new_api_key().token)), 1)
    _assert_rate_limited(await http.get("/healthz", headers=bearer(good)), 1)
    clock.now_s += 1
    assert (await http.get("/healthz", headers=bearer(good))).status_code == 200


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        pytest.param("/v1/agents/acme/bot/posture?at=9999-12-31T23:59:59Z", "at", id="at-max"),
        pytest.param("/v1/agents/acme/bot/posture?at=0001-01-01T00:00:00Z", "at", id="at-min"),
        pytest.param(
            "/v1/agents/acme/bot/posture?at=2025-01-01T00:00:00Z&known_at=9999-12-31T23:59:59Z",
            "known_at",
            id="known-at-max",
        ),
        pytest.param(
            "/v1/agents/acme/bot/timeline?from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z",
            "to",
            id="timeline-min",
        ),
        pytest.param(
            "/v1/agents/acme/bot/timeline?from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59Z",
            "to",
            id="timeline-max",
        ),
        pytest.param(
            "/v1/agents/acme/bot/timeline?from=1969-12-31T00:00:00Z&to=1970-01-02T00:00:00Z",
            "from",
            id="timeline-from-before-1970",
        ),
        pytest.param(f"/v1/chains/acme/entries?after_seq={2**63}", "after_seq", id="seq-2^63"),
        pytest.param(
            f"/v1/chains/acme/entries?after_seq={2**63 - 1}", "after_seq", id="seq-2^63-1"
        ),
        pytest.param(f"/v1/chains/acme/entries?after_seq={2**53}", "after_seq", id="seq-2^53"),
        pytest.param(f"/v1/quarantine?after_id={2**63}", "after_id", id="quarantine-id"),
        pytest.param(f"/v1/chains/acme/checkpoints/{2**63}", "size", id="checkpoint-size"),
        pytest.param(
            f"/v1/chains/acme/checkpoints?after_size={2**63}", "after_size", id="after-size"
        ),
        pytest.param(f"/v1/chains/acme/export?from_seq={2**63}", "from_seq", id="export-from"),
        pytest.param(f"/v1/chains/acme/export?to_seq={2**64}", "to_seq", id="export-to"),
        pytest.param(
            "/v1/chains/acme/export?since=0001-01-01T00:00:00Z", "since", id="export-since-min"
        ),
        pytest.param(
            "/v1/chains/acme/export?until=9999-12-31T23:59:59Z", "until", id="export-until-max"
        ),
    ],
)
async def test_extreme_input_answers_400_naming_the_parameter_when_out_of_bounds(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    path: str,
    parameter: str,
) -> None:
    """Valid but extreme times and integers are refused up front, never a 500 or 503."""
    pub = await publisher(await org_key("acme"))
    await pub.publish(registered("acme", "bot"))
    await wait_for_chain(service.store, "acme", 2)

    response = await service.http.get(path)

    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"].endswith("/invalid-request")
    assert [e["key"] for e in body["errors"]] == [parameter]


async def test_export_signs_nothing_when_fetched_over_http(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """GET export ends at the latest checkpoint, 404 without one; no checkpoint is made."""
    pub = await publisher(await org_key("acme"))
    await pub.publish(registered("acme", "bot"))
    await wait_for_chain(service.store, "acme", 2)

    refused = await service.http.get("/v1/chains/acme/export")
    assert refused.status_code == 404, refused.text
    assert "checkpoint" in refused.json()["detail"]
    assert await service.store.checkpoints("acme") == []

    signed = await service.http.post("/v1/chains/acme/checkpoints")
    assert signed.status_code == 201
    await pub.publish(performed("acme", "bot", "x.read", "r/1", t=5))
    await wait_for_chain(service.store, "acme", 3)

    exported = await service.http.get("/v1/chains/acme/export")
    assert exported.status_code == 200
    header = exported.text.split("\n", 1)[0]
    assert '"to_seq":2' in header
    assert '"chain_size":3' in header
    assert [c.size for c in await service.store.checkpoints("acme")] == [2]


@pytest.fixture
async def bounded_server(store: LedgerStore, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """The API app behind uvicorn with `server_options()`, deadlines shortened for the test."""
    monkeypatch.setattr(server, "REQUEST_READ_TIMEOUT_S", 0.5)
    options = server.server_options() | {"timeout_keep_alive": 1}
    port = free_tcp_port()
    config = uvicorn.Config(
        create_app(store, {}), host="127.0.0.1", port=port, log_config=None, **options
    )  # type: ignore[arg-type]
    http_server = uvicorn.Server(config)
    task = asyncio.create_task(http_server.serve())
    await wait_until(lambda: http_server.started, 10, "uvicorn to listen")
    yield port
    http_server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="says-nothing"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", id="half-a-head"),
        pytest.param(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", id="half-a-body"
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /he", id="half-a-second-head"),
    ],
)
async def test_slow_client_is_dropped_when_its_request_does_not_arrive_in_time(
    bounded_server: int, sent: bytes
) -> None:
    """A connection that does not deliver a whole request within the deadline is closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded_server)
    try:
        writer.write(sent)
        await writer.drain()
        # Whatever it was answered, the server closes the connection: read to EOF.
        await asyncio.wait_for(reader.read(), timeout=3)
    finally:
        writer.close()


async def test_idle_connection_is_closed_when_keep_alive_runs_out(bounded_server: int) -> None:
    """Between requests, an idle connection lasts the keep-alive timeout, not for ever."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bounded_server)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=3)
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_secrets_never_leak_when_keys_are_used_refused_and_rate_limited(
    service: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    """No key, secret or hash appears in a log line, a response (headers or body) or /metrics."""
    caplog.set_level(logging.DEBUG)
    access = AccessStore.of(service.store)
    auditor = await issue_api_key(service.store, "auditor", "acme")
    revoked = await issue_api_key(service.store, "auditor", "acme")
    await access.revoke_api_key(revoked[4:16], datetime.now(UTC))
    unknown = new_api_key().token
    secrets = [service.operator_key, auditor, revoked, unknown]
    anon = httpx.AsyncClient(base_url=service.base_url, timeout=10)
    responses: list[httpx.Response] = []
    try:
        for key in secrets:
            for path in (
                "/healthz",
                "/readyz",
                "/v1/chains",
                "/v1/chains/acme/entries",
                "/nowhere",
            ):
                responses.append(await anon.get(path, headers=bearer(key)))
        for header in (f"Basic {auditor}", f"Bearer {auditor} extra", f"Bearer {auditor}x"):
            responses.append(await anon.get("/v1/postures", headers={"Authorization": header}))
        for _ in range(25):  # past the refused-key bucket: 429s too
            responses.append(await anon.get("/healthz", headers=bearer(unknown)))
        responses.append(await service.http.get("/metrics"))
    finally:
        await anon.aclose()
    assert {r.status_code for r in responses} >= {200, 401, 403, 404, 429}

    seen = caplog.text + "".join(
        r.text + "".join(f"{k}: {v}\n" for k, v in r.headers.items()) for r in responses
    )
    for key in secrets:
        for needle in (
            key,
            key[17:],
            hash_api_key(key).hex(),
            base64.b64encode(hash_api_key(key)).decode(),
        ):
            assert needle not in seen
    stored = await access.api_keys()
    assert all(k.secret_hash.hex() not in seen for k in stored)
    assert any(r.key_id in seen for r in stored), "the check could fail: key ids do show"
