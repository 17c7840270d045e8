"""From projection rows to the posture model's evidence items.

Pure. Three kinds of evidence about an agent:

* a **self-reported action** (`VerdictRow`, judged at ingest): an item at its
  `occurred_at`, source ``self``, with the verdict's highest severity;
* a **gateway observation** (`ObservationRow`): judged here against the
  agent's commitments *as the ledger knew them when the observation was
  received* (versions and revocations received no later), without the
  rolling-window checks (a gateway sees only its slice of the traffic). An
  item at its `occurred_at`; source ``third_party`` when the gateway's org is
  not the agent's org, else ``self``;
* an **under-reporting finding**, for each observation that carries a
  `correlation_id`, settled at its deadline `received_at + REPORT_GRACE_US`
  from the self-reports *received by the deadline* with the same
  `correlation_id`: none → ``unreported`` (severity 2); some, but none that
  agrees (same action, resource and amount) → ``contradicted`` (severity 3);
  one that agrees → corroborated, no finding. The finding is an item at the
  deadline, with the observation's source and ledger reference.

Every rule reads received times from the ledger (the hashed `received_at`),
never the reader's clock, so the same log gives the same items on any
machine at any time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from service.domain.chain import to_micros
from service.domain.evaluation import ActionFacts, CommitmentHistory, evaluate
from service.domain.posture import HORIZON_US, Item, Source, Span, Status
from service.domain.projection import (
    AgentRecord,
    CommitmentRecord,
    ObservationRow,
    VerdictRow,
)

REPORT_GRACE_US: Final = 5 * 60 * 1_000_000
"""How long after a gateway's observation reaches the ledger the agent's own report may follow."""

UNREPORTED_SEVERITY: Final = 2
CONTRADICTED_SEVERITY: Final = 3


def source_of(observer: str, agent_org: str) -> Source:
    """A gateway of the agent's own org is not a third party."""
    return "self" if observer == agent_org else "third_party"


def verdict_item(row: VerdictRow) -> Item:
    """The evidence of one self-reported action."""
    return Item(
        at_us=to_micros(row.occurred_at),
        source="self",
        kind="action",
        severity=row.severity,
        violations=tuple(v.kind for v in row.violations),
        ref=(row.org, row.seq),
        event_id=row.event_id,
        detail="; ".join(v.detail for v in row.violations),
    )


def _agrees(report: VerdictRow, seen: ObservationRow) -> bool:
    return (
        report.action == seen.action
        and report.resource == seen.resource
        and report.amount == seen.amount
    )


class KnownHistories:
    """The agent's commitment histories as known at an instant, computed once per
    distinct state of knowledge (observations mostly share one)."""

    def __init__(self, commitments: Iterable[CommitmentRecord]) -> None:
        self._commitments = list(commitments)
        self._memo: dict[tuple[tuple[int, bool], ...], list[CommitmentHistory]] = {}

    def at(self, known: datetime) -> list[CommitmentHistory]:
        key = tuple(
            (
                sum(1 for v in c.versions if v.received_at <= known),
                c.revoked_received_at is not None and c.revoked_received_at <= known,
            )
            for c in self._commitments
        )
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = [
                h for c in self._commitments if (h := c.history(known)) is not None
            ]
        return found


def observation_items(
    seen: ObservationRow,
    commitments: Iterable[CommitmentRecord] | KnownHistories,
    agent: AgentRecord | None,
    reports: Sequence[VerdictRow],
) -> list[Item]:
    """The observation's own item and, if it carries a correlation id, its finding.

    `reports` are the agent's self-reports with the observation's correlation id
    (any received time; only those received by the deadline count)."""
    known = seen.received_at
    if not isinstance(commitments, KnownHistories):
        commitments = KnownHistories(commitments)
    histories = commitments.at(known)
    retired = (
        agent is not None
        and agent.retired_received_at is not None
        and agent.retired_received_at <= known
    )
    facts = ActionFacts(
        seen.occurred_at, seen.action, seen.resource, seen.amount, seen.data_classes
    )
    verdict = evaluate(facts, histories, {}, retired, windows=False)
    source = source_of(seen.observer, seen.org)
    ref = (seen.observer, seen.seq)
    items = [
        Item(
            at_us=to_micros(seen.occurred_at),
            source=source,
            kind="action",
            severity=verdict.max_severity,
            violations=tuple(v.kind for v in verdict.violations),
            ref=ref,
            event_id=seen.event_id,
            detail="; ".join(v.detail for v in verdict.violations),
        )
    ]
    if seen.correlation_id is None:
        return items
    deadline_us = to_micros(seen.received_at) + REPORT_GRACE_US
    in_time = [
        r
        for r in reports
        if r.correlation_id == seen.correlation_id and to_micros(r.received_at) <= deadline_us
    ]
    if not in_time:
        items.append(
            Item(
                deadline_us,
                source,
                "unreported",
                UNREPORTED_SEVERITY,
                ("unreported",),
                ref,
                seen.event_id,
                f"gateway {seen.gateway} of {seen.observer} saw {seen.action} on"
                f" {seen.resource!r} (correlation {seen.correlation_id}); no self-report"
                " reached the ledger within the grace period",
            )
        )
    elif not any(_agrees(r, seen) for r in in_time):
        first = min(in_time, key=lambda r: r.seq)
        items.append(
            Item(
                deadline_us,
                source,
                "contradicted",
                CONTRADICTED_SEVERITY,
                ("contradicted",),
                ref,
                seen.event_id,
                f"gateway {seen.gateway} of {seen.observer} saw {seen.action} on"
                f" {seen.resource!r}; the self-report {first.org}#{first.seq} says"
                f" {first.action} on {first.resource!r}",
            )
        )
    return items


