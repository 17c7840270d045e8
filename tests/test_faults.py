"""Faults during ingest: a killed process, terminated database connections.

Real PostgreSQL and NATS (see conftest.py). Ingest commits each batch with the
stream position it reached and acks only afterwards, so whatever dies mid-stream,
the events land in the ledger exactly once and in stream order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    chain_entries,
    performed,
    registered,
    wait_for_chain,
    wait_until,
)

from service.adapters import broker
from service.adapters.embedded import free_tcp_port
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import Publisher
from service.app.verify import verify_all
from service.config import Settings
from service.domain.events import ActionPerformed, Event

ORG = "acme"
AGENTS = ["agent-a", "agent-b", "agent-c"]
ACTIONS_PER_AGENT = 1000
PUBLISH_CHUNK = 50
PROCESS_START_TIMEOUT_S = 60.0
PROCESS_EXIT_TIMEOUT_S = 20.0
CHAIN_COMPLETE_TIMEOUT_S = 60.0


# ---- helpers -----------------------------------------------------------------------------------


def resource(agent: str, index: int) -> str:
    """The resource of an agent's `index`-th action: its publish index, readable back."""
    return f"res:{agent}/{index:06d}"


def agent_events(agent: str, actions: int) -> list[Event]:
    """An agent's registration, then `actions` actions numbered in publish order."""
    events: list[Event] = [registered(ORG, agent, t=0)]
    events += [
        performed(ORG, agent, "records.read", resource(agent, i), t=1 + i) for i in range(actions)
    ]
    return events


async def publish_in_order(pub: Publisher, per_agent: dict[str, list[Event]]) -> None:
    """Publish every agent's events, concurrently across agents, in chunks.

    Within a chunk each agent's coroutine awaits the ack of one event before it
    publishes the next, so each agent's events enter the stream in publish order."""
    longest = max(len(events) for events in per_agent.values())

    async def one_agent(events: list[Event]) -> None:
        for event in events:
            await pub.publish(event)

    for start in range(0, longest, PUBLISH_CHUNK):
        await asyncio.gather(
            *(one_agent(events[start : start + PUBLISH_CHUNK]) for events in per_agent.values())
        )


def ingest_env(settings: Settings) -> dict[str, str]:
    assert settings.database_url is not None
    assert settings.nats_url is not None
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "NATS_URL": settings.nats_url,
        "TRUSTLEDGER_STREAM": settings.stream,
        "TRUSTLEDGER_SUBJECT_PREFIX": settings.subject_prefix,
        "TRUSTLEDGER_CONSUMER": settings.consumer,
        "TRUSTLEDGER_DATA_DIR": str(settings.data_dir),
        "TRUSTLEDGER_DUPLICATE_WINDOW_S": str(max(1, int(settings.duplicate_window_s))),
        "TRUSTLEDGER_BATCH_MAX": "50",  # small batches, so that a kill lands mid-stream
    }


