"""Rebuild equals incremental: 50,000 mixed events ingested batch by batch, then replayed;
and a database upgraded from the first projection catches up from its log."""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest
from conftest import OrgKeyFactory, Servers, database_url, pg_execute, wait_until
from mixed_traffic import AGENT_ORGS, GATEWAY_ORGS, START, mixed_traffic

from service.adapters.embedded import free_tcp_port
from service.adapters.migrations import migrate, migrations_dir
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import signed_message, subject_for
from service.app.ingest import ingest_batch
from service.app.posture import assess_agent
from service.app.rebuild import rebuild_projections
from service.config import Settings
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming
from service.domain.evaluation import SEVERITY
from service.domain.events import ActionPerformed, Event
from service.domain.signing import SigningKey
from service.roles import Roles, run_roles

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


# ---- upgrading a database from the first projection -------------------------------------------


async def test_ingest_start_rebuilds_projections_when_upgraded_from_the_first_projection(
    servers: Servers, settings: Settings, store: LedgerStore, org_key: OrgKeyFactory, tmp_path: Path
) -> None:
    """A 0003 database with a log gets 0004 (projections emptied); ingest's start rebuilds them."""
    keys = {org: await org_key(org) for org in (*AGENT_ORGS, *GATEWAY_ORGS)}
    events = mixed_traffic(2_000, seed=3)
    messages = _messages(events, keys)
    for i in range(0, len(messages), 300):
        await ingest_batch(store, messages[i : i + 300], PREFIX)
    expected = await store.dump_projections()

    # The same log in a database that has only the first three migrations.
    old_dir = tmp_path / "migrations"
    old_dir.mkdir()
    for path in sorted(migrations_dir().glob("000[123]_*.sql")):
        shutil.copy(path, old_dir)
    name = f"tl_{secrets.token_hex(6)}"
    await pg_execute(servers.database_url, f'CREATE DATABASE "{name}"')
    upgraded = database_url(servers.database_url, name)
    try:
        await migrate(upgraded, old_dir)
        source = await asyncpg.connect(settings.database_url)
        target = await asyncpg.connect(upgraded)
        try:
            for table in ("chains", "ledger_entries", "publisher_keys"):
                rows = await source.fetch(f"SELECT * FROM {table}")
                columns = list(rows[0].keys())
                await target.copy_records_to_table(
                    table, records=[tuple(r.values()) for r in rows], columns=columns
                )
            # A row of the first projection, which 0004 drops.
            await target.execute(
                "INSERT INTO agent_posture (org, agent, actions_total) VALUES ('alpha', 'x', 1)"
            )
        finally:
            await source.close()
            await target.close()

        stop = asyncio.Event()
        role = asyncio.create_task(
            run_roles(
                replace(settings, database_url=upgraded, port=free_tcp_port()),
                Roles(api=False, ingest=True, scheduler=False),
                stop,
            )
        )
        upgraded_store = await LedgerStore.connect(upgraded, max_size=2)
        try:

            async def caught_up() -> bool:
                if role.done():
                    role.result()
                return await upgraded_store.projections_behind() == []

            await wait_until(caught_up, 60, "the upgraded projections to catch up")
            assert await upgraded_store.dump_projections() == expected
        finally:
            stop.set()
            await asyncio.wait_for(role, 20)
            await upgraded_store.close()
    finally:
        await pg_execute(servers.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- the ingest process's window cache --------------------------------------------------------


async def test_window_cache_is_reused_and_not_poisoned_when_a_batch_rolls_back(
    store: LedgerStore, org_key: OrgKeyFactory
) -> None:
    """Batches reuse the cached window; a batch that rolls back leaves the database's window."""
    keys = {org: await org_key(org) for org in (*AGENT_ORGS, *GATEWAY_ORGS)}
    events = mixed_traffic(600, seed=5)
    messages = _messages(events, keys)
    for i in range(0, len(messages), 100):
        await ingest_batch(store, messages[i : i + 100], PREFIX)
    assert store.windows.hits > 0

    agent = next(
        (e.org, e.agent)
        for e in reversed(events)
        if isinstance(e, ActionPerformed) and e.amount and e.amount.currency == "USD"
    )

    async def window_entries() -> dict[str, list[tuple[datetime, int]]]:
        async with store.transaction() as tx:
            projector = await tx.load_projection([agent])
            await tx.save_projection(projector, {})  # hands the windows back to the cache
        return {cid: w.entries() for cid, w in projector.windows.get(agent, {}).items()}

    before = await window_entries()
    assert before, "the agent has a charged window"

    class Abort(Exception):
        pass

    extra = msgspec.structs.replace(
        next(
            e
            for e in reversed(events)
            if isinstance(e, ActionPerformed) and (e.org, e.agent) == agent
        ),
        id="late-extra",
    )

    async def charge_then_roll_back() -> None:
        async with store.transaction() as tx:
            projector = await tx.load_projection([agent])
            projector.apply(extra, agent[0], 10**9, datetime.now(UTC))
            assert projector.dirty_windows  # the cached window object was charged
            raise Abort

    with pytest.raises(Abort):
        await charge_then_roll_back()
    assert await window_entries() == before