def status_of(
    agent: AgentRecord | None,
    commitments: Iterable[CommitmentRecord],
    known_at: datetime | None = None,
) -> Status:
    """Retirement and the spans in force of every commitment, as known at `known_at`."""
    retired_at_us = None
    if (
        agent is not None
        and agent.retired_at is not None
        and (
            known_at is None
            or (agent.retired_received_at is not None and agent.retired_received_at <= known_at)
        )
    ):
        retired_at_us = to_micros(agent.retired_at)
    spans: list[Span] = []
    for record in commitments:
        history = record.history(known_at)
        if history is None:
            continue
        revoked_us = to_micros(history.revoked_at) if history.revoked_at is not None else None
        ordered = sorted(history.versions, key=lambda v: (v.effective_from, v.version))
        found = len(spans)
        for n, version in enumerate(ordered):
            start = max(to_micros(version.effective_from), to_micros(version.terms.valid_from))
            ends = []
            if n + 1 < len(ordered):
                ends.append(to_micros(ordered[n + 1].effective_from))
            if version.terms.valid_until is not None:
                ends.append(to_micros(version.terms.valid_until))
            end = min(ends) if ends else None
            if end is None or start < end:
                spans.append(Span(record.commitment_id, start, end, revoked_us))
        if len(spans) == found:
            # Declared but never in force (e.g. valid_until before valid_from) still counts
            # as a commitment for the "every commitment revoked" rule.
            spans.append(Span(record.commitment_id, 0, 0, revoked_us))
    return Status(retired_at_us, tuple(spans))


def coverage_permille(
    reports: Sequence[VerdictRow], observations: Sequence[ObservationRow], as_of_us: int
) -> int | None:
    """Per mille of the self-reported actions counting at `as_of_us` that some gateway
    observation (received by then) corroborates; None when there are none."""
    counting = [r for r in reports if 0 <= as_of_us - to_micros(r.occurred_at) < HORIZON_US]
    if not counting:
        return None
    seen: dict[str, list[ObservationRow]] = {}
    for o in observations:
        if o.correlation_id is not None and to_micros(o.received_at) <= as_of_us:
            seen.setdefault(o.correlation_id, []).append(o)
    covered = sum(
        1
        for r in counting
        if r.correlation_id is not None
        and any(_agrees(r, o) for o in seen.get(r.correlation_id, ()))
    )
    return covered * 1000 // len(counting)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything the model needs about one agent."""

    agent: AgentRecord | None
    commitments: list[CommitmentRecord]
    verdicts: list[VerdictRow]
    observations: list[ObservationRow]
    reports: list[VerdictRow]
    """Self-reports carrying the correlation ids of `observations` (for findings)."""

    def known_at(self, known_at: datetime) -> Evidence:
        """Without the registration and commitments the ledger had not received by
        `known_at` (verdicts and observations are filtered when they are loaded)."""
        agent = self.agent
        if agent is not None and agent.registered_received_at > known_at:
            agent = None
        return Evidence(
            agent,
            [c for c in self.commitments if c.history(known_at) is not None],
            self.verdicts,
            self.observations,
            self.reports,
        )

    def items(self, third_party_only: bool = False) -> list[Item]:
        """Every evidence item; with `third_party_only`, only other orgs' gateways'."""
        by_correlation: dict[str, list[VerdictRow]] = {}
        for r in self.reports:
            if r.correlation_id is not None:
                by_correlation.setdefault(r.correlation_id, []).append(r)
        items = [] if third_party_only else [verdict_item(v) for v in self.verdicts]
        known = KnownHistories(self.commitments)
        for seen in self.observations:
            if third_party_only and source_of(seen.observer, seen.org) != "third_party":
                continue
            items += observation_items(
                seen,
                known,
                self.agent,
                by_correlation.get(seen.correlation_id or "", []),
            )
        return items
