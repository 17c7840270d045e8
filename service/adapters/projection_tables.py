"""PostgreSQL: the evidence projection's tables and the posture cache.

SQL for `service.domain.projection` rows, split from `postgres.py` (the
ledger) so each module has one job. Functions take a connection (inside a
batch or rebuild transaction) or the pool (reads); the callers translate
driver errors (`postgres.translate_errors`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import msgspec

from service.domain.chain import from_micros, to_micros
from service.domain.evaluation import LATE_GRACE_S, Charge, RollingWindow, Violation
from service.domain.events import CommitmentTerms, Money
from service.domain.evidence import REPORT_GRACE_US, Evidence
from service.domain.projection import (
    ActionRow,
    AgentKey,
    AgentRecord,
    CommitmentKey,
    CommitmentRecord,
    ObservationRow,
    Projector,
    VerdictRow,
    VersionRow,
)

POSTURE_PROJECTION = "posture"

PROJECTION_TABLES: tuple[tuple[str, str], ...] = (
    ("agents", "org, agent"),
    ("commitments", "org, agent, commitment_id"),
    ("commitment_versions", "org, agent, commitment_id, version"),
    ("commitment_windows", "org, agent, commitment_id"),
    ("action_verdicts", "org, seq"),
    ("observations", "observer, seq"),
    ("projection_positions", "projection, chain"),
)
"""Every table the log determines, with its total order (rebuild compares them)."""

Conn: TypeAlias = asyncpg.Connection | asyncpg.Pool

_terms_decoder = msgspec.json.Decoder(CommitmentTerms)
_violations_decoder = msgspec.json.Decoder(list[Violation])
_encoder = msgspec.json.Encoder()

_AGENT_KEYS = "JOIN unnest($1::text[], $2::text[]) AS k(org, agent) USING (org, agent)"


def _unzip(keys: Iterable[AgentKey]) -> tuple[list[str], list[str]]:
    ordered = sorted(set(keys))
    return [k[0] for k in ordered], [k[1] for k in ordered]


def _money(amount: int | None, currency: str | None) -> Money | None:
    return None if amount is None or currency is None else Money(amount, currency)


def _instant(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


def _agent(r: asyncpg.Record) -> AgentRecord:
    return AgentRecord(
        r["org"],
        r["agent"],
        r["display_name"],
        r["principal"],
        r["registered_seq"],
        r["registered_received_at"],
        r["retired_seq"],
        r["retired_at"],
        r["retired_received_at"],
    )


def _version(r: asyncpg.Record) -> VersionRow:
    return VersionRow(
        r["org"],
        r["agent"],
        r["commitment_id"],
        r["version"],
        _terms_decoder.decode(r["terms_json"]),
        r["effective_from"],
        r["seq"],
        r["received_at"],
    )


def _action_fields(r: asyncpg.Record) -> dict[str, Any]:
    """The columns verdict and observation rows share."""
    return {
        "seq": r["seq"],
        "event_id": r["event_id"],
        "org": r["org"],
        "agent": r["agent"],
        "occurred_at": r["occurred_at"],
        "received_at": r["received_at"],
        "action": r["action"],
        "resource": r["resource"],
        "amount": _money(r["amount_minor"], r["currency"]),
        "data_classes": tuple(r["data_classes"]),
        "correlation_id": r["correlation_id"],
    }


def _verdict(r: asyncpg.Record) -> VerdictRow:
    charge = None
    if r["charge_commitment"] is not None:
        # horizon_s is not stored: it only matters when the charge is recorded
        charge = Charge(r["charge_commitment"], r["occurred_at"], r["charge_amount"], 0)
    return VerdictRow(
        **_action_fields(r),
        within=r["within"],
        severity=r["severity"],
        violations=(() if r["within"] else tuple(_violations_decoder.decode(r["violations_json"]))),
        covering=r["covering"],
        ref=(r["org"], r["ref_seq"]) if r["ref_seq"] is not None else None,
        charge=charge,
    )


def _observation(r: asyncpg.Record) -> ObservationRow:
    return ObservationRow(observer=r["observer"], gateway=r["gateway"], **_action_fields(r))


async def _commitment_records(
    conn: Conn, orgs: list[str], agents: list[str]
) -> dict[AgentKey, dict[str, CommitmentRecord]]:
    out: dict[AgentKey, dict[str, CommitmentRecord]] = {}
    for r in await conn.fetch(
        f"SELECT * FROM commitments {_AGENT_KEYS} ORDER BY org, agent, commitment_id", orgs, agents
    ):
        out.setdefault((r["org"], r["agent"]), {})[r["commitment_id"]] = CommitmentRecord(
            r["org"],
            r["agent"],
            r["commitment_id"],
            [],
            r["revoked_at"],
            r["revoked_seq"],
            r["revoked_received_at"],
        )
    for r in await conn.fetch(
        f"SELECT * FROM commitment_versions {_AGENT_KEYS} ORDER BY org, agent, commitment_id, seq",
        orgs,
        agents,
    ):
        out[(r["org"], r["agent"])][r["commitment_id"]].versions.append(_version(r))
    return out


class WindowCache:
    """Rolling windows kept between batches by one ingest process.

    Restoring a window reads every charge after its cutoff (up to a day or more
    of actions), which dominated a batch's reads. An entry is used only when its
    `charged_seq` equals the database's, so a window that another process, a
    rebuild or a lost commit changed is restored again. `take` removes the
    entry: the batch owns the window, mutates it, and `put` returns it with its
    new seq when the batch is saved; if the batch rolls back instead, the entry
    is simply gone, never stale."""

    def __init__(self, max_windows: int = 50_000) -> None:
        self._entries: OrderedDict[CommitmentKey, tuple[int, RollingWindow]] = OrderedDict()
        self._max = max_windows
        self.hits = 0
        self.misses = 0

    def take(self, key: CommitmentKey, charged_seq: int) -> RollingWindow | None:
        found = self._entries.pop(key, None)
        if found is not None and found[0] == charged_seq:
            self.hits += 1
            return found[1]
        self.misses += 1
        return None

    def put(self, key: CommitmentKey, charged_seq: int, window: RollingWindow) -> None:
        self._entries[key] = (charged_seq, window)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


async def load_projection(
    conn: Conn, keys: Iterable[AgentKey], cache: WindowCache | None = None
) -> Projector:
    """The evidence state of the given agents, ready for `Projector.apply`."""
    projector = Projector()
    orgs, agents = _unzip(keys)
    if not orgs:
        return projector
    for r in await conn.fetch(f"SELECT * FROM agents {_AGENT_KEYS}", orgs, agents):
        projector.agents[(r["org"], r["agent"])] = _agent(r)
    projector.commitments = await _commitment_records(conn, orgs, agents)
    stale: dict[CommitmentKey, datetime | None] = {}
    for r in await conn.fetch(
        "SELECT org, agent, commitment_id, cutoff, charged_seq"
        f" FROM commitment_windows {_AGENT_KEYS}",
        orgs,
        agents,
    ):
        key = (r["org"], r["agent"], r["commitment_id"])
        projector.window_seqs[key] = r["charged_seq"]
        window = cache.take(key, r["charged_seq"]) if cache is not None else None
        if window is None:
            stale[key] = r["cutoff"]
        else:
            projector.windows.setdefault(key[:2], {})[key[2]] = window
    if stale:
        await _restore_windows(conn, projector, stale)
    return projector


async def _restore_windows(
    conn: Conn, projector: Projector, cutoffs: dict[CommitmentKey, datetime | None]
) -> None:
    """Rebuild windows from their cutoff and the charges after it."""
    keys = sorted(cutoffs)
    charges: dict[CommitmentKey, list[tuple[int, int]]] = {k: [] for k in keys}
    for r in await conn.fetch(
        "SELECT v.charge_commitment, v.org, v.agent, v.occurred_at, v.charge_amount"
        " FROM action_verdicts v"
        " JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(org, agent, commitment_id)"
        " ON v.org = k.org AND v.agent = k.agent AND v.charge_commitment = k.commitment_id"
        " JOIN commitment_windows w ON w.org = k.org AND w.agent = k.agent"
        " AND w.commitment_id = k.commitment_id"
        " WHERE w.cutoff IS NULL OR v.occurred_at > w.cutoff",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    ):
        charges[(r["org"], r["agent"], r["charge_commitment"])].append(
            (to_micros(r["occurred_at"]), r["charge_amount"])
        )
    for key in keys:
        org, agent, cid = key
        history = projector.commitments[(org, agent)][cid].history()
        horizon_s = history.horizon_s() if history is not None else 0
        cutoff = cutoffs[key]
        projector.windows.setdefault((org, agent), {})[cid] = RollingWindow.restore(
            horizon_s,
            LATE_GRACE_S,
            to_micros(cutoff) if cutoff is not None else None,
            charges[key],
        )


_ACTION_COLUMNS = (
    "seq",
    "event_id",
    "org",
    "agent",
    "occurred_at",
    "received_at",
    "action",
    "resource",
    "amount_minor",
    "currency",
    "data_classes",
    "correlation_id",
)
"""The columns of `ActionRow`, shared by `action_verdicts` and `observations`."""


def _action_record(a: ActionRow) -> tuple[object, ...]:
    return (
        a.seq,
        a.event_id,
        a.org,
        a.agent,
        a.occurred_at,
        a.received_at,
        a.action,
        a.resource,
        a.amount.amount_minor if a.amount else None,
        a.amount.currency if a.amount else None,
        list(a.data_classes),
        a.correlation_id,
    )


def _verdict_record(v: VerdictRow) -> tuple[object, ...]:
    return (
        *_action_record(v),
        v.within,
        v.severity,
        _encoder.encode(list(v.violations)).decode(),
        v.covering,
        v.ref[1] if v.ref else None,
        v.charge.commitment_id if v.charge else None,
        v.charge.amount_minor if v.charge else None,
    )


_VERDICT_COLUMNS = (
    *_ACTION_COLUMNS,
    "within",
    "severity",
    "violations_json",
    "covering",
    "ref_seq",
    "charge_commitment",
    "charge_amount",
)

_OBSERVATION_COLUMNS = (*_ACTION_COLUMNS, "observer", "gateway")


def _observation_record(o: ObservationRow) -> tuple[object, ...]:
    return (*_action_record(o), o.observer, o.gateway)


async def save_projection(
    conn: asyncpg.Connection,
    projector: Projector,
    positions: dict[str, int],
    cache: WindowCache | None = None,
) -> None:
    """Write what the projector changed, its new rows and the chain positions applied;
    hand the windows back to `cache` with their new versions."""
    if projector.dirty_agents:
        await conn.executemany(
            "INSERT INTO agents (org, agent, display_name, principal, registered_seq,"
            " registered_received_at, retired_seq, retired_at, retired_received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (org, agent) DO UPDATE SET retired_seq = EXCLUDED.retired_seq,"
            " retired_at = EXCLUDED.retired_at, retired_received_at = EXCLUDED.retired_received_at",
            [
                (
                    a.org,
                    a.agent,
                    a.display_name,
                    a.principal,
                    a.registered_seq,
                    a.registered_received_at,
                    a.retired_seq,
                    a.retired_at,
                    a.retired_received_at,
                )
                for a in (projector.agents[k] for k in sorted(projector.dirty_agents))
            ],
        )
    if projector.dirty_commitments:
        rows = []
        for org, agent, cid in sorted(projector.dirty_commitments):
            c = projector.commitments[(org, agent)][cid]
            latest = c.latest
            rows.append(
                (
                    org,
                    agent,
                    cid,
                    latest.version,
                    _encoder.encode(latest.terms).decode(),
                    latest.terms.valid_from,
                    latest.terms.valid_until,
                    c.revoked_at,
                    c.versions[0].seq,
                    max(latest.seq, c.revoked_seq or 0),
                    c.revoked_seq,
                    c.revoked_received_at,
                )
            )
        await conn.executemany(
            "INSERT INTO commitments (org, agent, commitment_id, version, terms_json, valid_from,"
            " valid_until, revoked_at, declared_seq, updated_seq, revoked_seq, revoked_received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            " ON CONFLICT (org, agent, commitment_id) DO UPDATE SET version = EXCLUDED.version,"
            " terms_json = EXCLUDED.terms_json, valid_from = EXCLUDED.valid_from,"
            " valid_until = EXCLUDED.valid_until, revoked_at = EXCLUDED.revoked_at,"
            " updated_seq = EXCLUDED.updated_seq, revoked_seq = EXCLUDED.revoked_seq,"
            " revoked_received_at = EXCLUDED.revoked_received_at",
            rows,
        )
    await append_rows(conn, projector)
    if projector.dirty_windows:
        await conn.executemany(
            "INSERT INTO commitment_windows (org, agent, commitment_id, cutoff, charged_seq)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (org, agent, commitment_id)"
            " DO UPDATE SET cutoff = EXCLUDED.cutoff, charged_seq = EXCLUDED.charged_seq",
            [
                (
                    org,
                    agent,
                    cid,
                    _instant(projector.windows[(org, agent)][cid].cutoff_us),
                    projector.window_seqs[(org, agent, cid)],
                )
                for org, agent, cid in sorted(projector.dirty_windows)
            ],
        )
    if cache is not None:
        for (org, agent), by_id in projector.windows.items():
            for cid, window in by_id.items():
                key = (org, agent, cid)
                cache.put(key, projector.window_seqs[key], window)
    if projector.touched:
        orgs, agents = _unzip(projector.touched)
        # Bumping the generation tells a scheduler that took the row before this
        # batch committed that its assessment is already stale (see `done_due`).
        await conn.execute(
            "INSERT INTO posture_due (org, agent) SELECT * FROM unnest($1::text[], $2::text[])"
            " ON CONFLICT (org, agent) DO UPDATE SET generation = posture_due.generation + 1",
            orgs,
            agents,
        )
    if positions:
        await conn.execute(
            "INSERT INTO projection_positions (projection, chain, seq)"
            " SELECT $1, p.chain, p.seq FROM unnest($2::text[], $3::bigint[]) AS p(chain, seq)"
            " ON CONFLICT (projection, chain) DO UPDATE SET seq = EXCLUDED.seq",
            POSTURE_PROJECTION,
            list(positions),
            list(positions.values()),
        )


async def append_rows(conn: asyncpg.Connection, projector: Projector) -> None:
    """Write the projector's new append-only rows (versions, verdicts, observations) and
    forget them, so a long replay holds only state, never the rows it produced."""
    if projector.new_versions:
        await conn.executemany(
            "INSERT INTO commitment_versions (org, agent, commitment_id, version, terms_json,"
            " effective_from, seq, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            [
                (
                    v.org,
                    v.agent,
                    v.commitment_id,
                    v.version,
                    _encoder.encode(v.terms).decode(),
                    v.effective_from,
                    v.seq,
                    v.received_at,
                )
                for v in projector.new_versions
            ],
        )
    if projector.new_verdicts:
        await conn.copy_records_to_table(
            "action_verdicts",
            records=[_verdict_record(v) for v in projector.new_verdicts],
            columns=_VERDICT_COLUMNS,
        )
    if projector.new_observations:
        await conn.copy_records_to_table(
            "observations",
            records=[_observation_record(o) for o in projector.new_observations],
            columns=_OBSERVATION_COLUMNS,
        )
    projector.new_versions.clear()
    projector.new_verdicts.clear()
    projector.new_observations.clear()


async def truncate_projection(conn: asyncpg.Connection) -> None:
    """Empty every projection table and the posture cache (a rebuild starts here)."""
    tables = ", ".join(t for t, _ in PROJECTION_TABLES)
    await conn.execute(f"TRUNCATE {tables}, agent_posture, posture_due")


async def replace_projection(
    conn: asyncpg.Connection, projector: Projector, positions: dict[str, int]
) -> None:
    """Write a replayed projector's whole state over tables emptied by
    `truncate_projection`, then queue every agent for the scheduler."""
    projector.mark_all_dirty()
    await save_projection(conn, projector, positions)
    await queue_all(conn)


async def dump_projection(conn: Conn) -> dict[str, list[tuple[object, ...]]]:
    """Every projection row in a fixed order, to compare two states exactly."""
    out: dict[str, list[tuple[object, ...]]] = {}
    for table, order in PROJECTION_TABLES:
        rows = await conn.fetch(f"SELECT * FROM {table} ORDER BY {order}")
        out[table] = [tuple(r.values()) for r in rows]
    return out


# --------------------------------------------------------------------------- reads


async def load_agent(conn: Conn, org: str, agent: str) -> AgentRecord | None:
    r = await conn.fetchrow("SELECT * FROM agents WHERE org = $1 AND agent = $2", org, agent)
    return None if r is None else _agent(r)


async def load_commitments(conn: Conn, org: str, agent: str) -> list[CommitmentRecord]:
    found = await _commitment_records(conn, [org], [agent])
    return list(found.get((org, agent), {}).values())


async def load_evidence(
    conn: Conn,
    org: str,
    agent: str,
    after: datetime,
    through: datetime,
    known_at: datetime | None,
) -> Evidence:
    """The evidence about one agent whose instants can fall in `(after, through]`,
    as the ledger held it at `known_at` (None: now). Evidence after `as_of` still
    matters to an assessment: it is when the posture next changes."""
    grace = timedelta(microseconds=REPORT_GRACE_US)
    verdicts = [
        _verdict(r)
        for r in await conn.fetch(
            "SELECT * FROM action_verdicts WHERE org = $1 AND agent = $2"
            " AND occurred_at > $3 AND occurred_at <= $4"
            " AND ($5::timestamptz IS NULL OR received_at <= $5) ORDER BY seq",
            org,
            agent,
            after,
            through,
            known_at,
        )
    ]
    observations = [
        _observation(r)
        for r in await conn.fetch(
            "SELECT * FROM observations WHERE org = $1 AND agent = $2"
            " AND ((occurred_at > $3 AND occurred_at <= $4)"
            "      OR (received_at > $3 - $6::interval AND received_at <= $4))"
            " AND ($5::timestamptz IS NULL OR received_at <= $5) ORDER BY observer, seq",
            org,
            agent,
            after,
            through,
            known_at,
            grace,
        )
    ]
    # The self-reports that settle the observations' findings: those among the
    # verdicts just loaded, and any with the same correlation ids outside their range.
    correlations = {o.correlation_id for o in observations if o.correlation_id}
    reports = [v for v in verdicts if v.correlation_id in correlations]
    if correlations:
        reports += [
            _verdict(r)
            for r in await conn.fetch(
                "SELECT v.* FROM action_verdicts v JOIN unnest($3::text[]) AS c(id)"
                " ON v.correlation_id = c.id WHERE v.org = $1 AND v.agent = $2"
                " AND NOT (v.occurred_at > $4 AND v.occurred_at <= $5)"
                " AND ($6::timestamptz IS NULL OR v.received_at <= $6) ORDER BY v.seq",
                org,
                agent,
                sorted(correlations),
                after,
                through,
                known_at,
            )
        ]
    return Evidence(
        agent=await load_agent(conn, org, agent),
        commitments=await load_commitments(conn, org, agent),
        verdicts=verdicts,
        observations=observations,
        reports=reports,
    )


async def window_usage(
    conn: Conn,
    org: str,
    agent: str,
    commitment_id: str,
    window_s: int,
    as_of: datetime,
    known_at: datetime | None,
) -> tuple[int, int]:
    """(spend in minor units, action count) charged to a commitment in `(as_of - window_s, as_of]`."""
    r = await conn.fetchrow(
        "SELECT coalesce(sum(charge_amount), 0) AS spent, count(*) AS n FROM action_verdicts"
        " WHERE org = $1 AND agent = $2 AND charge_commitment = $3"
        " AND occurred_at > $4 AND occurred_at <= $5"
        " AND ($6::timestamptz IS NULL OR received_at <= $6)",
        org,
        agent,
        commitment_id,
        as_of - timedelta(seconds=window_s),
        as_of,
        known_at,
    )
    assert r is not None
    return int(r["spent"]), int(r["n"])


async def chain_positions(conn: Conn, chains: Sequence[str]) -> dict[str, int]:
    """How far the projection has applied each chain."""
    rows = await conn.fetch(
        "SELECT chain, seq FROM projection_positions WHERE projection = $1"
        " AND chain = ANY($2::text[])",
        POSTURE_PROJECTION,
        list(chains),
    )
    return {r["chain"]: r["seq"] for r in rows}


# --------------------------------------------------------------------------- posture cache


@dataclass(frozen=True, slots=True)
class CachedPosture:
    org: str
    agent: str
    as_of: datetime
    band: str
    score: int | None
    confidence: int
    next_change_at: datetime | None
    next_change: str | None


@dataclass(frozen=True, slots=True)
class Due:
    """Agents to re-assess, and the queue generations they were taken at."""

    agents: list[AgentKey]
    generations: dict[AgentKey, int]


async def take_due(conn: Conn, tick: datetime, limit: int) -> Due:
    """Agents to re-assess at `tick`: evidence changed, or a change was due by then.

    Queue rows stay until `done_due`: a scheduler that dies mid-tick loses nothing."""
    queued = await conn.fetch(
        "SELECT org, agent, generation FROM posture_due ORDER BY org, agent LIMIT $1", limit
    )
    timed = await conn.fetch(
        "SELECT org, agent FROM agent_posture WHERE next_change_at <= $1"
        " ORDER BY next_change_at LIMIT $2",
        tick,
        limit,
    )
    return Due(
        sorted({(r["org"], r["agent"]) for r in [*queued, *timed]}),
        {(r["org"], r["agent"]): r["generation"] for r in queued},
    )


async def done_due(conn: Conn, generations: dict[AgentKey, int]) -> None:
    """Remove the queue rows assessed, unless ingest queued the agent again meanwhile."""
    if generations:
        keys = sorted(generations)
        await conn.execute(
            "DELETE FROM posture_due d USING unnest($1::text[], $2::text[], $3::bigint[])"
            " AS t(org, agent, generation)"
            " WHERE d.org = t.org AND d.agent = t.agent AND d.generation = t.generation",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [generations[k] for k in keys],
        )


async def save_cached(conn: Conn, rows: Sequence[tuple[CachedPosture, str]]) -> None:
    """Store each agent's latest assessment: its summary and the whole report (JSON)."""
    if rows:
        await conn.executemany(
            "INSERT INTO agent_posture (org, agent, as_of, band, score, confidence,"
            " next_change_at, next_change, report_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (org, agent) DO UPDATE SET as_of = EXCLUDED.as_of,"
            " band = EXCLUDED.band, score = EXCLUDED.score, confidence = EXCLUDED.confidence,"
            " next_change_at = EXCLUDED.next_change_at, next_change = EXCLUDED.next_change,"
            " report_json = EXCLUDED.report_json",
            [
                (
                    p.org,
                    p.agent,
                    p.as_of,
                    p.band,
                    p.score,
                    p.confidence,
                    p.next_change_at,
                    p.next_change,
                    report,
                )
                for p, report in rows
            ],
        )


