"""The HTTP API of a running service: problem details, operations endpoints, chain pages."""

from __future__ import annotations

import base64
from datetime import datetime

import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    amended,
    declared,
    performed,
    registered,
    revoked,
    wait_for_chain,
)

from service.adapters.publisher import signed_message
from service.domain.chain import GENESIS_PREV_HASH, EntryFields, entry_hash, to_micros
from service.domain.events import Event, decode_event, event_kind

PROBLEM_JSON = "application/problem+json"
PROBLEMS = "https://trustledger.dev/problems/"


async def _publish_agent_traffic(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, actions: int
) -> list[Event]:
    """Register acme's key, publish an agent and `actions` actions; wait until all are chained."""
    key = await org_key("acme")
    pub = await publisher(key)
    events: list[Event] = [registered("acme", "bot")]
    events += [performed("acme", "bot", "x.read", f"r/{i}", t=10 + i) for i in range(actions)]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 1 + len(events))
    return events


# ---- problem details ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        pytest.param("GET", "/v1/agents/acme/ghost/posture", 404, "not-found", id="unknown-agent"),
        pytest.param("GET", "/v1/chains/ghost", 404, "not-found", id="unknown-chain"),
        pytest.param("GET", "/v1/nowhere", 404, "not-found", id="unknown-route"),
        pytest.param("GET", "/v1/chains/ACME", 400, "invalid-request", id="uppercase-org"),
        pytest.param(
            "GET", "/v1/agents/Acme/bot/posture", 400, "invalid-request", id="uppercase-agent-org"
        ),
        pytest.param(
            "GET", "/v1/agents/acme/Bot/posture", 400, "invalid-request", id="uppercase-agent"
        ),
        pytest.param(
            "GET", "/v1/chains/acme/entries?limit=0", 400, "invalid-request", id="limit-zero"
        ),
        pytest.param(
            "GET",
            "/v1/chains/acme/entries?after_seq=-1",
            400,
            "invalid-request",
            id="negative-after-seq",
        ),
        pytest.param(
            "GET", "/v1/chains/acme/entries?limit=abc", 400, "invalid-request", id="limit-not-int"
        ),
        pytest.param("GET", "/v1/quarantine?org=Bad", 400, "invalid-request", id="uppercase-query"),
        pytest.param("POST", "/healthz", 405, "method-not-allowed", id="wrong-method"),
        pytest.param("GET", "/v1/postures?band=great", 400, "invalid-request", id="no-such-band"),
        pytest.param(
            "GET", "/v1/postures?after=acme", 400, "invalid-request", id="after-not-org-agent"
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/posture?evidence=hearsay",
            400,
            "invalid-request",
            id="no-such-evidence",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/posture?at=2026-01-01T00:00:00",
            400,
            "invalid-request",
            id="at-without-offset",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/timeline?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            400,
            "invalid-request",
            id="timeline-from-after-to",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/timeline?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            400,
            "invalid-request",
            id="timeline-too-long",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/posture?max_age_s=-1",
            400,
            "invalid-request",
            id="negative-max-age",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/posture?max_age_s=5&at=2026-01-01T00:00:00Z",
            400,
            "invalid-request",
            id="max-age-with-at",
        ),
        pytest.param(
            "GET",
            "/v1/agents/acme/bot/timeline?limit=1",
            400,
            "invalid-request",
            id="timeline-limit-one",
        ),
    ],
)
async def test_problem_details_are_returned_when_request_cannot_be_served(
    service: RunningService, method: str, path: str, status: int, kind: str
) -> None:
    """Errors answer with an RFC 9457 problem body of the right status and type."""
    response = await service.http.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == PROBLEMS + kind
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    if status == 400:
        assert body["errors"], "a validation problem names the offending parameter"
        assert {"key", "message", "source"} <= set(body["errors"][0])


# ---- operations ----------------------------------------------------------------------------------


async def test_healthz_answers_ok_when_service_runs(service: RunningService) -> None:
    """GET /healthz is 200 with status ok."""
    response = await service.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_lists_every_check_when_dependencies_answer(service: RunningService) -> None:
    """GET /readyz is 200 and reports PostgreSQL, NATS and the ingest loop as ok."""
    response = await service.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"postgres": "ok", "nats": "ok", "ingest": "ok"},
    }


