"""Ingest end to end: signed events published to a real NATS, chained in a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    ServiceFactory,
    amended,
    at,
    chain_entries,
    declared,
    key_registered,
    key_revoked,
    new_id,
    observed,
    performed,
    registered,
    retired,
    revoked,
    wait_for_chain,
    wait_until,
)

from service.adapters import broker
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import MSG_ID_HEADER, signed_message, subject_for
from service.app.ingest import ingest_batch
from service.app.rebuild import rebuild_projections
from service.app.verify import verify_all
from service.config import Settings
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming
from service.domain.events import Event, event_kind
from service.domain.signing import SigningKey, b64url

# ---- events in order, posture --------------------------------------------------------------

# (action, resource, the violation the posture projection should find or None)
ACTIONS: list[tuple[str, str, str | None]] = [
    ("payments.refund", "payhub:acct_acme/ch_1", None),
    ("payments.charge", "payhub:acct_acme/ch_2", "action_not_allowed"),
    ("invoices.read", "payhub:acct_acme/inv_3", None),
    ("payments.refund", "payhub:acct_other/ch_4", "resource_out_of_bounds"),
    ("invoices.read", "payhub:acct_acme/inv_5", None),
]


async def test_events_are_chained_in_publish_order_and_projected_when_published_to_nats(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Published events land in the org's chain in publish order and the posture counts them."""
    key = await org_key("acme")
    pub = await publisher(key)
    events: list[Event] = [
        registered("acme", "billing-bot", t=0),
        declared(
            "acme",
            "billing-bot",
            "refunds",
            ["payments.refund", "invoices.read"],
            ["payhub:acct_acme/*"],
            t=1,
        ),
    ]
    events += [
        performed("acme", "billing-bot", action, resource, t=10 + i)
        for i, (action, resource, _) in enumerate(ACTIONS)
    ]
    for event in events:
        await pub.publish(event)

    await wait_for_chain(service.store, "acme", 1 + len(events))
    entries = await chain_entries(service.store, "acme")
    assert [e.seq for e in entries] == list(range(1, len(events) + 2))
    assert entries[0].kind == "publisher_key.registered"
    assert [(e.kind, e.event_id) for e in entries[1:]] == [(event_kind(ev), ev.id) for ev in events]
    assert {e.key_id for e in entries} == {key.key_id}

    first_action_seq = 1 + 2 + 1  # key, agent.registered, commitment.declared
    as_of = at(10 + len(ACTIONS) - 1)
    response = await service.http.get(
        "/v1/agents/acme/billing-bot/posture", params={"at": as_of.isoformat()}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["registered"] is True
    assert body["retired"] is False
    outside = [i for i, (_, _, v) in enumerate(ACTIONS) if v is not None]
    assert body["windows"]["30d"]["self"] == {
        "actions": len(ACTIONS),
        "within": len(ACTIONS) - len(outside),
        "violations": len(outside),
        "findings": 0,
    }
    assert [(v["violations"], v["ref"]) for v in body["recent_violations"]] == [
        ([ACTIONS[i][2]], {"chain": "acme", "seq": first_action_seq + i}) for i in reversed(outside)
    ]
    assert {"chain": "acme", "seq": 1 + len(events)} in body["positions"]
    # docs/posture-model.md: weight = horizon - age (µs); a severity-3 violation weighs 10.
    horizon_us = 30 * 24 * 3600 * 10**6
    ages_us = [(len(ACTIONS) - 1 - i) * 10**6 for i in range(len(ACTIONS))]
    good = sum(horizon_us - a for i, a in enumerate(ages_us) if i not in outside)
    bad = sum(10 * (horizon_us - a) for i, a in enumerate(ages_us) if i in outside)
    assert (body["good"], body["bad"]) == (good, bad)
    assert body["score"] == 1000 * good // (good + bad)
    assert body["band"] == "untrusted"


# ---- exactly once ------------------------------------------------------------------------------


async def test_event_is_logged_once_when_published_again_within_and_after_duplicate_window(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """A repeat inside the window is dropped by JetStream; one after it is dropped by the ledger."""
    key = await org_key("acme")
    pub = await publisher(key)
    event = registered("acme", "bot")
    data, headers = signed_message(event, key)
    subject = subject_for(event, service.settings.subject_prefix)

    first = await pub.publish_raw(subject, data, headers)
    again = await pub.publish_raw(subject, data, headers)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq

    # Once the broker's duplicate window has passed, the same message is stored again.
    acks = []

    async def broker_accepts_it_again() -> bool:
        ack = await pub.publish_raw(subject, data, headers)
        acks.append(ack)
        return not ack.duplicate

    await wait_until(broker_accepts_it_again, 10 + service.settings.duplicate_window_s)
    late = acks[-1]
    assert not late.duplicate
    assert late.seq > first.seq

    sentinel = registered("acme", "sentinel")
    await pub.publish(sentinel)
    await wait_for_chain(service.store, "acme", 3)
    entries = await chain_entries(service.store, "acme")
    assert [e.event_id for e in entries[1:]] == [event.id, sentinel.id]
    assert entries[1].stream_seq == first.seq
    assert await service.store.quarantined(None) == []


# ---- quarantine --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keys:
    acme: SigningKey
    beta: SigningKey
    stranger: SigningKey
    """A key of "acme" that was never registered."""


@dataclass(frozen=True, slots=True)
class BadMessage:
    subject: str
    data: bytes
    headers: dict[str, str]


def _signed(event: Event, key: SigningKey, prefix: str) -> BadMessage:
    data, headers = signed_message(event, key)
    return BadMessage(subject_for(event, prefix), data, headers)


def _signed_bytes(data: bytes, key: SigningKey, prefix: str) -> BadMessage:
    return BadMessage(
        f"{prefix}.ev.acme.bot",
        data,
        {
            MSG_ID_HEADER: f"acme/{new_id('raw')}",
            KEY_ID_HEADER: key.key_id,
            SIGNATURE_HEADER: b64url(key.sign(data)),
        },
    )


def _bad_signature(keys: Keys, prefix: str) -> BadMessage:
    m = _signed(registered("acme", "bot"), keys.acme, prefix)
    return BadMessage(
        m.subject, m.data, {**m.headers, SIGNATURE_HEADER: b64url(keys.acme.sign(b"other bytes"))}
    )


def _bad_signature_encoding(keys: Keys, prefix: str) -> BadMessage:
    m = _signed(registered("acme", "bot"), keys.acme, prefix)
    return BadMessage(m.subject, m.data, {**m.headers, SIGNATURE_HEADER: b64url(b"too short")})


def _unknown_key(keys: Keys, prefix: str) -> BadMessage:
    return _signed(registered("acme", "bot"), keys.stranger, prefix)


def _other_orgs_key(keys: Keys, prefix: str) -> BadMessage:
    return _signed(registered("acme", "bot"), keys.beta, prefix)


def _malformed_json(keys: Keys, prefix: str) -> BadMessage:
    return _signed_bytes(b'{"kind": "agent.registered", "org": "acme",', keys.acme, prefix)


def _schema_invalid(keys: Keys, prefix: str) -> BadMessage:
    data = json.dumps(
        {
            "kind": "agent.registered",
            "id": "x1",
            "org": "acme",
            "occurred_at": "2025-01-01T00:00:00Z",
        }
    ).encode()
    return _signed_bytes(data, keys.acme, prefix)


def _missing_signature(keys: Keys, prefix: str) -> BadMessage:
    m = _signed(registered("acme", "bot"), keys.acme, prefix)
    return BadMessage(m.subject, m.data, {MSG_ID_HEADER: m.headers[MSG_ID_HEADER]})


def _subject_mismatch(keys: Keys, prefix: str) -> BadMessage:
    m = _signed(registered("acme", "bot"), keys.acme, prefix)
    return BadMessage(f"{prefix}.ev.beta.bot", m.data, m.headers)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        pytest.param(_bad_signature, "bad_signature", id="signature-of-other-bytes"),
        pytest.param(_bad_signature_encoding, "bad_signature_encoding", id="short-signature"),
        pytest.param(_unknown_key, "unknown_key", id="unregistered-key"),
        pytest.param(_other_orgs_key, "key_org_mismatch", id="another-orgs-key"),
        pytest.param(_malformed_json, "malformed_json", id="invalid-json"),
        pytest.param(_schema_invalid, "schema_invalid", id="not-an-event"),
        pytest.param(_missing_signature, "missing_signature", id="no-signature-headers"),
        pytest.param(_subject_mismatch, "subject_mismatch", id="subject-of-another-org"),
    ],
)
async def test_message_is_quarantined_with_raw_bytes_when_refused_by_admission(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    make: Callable[[Keys, str], BadMessage],
    reason: str,
) -> None:
    """A refused message goes to quarantine with its reason and exact bytes; ingest goes on."""
    keys = Keys(await org_key("acme"), await org_key("beta"), SigningKey.generate("acme"))
    pub = await publisher(keys.acme)
    bad = make(keys, service.settings.subject_prefix)
    bad_ack = await pub.publish_raw(bad.subject, bad.data, bad.headers)
    good = registered("acme", "after-the-bad-one")
    await pub.publish(good)

    await wait_for_chain(service.store, "acme", 2)
    entries = await chain_entries(service.store, "acme")
    assert [e.event_id for e in entries[1:]] == [good.id]

    response = await service.http.get("/v1/quarantine")
    assert response.status_code == 200
    items = response.json()["items"]
    assert len(items) == 1
    item = items[0]
    assert item["reason"] == reason
    assert item["detail"]
    assert base64.b64decode(item["raw_base64"]) == bad.data
    assert item["subject"] == bad.subject
    assert item["claimed_org"] == bad.subject.split(".")[2]
    assert item["key_id"] == bad.headers.get(KEY_ID_HEADER)
    assert item["stream_seq"] == bad_ack.seq
    beta = await service.store.chain_head("beta")
    assert beta is not None
    assert beta.seq == 1  # nothing was appended to the other org's chain either


