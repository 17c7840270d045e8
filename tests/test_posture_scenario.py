"""Posture end to end: signed events through NATS, posture and timeline over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    bearer,
    chain_entries,
    issue_api_key,
    new_id,
    wait_for_chain,
    wait_until,
)

from service.adapters import projection_tables as tables
from service.adapters.postgres import LedgerStore
from service.app.posture import reassess_due
from service.config import Settings
from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AgentRegistered,
    AuditContext,
    CommitmentDeclared,
    CommitmentRevoked,
    CommitmentTerms,
    Event,
    Money,
    RateLimit,
    SpendCeiling,
)
from service.roles import Roles, run_roles

ORG = "acme"
AGENT = "refund-bot"
GATEWAY_ORG = "payhub"


def _terms(start: datetime, valid_until: datetime | None = None) -> CommitmentTerms:
    return CommitmentTerms(
        principal="treasury@acme.test",
        purpose="refund customers of the main account",
        allowed_actions=["payments.refund"],
        resource_bounds=["acct:main/*"],
        valid_from=start,
        valid_until=valid_until,
        spend=SpendCeiling(
            currency="USD", per_action_minor=5_000, per_window_minor=10_000, window_s=3600
        ),
        rate=RateLimit(max_count=100, window_s=600),
        audit=AuditContext(policy_version="refunds-3"),
    )


def _declared(
    at: datetime, agent: str = AGENT, valid_until: datetime | None = None
) -> CommitmentDeclared:
    """The `refunds` commitment (valid from `at`), declared at `at`."""
    return CommitmentDeclared(
        id=new_id("decl"),
        org=ORG,
        occurred_at=at,
        agent=agent,
        commitment_id="refunds",
        terms=_terms(at, valid_until),
    )


def _refund(t: datetime, amount_minor: int, action: str = "payments.refund") -> ActionPerformed:
    return ActionPerformed(
        id=new_id("act"),
        org=ORG,
        occurred_at=t,
        agent=AGENT,
        action=action,
        resource="acct:main/order-1",
        amount=Money(amount_minor, "USD"),
    )


async def _posture(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await http.get(f"/v1/agents/{ORG}/{AGENT}/posture", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_posture_moves_trusted_watch_untrusted_revoked_when_agent_drifts_and_is_revoked(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Each step of the drift shows in the band, explained by the ledger entry that caused it."""
    pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(minutes=30)
    clock = iter(start + timedelta(seconds=n) for n in range(1000))
    published: list[Event] = []

    async def publish(*events: Event) -> dict[str, int]:
        """Publish, wait until chained; returns event id -> seq."""
        for event in events:
            await pub.publish(event)
        published.extend(events)
        await wait_for_chain(service.store, ORG, 1 + len(published))
        return {e.event_id: e.seq for e in await chain_entries(service.store, ORG)}

    await publish(
        AgentRegistered(
            id=new_id("reg"),
            org=ORG,
            occurred_at=next(clock),
            agent=AGENT,
            display_name="Refund bot",
            principal="treasury@acme.test",
        ),
        _declared(next(clock)),
    )
    body = await _posture(service.http)
    assert body["band"] == "unknown"  # committed, but no evidence yet
    assert [c["commitment_id"] for c in body["commitments_in_force"]] == ["refunds"]

    # 1. It behaves: 12 refunds of $5, $60 of its $100 hourly budget.
    await publish(*[_refund(next(clock), 500) for _ in range(12)])
    body = await _posture(service.http)
    assert (body["band"], body["score"], body["recent_violations"]) == ("trusted", 1000, [])
    spend = body["commitments_in_force"][0]["budgets"][0]
    assert (spend["kind"], spend["used"], spend["limit"]) == ("spend_window", 6_000, 10_000)

    # 2. Spend creeps: $10 refunds; the fifth takes the hour to $110, over the ceiling.
    creep = [_refund(next(clock), 1_000) for _ in range(5)]
    seqs = await publish(*creep)
    body = await _posture(service.http)
    assert body["band"] == "watch"
    assert 600 <= body["score"] < 900
    (violation,) = body["recent_violations"]
    assert violation["violations"] == ["spend_window"]
    assert violation["ref"] == {"chain": ORG, "seq": seqs[creep[-1].id]}
    assert "11000 in 3600s > per_window_minor 10000 USD" in violation["detail"]

    # 3. It calls an action outside its bounds.
    charge = _refund(next(clock), 300, action="payments.charge")
    seqs = await publish(charge)
    body = await _posture(service.http)
    assert body["band"] == "untrusted"
    assert body["score"] < 600
    newest = body["recent_violations"][0]
    assert newest["violations"][0] == "action_not_allowed"  # (and still over budget)
    assert newest["ref"] == {"chain": ORG, "seq": seqs[charge.id]}
    charge_entry = next(
        e for e in await chain_entries(service.store, ORG) if e.seq == seqs[charge.id]
    )

    # 4. Its org revokes the commitment.
    revocation = CommitmentRevoked(
        id=new_id("revoke"), org=ORG, occurred_at=next(clock), agent=AGENT, commitment_id="refunds"
    )
    seqs = await publish(revocation)
    body = await _posture(service.http)
    assert body["band"] == "revoked"
    assert body["commitments_in_force"] == []
    assert {"chain": ORG, "seq": seqs[revocation.id]} in body["positions"]

    # The timeline tells the same story, each change with the entry that caused it.
    response = await service.http.get(
        f"/v1/agents/{ORG}/{AGENT}/timeline",
        params={"from": start.isoformat(), "to": datetime.now(UTC).isoformat()},
    )
    assert response.status_code == 200, response.text
    bands = [
        (c["after"], [e["ref"]["seq"] for e in c["evidence"]])
        for c in response.json()["changes"]
        if c["after"].startswith("band ")
    ]
    first_refund = seqs[published[2].id]
    assert bands == [
        # Three fresh items are MIN_EVIDENCE; three a few seconds old are just short of it.
        ("band trusted", [first_refund + 3]),
        ("band watch", [seqs[creep[-1].id]]),
        ("band untrusted", [seqs[charge.id]]),
        ("band revoked", []),
    ]

    # What the ledger answered when the forbidden call had just arrived stays answerable;
    # asked now about that instant, the ledger knows the revocation (it occurred earlier).
    then = charge_entry.received_at.isoformat()
    assert (await _posture(service.http, at=then, known_at=then))["band"] == "untrusted"
    assert (await _posture(service.http, at=then))["band"] == "revoked"
    # Before the ledger had received anything about the agent it had nothing to say.
    first = (await chain_entries(service.store, ORG))[1]
    before_all = (first.received_at - timedelta(microseconds=1)).isoformat()
    response = await service.http.get(
        f"/v1/agents/{ORG}/{AGENT}/posture", params={"at": before_all, "known_at": before_all}
    )
    assert response.status_code == 404


