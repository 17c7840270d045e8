"""The first posture projection: per agent, actions within and outside commitments.

Pure and deterministic: state goes in, events are applied in ledger order,
state comes out. No clock is read; time comes from the events. The adapter
loads the state of the agents a batch touches, `PostureProjector.apply` folds
the batch into it, and the adapter writes back what changed, all in the
transaction that appends the batch (see `service.app.ingest`).

Judging one self-reported action (the full model, with spend, rate, data
classes, decay and gateway evidence, is described in `docs/posture-model.md`):

* the agent is retired                        → violation `agent_retired`
* no commitment is in force at `occurred_at`   → violation `uncommitted`
* none in force allows the action             → violation `action_not_allowed`
* none that allows the action bounds the resource → violation `resource_out_of_bounds`
* otherwise                                   → within bounds

A commitment is in force at t when `valid_from <= t`, `t < valid_until` (if
set) and `t < revoked_at` (if revoked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
)
from service.domain.patterns import matches_any

AgentKey = tuple[str, str]
"""(org, agent)."""


@dataclass(slots=True)
class AgentRecord:
    org: str
    agent: str
    display_name: str
    principal: str
    registered_seq: int
    retired_seq: int | None = None


@dataclass(slots=True)
class Commitment:
    org: str
    agent: str
    commitment_id: str
    version: int
    terms: CommitmentTerms
    declared_seq: int
    updated_seq: int
    revoked_at: datetime | None = None

    def in_force_at(self, at: datetime) -> bool:
        """True when the commitment covers actions at instant `at`."""
        if at < self.terms.valid_from:
            return False
        if self.terms.valid_until is not None and at >= self.terms.valid_until:
            return False
        return self.revoked_at is None or at < self.revoked_at


@dataclass(slots=True)
class PostureCounts:
    org: str
    agent: str
    actions_total: int = 0
    actions_within: int = 0
    actions_outside: int = 0
    last_action_at: datetime | None = None
    last_violation: str | None = None
    last_violation_chain: str | None = None
    last_violation_seq: int | None = None


@dataclass(slots=True)
class ObservationCounts:
    """What one gateway org has seen one agent do (written only from the observer's chain)."""

    observer: str
    org: str
    agent: str
    observed_total: int = 0
    last_observed_at: datetime | None = None


ObservationKey = tuple[str, str, str]
"""(org, agent, observer)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Within bounds (`violation is None`) or the kind of violation."""

    violation: str | None

    @property
    def within(self) -> bool:
        return self.violation is None


def judge(
    action: str,
    resource: str,
    at: datetime,
    commitments: list[Commitment],
    retired: bool = False,
) -> Verdict:
    """Judge one action against the agent's commitments."""
    if retired:
        return Verdict("agent_retired")
    in_force = [c for c in commitments if c.in_force_at(at)]
    if not in_force:
        return Verdict("uncommitted")
    allowing = [c for c in in_force if matches_any(c.terms.allowed_actions, action)]
    if not allowing:
        return Verdict("action_not_allowed")
    if not any(matches_any(c.terms.resource_bounds, resource) for c in allowing):
        return Verdict("resource_out_of_bounds")
    return Verdict(None)


@dataclass(slots=True)
class PostureProjector:
    """The in-memory state of the agents one batch touches, and what changed."""

    agents: dict[AgentKey, AgentRecord] = field(default_factory=dict)
    commitments: dict[AgentKey, dict[str, Commitment]] = field(default_factory=dict)
    posture: dict[AgentKey, PostureCounts] = field(default_factory=dict)
    observations: dict[ObservationKey, ObservationCounts] = field(default_factory=dict)
    dirty_agents: set[AgentKey] = field(default_factory=set)
    dirty_commitments: set[tuple[str, str, str]] = field(default_factory=set)
    dirty_posture: set[AgentKey] = field(default_factory=set)
    dirty_observations: set[ObservationKey] = field(default_factory=set)

    def _counts(self, key: AgentKey) -> PostureCounts:
        counts = self.posture.get(key)
        if counts is None:
            counts = self.posture[key] = PostureCounts(org=key[0], agent=key[1])
        self.dirty_posture.add(key)
        return counts

    def apply(self, event: Event, chain: str, seq: int) -> Verdict | None:
        """Fold one chained event into the state; returns the verdict for actions."""
        if isinstance(event, AgentRegistered):
            key = (event.org, event.agent)
            if key not in self.agents:
                self.agents[key] = AgentRecord(
                    event.org, event.agent, event.display_name, event.principal, seq
                )
                self.dirty_agents.add(key)
        elif isinstance(event, AgentRetired):
            record = self.agents.get((event.org, event.agent))
            if record is not None and record.retired_seq is None:
                record.retired_seq = seq
                self.dirty_agents.add((event.org, event.agent))
        elif isinstance(event, CommitmentDeclared):
            by_id = self.commitments.setdefault((event.org, event.agent), {})
            if event.commitment_id not in by_id:
                by_id[event.commitment_id] = Commitment(
                    event.org, event.agent, event.commitment_id, 1, event.terms, seq, seq
                )
                self.dirty_commitments.add((event.org, event.agent, event.commitment_id))
        elif isinstance(event, CommitmentAmended):
            current = self.commitments.get((event.org, event.agent), {}).get(event.commitment_id)
            if (
                current is not None
                and current.revoked_at is None
                and event.version > current.version
            ):
                current.version = event.version
                current.terms = event.terms
                current.updated_seq = seq
                self.dirty_commitments.add((event.org, event.agent, event.commitment_id))
        elif isinstance(event, CommitmentRevoked):
            current = self.commitments.get((event.org, event.agent), {}).get(event.commitment_id)
            if current is not None and current.revoked_at is None:
                current.revoked_at = event.occurred_at
                current.updated_seq = seq
                self.dirty_commitments.add((event.org, event.agent, event.commitment_id))
        elif isinstance(event, ActionPerformed):
            key = (event.org, event.agent)
            record = self.agents.get(key)
            verdict = judge(
                event.action,
                event.resource,
                event.occurred_at,
                list(self.commitments.get(key, {}).values()),
                retired=record is not None and record.retired_seq is not None,
            )
            counts = self._counts(key)
            counts.actions_total += 1
            if counts.last_action_at is None or event.occurred_at > counts.last_action_at:
                counts.last_action_at = event.occurred_at
            if verdict.within:
                counts.actions_within += 1
            else:
                counts.actions_outside += 1
                counts.last_violation = verdict.violation
                counts.last_violation_chain = chain
                counts.last_violation_seq = seq
            return verdict
        elif isinstance(event, ActionObserved):
            okey = (event.agent_org, event.agent, event.org)
            seen = self.observations.get(okey)
            if seen is None:
                seen = self.observations[okey] = ObservationCounts(
                    event.org, event.agent_org, event.agent
                )
            seen.observed_total += 1
            if seen.last_observed_at is None or event.occurred_at > seen.last_observed_at:
                seen.last_observed_at = event.occurred_at
            self.dirty_observations.add(okey)
        return None

    def mark_all_dirty(self) -> None:
        """Treat every row as changed (a rebuild writes everything)."""
        self.dirty_agents = set(self.agents)
        self.dirty_commitments = {
            (org, agent, cid) for (org, agent), by_id in self.commitments.items() for cid in by_id
        }
        self.dirty_posture = set(self.posture)
        self.dirty_observations = set(self.observations)


WATCH_SHARE_PERMILLE = 100
"""At most this share (per mille) of actions outside commitments keeps an agent on `watch`."""


def band_of(counts: PostureCounts | None, retired: bool) -> tuple[str, int | None]:
    """The band and score (0-1000, share of actions within bounds) of an agent.

    * `revoked`   the agent is retired
    * `unknown`   no self-reported action yet: no evidence either way
    * `trusted`   every action within bounds
    * `watch`     some outside, at most 10 % of them
    * `untrusted` more than 10 % outside
    Integer arithmetic only, so the answer is the same everywhere."""
    if retired:
        return "revoked", 0
    if counts is None or counts.actions_total == 0:
        return "unknown", None
    score = counts.actions_within * 1000 // counts.actions_total
    if counts.actions_outside == 0:
        return "trusted", score
    if counts.actions_outside * 1000 <= WATCH_SHARE_PERMILLE * counts.actions_total:
        return "watch", score
    return "untrusted", score
