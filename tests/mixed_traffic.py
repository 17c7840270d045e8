"""A deterministic stream of mixed events from many agents and orgs, for rebuild tests.

Every event kind and every verdict the projection distinguishes occurs:
commitments with spend and rate ceilings, data classes and validity ends;
amendments that widen windows; revocations; retirements; actions within and
outside bounds, over budget, in another currency, late (occurred hours before
earlier ones); gateway observations of two other orgs that corroborate,
contradict or catch unreported actions. Times span about two weeks so that
rolling windows prune.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    Event,
    Money,
    RateLimit,
    SpendCeiling,
)

AGENT_ORGS = ("alpha", "bravo", "charlie", "delta")
GATEWAY_ORGS = ("gw-east", "gw-west")
AGENTS_PER_ORG = 12
START = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass(slots=True)
class _Agent:
    org: str
    name: str
    commitments: dict[str, int]  # commitment id -> latest version
    retired: bool = False


def _terms(rng: random.Random, at: datetime, window_s: int) -> CommitmentTerms:
    return CommitmentTerms(
        principal="ops@example.test",
        purpose="mixed traffic",
        allowed_actions=["payments.*", "invoices.read"],
        resource_bounds=["acct:main/*", "acct:shared/*"],
        valid_from=at - timedelta(hours=1),
        valid_until=at + timedelta(days=rng.choice([3, 30])) if rng.random() < 0.3 else None,
        spend=SpendCeiling(
            currency="USD", per_action_minor=5_000, per_window_minor=20_000, window_s=window_s
        ),
        rate=RateLimit(max_count=rng.choice([5, 30]), window_s=600),
        data_classes=["pii.basic"],
        audit=AuditContext(policy_version="p-7", task_digest="sha256:0f"),
    )


def mixed_traffic(count: int, seed: int = 7) -> list[Event]:
    """`count` events (or a few more), in publish order, from `AGENT_ORGS` and `GATEWAY_ORGS`."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test traffic, not secrets
    events: list[Event] = []
    agents = [
        _Agent(org, f"agent-{n:02d}", {}) for org in AGENT_ORGS for n in range(AGENTS_PER_ORG)
    ]
    clock = START
    serial = 0

    def new_id(label: str) -> str:
        nonlocal serial
        serial += 1
        return f"{label}-{serial:07d}"

    for a in agents:
        events.append(
            AgentRegistered(
                id=new_id("reg"),
                org=a.org,
                occurred_at=clock,
                agent=a.name,
                display_name=a.name,
                principal=f"owner@{a.org}.test",
            )
        )
        a.commitments["main"] = 1
        events.append(
            CommitmentDeclared(
                id=new_id("decl"),
                org=a.org,
                occurred_at=clock,
                agent=a.name,
                commitment_id="main",
                terms=_terms(rng, clock, 3600),
            )
        )
    while len(events) < count:
        clock += timedelta(seconds=rng.randint(5, 45))
        a = rng.choice(agents)
        roll = rng.random()
        if roll < 0.004:
            cid = rng.choice(sorted(a.commitments))
            a.commitments[cid] += rng.choice([1, 2])
            events.append(
                CommitmentAmended(
                    id=new_id("amend"),
                    org=a.org,
                    occurred_at=clock,
                    agent=a.name,
                    commitment_id=cid,
                    version=a.commitments[cid],
                    terms=_terms(rng, clock, rng.choice([7200, 86400])),
                )
            )
            continue
        if roll < 0.006:
            cid = rng.choice(sorted(a.commitments))
            events.append(
                CommitmentRevoked(
                    id=new_id("revoke"),
                    org=a.org,
                    occurred_at=clock,
                    agent=a.name,
                    commitment_id=cid,
                )
            )
            new = f"c{serial}"
            a.commitments[new] = 1
            events.append(
                CommitmentDeclared(
                    id=new_id("decl"),
                    org=a.org,
                    occurred_at=clock + timedelta(seconds=1),
                    agent=a.name,
                    commitment_id=new,
                    terms=_terms(rng, clock, 3600),
                )
            )
            continue
        if roll < 0.0065 and not a.retired:
            a.retired = True
            events.append(
                AgentRetired(id=new_id("retire"), org=a.org, occurred_at=clock, agent=a.name)
            )
            continue
        # An action, sometimes reported late (its occurred_at hours before the clock).
        occurred = clock
        if rng.random() < 0.03:
            occurred = clock - timedelta(hours=rng.choice([1, 6, 30]))
        action = rng.choices(
            ["payments.refund", "payments.charge", "invoices.read", "admin.delete"],
            [50, 25, 20, 5],
        )[0]
        resource = rng.choices(["acct:main/x", "acct:shared/y", "acct:other/z"], [70, 25, 5])[0]
        amount = None
        if action.startswith("payments."):
            amount = Money(
                rng.choice([100, 900, 2_500, 4_900, 6_000]),
                rng.choices(["USD", "EUR"], [95, 5])[0],
            )
        classes = rng.choices([[], ["pii.basic"], ["pii.sensitive"]], [80, 17, 3])[0]
        correlation = new_id("corr") if rng.random() < 0.5 else None
        if rng.random() < 0.97:
            events.append(
                ActionPerformed(
                    id=new_id("act"),
                    org=a.org,
                    occurred_at=occurred,
                    agent=a.name,
                    action=action,
                    resource=resource,
                    amount=amount,
                    data_classes=classes,
                    correlation_id=correlation,
                )
            )
        if correlation is not None and rng.random() < 0.4:
            contradicted = rng.random() < 0.05
            events.append(
                ActionObserved(
                    id=new_id("obs"),
                    org=rng.choice(GATEWAY_ORGS),
                    occurred_at=occurred,
                    agent_org=a.org,
                    agent=a.name,
                    gateway="edge-1",
                    action=action,
                    resource="acct:elsewhere/q" if contradicted else resource,
                    amount=amount,
                    data_classes=classes,
                    correlation_id=correlation,
                )
            )
    return events
