"""The evidence projection: chained events folded into rows the posture model reads.

Pure and deterministic: state goes in, events are applied in ledger order,
state and new rows come out. No clock is read; times come from the events and
from each entry's `received_at` (the ledger's clock, part of the hashed entry).
The adapter loads the state of the agents a batch touches, `Projector.apply`
folds the batch into it, and the adapter writes back what changed, in the
transaction that appends the batch (see `service.app.ingest`).

Every row is written from exactly one chain: an agent's registration,
commitments, commitment windows and self-reported verdicts from its org's
chain; a gateway's observations from the gateway org's chain. Chains are
independent, so replaying the log chain by chain (`projections rebuild`)
writes exactly the rows that ingest wrote batch by batch.

What each event does:

* `agent.registered`: records the agent (a repeat is ignored).
* `agent.retired`: marks a registered agent retired (chain order decides:
  every action chained after it is `agent_retired`).
* `commitment.declared`: version 1 of a new `commitment_id` (a repeat is ignored).
* `commitment.amended`: a new version, when the commitment exists, is not
  revoked and `version` is greater than the latest (versions may skip).
* `commitment.revoked`: revoked from the revocation's `occurred_at` on.
* `action.performed`: judged by `evaluation.evaluate` against the versions in
  effect at its `occurred_at`, its charge recorded in the commitment's rolling
  window; one `VerdictRow`.
* `action.observed`: one `ObservationRow`, judged at read time (see
  `service.domain.evidence`), because its judgement needs the agent's chain
  and a row must have one writer chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict

from service.domain.evaluation import (
    LATE_GRACE_S,
    ActionFacts,
    Charge,
    CommitmentHistory,
    CommitmentVersion,
    Evaluation,
    RollingWindow,
    Violation,
    evaluate,
    record,
)
from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AgentRegistered,
    AgentRetired,
    CommitmentAmended,
    CommitmentDeclared,
    CommitmentRevoked,
    CommitmentTerms,
    Event,
    Money,
)

AgentKey = tuple[str, str]
"""(org, agent)."""

CommitmentKey = tuple[str, str, str]
"""(org, agent, commitment_id)."""


@dataclass(slots=True)
class AgentRecord:
    org: str
    agent: str
    display_name: str
    principal: str
    registered_seq: int
    registered_received_at: datetime
    retired_seq: int | None = None
    retired_at: datetime | None = None
    """The retirement's `occurred_at`."""
    retired_received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One version of a commitment, as chained."""

    org: str
    agent: str
    commitment_id: str
    version: int
    terms: CommitmentTerms
    effective_from: datetime
    seq: int
    received_at: datetime

    def as_version(self) -> CommitmentVersion:
        return CommitmentVersion(
            self.commitment_id, self.version, self.terms, self.effective_from, (self.org, self.seq)
        )


@dataclass(slots=True)
class CommitmentRecord:
    """A commitment: its versions in chain order and its revocation, if any."""

    org: str
    agent: str
    commitment_id: str
    versions: list[VersionRow]
    revoked_at: datetime | None = None
    revoked_seq: int | None = None
    revoked_received_at: datetime | None = None

    @property
    def latest(self) -> VersionRow:
        return self.versions[-1]

    def history(self, known_at: datetime | None = None) -> CommitmentHistory | None:
        """The history as the ledger knew it at `known_at` (None: everything chained)."""
        versions = [
            v.as_version() for v in self.versions if known_at is None or v.received_at <= known_at
        ]
        if not versions:
            return None
        revoked = self.revoked_at is not None and (
            known_at is None
            or (self.revoked_received_at is not None and self.revoked_received_at <= known_at)
        )
        return CommitmentHistory(
            self.commitment_id,
            versions,
            self.revoked_at if revoked else None,
            (self.org, self.revoked_seq) if revoked and self.revoked_seq is not None else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRow:
    """What the projection records of any action: its entry (`seq` in its chain),
    the agent `(org, agent)` it is about, and its facts."""

    seq: int
    event_id: str
    org: str
    agent: str
    occurred_at: datetime
    received_at: datetime
    action: str
    resource: str
    amount: Money | None
    data_classes: tuple[str, ...]
    correlation_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerdictRow(ActionRow):
    """A self-reported action (its chain is `org`) and its verdict."""

    within: bool
    severity: int
    violations: tuple[Violation, ...]
    covering: str | None
    ref: tuple[str, int] | None
    charge: Charge | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObservationRow(ActionRow):
    """An action a gateway of `observer` (the row's chain) saw the agent perform."""

    observer: str
    gateway: str


@dataclass(slots=True)
class Projector:
    """The evidence state of the agents one batch touches, and what changed."""

    agents: dict[AgentKey, AgentRecord] = field(default_factory=dict)
    commitments: dict[AgentKey, dict[str, CommitmentRecord]] = field(default_factory=dict)
    windows: dict[AgentKey, dict[str, RollingWindow]] = field(default_factory=dict)
    window_seqs: dict[CommitmentKey, int] = field(default_factory=dict)
    """The seq of the newest verdict charged to each window: the window's version."""
    dirty_agents: set[AgentKey] = field(default_factory=set)
    dirty_commitments: set[CommitmentKey] = field(default_factory=set)
    dirty_windows: set[CommitmentKey] = field(default_factory=set)
    new_versions: list[VersionRow] = field(default_factory=list)
    new_verdicts: list[VerdictRow] = field(default_factory=list)
    new_observations: list[ObservationRow] = field(default_factory=list)
    touched: set[AgentKey] = field(default_factory=set)
    """Agents whose posture may have changed (the scheduler re-assesses them)."""

    def apply(self, event: Event, chain: str, seq: int, received_at: datetime) -> None:
        """Fold one chained event into the state."""
        if isinstance(event, ActionObserved):
            self._observed(event, chain, seq, received_at)
            return
        if not isinstance(
            event,
            AgentRegistered
            | AgentRetired
            | CommitmentDeclared
            | CommitmentAmended
            | CommitmentRevoked
            | ActionPerformed,
        ):
            return  # publisher keys: no projection
        key = (event.org, event.agent)
        self.touched.add(key)
        if isinstance(event, AgentRegistered):
            if key not in self.agents:
                self.agents[key] = AgentRecord(
                    event.org, event.agent, event.display_name, event.principal, seq, received_at
                )
                self.dirty_agents.add(key)
        elif isinstance(event, AgentRetired):
            agent = self.agents.get(key)
            if agent is not None and agent.retired_seq is None:
                agent.retired_seq = seq
                agent.retired_at = event.occurred_at
                agent.retired_received_at = received_at
                self.dirty_agents.add(key)
        elif isinstance(event, CommitmentDeclared | CommitmentAmended):
            self._version(event, seq, received_at)
        elif isinstance(event, CommitmentRevoked):
            found = self.commitments.get(key, {}).get(event.commitment_id)
            if found is not None and found.revoked_at is None:
                found.revoked_at = event.occurred_at
                found.revoked_seq = seq
                found.revoked_received_at = received_at
                self.dirty_commitments.add((*key, event.commitment_id))
        else:
            self._performed(event, seq, received_at)

    def _version(
        self, event: CommitmentDeclared | CommitmentAmended, seq: int, received_at: datetime
    ) -> None:
        key = (event.org, event.agent)
        by_id = self.commitments.setdefault(key, {})
        found = by_id.get(event.commitment_id)
        version = event.version if isinstance(event, CommitmentAmended) else 1
        if isinstance(event, CommitmentDeclared) and found is not None:
            return
        if isinstance(event, CommitmentAmended) and (
            found is None or found.revoked_at is not None or version <= found.latest.version
        ):
            return
        row = VersionRow(
            event.org,
            event.agent,
            event.commitment_id,
            version,
            event.terms,
            event.occurred_at,
            seq,
            received_at,
        )
        if found is None:
            by_id[event.commitment_id] = CommitmentRecord(
                event.org, event.agent, event.commitment_id, [row]
            )
        else:
            found.versions.append(row)
        self.new_versions.append(row)
        self.dirty_commitments.add((*key, event.commitment_id))

    def _performed(self, event: ActionPerformed, seq: int, received_at: datetime) -> None:
        key = (event.org, event.agent)
        agent = self.agents.get(key)
        histories = [
            h for c in self.commitments.get(key, {}).values() if (h := c.history()) is not None
        ]
        usage = self.windows.setdefault(key, {})
        verdict = evaluate(
            ActionFacts.of(event),
            histories,
            usage,
            retired=agent is not None and agent.retired_seq is not None,
        )
        record(usage, verdict, LATE_GRACE_S)
        if verdict.charge is not None:
            charged = (*key, verdict.charge.commitment_id)
            self.window_seqs[charged] = seq
            self.dirty_windows.add(charged)
        self.new_verdicts.append(_verdict_row(event, seq, received_at, verdict))

    def _observed(self, event: ActionObserved, chain: str, seq: int, received_at: datetime) -> None:
        self.touched.add((event.agent_org, event.agent))
        self.new_observations.append(
            ObservationRow(
                observer=chain,
                gateway=event.gateway,
                **_action_fields(event, event.agent_org, seq, received_at),
            )
        )

    def mark_all_dirty(self) -> None:
        """Treat every state row as changed (a rebuild writes everything)."""
        self.dirty_agents = set(self.agents)
        self.dirty_commitments = {
            (org, agent, cid) for (org, agent), by_id in self.commitments.items() for cid in by_id
        }
        self.dirty_windows = {
            (org, agent, cid) for (org, agent), by_id in self.windows.items() for cid in by_id
        }


class _ActionFields(TypedDict):
    seq: int
    event_id: str
    org: str
    agent: str
    occurred_at: datetime
    received_at: datetime
    action: str
    resource: str
    amount: Money | None
    data_classes: tuple[str, ...]
    correlation_id: str | None


def _action_fields(
    event: ActionPerformed | ActionObserved, org: str, seq: int, received_at: datetime
) -> _ActionFields:
    """What verdict and observation rows record of an action; `org` is the agent's."""
    return {
        "seq": seq,
        "event_id": event.id,
        "org": org,
        "agent": event.agent,
        "occurred_at": event.occurred_at,
        "received_at": received_at,
        "action": event.action,
        "resource": event.resource,
        "amount": event.amount,
        "data_classes": tuple(event.data_classes),
        "correlation_id": event.correlation_id,
    }


def _verdict_row(
    event: ActionPerformed, seq: int, received_at: datetime, verdict: Evaluation
) -> VerdictRow:
    return VerdictRow(
        **_action_fields(event, event.org, seq, received_at),
        within=verdict.within,
        severity=verdict.max_severity,
        violations=tuple(verdict.violations),
        covering=verdict.covering,
        ref=verdict.ref,
        charge=verdict.charge,
    )
