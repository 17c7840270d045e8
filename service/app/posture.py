"""Posture use cases: assess one agent (now, or as the ledger stood at a past
time), its timeline, and the scheduler's re-assessment of due agents.

The time of an assessment is an input: the API passes the request's instant
(or `?at=`), the scheduler its tick. Nothing below reads a clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import get_args

import msgspec

from service.adapters import projection_tables as tables
from service.adapters.postgres import LedgerStore, translate_errors
from service.domain.chain import from_micros, to_micros
from service.domain.evidence import REPORT_GRACE_US, Evidence, coverage_permille, status_of
from service.domain.posture import HORIZON_US, Assessment, Band, Item, assess, band_changes
from service.domain.projection import AgentKey, CommitmentRecord
from service.errors import NotFoundError

log = logging.getLogger(__name__)

RECENT_LIMIT = 20
"""Adverse items listed in a posture answer, newest first."""

MODEL = "trustledger-posture/v2"

_report_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Budget:
    """One ceiling of a commitment and how much of it is used as of the assessment."""

    kind: str  # "spend_window" | "rate"
    window_s: int
    limit: int
    used: int
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class CommitmentInForce:
    commitment_id: str
    version: int
    ref: tuple[str, int]
    budgets: tuple[Budget, ...]
    per_action_minor: int | None
    currency: str | None


@dataclass(frozen=True, slots=True)
class PostureReport:
    org: str
    agent: str
    as_of: datetime
    known_at: datetime | None
    third_party_only: bool
    assessment: Assessment
    registered: bool
    retired: bool
    coverage_permille: int | None
    observed_by: dict[str, int]
    """Gateway observations counting now, per observing org."""
    recent: list[Item]
    commitments: list[CommitmentInForce]
    positions: dict[str, int]


def _horizon() -> timedelta:
    return timedelta(microseconds=HORIZON_US)


async def _evidence(
    conn: tables.Conn,
    org: str,
    agent: str,
    after: datetime,
    through: datetime,
    known_at: datetime | None,
) -> Evidence:
    async with translate_errors("reading posture evidence"):
        evidence = await tables.load_evidence(conn, org, agent, after, through, known_at)
    if known_at is not None:
        evidence = evidence.known_at(known_at)
    if not (evidence.agent or evidence.commitments or evidence.observations or evidence.verdicts):
        when = f" by {known_at.isoformat()}" if known_at is not None else ""
        raise NotFoundError(f"no events about agent {org}/{agent} were in the ledger{when}")
    return evidence


async def _in_force(
    conn: tables.Conn,
    records: list[CommitmentRecord],
    names: tuple[str, ...],
    as_of: datetime,
    known_at: datetime | None,
) -> list[CommitmentInForce]:
    out: list[CommitmentInForce] = []
    for record in records:
        history = record.history(known_at)
        if record.commitment_id not in names or history is None:
            continue
        version = history.version_at(as_of)
        if version is None:
            continue
        terms = version.terms
        budgets: list[Budget] = []
        async with translate_errors("reading commitment usage"):
            spend = terms.spend
            if (
                spend is not None
                and spend.per_window_minor is not None
                and spend.window_s is not None
            ):
                spent, _ = await tables.window_usage(
                    conn,
                    record.org,
                    record.agent,
                    record.commitment_id,
                    spend.window_s,
                    as_of,
                    known_at,
                )
                budgets.append(
                    Budget(
                        "spend_window",
                        spend.window_s,
                        spend.per_window_minor,
                        spent,
                        spend.currency,
                    )
                )
            if terms.rate is not None:
                _, count = await tables.window_usage(
                    conn,
                    record.org,
                    record.agent,
                    record.commitment_id,
                    terms.rate.window_s,
                    as_of,
                    known_at,
                )
                budgets.append(Budget("rate", terms.rate.window_s, terms.rate.max_count, count))
        out.append(
            CommitmentInForce(
                commitment_id=record.commitment_id,
                version=version.version,
                ref=version.ref,
                budgets=tuple(budgets),
                per_action_minor=terms.spend.per_action_minor if terms.spend else None,
                currency=terms.spend.currency if terms.spend else None,
            )
        )
    return out


def _positions(evidence: Evidence, items: list[Item], known_at: datetime | None) -> dict[str, int]:
    """The newest entry of each chain the answer rests on."""
    seqs: dict[str, int] = {}

    def note(chain: str, seq: int | None) -> None:
        if seq is not None and seq > seqs.get(chain, 0):
            seqs[chain] = seq

    for item in items:
        note(*item.ref)
    for record in evidence.commitments:
        for v in record.versions:
            if known_at is None or v.received_at <= known_at:
                note(v.org, v.seq)
        if record.revoked_received_at is not None and (
            known_at is None or record.revoked_received_at <= known_at
        ):
            note(record.org, record.revoked_seq)
    if evidence.agent is not None:
        note(evidence.agent.org, evidence.agent.registered_seq)
        if evidence.agent.retired_received_at is not None and (
            known_at is None or evidence.agent.retired_received_at <= known_at
        ):
            note(evidence.agent.org, evidence.agent.retired_seq)
    return dict(sorted(seqs.items()))


async def assess_agent(
    store: LedgerStore,
    org: str,
    agent: str,
    as_of: datetime,
    known_at: datetime | None = None,
    third_party_only: bool = False,
) -> PostureReport:
    """The posture of one agent at `as_of` from what the ledger held at `known_at`
    (None: everything it holds now). Every read is in one snapshot, so the evidence
    and the positions the answer names are consistent."""
    async with store.snapshot() as conn:
        return await _assess(conn, org, agent, as_of, known_at, third_party_only)


async def _assess(
    conn: tables.Conn,
    org: str,
    agent: str,
    as_of: datetime,
    known_at: datetime | None,
    third_party_only: bool,
) -> PostureReport:
    # Evidence up to a horizon after `as_of` too: it decides when the posture next changes.
    evidence = await _evidence(conn, org, agent, as_of - _horizon(), as_of + _horizon(), known_at)
    items = evidence.items(third_party_only)
    status = status_of(evidence.agent, evidence.commitments, known_at)
    as_of_us = to_micros(as_of)
    result = assess(items, status, as_of_us)
    counting = [i for i in items if i.at_us <= as_of_us < i.at_us + HORIZON_US]
    observations = [o for o in evidence.observations if not third_party_only or o.observer != org]
    recent = sorted(
        (i for i in counting if i.severity > 0), key=lambda i: (i.at_us, i.ref), reverse=True
    )[:RECENT_LIMIT]
    observed_by: dict[str, int] = {}
    for seen in observations:
        if 0 <= as_of_us - to_micros(seen.occurred_at) < HORIZON_US:
            observed_by[seen.observer] = observed_by.get(seen.observer, 0) + 1
    positions = _positions(evidence, items, known_at)
    if known_at is None:
        async with translate_errors("reading projection positions"):
            positions.update(await tables.chain_positions(conn, [org, *observed_by]))
    record = evidence.agent
    return PostureReport(
        org=org,
        agent=agent,
        as_of=as_of,
        known_at=known_at,
        third_party_only=third_party_only,
        assessment=result,
        registered=record is not None,
        retired=status.retired_at_us is not None and status.retired_at_us <= as_of_us,
        coverage_permille=coverage_permille(evidence.verdicts, observations, as_of_us),
        observed_by=dict(sorted(observed_by.items())),
        recent=recent,
        commitments=await _in_force(conn, evidence.commitments, result.in_force, as_of, known_at),
        positions=positions,
    )


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    at: datetime
    before: str
    after: str
    evidence: list[Item]
    """Evidence that took effect at this instant (empty: time alone moved the posture)."""


@dataclass(frozen=True, slots=True)
class Timeline:
    start: Assessment
    points: list[TimelinePoint]
    truncated: bool


async def timeline(
    store: LedgerStore,
    org: str,
    agent: str,
    after: datetime,
    through: datetime,
    third_party_only: bool = False,
    limit: int = 200,
) -> Timeline:
    """The band and commitments in force at `after`, then every change up to `through`,
    from everything the ledger holds now."""
    grace = timedelta(microseconds=REPORT_GRACE_US)
    async with store.snapshot() as conn:
        evidence = await _evidence(conn, org, agent, after - _horizon() - grace, through, None)
    items = evidence.items(third_party_only)
    status = status_of(evidence.agent, evidence.commitments)
    from_us, to_us = to_micros(after), to_micros(through)
    changes = band_changes(items, status, from_us, to_us, limit + 1)
    by_instant: dict[int, list[Item]] = {}
    for item in items:
        by_instant.setdefault(item.at_us, []).append(item)
    points = [
        TimelinePoint(from_micros(t), before, after_, by_instant.get(t, []))
        for t, before, after_ in changes[:limit]
    ]
    return Timeline(assess(items, status, from_us), points, len(changes) > limit)


async def commitments_of(store: LedgerStore, org: str, agent: str) -> list[CommitmentRecord]:
    """Every commitment of the agent, with its versions in chain order."""
    async with translate_errors("reading commitments"):
        return await tables.load_commitments(store.pool, org, agent)


async def list_postures(
    store: LedgerStore, band: str | None, after: AgentKey, limit: int
) -> list[tables.CachedPosture]:
    """The scheduler's latest assessments, in (org, agent) order."""
    async with translate_errors("listing postures"):
        return await tables.list_cached(store.pool, band, after, limit)


