"""Ingest under hostile messages and refusals: nothing blocks, nothing is lost, one writer.

Real PostgreSQL and NATS. Database refusals are injected into the real server with
a trigger (a permanent refusal for one event, a transient failure for the first
attempts); hostile subjects are written to NATS over a raw socket, since a
well-behaved client refuses to send them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from urllib.parse import urlsplit

import asyncpg
import nats
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    ServiceFactory,
    chain_entries,
    new_id,
    performed,
    pg_execute,
    registered,
    wait_for_chain,
    wait_until,
)

from service.adapters import broker
from service.adapters.postgres import LedgerStore, StreamPosition
from service.adapters.publisher import signed_message, subject_for
from service.app.consumer import IngestWorker
from service.app.ingest import UNPROCESSABLE, ingest_batch
from service.config import Settings
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming
from service.domain.events import ActionPerformed
from service.errors import WriterFencedError

ORG = "acme"
AGENT = "bot"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Readiness reports a stall after 2 s here (30 s by default)."""
    return replace(settings, ingest_stall_s=2)


async def quarantine_rows(store: LedgerStore) -> list[asyncpg.Record]:
    async with store.snapshot() as conn:
        return list(
            await conn.fetch("SELECT stream_seq, subject, key_id, reason, detail FROM quarantine")
        )


def resources(entries: list) -> list[str]:  # type: ignore[type-arg]
    return [json.loads(e.event_bytes)["resource"] for e in entries if e.kind == "action.performed"]