async def test_metrics_count_ingested_events_when_traffic_was_chained(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """GET /metrics serves Prometheus text that counts appended events after traffic."""
    events = await _publish_agent_traffic(service, org_key, publisher, actions=3)

    response = await service.http.get("/metrics")
    assert response.status_code == 200
    content_type = response.headers["content-type"]
    assert content_type.startswith("text/plain; version=0.0.4")
    assert content_type.count("charset=") == 1
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    # The registry is per process and the session runs many services: at least ours.
    assert samples['trustledger_ingest_events_total{outcome="appended"}'] >= len(events)


async def test_openapi_lists_v1_paths_when_schema_is_requested(service: RunningService) -> None:
    """GET /schema/openapi.json is the OpenAPI document and lists the query API under /v1."""
    response = await service.http.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "trustledger"
    v1 = {path for path in document["paths"] if path.startswith("/v1/")}
    assert v1 == {
        "/v1/agents/{org}/{agent}/posture",
        "/v1/agents/{org}/{agent}/commitments",
        "/v1/agents/{org}/{agent}/timeline",
        "/v1/postures",
        "/v1/chains",
        "/v1/chains/{org}",
        "/v1/chains/{org}/entries",
        "/v1/chains/{org}/export",
        "/v1/chains/{org}/checkpoint",
        "/v1/chains/{org}/checkpoints",
        "/v1/chains/{org}/checkpoints/{size}",
        "/v1/ledger/keys",
        "/v1/quarantine",
        "/v1/orgs/{org}/nats-credentials",
        "/v1/orgs/{org}/nats-credentials/{public_key}",
    }
    assert {"/healthz", "/readyz", "/metrics"} <= set(document["paths"])


# ---- chains ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "pages"),
    [
        pytest.param(1, [[1], [2], [3], [4], [5], [6], []], id="one-per-page"),
        pytest.param(4, [[1, 2, 3, 4], [5, 6]], id="short-last-page"),
        pytest.param(3, [[1, 2, 3], [4, 5, 6], []], id="exact-pages"),
        pytest.param(100, [[1, 2, 3, 4, 5, 6]], id="one-page"),
    ],
)
async def test_entries_are_paged_in_order_when_walked_with_after_seq_and_limit(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    limit: int,
    pages: list[list[int]],
) -> None:
    """`after_seq`/`limit` pages cover the chain once, in order; `next_after_seq` links them."""
    await _publish_agent_traffic(service, org_key, publisher, actions=4)  # 6 entries

    seen: list[list[int]] = []
    after: int | None = 0
    while after is not None:
        response = await service.http.get(
            "/v1/chains/acme/entries", params={"after_seq": after, "limit": limit}
        )
        assert response.status_code == 200
        page = response.json()
        assert page["chain"] == "acme"
        seqs = [e["seq"] for e in page["entries"]]
        seen.append(seqs)
        after = page["next_after_seq"]
        if after is not None:
            assert after == seqs[-1]
    assert seen == pages


async def test_entry_fields_recompute_every_hash_when_read_from_the_api(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Each entry carries every hashed field (hex); they re-derive the chain up to its head."""
    key = await org_key("acme")
    pub = await publisher(key)
    events: list[Event] = [registered("acme", "bot"), performed("acme", "bot", "x.read", "r", 5)]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 3)

    page = (await service.http.get("/v1/chains/acme/entries")).json()
    entries = page["entries"]
    assert page["next_after_seq"] is None
    assert [e["seq"] for e in entries] == [1, 2, 3]
    prev = GENESIS_PREV_HASH
    for entry in entries:
        for name in ("prev_hash", "entry_hash", "signature"):
            value = entry[name]
            assert value == value.lower()
            bytes.fromhex(value)
        assert len(entry["prev_hash"]) == len(entry["entry_hash"]) == 64
        assert len(entry["signature"]) == 128
        assert entry["chain"] == "acme"
        assert entry["key_id"] == key.key_id
        assert to_micros(datetime.fromisoformat(entry["received_at"])) == entry["received_at_us"]
        assert bytes.fromhex(entry["prev_hash"]) == prev
        fields = EntryFields(
            chain=entry["chain"],
            seq=entry["seq"],
            received_at_us=entry["received_at_us"],
            key_id=entry["key_id"],
            signature=bytes.fromhex(entry["signature"]),
            event_bytes=entry["event"].encode(),
        )
        prev = entry_hash(prev, fields)
        assert entry["entry_hash"] == prev.hex()
        event = decode_event(entry["event"].encode())
        assert (entry["event_id"], entry["kind"]) == (event.id, event_kind(event))
        assert datetime.fromisoformat(entry["occurred_at"]) == event.occurred_at
    # The bytes in the log are exactly the signed, published bytes.
    assert [e["event"].encode() for e in entries[1:]] == [
        signed_message(ev, key)[0] for ev in events
    ]

    head = (await service.http.get("/v1/chains/acme")).json()
    assert head == {"chain": "acme", "size": 3, "head_hash": prev.hex()}
    chains = (await service.http.get("/v1/chains")).json()
    assert [c["chain"] for c in chains] == ["_ledger", "acme"]  # the ledger's key chain, then acme
    assert chains[1] == head


async def test_commitments_show_versions_and_status_when_amended_and_revoked(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """GET commitments shows each commitment's version, status and ledger references."""
    key = await org_key("acme")
    pub = await publisher(key)
    events: list[Event] = [
        registered("acme", "bot"),
        declared("acme", "bot", "kept", ["a.*"], ["r/*"], t=1),  # seq 3
        declared("acme", "bot", "dropped", ["b.*"], ["r/*"], t=2),  # seq 4
        amended("acme", "bot", "kept", 2, ["a.read"], ["r/x"], t=3),  # seq 5
        revoked("acme", "bot", "dropped", t=4),  # seq 6
    ]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 6)

    response = await service.http.get("/v1/agents/acme/bot/commitments")
    assert response.status_code == 200
    body = response.json()
    by_id = {c["commitment_id"]: c for c in body["commitments"]}
    assert sorted(by_id) == ["dropped", "kept"]
    kept, dropped = by_id["kept"], by_id["dropped"]
    assert (kept["version"], kept["status"], kept["revoked_at"]) == (2, "declared", None)
    assert kept["terms"]["allowed_actions"] == ["a.read"]
    assert (kept["declared"], kept["updated"]) == (
        {"chain": "acme", "seq": 3},
        {"chain": "acme", "seq": 5},
    )
    assert (dropped["version"], dropped["status"]) == (1, "revoked")
    assert dropped["revoked_at"] is not None
    assert dropped["updated"] == {"chain": "acme", "seq": 6}


