"""The publisher workload: several orgs and agents, every event numbered in
publish order, published with JetStream acks, and a record of what was acked.

An event's id is `<unit>.<n>`: the unit is the sequence it belongs to (an
agent of the publishing org, or a gateway's observations of one agent) and `n`
its place in that sequence, so the checker reads the publish order back from
the ledger itself. Each unit publishes its next event only once the previous
one is acked (retrying with the same `Nats-Msg-Id` through outages), so the
stream holds every unit's events in publish order, and so must each chain.

Only acked events are promised; an event whose publish never got an ack is
recorded as unacked and may or may not be in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client

from service.adapters.publisher import signed_message, subject_for
from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AgentRegistered,
    AuditContext,
    CommitmentDeclared,
    CommitmentTerms,
    Event,
    Money,
    RateLimit,
    SpendCeiling,
)
from service.domain.signing import SigningKey

ORGS = ("acme", "globex", "initech")
GATEWAY = "gw"
AGENTS_PER_ORG = 4
T0 = datetime(2026, 1, 5, tzinfo=UTC)
PUBLISH_TIMEOUT_S = 2.0
PUBLISH_GIVE_UP_S = 90.0
"""How long one event is retried (same id) before it is recorded as never acked."""


@dataclass(frozen=True, slots=True)
class Message:
    """One signed event ready to publish, and where it sits in its unit."""

    org: str
    event_id: str
    unit: str
    n: int
    subject: str
    data: bytes
    headers: dict[str, str]


def split_id(event_id: str) -> tuple[str, int] | None:
    """`(unit id, n)` of a workload event id, None for any other id."""
    prefix, dot, number = event_id.rpartition(".")
    if not dot or not number.isdigit():
        return None
    return prefix, int(number)


def _terms(agent: str) -> CommitmentTerms:
    return CommitmentTerms(
        principal="ops@example.test",
        purpose="fault suite",
        allowed_actions=["records.*", "payments.send"],
        resource_bounds=[f"res:{agent}/*"],
        valid_from=T0,
        spend=SpendCeiling(
            currency="USD", per_action_minor=5_000, per_window_minor=50_000, window_s=3600
        ),
        rate=RateLimit(max_count=120, window_s=600),
        audit=AuditContext(policy_version="faults-1"),
    )


def _agent_event(rng: random.Random, org: str, agent: str, n: int) -> Event:
    event_id = f"{agent}.{n:07d}"
    at = T0 + timedelta(seconds=10 * n)
    if n == 0:
        return AgentRegistered(
            id=event_id, org=org, occurred_at=at, agent=agent,
            display_name=f"{agent} of {org}", principal=f"owner@{org}.test",
        )  # fmt: skip
    if n == 1:
        return CommitmentDeclared(
            id=event_id, org=org, occurred_at=at, agent=agent, commitment_id="main",
            terms=_terms(agent),
        )  # fmt: skip
    action = rng.choices(
        ["records.read", "records.write", "payments.send", "admin.delete"], [6, 3, 2, 1]
    )[0]
    amount = (
        Money(amount_minor=rng.choice([100, 2_500, 9_000]), currency="USD")
        if action == "payments.send"
        else None
    )
    return ActionPerformed(
        id=event_id, org=org, occurred_at=at, agent=agent, action=action,
        resource=f"res:{agent}/{n}", amount=amount,
    )  # fmt: skip


def _observation(rng: random.Random, agent_org: str, agent: str, n: int) -> Event:
    return ActionObserved(
        id=f"obs.{agent_org}.{agent}.{n:07d}",
        org=GATEWAY,
        occurred_at=T0 + timedelta(seconds=10 * n + 5),
        agent_org=agent_org,
        agent=agent,
        gateway="gw-edge-1",
        action=rng.choice(["records.read", "payments.send"]),
        resource=f"res:{agent}/obs{n}",
    )


def agent_names(org: str) -> list[str]:
    return [f"{org}-agent-{i}" for i in range(AGENTS_PER_ORG)]


@dataclass(slots=True)
class Workload:
    """Every message to publish, per unit, and what happened to each publish."""

    units: dict[str, list[Message]]
    acked: dict[tuple[str, str], Message] = field(default_factory=dict)
    unacked: list[Message] = field(default_factory=list)
    acked_seq: dict[tuple[str, str], int] = field(default_factory=dict)
    """The stream sequence each acked event got (its first copy's, on a duplicate)."""
    _cursor: dict[str, int] = field(default_factory=dict)
    publish_s: float = 0.0

    @classmethod
    def build(
        cls,
        keys: dict[str, SigningKey],
        prefix: str,
        events: int,
        seed: int,
        orgs: Sequence[str] = ORGS,
        gateway: bool = True,
    ) -> Workload:
        """About `events` events over every agent of `orgs` (and a gateway's observations
        of each org's first agent when `gateway`), signed with `keys`."""
        rng = random.Random(seed)  # noqa: S311 - reproducible traffic, not secrets
        plan: list[tuple[str, str, str | None]] = [
            (org, agent, None) for org in orgs for agent in agent_names(org)
        ]
        if gateway:
            plan += [(GATEWAY, agent_names(org)[0], org) for org in orgs]
        per_unit = max(3, -(-events // len(plan)))
        units: dict[str, list[Message]] = {}
        for publisher, agent, agent_org in plan:
            messages = []
            for n in range(per_unit):
                event = (
                    _agent_event(rng, publisher, agent, n)
                    if agent_org is None
                    else _observation(rng, agent_org, agent, n)
                )
                messages.append(to_message(event, keys[publisher], prefix))
            units[f"{publisher}/{messages[0].unit}"] = messages
        return cls(units)

    @property
    def total(self) -> int:
        return sum(len(m) for m in self.units.values())

    @property
    def published(self) -> int:
        return sum(self._cursor.values())

    def by_id(self) -> dict[tuple[str, str], Message]:
        return {(m.org, m.event_id): m for ms in self.units.values() for m in ms}

    async def publish(
        self,
        nats_url: str,
        up_to: float = 1.0,
        connections: int = 2,
        seed_file: Path | None = None,
    ) -> None:
        """Publish every unit's events up to the fraction `up_to` of it, units concurrently
        (as the NATS user of `seed_file`, when the server asks for one)."""
        started = time.monotonic()
        clients = [await connect_publisher(nats_url, seed_file) for _ in range(connections)]
        try:
            await asyncio.gather(
                *(
                    self._publish_unit(clients[i % len(clients)], unit, messages, up_to)
                    for i, (unit, messages) in enumerate(self.units.items())
                )
            )
        finally:
            for nc in clients:
                with contextlib.suppress(Exception):
                    await nc.close()
        self.publish_s += time.monotonic() - started

    async def publish_next(self, nats_url: str, unit: str) -> None:
        """Publish the next event of one unit (and wait for its ack)."""
        nc = await connect_publisher(nats_url)
        try:
            messages = self.units[unit]
            end = (self._cursor.get(unit, 0) + 1) / len(messages)
            await self._publish_unit(nc, unit, messages, end)
        finally:
            await nc.close()

    def last_published(self, unit: str) -> tuple[str, str]:
        """(org, event id) of the unit's most recently published event."""
        m = self.units[unit][self._cursor[unit] - 1]
        return m.org, m.event_id

    async def _publish_unit(
        self, nc: Client, unit: str, messages: list[Message], up_to: float
    ) -> None:
        js = nc.jetstream()
        end = min(len(messages), round(len(messages) * up_to + 1e-9))
        while (i := self._cursor.get(unit, 0)) < end:
            message = messages[i]
            seq = await publish_acked(js, message.subject, message.data, message.headers)
            if seq is None:
                self.unacked.append(message)
            else:
                self.acked[(message.org, message.event_id)] = message
                self.acked_seq[(message.org, message.event_id)] = seq
            self._cursor[unit] = i + 1


def to_message(event: Event, key: SigningKey, prefix: str) -> Message:
    data, headers = signed_message(event, key)
    unit, n = split_id(event.id) or (event.id, 0)
    return Message(
        org=event.org,
        event_id=event.id,
        unit=unit,
        n=n,
        subject=subject_for(event, prefix),
        data=data,
        headers=headers,
    )


async def _quiet(*_: object) -> None:
    """Connection noise (reconnects during a NATS restart) is expected here."""


async def connect_publisher(url: str, seed_file: Path | None = None) -> Client:
    """A publisher connection that reconnects forever (publishers outlive NATS restarts)."""
    return await nats.connect(
        url,
        name="faults-publisher",
        nkeys_seed=None if seed_file is None else str(seed_file),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
        error_cb=_quiet,
        disconnected_cb=_quiet,
        reconnected_cb=_quiet,
    )


async def publish_acked(
    js: nats.js.JetStreamContext,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    give_up_s: float = PUBLISH_GIVE_UP_S,
) -> int | None:
    """Publish until JetStream acks (same id on every retry): the stream seq, or None."""
    deadline = time.monotonic() + give_up_s
    backoff_s = 0.05
    while True:
        try:
            ack = await js.publish(subject, data, timeout=PUBLISH_TIMEOUT_S, headers=headers)
            return int(ack.seq)
        except (TimeoutError, nats.errors.Error):
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, 1.0)