_CACHED_COLUMNS = "org, agent, as_of, band, score, confidence, next_change_at, next_change"


async def cached(conn: Conn, keys: Iterable[AgentKey]) -> dict[AgentKey, CachedPosture]:
    orgs, agents = _unzip(keys)
    rows = await conn.fetch(
        f"SELECT {_CACHED_COLUMNS} FROM agent_posture {_AGENT_KEYS}", orgs, agents
    )
    return {(r["org"], r["agent"]): CachedPosture(**dict(r)) for r in rows}


async def cached_report(conn: Conn, org: str, agent: str) -> tuple[datetime, str, bool] | None:
    """The latest assessment's instant and report, and whether evidence arrived since."""
    r = await conn.fetchrow(
        "SELECT p.as_of, p.report_json, EXISTS (SELECT 1 FROM posture_due d"
        " WHERE d.org = p.org AND d.agent = p.agent) AS queued"
        " FROM agent_posture p WHERE p.org = $1 AND p.agent = $2",
        org,
        agent,
    )
    return None if r is None else (r["as_of"], r["report_json"], r["queued"])


async def list_cached(
    conn: Conn, band: str | None, after: AgentKey, limit: int
) -> list[CachedPosture]:
    rows = await conn.fetch(
        f"SELECT {_CACHED_COLUMNS} FROM agent_posture WHERE ($1::text IS NULL OR band = $1)"
        " AND (org, agent) > ($2, $3) ORDER BY org, agent LIMIT $4",
        band,
        after[0],
        after[1],
        limit,
    )
    return [CachedPosture(**dict(r)) for r in rows]


async def count_bands(conn: Conn) -> dict[str, int]:
    rows = await conn.fetch("SELECT band, count(*) AS n FROM agent_posture GROUP BY band")
    return {r["band"]: r["n"] for r in rows}


async def queue_all(conn: Conn) -> None:
    """Queue every known agent for re-assessment (after a rebuild)."""
    await conn.execute(
        "INSERT INTO posture_due (org, agent)"
        " SELECT org, agent FROM agents UNION SELECT org, agent FROM commitments"
        " UNION SELECT org, agent FROM action_verdicts UNION SELECT org, agent FROM observations"
        " ON CONFLICT DO NOTHING"
    )
