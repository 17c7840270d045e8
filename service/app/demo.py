"""Realistic demo traffic: two orgs, a few agents, commitments, drift, a gateway.

`story()` is pure (a seeded generator of events); `trustledger demo` signs and
publishes them against a running service so a newcomer sees postures move:
`billing-bot` stays inside its bounds, `ops-agent` drifts into actions it never
committed to, `scraper` acts with no commitment at all, and the gateway org
`payhub` observes `billing-bot`'s payments as third-party evidence.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

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

AGENT_ORG = "acme"
GATEWAY_ORG = "payhub"


@dataclass(frozen=True, slots=True)
class _Agent:
    name: str
    purpose: str
    allowed: list[str]
    resources: list[str]
    habits: list[tuple[str, str]]
    drift: list[tuple[str, str]]
    drift_share: float
    committed: bool = True


AGENTS = (
    _Agent(
        "billing-bot",
        "refund and invoice small customer orders",
        ["payments.refund", "invoices.*"],
        ["order:*", "invoice:*"],
        [("payments.refund", "order:{n}"), ("invoices.send", "invoice:{n}")],
        [],
        0.0,
    ),
    _Agent(
        "ops-agent",
        "restart unhealthy services in staging",
        ["deploy.restart"],
        ["svc:staging/*"],
        [("deploy.restart", "svc:staging/api-{n}")],
        [("deploy.restart", "svc:prod/api-{n}"), ("iam.grant", "role:admin")],
        0.25,
    ),
    _Agent("scraper", "", [], [], [("http.get", "https://example.com/{n}")], [], 0.0, False),
)


def story(start: datetime, actions_per_agent: int, seed: int = 7) -> Iterator[Event]:
    """The demo's events in publishing order; same seed, same events."""
    rng = random.Random(seed)  # noqa: S311 - demo traffic, reproducible by seed, not secrets
    run = f"{seed}-{int(start.timestamp())}"
    at = start
    for agent in AGENTS:
        yield AgentRegistered(
            id=f"reg-{agent.name}-{run}",
            org=AGENT_ORG,
            occurred_at=at,
            agent=agent.name,
            display_name=agent.name.replace("-", " ").title(),
            principal="ops@acme.example",
            runtime="demo",
        )
        if agent.committed:
            yield CommitmentDeclared(
                id=f"com-{agent.name}-{run}",
                org=AGENT_ORG,
                occurred_at=at,
                agent=agent.name,
                commitment_id=f"{agent.name}-v1",
                terms=CommitmentTerms(
                    principal="ops@acme.example",
                    purpose=agent.purpose,
                    allowed_actions=agent.allowed,
                    resource_bounds=agent.resources,
                    valid_from=start - timedelta(days=1),
                    valid_until=start + timedelta(days=30),
                    spend=SpendCeiling(
                        currency="EUR",
                        per_action_minor=50_00,
                        per_window_minor=500_00,
                        window_s=86_400,
                    ),
                    rate=RateLimit(max_count=600, window_s=3600),
                    data_classes=["customer.contact"],
                    audit=AuditContext(policy_version="2026-11", task_digest=f"sha256:{seed:064x}"),
                ),
            )
    for n in range(actions_per_agent):
        for agent in AGENTS:
            at += timedelta(seconds=rng.randint(1, 20))
            drifting = agent.drift and rng.random() < agent.drift_share
            action, resource = rng.choice(agent.drift if drifting else agent.habits)
            amount = (
                Money(amount_minor=rng.randint(100, 4_000), currency="EUR")
                if action.startswith("payments.")
                else None
            )
            event_id = f"act-{agent.name}-{run}-{n}"
            yield ActionPerformed(
                id=event_id,
                org=AGENT_ORG,
                occurred_at=at,
                agent=agent.name,
                action=action,
                resource=resource.format(n=n),
                amount=amount,
                correlation_id=event_id,
            )
            if amount is not None:
                yield ActionObserved(
                    id=f"obs-{event_id}",
                    org=GATEWAY_ORG,
                    occurred_at=at,
                    agent_org=AGENT_ORG,
                    agent=agent.name,
                    gateway="payhub-eu-1",
                    action=action,
                    resource=resource.format(n=n),
                    amount=amount,
                    correlation_id=event_id,
                )