async def raw_publish(nats_url: str, subject: bytes, payload: bytes, headers: bytes = b"") -> None:
    """Publish bytes no client library would send (NUL, invalid UTF-8) on a bare socket."""
    url = urlsplit(nats_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        block = b"NATS/1.0\r\n" + headers + b"\r\n"
        writer.write(
            b"HPUB %s %d %d\r\n%s%s\r\nPING\r\n"
            % (subject, len(block), len(block) + len(payload), block, payload)
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"PONG"), line
    finally:
        writer.close()


async def create_stream(settings: Settings) -> None:
    """The stream, so events can be published before the service starts."""
    assert settings.nats_url is not None
    nc = await nats.connect(settings.nats_url)
    try:
        await broker.ensure_stream(nc.jetstream(), settings)
    finally:
        await nc.close()


async def install_refusal(dsn: str, sql_condition: str, sqlstate: str) -> None:
    """A trigger on the real database that refuses inserts into the ledger when the
    condition holds, with the given SQLSTATE."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"""
            CREATE SEQUENCE IF NOT EXISTS test_attempts;
            CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF ({sql_condition}) IS TRUE THEN
                    RAISE EXCEPTION 'injected refusal of %', NEW.event_id
                        USING ERRCODE = '{sqlstate}';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse BEFORE INSERT ON ledger_entries
                FOR EACH ROW EXECUTE FUNCTION test_refuse();
            """
        )
    finally:
        await conn.close()


async def test_only_the_refused_message_is_quarantined_when_the_database_refuses_one_of_a_batch(
    start_service: ServiceFactory,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """A message the database refuses (not transiently) is isolated from its batch and
    quarantined as unprocessable, naming the failure; every other message is chained in order."""
    assert settings.database_url is not None
    await install_refusal(settings.database_url, "NEW.event_id LIKE 'poison-%'", "22023")
    await create_stream(settings)
    pub = await publisher(await org_key(ORG))
    await pub.publish(registered(ORG, AGENT))
    events = [performed(ORG, AGENT, "read", f"r/{i:03d}", t=i) for i in range(40)]
    events[17] = ActionPerformed(
        id=new_id("poison"),
        org=ORG,
        occurred_at=events[17].occurred_at,
        agent=AGENT,
        action="read",
        resource="r/poison",
    )
    for event in events:
        await pub.publish(event)
    svc = await start_service()  # one batch holds them all
    await wait_for_chain(store, ORG, 1 + 1 + 39)
    entries = await chain_entries(store, ORG)
    assert resources(entries) == [f"r/{i:03d}" for i in range(40) if i != 17]
    rows = await quarantine_rows(store)
    assert [r["reason"] for r in rows] == [UNPROCESSABLE]
    assert "injected refusal of poison-" in rows[0]["detail"]
    assert (await svc.http.get("/readyz")).status_code == 200


async def test_a_batch_is_retried_not_quarantined_when_the_database_fails_transiently(
    start_service: ServiceFactory,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """A serialization failure (SQLSTATE 40001) is transient: the batch is retried until it
    commits, and nothing is quarantined."""
    assert settings.database_url is not None
    await create_stream(settings)
    pub = await publisher(await org_key(ORG))
    await install_refusal(
        settings.database_url,
        "CASE WHEN NEW.kind = 'action.performed' THEN nextval('test_attempts') <= 3 END",
        "40001",
    )
    await pub.publish(registered(ORG, AGENT))
    for i in range(10):
        await pub.publish(performed(ORG, AGENT, "read", f"r/{i:03d}", t=i))
    await start_service()
    await wait_for_chain(store, ORG, 12, timeout_s=30)
    assert resources(await chain_entries(store, ORG)) == [f"r/{i:03d}" for i in range(10)]
    assert await quarantine_rows(store) == []


@pytest.mark.parametrize(
    ("label", "subject_tail", "headers"),
    [
        ("invalid UTF-8 in the subject", b"bot\xff\xfe", b""),
        ("NUL in the subject", b"b\x00t", b""),
        ("NUL in the key id header", b"bot", b"Tl-Key-Id: ab\x00cd\r\nTl-Signature: x\r\n"),
    ],
)
async def test_ingest_goes_on_when_a_message_carries_bytes_no_client_would_send(
    service: object,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    label: str,
    subject_tail: bytes,
    headers: bytes,
) -> None:
    """A hostile subject or header (no key needed) is quarantined with its bytes escaped,
    and an event published after it is chained within seconds."""
    assert settings.nats_url is not None
    pub = await publisher(await org_key(ORG))
    await pub.publish(registered(ORG, AGENT))
    await wait_for_chain(store, ORG, 2)
    subject = f"{settings.subject_prefix}.ev.{ORG}.".encode() + subject_tail
    await raw_publish(settings.nats_url, subject, b'{"kind":"x"}', headers)
    await pub.publish(performed(ORG, AGENT, "read", "r/after", t=5))
    await wait_for_chain(store, ORG, 3, timeout_s=10)
    rows = await quarantine_rows(store)
    assert len(rows) == 1, label
    assert "\x00" not in rows[0]["subject"]
    assert "\x00" not in (rows[0]["key_id"] or "")


# ---- one writer per consumer -----------------------------------------------------------------


async def _worker(settings: Settings, js: object, store: LedgerStore) -> IngestWorker:
    info = await js.stream_info(settings.stream)  # type: ignore[attr-defined]
    fresh = StreamPosition(settings.consumer, settings.stream, info.created.isoformat(), 0)

    async def bind(after_seq: int) -> broker.EventConsumer:
        return await broker.EventConsumer.bind(js, settings, after_seq)  # type: ignore[arg-type]

    return IngestWorker(store, bind, fresh, settings.subject_prefix, 50, 0.05, standby_poll_s=0.2)


async def test_second_ingest_waits_as_standby_and_takes_over_when_the_first_stops(
    settings: Settings,
    database: str,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    store: LedgerStore,
) -> None:
    """Two ingest processes on one consumer: one writes, the other waits; when the writer
    stops, the standby takes over and nothing is lost, duplicated or reordered."""
    assert settings.nats_url is not None
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await broker.ensure_stream(js, settings)
    stores = [await LedgerStore.connect(database, max_size=3) for _ in range(2)]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks: list[asyncio.Task[None]] = []
    try:
        first = await _worker(settings, js, stores[0])
        tasks.append(asyncio.create_task(first.run(stops[0])))
        await wait_until(lambda: first.status.state == "active", 10, "first writer active")
        second = await _worker(settings, js, stores[1])
        tasks.append(asyncio.create_task(second.run(stops[1])))
        await wait_until(lambda: second.status.state == "standby", 10, "second on standby")

        pub = await publisher(await org_key(ORG))
        await pub.publish(registered(ORG, AGENT))
        for i in range(100):
            await pub.publish(performed(ORG, AGENT, "read", f"r/{i:03d}", t=i))
        await wait_for_chain(store, ORG, 102)
        assert second.status.state == "standby"

        stops[0].set()
        await asyncio.wait_for(tasks[0], 20)
        for i in range(100, 200):
            await pub.publish(performed(ORG, AGENT, "read", f"r/{i:03d}", t=i))
        await wait_until(lambda: second.status.state == "active", 10, "standby takes over")
        await wait_for_chain(store, ORG, 202)
        assert resources(await chain_entries(store, ORG)) == [f"r/{i:03d}" for i in range(200)]
        position = await store.stream_position(settings.consumer)
        assert position is not None
        assert position.stream_seq == 201
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        for s in stores:
            await s.close()
        await nc.close()


async def test_a_writer_cannot_commit_once_another_took_over_when_its_lock_session_died(
    store: LedgerStore, database: str, org_key: OrgKeyFactory
) -> None:
    """Fencing: after the first writer's lock session ends and a second writer takes the
    consumer, a batch of the first is refused and changes nothing."""
    key = await org_key(ORG)
    first = await store.try_acquire_writer("c", "first")
    assert first is not None
    assert await store.try_acquire_writer("c", "second") is None  # held
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    await wait_until(lambda: first.lost, 5, "the first session to end")
    second = await store.try_acquire_writer("c", "second")
    assert second is not None
    assert second.epoch == first.epoch + 1
    assert await store.writer_of("c") == "second"

    event = registered(ORG, "late")
    data, headers = signed_message(event, key)
    message = Incoming(
        subject_for(event, "tl"), data, headers[KEY_ID_HEADER], headers[SIGNATURE_HEADER], 7
    )
    position = StreamPosition("c", "S", "created", 7)
    with pytest.raises(WriterFencedError):
        await ingest_batch(store, [message], "tl", position=position, writer_epoch=first.epoch)
    assert await store.stream_position("c") == StreamPosition("c", "", "", 0)
    await ingest_batch(store, [message], "tl", position=position, writer_epoch=second.epoch)
    assert (await store.stream_position("c")) == position
    await first.release()
    await second.release()


async def test_position_never_moves_back_when_a_batch_below_it_commits(
    store: LedgerStore,
) -> None:
    """A redelivered batch below the committed position (processed again, never dropped)
    leaves the position where it was."""
    ahead = StreamPosition("c", "S", "created", 100)
    await ingest_batch(store, [], "tl", position=ahead)
    await ingest_batch(store, [], "tl", position=StreamPosition("c", "S", "created", 40))
    assert await store.stream_position("c") == ahead
    other = StreamPosition("c", "S", "recreated", 3)
    await ingest_batch(store, [], "tl", position=other)
    assert await store.stream_position("c") == other  # a new stream incarnation starts over


# ---- readiness tells the truth ---------------------------------------------------------------


async def readiness(svc: RunningService) -> tuple[int, str]:
    response = await svc.http.get("/readyz")
    return response.status_code, response.text


async def test_readiness_names_the_failure_while_commits_keep_failing_and_recovers(
    start_service: ServiceFactory,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """While every commit fails (transiently), /readyz answers 503 naming the error; once
    the database accepts again, the batch commits and /readyz answers 200."""
    assert settings.database_url is not None
    svc = await start_service()
    pub = await publisher(await org_key(ORG))
    await install_refusal(settings.database_url, "NEW.kind = 'action.performed'", "57P03")
    await pub.publish(performed(ORG, AGENT, "read", "r/blocked", t=1))

    async def failing() -> bool:
        status, body = await readiness(svc)
        return status == 503 and "consecutive failed attempts" in body and "injected" in body

    await wait_until(failing, 15, "/readyz to report the failing commits")
    await pg_execute(settings.database_url, "DROP TRIGGER test_refuse ON ledger_entries")
    await wait_for_chain(store, ORG, 2, timeout_s=20)
    await wait_until(lambda: _ready(svc), 10, "/readyz to recover")


async def _ready(svc: RunningService) -> bool:
    return (await readiness(svc))[0] == 200


async def test_readiness_fails_when_messages_wait_and_nothing_commits(
    start_service: ServiceFactory,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """A batch stuck without failing (its chain locked by someone else) makes /readyz 503
    after the stall time, saying how many messages wait; it recovers when the lock goes."""
    assert settings.database_url is not None
    svc = await start_service()
    pub = await publisher(await org_key(ORG))
    blocker = await asyncpg.connect(settings.database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT * FROM chains WHERE chain = $1 FOR UPDATE", ORG)
        await pub.publish(registered(ORG, AGENT))

        async def stalled() -> bool:
            status, body = await readiness(svc)
            return status == 503 and "no commit for" in body

        await wait_until(stalled, 15, "/readyz to report the stall")
        await tx.rollback()
    finally:
        await blocker.close()
    await wait_for_chain(store, ORG, 2)
    await wait_until(lambda: _ready(svc), 10, "/readyz to recover")


async def test_ingest_binds_its_consumer_again_when_it_is_deleted_under_it(
    service: RunningService,
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """A consumer deleted under a running ingest (an operator, a server that lost its state):
    /readyz says so, ingest binds the consumer again, /readyz recovers with no new event, and
    the next event is chained."""
    assert settings.nats_url is not None
    pub = await publisher(await org_key(ORG))
    await pub.publish(registered(ORG, AGENT))
    await wait_for_chain(store, ORG, 2)
    nc = await nats.connect(settings.nats_url)
    try:
        await nc.jetstream().delete_consumer(settings.stream, settings.consumer)
    finally:
        await nc.close()

    async def failing() -> bool:
        return (await readiness(service))[0] == 503

    await wait_until(failing, 15, "/readyz to report the lost consumer")
    await wait_until(lambda: _ready(service), 20, "/readyz to recover with no new event")
    await pub.publish(performed(ORG, AGENT, "read", "r/after", t=1))
    await wait_for_chain(store, ORG, 3)
