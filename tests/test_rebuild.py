"""Rebuild equals incremental: 50,000 mixed events ingested batch by batch, then replayed."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from conftest import OrgKeyFactory
from mixed_traffic import AGENT_ORGS, GATEWAY_ORGS, START, mixed_traffic

from service.adapters.postgres import LedgerStore
from service.adapters.publisher import signed_message, subject_for
from service.app.ingest import ingest_batch
from service.app.posture import assess_agent
from service.app.rebuild import rebuild_projections
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming
from service.domain.evaluation import SEVERITY
from service.domain.events import Event
from service.domain.signing import SigningKey

EVENTS = 50_000
PREFIX = "tl"


class _LedgerClock:
    """Receive times that follow the traffic's own clock, never going back."""

    def __init__(self) -> None:
        self.now = START

    def advance_to(self, instant: datetime) -> None:
        self.now = max(self.now + timedelta(milliseconds=1), instant + timedelta(seconds=2))

    def __call__(self) -> datetime:
        return self.now


def _messages(events: list[Event], keys: dict[str, SigningKey]) -> list[Incoming]:
    out = []
    for n, event in enumerate(events, start=1):
        data, headers = signed_message(event, keys[event.org])
        out.append(
            Incoming(
                subject=subject_for(event, PREFIX),
                data=data,
                key_id=headers[KEY_ID_HEADER],
                signature=headers[SIGNATURE_HEADER],
                stream_seq=n,
            )
        )
    return out


async def test_rebuilt_projections_equal_incremental_ones_when_50k_mixed_events_are_replayed(
    store: LedgerStore, org_key: OrgKeyFactory
) -> None:
    """Ingest in random batches, then rebuild from the log: every projection row is identical."""
    keys = {org: await org_key(org) for org in (*AGENT_ORGS, *GATEWAY_ORGS)}
    events = mixed_traffic(EVENTS)
    assert len(events) >= EVENTS
    messages = _messages(events, keys)
    rng = random.Random(11)  # noqa: S311 - reproducible batch boundaries
    clock = _LedgerClock()
    i = 0
    while i < len(messages):
        size = rng.choice([1, 7, 50, 200, 500])
        clock.advance_to(max(e.occurred_at for e in events[i : i + size]))
        outcome = await ingest_batch(store, messages[i : i + size], PREFIX, clock=clock)
        assert outcome.quarantined == {}, outcome.quarantined
        i += size

    incremental = await store.dump_projections()
    counts = {table: len(rows) for table, rows in incremental.items()}
    assert counts["action_verdicts"] > 40_000, counts
    assert counts["observations"] > 5_000, counts
    pool = store.pool
    # The stream reached every case the projection distinguishes.
    kinds = {
        r["kind"]
        for r in await pool.fetch(
            "SELECT DISTINCT json_array_elements(violations_json::json)->>'kind' AS kind"
            " FROM action_verdicts"
        )
    }
    assert kinds == set(SEVERITY), set(SEVERITY) - kinds
    assert await pool.fetchval("SELECT count(*) FROM commitment_windows WHERE cutoff IS NOT NULL")
    assert await pool.fetchval("SELECT max(version) FROM commitment_versions") >= 3
    assert await pool.fetchval("SELECT count(*) FROM agents WHERE retired_seq IS NOT NULL")
    assert await pool.fetchval(
        "SELECT count(*) FROM action_verdicts WHERE occurred_at < received_at - interval '1 day'"
    )
    as_of = clock.now
    before = [await assess_agent(store, org, "agent-03", as_of) for org in AGENT_ORGS]

    # Spoil every table first: the rebuild must rewrite them from the log alone.
    await pool.execute("UPDATE action_verdicts SET severity = 0, within = true")
    await pool.execute("UPDATE commitment_windows SET cutoff = NULL")
    await pool.execute("DELETE FROM observations WHERE seq % 2 = 0")
    assert await store.dump_projections() != incremental

    replayed = await rebuild_projections(store)
    assert replayed == len(events) + len(keys)  # and each org's key registration
    assert await store.dump_projections() == incremental
    after = [await assess_agent(store, org, "agent-03", as_of) for org in AGENT_ORGS]
    assert after == before