async def test_third_party_posture_counts_only_other_orgs_gateways_when_asked(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """A gateway's unreported sighting is a finding; `evidence=third_party` drops self-reports."""
    agent_pub = await publisher(await org_key(ORG))
    gateway_pub = await publisher(await org_key(GATEWAY_ORG))
    start = datetime.now(UTC) - timedelta(hours=2)
    events: list[Event] = [
        _declared(start),
        *[_refund(start + timedelta(seconds=n), 100) for n in range(1, 6)],
    ]
    for event in events:
        await agent_pub.publish(event)
    sightings = [
        ActionObserved(
            id=new_id("obs"),
            org=GATEWAY_ORG,
            occurred_at=start + timedelta(seconds=10 + n),
            agent_org=ORG,
            agent=AGENT,
            gateway="payhub-edge",
            action="payments.refund",
            resource="acct:main/order-9",
            amount=Money(100, "USD"),
            correlation_id=f"corr-{n}",
        )
        for n in range(4)
    ]
    for sighting in sightings:
        await gateway_pub.publish(sighting)
    await wait_for_chain(service.store, ORG, 1 + len(events))
    await wait_for_chain(service.store, GATEWAY_ORG, 1 + len(sightings))
    gateway_seqs = {e.event_id: e.seq for e in await chain_entries(service.store, GATEWAY_ORG)}

    # Before the grace period ends the sightings only corroborate nothing yet.
    received = max(e.received_at for e in await chain_entries(service.store, GATEWAY_ORG))
    early = await _posture(service.http, at=(received + timedelta(minutes=1)).isoformat())
    assert all(v["kind"] == "action" for v in early["recent_violations"])
    late_at = (received + timedelta(minutes=6)).isoformat()
    body = await _posture(service.http, at=late_at)
    findings = [v for v in body["recent_violations"] if v["kind"] == "unreported"]
    assert sorted(f["ref"]["seq"] for f in findings) == sorted(
        gateway_seqs[s.id] for s in sightings
    )
    assert {f["source"] for f in findings} == {"third_party"}
    assert body["observed_by"] == {GATEWAY_ORG: len(sightings)}
    assert body["coverage_permille"] == 0  # no self-report was seen by a gateway

    third = await _posture(service.http, at=late_at, evidence="third_party")
    assert third["evidence"] == "third_party"
    assert [w["self"]["actions"] for w in third["windows"].values()] == [0, 0, 0, 0]
    assert third["windows"]["30d"]["third_party"]["actions"] == len(sightings)
    # Of four within-bounds sightings (weight 2 each) and of their four unreported findings
    # (2 each, one org's claim), ranks 1 and 3 count: about as much bad as good.
    assert third["band"] == "untrusted"


def _sighting(
    observer: str, t: datetime, action: str = "payments.refund", correlation_id: str | None = None
) -> ActionObserved:
    """`observer`'s gateway saw the agent do `action` at `t`."""
    return ActionObserved(
        id=new_id("obs"),
        org=observer,
        occurred_at=t,
        agent_org=ORG,
        agent=AGENT,
        gateway=f"{observer}-edge",
        action=action,
        resource="acct:main/order-1",
        amount=Money(500, "USD"),
        correlation_id=correlation_id,
    )


async def test_one_orgs_adverse_sighting_cannot_make_untrusted_when_agent_well_evidenced(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """20 good self-reports survive one org's forbidden, unreported sighting; two orgs' do not."""
    agent_pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(hours=1)
    events: list[Event] = [
        _declared(start),
        *[_refund(start + timedelta(minutes=1 + n), 200) for n in range(20)],
    ]
    for event in events:
        await agent_pub.publish(event)
    await wait_for_chain(service.store, ORG, 1 + len(events))
    assert (await _posture(service.http))["band"] == "trusted"

    async def sighted(observer: str, corr: str) -> dict[str, Any]:
        """`observer` sees a forbidden charge; the posture once its finding is settled."""
        pub = await publisher(await org_key(observer))
        await pub.publish(
            _sighting(observer, start + timedelta(minutes=30), "payments.charge", corr)
        )
        await wait_for_chain(service.store, observer, 2)
        (received,) = [e.received_at for e in await chain_entries(service.store, observer)][1:]
        return await _posture(service.http, at=(received + timedelta(minutes=6)).isoformat())

    # v1 gave this sighting 2 * 10 (the charge) + 2 * 4 (unreported) = 28 fresh self-reports
    # of weight against 20: untrusted. v2: 5 + 2 = 7 (docs/posture-model.md §6).
    body = await sighted(GATEWAY_ORG, "charge-1")
    assert (body["band"], body["observed_by"]) == ("watch", {GATEWAY_ORG: 1})
    assert 600 <= body["score"] < 900
    assert sorted(v["kind"] for v in body["recent_violations"]) == ["action", "unreported"]
    # A second, independent org reporting the same kind of thing is enough.
    body = await sighted("globex", "charge-2")
    assert (body["band"], body["observed_by"]) == ("untrusted", {GATEWAY_ORG: 1, "globex": 1})


async def test_one_gateways_volume_cannot_whitewash_when_agent_untrusted(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """3,000 good sightings by one org weigh what 15 do: an untrusted agent stays untrusted."""
    agent_pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(days=3)
    events: list[Event] = [
        _declared(start),
        *[_refund(start + timedelta(days=1, minutes=n), 300, "payments.charge") for n in range(2)],
        *[_refund(start + timedelta(days=2, minutes=n), 200) for n in range(10)],
    ]
    for event in events:
        await agent_pub.publish(event)
    await wait_for_chain(service.store, ORG, 1 + len(events))
    before = await _posture(service.http)
    assert before["band"] == "untrusted"

    gateway_pub = await publisher(await org_key(GATEWAY_ORG))
    seen_at = datetime.now(UTC) - timedelta(hours=1)
    volume = 3000
    for _ in range(volume):
        await gateway_pub.publish(_sighting(GATEWAY_ORG, seen_at))
    await wait_for_chain(service.store, GATEWAY_ORG, 1 + volume, timeout_s=60)
    as_of = datetime.now(UTC)
    body = await _posture(service.http, at=as_of.isoformat())
    assert body["observed_by"] == {GATEWAY_ORG: volume}
    assert body["band"] == "untrusted"  # v1: trusted (6,000 fresh self-reports of weight)
    # Of one instant and one org, ranks 1, 3, 7 and 15 count, each weighing 2 per us left.
    horizon_us = 30 * 24 * 3600 * 10**6
    left_us = horizon_us - (as_of - seen_at) // timedelta(microseconds=1)
    third = await _posture(service.http, at=as_of.isoformat(), evidence="third_party")
    assert (third["good"], third["bad"], third["mass"]) == (4 * 2 * left_us, 0, 4 * left_us)


@pytest.fixture
async def scheduled_service(
    settings: Settings, store: LedgerStore
) -> AsyncIterator[tuple[Settings, Any]]:
    """API, ingest and scheduler roles with a one-second posture interval."""
    fast = replace(settings, posture_interval_s=1, checkpoint_interval_s=3600)
    stop = asyncio.Event()
    task = asyncio.create_task(run_roles(fast, Roles(api=True, ingest=True, scheduler=True), stop))
    key = await issue_api_key(store, "operator")
    async with httpx.AsyncClient(
        base_url=f"http://{fast.host}:{fast.port}", timeout=10, headers=bearer(key)
    ) as http:

        async def ready() -> bool:
            if task.done():
                task.result()
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(ready, 20, "the scheduled service to be ready")
        yield fast, http
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_scheduler_lists_agents_by_band_when_their_evidence_arrives(
    scheduled_service: tuple[Settings, httpx.AsyncClient],
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """The scheduler role re-assesses agents ingest touched and `/v1/postures` lists them."""
    _, http = scheduled_service
    pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(minutes=5)
    await pub.publish(_declared(start))
    for n in range(4):
        await pub.publish(_refund(start + timedelta(seconds=n + 1), 100))

    async def listed() -> bool:
        page = (await http.get("/v1/postures", params={"band": "trusted"})).json()
        return [(i["org"], i["agent"]) for i in page["items"]] == [(ORG, AGENT)]

    await wait_until(listed, 15, "the agent to be listed as trusted")
    assert (await http.get("/v1/postures", params={"band": "watch"})).json()["items"] == []

    async def counted() -> bool:
        text = (await http.get("/metrics")).text
        return 'trustledger_agents_by_band{band="trusted"} 1.0' in text.splitlines()

    await wait_until(counted, 15, "the band gauge to count the agent")
    metrics_text = (await http.get("/metrics")).text
    assert 'trustledger_agents_by_band{band="untrusted"} 0.0' in metrics_text.splitlines()


async def test_scheduler_reassesses_only_agents_due_when_it_ticks(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """A tick takes agents whose evidence changed or whose change fell due, and no others."""
    pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(minutes=5)
    agents = ["a1", "a2", "a3"]
    expires = start + timedelta(hours=1)  # a3's commitment ends then
    events: list[Event] = []
    for agent in agents:
        events.append(_declared(start, agent, expires if agent == "a3" else None))
        events += [
            replace_agent(_refund(start + timedelta(seconds=n + 1), 100), agent) for n in range(4)
        ]
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, ORG, 1 + len(events))

    tick = datetime.now(UTC)
    assert await reassess_due(service.store, tick) == [(ORG, a) for a in agents]
    assert await reassess_due(service.store, tick + timedelta(seconds=5)) == []

    await pub.publish(replace_agent(_refund(tick, 100), "a2"))
    await wait_for_chain(service.store, ORG, 2 + len(events))
    assert await reassess_due(service.store, tick + timedelta(seconds=6)) == [(ORG, "a2")]

    # When a3's commitment expires its answer changes without any event: only a3 is due.
    page = (await service.http.get("/v1/postures")).json()["items"]
    due = {i["agent"]: datetime.fromisoformat(i["next_change_at"]) for i in page}
    assert due["a3"] == expires
    assert min(due["a1"], due["a2"]) > expires + timedelta(days=7)  # evidence thins out later
    assert await reassess_due(service.store, expires) == [(ORG, "a3")]
    page = (await service.http.get("/v1/postures", params={"band": "trusted"})).json()["items"]
    assert [i["agent"] for i in page] == agents


def replace_agent(event: ActionPerformed, agent: str) -> ActionPerformed:
    """The same action by another agent, with a new id."""
    return msgspec.structs.replace(event, agent=agent, id=new_id("ev"))


async def test_queued_agent_stays_queued_when_new_evidence_arrives_during_its_assessment(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """A batch that commits while the scheduler assesses an agent keeps it queued for next tick."""
    pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(minutes=5)
    await pub.publish(_refund(start, 100))
    await wait_for_chain(service.store, ORG, 2)
    pool = service.store.pool
    taken = await tables.take_due(pool, datetime.now(UTC), 10)
    assert taken.agents == [(ORG, AGENT)]

    await pub.publish(_refund(start + timedelta(seconds=1), 100))  # lands mid-assessment
    await wait_for_chain(service.store, ORG, 3)
    await tables.done_due(pool, taken.generations)
    assert (await tables.take_due(pool, datetime.now(UTC), 10)).agents == [(ORG, AGENT)]

    await reassess_due(service.store, datetime.now(UTC))
    assert (await tables.take_due(pool, datetime.now(UTC), 10)).agents == []


async def test_recent_assessment_is_served_when_fresh_and_no_evidence_arrived_since(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """`max_age_s` serves the scheduler's assessment, identical to a live one at its tick."""
    pub = await publisher(await org_key(ORG))
    start = datetime.now(UTC) - timedelta(minutes=5)
    events: list[Event] = [
        _declared(start),
        *[_refund(start + timedelta(seconds=n), 300) for n in range(1, 6)],
    ]
    events.append(_refund(start + timedelta(seconds=9), 300, "payments.charge"))
    for event in events:
        await pub.publish(event)
    await wait_for_chain(service.store, ORG, 1 + len(events))

    tick = datetime.now(UTC)
    assert await reassess_due(service.store, tick) == [(ORG, AGENT)]
    served = await _posture(service.http, max_age_s="3600")
    assert datetime.fromisoformat(served["as_of"]) == tick
    assert served == await _posture(service.http, at=tick.isoformat())
    assert served["band"] == "untrusted"  # the forbidden charge

    # Too old for the caller: assessed live.
    live = await _posture(service.http, max_age_s="0")
    assert datetime.fromisoformat(live["as_of"]) > tick

    # Evidence arrived since the tick: assessed live, and the new action counts.
    await pub.publish(_refund(start + timedelta(seconds=20), 300))
    await wait_for_chain(service.store, ORG, 2 + len(events))
    fresh = await _posture(service.http, max_age_s="3600")
    assert datetime.fromisoformat(fresh["as_of"]) > tick
    assert (
        fresh["windows"]["1h"]["self"]["actions"] == served["windows"]["1h"]["self"]["actions"] + 1
    )

    response = await service.http.get(
        f"/v1/agents/{ORG}/{AGENT}/posture", params={"max_age_s": 60, "evidence": "third_party"}
    )
    assert response.status_code == 400