def start_ingest(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """`trustledger ingest` as a real OS process, its output in `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service.cli", "ingest", "--port", str(free_tcp_port())],
            env=ingest_env(settings),
            cwd=Path(__file__).resolve().parent.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=PROCESS_EXIT_TIMEOUT_S)


async def chain_size(store: LedgerStore) -> int:
    head = await store.chain_head(ORG)
    return 0 if head is None else head.seq


async def assert_every_event_chained_once_in_order(
    store: LedgerStore, per_agent: dict[str, list[Event]]
) -> None:
    total = sum(len(events) for events in per_agent.values())
    entries = await chain_entries(store, ORG)
    assert len(entries) == 1 + total
    assert [e.seq for e in entries] == list(range(1, total + 2))
    assert entries[0].kind == "publisher_key.registered"

    counts = Counter(e.event_id for e in entries[1:])
    published = {event.id for events in per_agent.values() for event in events}
    assert set(counts) == published
    assert [eid for eid, n in counts.items() if n != 1] == []

    by_id = {event.id: event for events in per_agent.values() for event in events}
    for agent, events in per_agent.items():
        chained = [by_id[e.event_id] for e in entries[1:] if by_id[e.event_id].agent == agent]
        assert [ev.id for ev in chained] == [ev.id for ev in events], f"order of {agent}"
        actions = [ev for ev in chained if isinstance(ev, ActionPerformed)]
        assert [a.resource for a in actions] == [resource(agent, i) for i in range(len(events) - 1)]

    assert await verify_all(store) == []
    for agent, events in per_agent.items():
        # The projection judged every action exactly once.
        ids = [
            r["event_id"]
            for r in await store.pool.fetch(
                "SELECT event_id FROM action_verdicts WHERE org = $1 AND agent = $2",
                ORG,
                agent,
            )
        ]
        action_ids = [ev.id for ev in events if isinstance(ev, ActionPerformed)]
        assert sorted(ids) == sorted(action_ids), agent
    assert await store.quarantined(None) == []


# ---- a killed ingest process ------------------------------------------------------------------


async def test_no_event_is_lost_or_duplicated_when_the_ingest_process_is_killed_mid_stream(
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    tmp_path: Path,
) -> None:
    """SIGKILL between batches or inside one: a second process resumes at the committed
    position; every event is chained exactly once, each agent's in publish order."""
    key = await org_key(ORG)
    assert settings.nats_url is not None
    nc = await broker.connect(settings.nats_url, name="test-stream-setup")
    try:
        await broker.ensure_stream(nc.jetstream(), settings)
    finally:
        await nc.close()
    pub = await publisher(key)
    per_agent = {agent: agent_events(agent, ACTIONS_PER_AGENT) for agent in AGENTS}
    total = sum(len(events) for events in per_agent.values())
    await publish_in_order(pub, per_agent)

    first_log, second_log = tmp_path / "ingest-1.log", tmp_path / "ingest-2.log"
    first = start_ingest(settings, first_log)
    try:
        threshold = 1 + total // 5
        deadline = time.monotonic() + PROCESS_START_TIMEOUT_S
        while (size := await chain_size(store)) <= threshold:
            if first.poll() is not None:
                pytest.fail(f"ingest exited with {first.returncode}:\n{tail(first_log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"chain stuck at {size} before the kill:\n{tail(first_log)}")
            await asyncio.sleep(0.01)
        first.kill()
        assert await asyncio.to_thread(first.wait, PROCESS_EXIT_TIMEOUT_S) == -signal.SIGKILL
    finally:
        kill_and_reap(first)
    at_kill = await chain_size(store)
    assert threshold < at_kill < 1 + total, "the kill must land mid-stream"

    second = start_ingest(settings, second_log)
    try:
        try:
            await wait_for_chain(store, ORG, 1 + total, timeout_s=CHAIN_COMPLETE_TIMEOUT_S)
        except BaseException:
            print(f"second ingest output:\n{tail(second_log)}")
            raise
        assert second.poll() is None, tail(second_log)
        second.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(second.wait, PROCESS_EXIT_TIMEOUT_S)
        assert code == 0, tail(second_log)
    finally:
        kill_and_reap(second)

    await assert_every_event_chained_once_in_order(store, per_agent)


# ---- terminated database connections -------------------------------------------------------


async def test_ingest_waits_and_resumes_when_postgres_connections_are_terminated(
    service: RunningService,
    settings: Settings,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """Every backend of the test database is terminated, 4 times, while events stream in:
    the batch in flight is retried until it commits, nothing is lost or chained twice."""
    key = await org_key(ORG)
    pub = await publisher(key)
    per_agent = {agent: agent_events(agent, 300) for agent in AGENTS}
    total = sum(len(events) for events in per_agent.values())
    assert settings.database_url is not None
    admin = await asyncpg.connect(settings.database_url)

    async def terminate_backends() -> int:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return sum(1 for r in rows if r["ok"])

    async def size_or_zero() -> int:
        if service.task.done():
            service.task.result()  # raises what the service died of
            pytest.fail("the service stopped while its connections were terminated")
        if publishing.done() and publishing.exception() is not None:
            publishing.result()  # raises why publishing failed
        # The test's own pool loses its connections too; a failed read is "not yet".
        try:
            return await chain_size(service.store)
        except Exception:
            return 0

    publishing = asyncio.create_task(publish_in_order(pub, per_agent))
    try:
        terminated = []
        for fraction in (0.15, 0.3, 0.45, 0.6):
            target = 1 + int(total * fraction)

            async def reached(target: int = target) -> bool:
                return await size_or_zero() >= target

            await wait_until(reached, 60, f"chain to reach {target}")
            terminated.append(await terminate_backends())
        await publishing
        assert all(n > 0 for n in terminated), terminated

        async def complete() -> bool:
            return await size_or_zero() >= 1 + total

        await wait_until(complete, CHAIN_COMPLETE_TIMEOUT_S, f"chain to reach {1 + total}")
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        await admin.close()

    await assert_every_event_chained_once_in_order(service.store, per_agent)