async def bands_count(store: LedgerStore) -> dict[str, int]:
    """How many agents the scheduler last assessed in each band (every band listed)."""
    async with translate_errors("counting agents per band"):
        counted = await tables.count_bands(store.pool)
    return {band: counted.get(band, 0) for band in get_args(Band)}


async def reassess_due(store: LedgerStore, tick: datetime, limit: int = 500) -> list[AgentKey]:
    """Re-assess, as of `tick`, only the agents whose evidence changed since the last
    tick or whose posture was due to change by `tick`; update the cache. Returns the
    agents assessed (an agent with no evidence left in the ledger is skipped)."""
    async with translate_errors("taking agents due for re-assessment"):
        due = await tables.take_due(store.pool, tick, limit)
        before = await tables.cached(store.pool, due.agents)
    rows: list[tuple[tables.CachedPosture, str]] = []
    for org, agent in due.agents:
        try:
            report = await assess_agent(store, org, agent, tick)
        except NotFoundError:
            continue
        a = report.assessment
        old = before.get((org, agent))
        if old is None or old.band != a.band:
            log.info(
                "posture of %s/%s: %s -> %s (score %s, as of %s)",
                org, agent, old.band if old else "(none)", a.band, a.score, tick.isoformat(),
            )  # fmt: skip
        summary = tables.CachedPosture(
            org=org,
            agent=agent,
            as_of=tick,
            band=a.band,
            score=a.score,
            confidence=a.confidence,
            next_change_at=(
                from_micros(a.next_change_at_us) if a.next_change_at_us is not None else None
            ),
            next_change=a.next_change,
        )
        rows.append((summary, _report_encoder.encode(report).decode()))
    async with translate_errors("saving re-assessed postures"):
        await tables.save_cached(store.pool, rows)
        await tables.done_due(store.pool, due.generations)
    return [(r.org, r.agent) for r, _ in rows]


async def recent_assessment(
    store: LedgerStore, org: str, agent: str, now: datetime, max_age: timedelta
) -> PostureReport | None:
    """The scheduler's latest assessment of the agent if it is at most `max_age` old at
    `now` and no evidence about the agent arrived since; else None (assess live)."""
    async with translate_errors("reading the latest assessment"):
        found = await tables.cached_report(store.pool, org, agent)
    if found is None:
        return None
    as_of, report, queued = found
    if queued or not timedelta(0) <= now - as_of <= max_age:
        return None
    return _report_decoder.decode(report)


_report_decoder = msgspec.json.Decoder(PostureReport)