async def test_quarantine_lists_raw_bytes_when_a_message_was_refused(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """GET /v1/quarantine pages refused messages with base64 raw bytes, filterable by org."""
    key = await org_key("acme")
    pub = await publisher(key)
    prefix = service.settings.subject_prefix
    raws = [f"not signed {i}".encode() for i in range(3)]
    for raw in raws:
        await pub.publish_raw(f"{prefix}.ev.acme._", raw, {})
    sentinel = registered("acme", "bot")
    await pub.publish(sentinel)
    await wait_for_chain(service.store, "acme", 2)

    first = (await service.http.get("/v1/quarantine", params={"limit": 2})).json()
    assert [base64.b64decode(i["raw_base64"]) for i in first["items"]] == raws[:2]
    assert first["next_after_id"] == first["items"][-1]["id"]
    rest = (
        await service.http.get(
            "/v1/quarantine", params={"after_id": first["next_after_id"], "limit": 2}
        )
    ).json()
    assert [base64.b64decode(i["raw_base64"]) for i in rest["items"]] == raws[2:]
    assert rest["next_after_id"] is None
    assert {i["reason"] for i in first["items"] + rest["items"]} == {"missing_signature"}
    other = (await service.http.get("/v1/quarantine", params={"org": "beta"})).json()
    assert other == {"items": [], "next_after_id": None}


async def test_commitments_are_paged_by_id_when_an_agent_has_many(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """`after`/`limit` page the commitments by id; `next_after` links the pages, then null."""
    pub = await publisher(await org_key("acme"))
    events: list[Event] = [registered("acme", "bot")]
    events += [declared("acme", "bot", f"c{n}", ["a.*"], ["r/*"], t=1 + n) for n in range(5)]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 1 + len(events))

    seen: list[list[str]] = []
    after: str | None = None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = (await service.http.get("/v1/agents/acme/bot/commitments", params=params)).json()
        seen.append([c["commitment_id"] for c in page["commitments"]])
        assert all(c["versions_total"] == 1 for c in page["commitments"])
        after = page["next_after"]
        if after is None:
            break
    assert seen == [["c0", "c1"], ["c2", "c3"], ["c4"]]


@pytest.mark.parametrize("limit", [2, 3])
async def test_timeline_pages_with_next_from_when_changes_exceed_the_limit(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, limit: int
) -> None:
    """A truncated timeline names `next_from`; from there it goes on, nothing lost or repeated
    (a page never ends between two changes of one instant)."""
    pub = await publisher(await org_key("acme"))
    events: list[Event] = [
        registered("acme", "bot"),
        declared("acme", "bot", "c", ["a.*"], ["r/*"], t=1),
        *(declared("acme", "bot", f"d{n}", ["a.*"], ["r/*"], t=2 + n) for n in range(3)),
        # A band change at t=2 too: the second and third changes share an instant.
        performed("acme", "bot", "z.forbidden", "elsewhere", t=2),
    ]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 1 + len(events))
    window = {"from": "2024-12-31T00:00:00Z", "to": "2025-01-02T00:00:00Z"}

    whole = (await service.http.get("/v1/agents/acme/bot/timeline", params=window)).json()
    assert whole["truncated"] is False
    assert whole["next_from"] is None
    instants: list[str] = []
    start = window["from"]
    while True:
        params = window | {"from": start, "limit": limit}
        page = (await service.http.get("/v1/agents/acme/bot/timeline", params=params)).json()
        instants += [c["at"] for c in page["changes"]]
        if not page["truncated"]:
            break
        start = page["next_from"]
    assert instants == [c["at"] for c in whole["changes"]]
    assert len(instants) > len(set(instants)) > limit  # a same-instant pair, several pages