# ---- append-only -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET kind = 'edited'",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries CASCADE",
        "UPDATE quarantine SET reason = 'edited'",
        "DELETE FROM quarantine",
        "TRUNCATE quarantine",
    ],
)
async def test_change_is_refused_by_database_when_sql_rewrites_log_or_quarantine(
    database: str, store: LedgerStore, org_key: OrgKeyFactory, statement: str
) -> None:
    """UPDATE, DELETE and TRUNCATE on the log and the quarantine fail in the database itself."""
    await org_key("acme")
    refused = Incoming(
        subject="tl.ev.acme._", data=b"unsigned", key_id=None, signature=None, stream_seq=1
    )
    await ingest_batch(store, [refused], "tl")
    conn = await asyncpg.connect(database)
    try:
        before = await conn.fetchval(
            "SELECT (SELECT count(*) FROM ledger_entries) + (SELECT count(*) FROM quarantine)"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        after = await conn.fetchval(
            "SELECT (SELECT count(*) FROM ledger_entries) + (SELECT count(*) FROM quarantine)"
        )
        kinds = await conn.fetch("SELECT kind FROM ledger_entries")
        reasons = await conn.fetch("SELECT reason FROM quarantine")
    finally:
        await conn.close()
    assert before == after == 2
    assert [r["kind"] for r in kinds] == ["publisher_key.registered"]
    assert [r["reason"] for r in reasons] == ["missing_signature"]


# ---- rebuild and verification ------------------------------------------------------------------


ORG_AGENTS = {"acme": ["billing", "support", "ops"], "beta": ["crawler", "writer"]}
GATEWAY = "payhub"


def _mixed_traffic(count: int, seed: int = 7) -> list[Event]:
    """A deterministic stream touching every event kind and verdict, across three orgs."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not secrets
    events: list[Event] = []
    for org, agents in ORG_AGENTS.items():
        for agent in agents:
            events.append(registered(org, agent, t=0))
            events.append(
                declared(org, agent, "main", ["payments.*", "invoices.read"], [f"res:{org}/*"])
            )
    scripted: dict[int, Callable[[int], Event]] = {
        count // 5: lambda t: amended(
            "acme", "billing", "main", 2, ["payments.refund"], ["res:acme/refunds/*"], t
        ),
        count // 3: lambda t: revoked("beta", "writer", "main", t),
        count // 2: lambda t: declared(
            "beta", "writer", "second", ["docs.*"], ["res:beta/docs/*"], t
        ),
        (2 * count) // 3: lambda t: retired("acme", "ops", t),
    }
    agents_flat = [(org, agent) for org, agents in ORG_AGENTS.items() for agent in agents]
    for i in range(count):
        t = 100 + i
        if i in scripted:
            events.append(scripted[i](t))
            continue
        org, agent = rng.choice(agents_flat)
        roll = rng.random()
        if roll < 0.2:
            events.append(observed(GATEWAY, org, agent, "payments.refund", f"res:{org}/x", t))
        elif roll < 0.3:
            events.append(performed(org, agent, "admin.delete", f"res:{org}/{i}", t))
        elif roll < 0.4:
            events.append(performed(org, agent, "payments.refund", f"res:elsewhere/{i}", t))
        elif roll < 0.5:
            events.append(performed(org, agent, "docs.write", f"res:beta/docs/{i}", t))
        else:
            events.append(performed(org, agent, "payments.refund", f"res:{org}/refunds/{i}", t))
    return events


async def _publish_all(
    events: list[Event], keys: dict[str, SigningKey], publisher: PublisherFactory
) -> dict[str, int]:
    """Publish in order with each org's key; returns the expected chain size per org."""
    pubs = {org: await publisher(key) for org, key in keys.items()}
    sizes = dict.fromkeys(keys, 1)  # each chain starts with its key registration
    for event in events:
        await pubs[event.org].publish(event)
        sizes[event.org] += 1
    return sizes


async def test_rebuilt_projections_equal_incremental_ones_when_replayed_from_the_log(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Replaying the whole log gives exactly the projection rows ingest maintained batch by batch."""
    keys = {org: await org_key(org) for org in [*ORG_AGENTS, GATEWAY]}
    events = _mixed_traffic(300)
    sizes = await _publish_all(events, keys, publisher)
    for org, size in sizes.items():
        await wait_for_chain(service.store, org, size)

    incremental = await service.store.dump_projections()
    assert all(rows for rows in incremental.values()), {k: len(v) for k, v in incremental.items()}
    # The traffic reached every case the projection distinguishes.
    pool = service.store.pool
    assert await pool.fetchval(
        "SELECT retired_seq IS NOT NULL FROM agents WHERE org = 'acme' AND agent = 'ops'"
    )
    kinds = {
        r["v"]
        for r in await pool.fetch(
            "SELECT DISTINCT json_array_elements(violations_json::json)->>'kind' AS v"
            " FROM action_verdicts"
        )
    }
    assert {"agent_retired", "action_not_allowed", "resource_out_of_bounds", "revoked"} <= kinds
    assert (
        await pool.fetchval(
            "SELECT max(version) FROM commitment_versions WHERE org = 'acme' AND agent = 'billing'"
        )
        == 2
    )
    writer = {
        r["commitment_id"]: r["revoked_at"]
        for r in await pool.fetch("SELECT * FROM commitments WHERE org = 'beta'")
        if r["agent"] == "writer"
    }
    assert writer["main"] is not None
    assert writer["second"] is None
    assert await pool.fetchval("SELECT count(*) FROM observations") == sum(
        e.org == GATEWAY for e in events
    )
    outside = 0
    for org, agents in ORG_AGENTS.items():
        for agent in agents:
            body = (
                await service.http.get(
                    f"/v1/agents/{org}/{agent}/posture", params={"at": at(100 + 300).isoformat()}
                )
            ).json()
            outside += sum(c["violations"] for c in body["windows"]["30d"].values())
    assert outside > 0

    # Spoil the projections first: the rebuild must rewrite them from the log alone.
    await pool.execute("UPDATE action_verdicts SET severity = 0")
    await pool.execute("DELETE FROM agents WHERE org = 'beta'")
    assert await service.store.dump_projections() != incremental
    replayed = await rebuild_projections(service.store)
    assert replayed == sum(sizes.values())
    assert await service.store.dump_projections() == incremental


async def test_verify_reports_the_tampered_entry_when_log_bytes_are_changed_behind_triggers(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Chains verify after traffic; an entry rewritten with triggers off is named by chain and seq."""
    keys = {org: await org_key(org) for org in ORG_AGENTS}
    events = [e for e in _mixed_traffic(20) if e.org in ORG_AGENTS]
    sizes = await _publish_all(events, keys, publisher)
    for org, size in sizes.items():
        await wait_for_chain(service.store, org, size)
    assert await verify_all(service.store) == []

    tampered_acme, tampered_beta = 5, 3
    assert sizes["acme"] > tampered_acme
    assert sizes["beta"] > tampered_beta
    conn = await asyncpg.connect(service.settings.database_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE ledger_entries SET event_bytes = event_bytes || ' '::bytea"
            " WHERE chain = 'acme' AND seq = $1",
            tampered_acme,
        )
        await conn.execute(
            "UPDATE ledger_entries SET received_at = received_at + interval '1 microsecond'"
            " WHERE chain = 'beta' AND seq = $1",
            tampered_beta,
        )
    finally:
        await conn.close()

    breaks = await verify_all(service.store)
    assert [(b.chain, b.seq) for b in breaks] == [("acme", tampered_acme), ("beta", tampered_beta)]
    assert all(b.problem == "entry hash does not match its fields" for b in breaks)
    assert [(b.chain, b.seq) for b in await verify_all(service.store, only="beta")] == [
        ("beta", tampered_beta)
    ]


# ---- keys over NATS ---------------------------------------------------------------------------


async def test_key_signs_events_in_same_and_later_batches_when_registered_over_nats(
    settings: Settings,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    start_service: ServiceFactory,
) -> None:
    """A key registered over NATS signs events in its own batch and later ones until revoked."""
    first = await org_key("acme")
    second = SigningKey.generate("acme")
    assert settings.nats_url is not None
    nc = await broker.connect(settings.nats_url, name="test-stream-setup")
    try:
        await broker.ensure_stream(nc.jetstream(), settings)
    finally:
        await nc.close()
    pub_first = await publisher(first)
    pub_second = await publisher(second)

    # Published before the service starts, so that ingest takes them as one batch.
    registration = key_registered("acme", second)
    same_batch = registered("acme", "signed-by-new-key")
    await pub_first.publish(registration)
    await pub_second.publish(same_batch)

    svc = await start_service()
    await wait_for_chain(svc.store, "acme", 3)
    entries = await chain_entries(svc.store, "acme")
    assert [(e.event_id, e.key_id) for e in entries[1:]] == [
        (registration.id, first.key_id),
        (same_batch.id, second.key_id),
    ]
    assert entries[1].received_at == entries[2].received_at  # one batch: one ledger clock read

    later = performed("acme", "signed-by-new-key", "x.y", "r", t=5)
    await pub_second.publish(later)
    await wait_for_chain(svc.store, "acme", 4)

    revocation = key_revoked("acme", second)
    after_revocation = performed("acme", "signed-by-new-key", "x.y", "r", t=6)
    sentinel = registered("acme", "sentinel")
    await pub_first.publish(revocation)
    revoked_ack = await pub_second.publish(after_revocation)
    await pub_first.publish(sentinel)
    await wait_for_chain(svc.store, "acme", 6)

    entries = await chain_entries(svc.store, "acme")
    assert [(e.event_id, e.key_id) for e in entries[3:]] == [
        (later.id, second.key_id),
        (revocation.id, first.key_id),
        (sentinel.id, first.key_id),
    ]
    quarantined = await svc.store.quarantined("acme")
    assert [(q["reason"], q["key_id"], q["stream_seq"]) for q in quarantined] == [
        ("key_revoked", second.key_id, revoked_ack.seq)
    ]
    keys = await svc.store.load_keys()
    assert keys[second.key_id].revoked
    assert not keys[first.key_id].revoked
    revoked_seq = await svc.store.pool.fetchval(
        "SELECT revoked_seq FROM publisher_keys WHERE key_id = $1", second.key_id
    )
    assert revoked_seq == 5


# ---- restart -----------------------------------------------------------------------------------


async def test_ingest_resumes_after_committed_position_when_service_restarts(
    org_key: OrgKeyFactory, publisher: PublisherFactory, start_service: ServiceFactory
) -> None:
    """Events published while the service is down are chained once, in order, after a restart."""
    key = await org_key("acme")
    pub = await publisher(key)
    before = [registered("acme", "a"), registered("acme", "b")]
    while_down = registered("acme", "c")
    after = registered("acme", "d")

    first = await start_service()
    for event in before:
        await pub.publish(event)
    await wait_for_chain(first.store, "acme", 3)
    await first.shutdown()

    await pub.publish(while_down)
    second = await start_service()
    await pub.publish(after)
    await wait_for_chain(second.store, "acme", 5)

    entries = await chain_entries(second.store, "acme")
    assert [e.event_id for e in entries[1:]] == [e.id for e in [*before, while_down, after]]
    assert await second.store.quarantined(None) == []
