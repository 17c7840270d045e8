"""PostgreSQL: the ledger, the key registry, the quarantine, checkpoints, and the
transactions the projections are written in.

With `projection_tables.py` (the evidence projection's tables), the only code
that talks SQL. Driver errors are translated to `StorageError` here and never
leak upward.

Why chains are locked with `SELECT ... FOR UPDATE` on their `chains` row: an
entry's hash commits to the previous entry's hash, so two writers appending to
the same chain would fork it. Holding the row lock for the whole batch
transaction makes every chain single-writer whatever the process topology
(one `up`, several `ingest` processes, an operator appending a key), and
because the lock is released only at commit, sequence order equals commit
order: a reader never sees seq n+1 before seq n. Chains are always locked in
sorted order so two batches touching the same orgs cannot deadlock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import asyncpg.exceptions._base as asyncpg_base

from service.adapters import projection_tables
from service.domain.admission import PublisherKey, Refused, subject_org
from service.domain.audit import LEDGER_CHAIN
from service.domain.projection import AgentKey, Projector
from service.errors import StorageError, StorageUnavailableError, WriterFencedError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """The last stream sequence a consumer has committed, in one stream incarnation."""

    consumer: str
    stream: str
    stream_created: str
    stream_seq: int


@dataclass(slots=True)
class ChainHead:
    chain: str
    seq: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class EntryRow:
    """One ledger entry as stored."""

    chain: str
    seq: int
    event_id: str
    kind: str
    agent_org: str | None
    agent: str | None
    occurred_at: datetime
    received_at: datetime
    key_id: str
    signature: bytes
    event_bytes: bytes
    prev_hash: bytes
    entry_hash: bytes
    stream_seq: int | None

    def as_record(self) -> tuple[object, ...]:
        return (
            self.chain,
            self.seq,
            self.event_id,
            self.kind,
            self.agent_org,
            self.agent,
            self.occurred_at,
            self.received_at,
            self.key_id,
            self.signature,
            self.event_bytes,
            self.prev_hash,
            self.entry_hash,
            self.stream_seq,
        )


ENTRY_COLUMNS = (
    "chain",
    "seq",
    "event_id",
    "kind",
    "agent_org",
    "agent",
    "occurred_at",
    "received_at",
    "key_id",
    "signature",
    "event_bytes",
    "prev_hash",
    "entry_hash",
    "stream_seq",
)


def _entry(row: asyncpg.Record) -> EntryRow:
    return EntryRow(**{name: row[name] for name in ENTRY_COLUMNS})


# SQLSTATE classes that say "not now" rather than "not this": connection
# exceptions, transaction rollbacks (serialization failures, deadlocks),
# insufficient resources, operator intervention (admin shutdown, the server
# starting up, a statement timeout), system errors (I/O) and internal errors.
# Every other class refuses the work itself (22 data exception, 23 integrity
# constraint, 54 program limit, ...): retrying it would fail again, forever.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})


def is_transient(error: BaseException) -> bool:
    """Whether a driver error may succeed when retried (see `_TRANSIENT_SQLSTATE_CLASSES`)."""
    if isinstance(error, asyncpg.PostgresError):
        return str(error.sqlstate or "XX")[:2] in _TRANSIENT_SQLSTATE_CLASSES
    # asyncpg's DataError is an InterfaceError raised before anything is sent:
    # a value the driver cannot encode (an int beyond bigint, a NUL in text).
    return not isinstance(error, asyncpg_base.DataError)


@asynccontextmanager
async def translate_errors(action: str) -> AsyncIterator[None]:
    """Turn driver and connection errors into `StorageError` naming what failed:
    `StorageUnavailableError` when a retry may succeed, plain `StorageError` when
    the database refused the work itself."""
    try:
        yield
    # InternalClientError is not an InterfaceError in asyncpg: a connection
    # killed mid-operation can surface as one ("cannot switch to state ...").
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
        TimeoutError,
    ) as e:
        if is_transient(e):
            raise StorageUnavailableError(f"{action}: {e}") from e
        raise StorageError(f"{action}: {e}") from e


MAX_SUBJECT_CHARS = 1024
MAX_DETAIL_CHARS = 2048
_TEXT_FIELD_CHARS = 512


def storable_text(value: str, limit: int = _TEXT_FIELD_CHARS) -> str:
    """`value` as PostgreSQL text can hold it: undecodable bytes (surrogate escapes)
    and NUL written as backslash escapes, cut to `limit` characters with a marker."""
    text = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _storable_or_none(value: str | None) -> str | None:
    return None if value is None else storable_text(value)


_WRITER_LOCK = "trustledger.ingest/"


@dataclass(slots=True)
class WriterLease:
    """This process is the single writer of an ingest consumer, at `epoch`."""

    consumer: str
    epoch: int
    saved: StreamPosition | None
    """The consumer's committed position when the lease was taken (None: never committed)."""
    _conn: asyncpg.Connection

    @property
    def lost(self) -> bool:
        """True once the session holding the lock has ended (the lock with it)."""
        return bool(self._conn.is_closed())

    async def release(self) -> None:
        """Give the lock back by ending its session; never raises."""
        try:
            await asyncio.wait_for(self._conn.close(), 5)
        except Exception as e:  # the session may be gone already: so is the lock
            log.debug("releasing the writer lock: %s", e)
            self._conn.terminate()


class LedgerTx:
    """The operations of one batch transaction. Obtain through `LedgerStore.transaction`."""

    def __init__(
        self, conn: asyncpg.Connection, windows: projection_tables.WindowCache | None = None
    ) -> None:
        self._conn = conn
        self._windows = windows

    async def lock_chains(
        self, orgs: Iterable[str], existing_only: Iterable[str] = ()
    ) -> dict[str, ChainHead]:
        """Lock the heads of `orgs` (creating missing chains) and of `existing_only`
        (never creating one: an unauthenticated subject must not conjure a chain)."""
        create = sorted(set(orgs))
        names = sorted(set(create) | set(existing_only))
        if not names:
            return {}
        if create:
            await self._conn.execute(
                "INSERT INTO chains (chain) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                create,
            )
        rows = await self._conn.fetch(
            "SELECT chain, head_seq, head_hash FROM chains WHERE chain = ANY($1::text[])"
            " ORDER BY chain FOR UPDATE",
            names,
        )
        return {
            r["chain"]: ChainHead(r["chain"], r["head_seq"], bytes(r["head_hash"])) for r in rows
        }

    async def existing_event_ids(self, ids: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of the (chain, event id) pairs are already in the ledger."""
        if not ids:
            return set()
        rows = await self._conn.fetch(
            "SELECT e.chain, e.event_id FROM ledger_entries e"
            " JOIN unnest($1::text[], $2::text[]) AS i(chain, event_id)"
            " ON e.chain = i.chain AND e.event_id = i.event_id",
            [c for c, _ in ids],
            [i for _, i in ids],
        )
        return {(r["chain"], r["event_id"]) for r in rows}

    async def load_keys(self) -> dict[str, PublisherKey]:
        return await _load_keys(self._conn)

    async def fence(self, consumer: str, epoch: int) -> None:
        """Lock the consumer's position row and check this transaction's writer still
        owns it (`WriterFencedError` if another process took over since). Taken first
        in every batch, so two writers' batches never interleave."""
        current = await self._conn.fetchval(
            "SELECT writer_epoch FROM ingest_positions WHERE consumer = $1 FOR UPDATE", consumer
        )
        if current != epoch:
            raise WriterFencedError(
                f"consumer {consumer!r} is now written by epoch {current}, not {epoch}"
            )

    async def save_position(self, position: StreamPosition) -> None:
        """Record how far the consumer has got, with the batch it belongs to. Within one
        stream incarnation the position only moves forward (a redelivered message
        below it is processed again, but never rewinds it)."""
        await self._conn.execute(
            "INSERT INTO ingest_positions (consumer, stream, stream_created, stream_seq)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer) DO UPDATE SET"
            " stream = EXCLUDED.stream, stream_created = EXCLUDED.stream_created,"
            " stream_seq = CASE"
            "   WHEN (ingest_positions.stream, ingest_positions.stream_created)"
            "      = (EXCLUDED.stream, EXCLUDED.stream_created)"
            "   THEN GREATEST(ingest_positions.stream_seq, EXCLUDED.stream_seq)"
            "   ELSE EXCLUDED.stream_seq END",
            position.consumer,
            position.stream,
            position.stream_created,
            position.stream_seq,
        )

    async def append_entries(self, entries: Sequence[EntryRow]) -> None:
        if entries:
            await self._conn.copy_records_to_table(
                "ledger_entries", records=[e.as_record() for e in entries], columns=ENTRY_COLUMNS
            )

    async def save_heads(self, heads: Iterable[ChainHead]) -> None:
        heads = list(heads)
        if heads:
            await self._conn.execute(
                "UPDATE chains c SET head_seq = h.seq, head_hash = h.hash"
                " FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS h(chain, seq, hash)"
                " WHERE c.chain = h.chain",
                [h.chain for h in heads],
                [h.seq for h in heads],
                [h.hash for h in heads],
            )

    async def quarantine(
        self,
        refused: Sequence[Refused],
        received_at: datetime,
        subject_prefix: str,
        incarnation: str | None = None,
    ) -> int:
        """Record refused messages with their raw bytes and reason; a message of the
        same stream incarnation and sequence already held is not recorded twice.

        Text columns get the received strings made storable (`storable_text`): a
        NUL or an undecodable byte in a subject or header must never make the
        quarantine itself refuse the row. `raw` keeps the exact bytes."""
        if not refused:
            return 0
        rows = [
            (
                r.message.stream_seq if r.message.stream_seq > 0 else None,
                storable_text(r.message.subject, MAX_SUBJECT_CHARS),
                _storable_or_none(subject_org(r.message.subject, subject_prefix)),
                _storable_or_none(r.message.key_id),
                _storable_or_none(r.message.signature),
                r.reason,
                storable_text(r.detail, MAX_DETAIL_CHARS),
                r.message.data,
                received_at,
                incarnation if r.message.stream_seq > 0 else None,
            )
            for r in refused
        ]
        result: str = await self._conn.execute(
            "INSERT INTO quarantine (stream_seq, subject, claimed_org, key_id, signature, reason,"
            " detail, raw, received_at, stream_incarnation)"
            " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::text[], $8::bytea[], $9::timestamptz[], $10::text[])"
            " ON CONFLICT (stream_incarnation, stream_seq)"
            " WHERE stream_incarnation IS NOT NULL AND stream_seq IS NOT NULL DO NOTHING",
            *[list(col) for col in zip(*rows, strict=True)],
        )
        return int(result.rsplit(" ", 1)[-1])

    async def register_keys(self, keys: Sequence[tuple[PublisherKey, str, int]]) -> None:
        """Insert newly registered keys: (key, label, registering seq)."""
        if keys:
            await self._conn.executemany(
                "INSERT INTO publisher_keys (key_id, org, public_key, label, registered_seq)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
                [(k.key_id, k.org, k.public_key, label, seq) for k, label, seq in keys],
            )

    async def revoke_keys(self, revocations: Sequence[tuple[str, int]]) -> None:
        """Mark keys revoked: (key id, revoking seq)."""
        if revocations:
            await self._conn.executemany(
                "UPDATE publisher_keys SET revoked_seq = $2 WHERE key_id = $1 AND revoked_seq IS NULL",
                revocations,
            )

    async def load_projection(self, keys: Iterable[AgentKey]) -> Projector:
        """The evidence state of the given agents, ready for `Projector.apply`."""
        return await projection_tables.load_projection(self._conn, keys, self._windows)

    async def save_projection(self, projector: Projector, positions: dict[str, int]) -> None:
        """Write what the projector changed, and the chain positions it has applied."""
        await projection_tables.save_projection(self._conn, projector, positions, self._windows)


async def _load_keys(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, PublisherKey]:
    rows = await conn.fetch("SELECT key_id, org, public_key, revoked_seq FROM publisher_keys")
    return {
        r["key_id"]: PublisherKey(
            r["key_id"], r["org"], bytes(r["public_key"]), r["revoked_seq"] is not None
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    chain: str
    size: int
    head_hash: bytes
    signed_at: datetime
    key_name: str
    key_id: str
    note: str


_CHECKPOINT_COLUMNS = "chain, size, head_hash, signed_at, key_name, key_id, note"


class RebuildTx:
    """Replays the log and replaces the projections inside one locked transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def iter_entries(self, chunk: int = 2000) -> AsyncIterator[EntryRow]:
        """Every entry in (chain, seq) order, through a server-side cursor."""
        query = f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entries ORDER BY chain, seq"
        async for row in self._conn.cursor(query, prefetch=chunk):
            yield _entry(row)

    async def truncate(self) -> None:
        await projection_tables.truncate_projection(self._conn)

    async def flush(self, projector: Projector) -> None:
        """Write and forget the rows replayed so far (bounded memory)."""
        await projection_tables.append_rows(self._conn, projector)

    async def replace(self, projector: Projector, positions: dict[str, int]) -> None:
        await projection_tables.replace_projection(self._conn, projector, positions)


class LedgerStore:
    """A connection pool and the queries the use cases need."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self.windows = projection_tables.WindowCache()
        """This process's rolling windows between batches (see `WindowCache`)."""

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 1, max_size: int = 10) -> LedgerStore:
        async with translate_errors("connecting to PostgreSQL"):
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        return cls(pool, dsn)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[LedgerTx]:
        """One transaction; commits when the block exits normally."""
        async with (
            translate_errors("ledger transaction"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            yield LedgerTx(conn, self.windows)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[asyncpg.Connection]:
        """A read-only repeatable-read transaction: every query sees one state."""
        async with (
            translate_errors("reading a snapshot"),
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn

    async def ping(self) -> None:
        async with translate_errors("PostgreSQL health check"):
            await self._pool.fetchval("SELECT 1")

    async def stream_position(self, consumer: str) -> StreamPosition | None:
        async with translate_errors("reading the ingest position"):
            r = await self._pool.fetchrow(
                "SELECT consumer, stream, stream_created, stream_seq FROM ingest_positions"
                " WHERE consumer = $1",
                consumer,
            )
        return None if r is None else StreamPosition(**dict(r))

    async def try_acquire_writer(self, consumer: str, writer: str) -> WriterLease | None:
        """Become the single writer of `consumer`, or None if another process is.

        The lock is a session advisory lock on a connection held for as long as the
        lease (PostgreSQL drops it when that session ends, however the process
        dies), and taking it bumps the consumer's `writer_epoch`: the fencing token
        every batch checks (`LedgerTx.fence`). The bump waits for a batch of the
        previous writer still in flight, which then can no longer commit."""
        async with translate_errors(f"taking the writer lock of consumer {consumer!r}"):
            # A connection of its own, not the pool's: its session *is* the lock.
            conn = await asyncpg.connect(self._dsn)
            try:
                if not await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", _WRITER_LOCK + consumer
                ):
                    await conn.close()
                    return None
                row = await conn.fetchrow(
                    "INSERT INTO ingest_positions"
                    " (consumer, stream, stream_created, stream_seq, writer_epoch, writer)"
                    " VALUES ($1, '', '', 0, 1, $2) ON CONFLICT (consumer) DO UPDATE SET"
                    " writer_epoch = ingest_positions.writer_epoch + 1, writer = EXCLUDED.writer"
                    " RETURNING stream, stream_created, stream_seq, writer_epoch",
                    consumer,
                    writer,
                )
            except BaseException:
                conn.terminate()
                raise
        assert row is not None
        saved = (
            StreamPosition(consumer, row["stream"], row["stream_created"], row["stream_seq"])
            if row["stream"]
            else None
        )
        return WriterLease(consumer, row["writer_epoch"], saved, conn)

    async def writer_of(self, consumer: str) -> str:
        """Who holds `consumer` (host:pid), as the holder recorded it; '' if unknown."""
        async with translate_errors("reading the ingest writer"):
            writer = await self._pool.fetchval(
                "SELECT writer FROM ingest_positions WHERE consumer = $1", consumer
            )
        return str(writer or "")

    async def load_keys(self) -> dict[str, PublisherKey]:
        async with translate_errors("loading publisher keys"):
            return await _load_keys(self._pool)

    async def chain_heads(self) -> list[ChainHead]:
        async with translate_errors("reading chain heads"):
            rows = await self._pool.fetch(
                "SELECT chain, head_seq, head_hash FROM chains ORDER BY chain"
            )
        return [ChainHead(r["chain"], r["head_seq"], bytes(r["head_hash"])) for r in rows]

    async def chain_head(self, chain: str) -> ChainHead | None:
        async with translate_errors("reading a chain head"):
            r = await self._pool.fetchrow(
                "SELECT chain, head_seq, head_hash FROM chains WHERE chain = $1", chain
            )
        return None if r is None else ChainHead(r["chain"], r["head_seq"], bytes(r["head_hash"]))

    async def entries(self, chain: str, from_seq: int = 1, limit: int = 100) -> list[EntryRow]:
        async with translate_errors("reading ledger entries"):
            rows = await self._pool.fetch(
                f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entries"
                " WHERE chain = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                chain,
                from_seq,
                limit,
            )
        return [_entry(r) for r in rows]

    async def iter_entries(
        self, chain: str | None = None, from_seq: int = 1, chunk: int = 1000
    ) -> AsyncIterator[EntryRow]:
        """Every entry in (chain, seq) order, fetched in chunks: constant memory."""
        last: tuple[str, int] = ("", 0)
        if chain is not None:
            last = (chain, from_seq - 1)
        while True:
            async with translate_errors("reading ledger entries"):
                rows = await self._pool.fetch(
                    f"SELECT {', '.join(ENTRY_COLUMNS)} FROM ledger_entries"
                    " WHERE (chain, seq) > ($1, $2) AND ($3::text IS NULL OR chain = $3)"
                    " ORDER BY chain, seq LIMIT $4",
                    last[0],
                    last[1],
                    chain,
                    chunk,
                )
            if not rows:
                return
            for r in rows:
                yield _entry(r)
            last = (rows[-1]["chain"], rows[-1]["seq"])

    async def projections_behind(self) -> list[str]:
        """Chains whose entries the projections have not all applied (`_ledger` aside)."""
        async with translate_errors("comparing projection positions with chain heads"):
            rows = await self._pool.fetch(
                "SELECT c.chain FROM chains c LEFT JOIN projection_positions p"
                " ON p.projection = $1 AND p.chain = c.chain"
                " WHERE c.chain <> $2 AND c.head_seq > coalesce(p.seq, 0) ORDER BY c.chain",
                projection_tables.POSTURE_PROJECTION,
                LEDGER_CHAIN,
            )
        return [r["chain"] for r in rows]

    async def quarantined(
        self, org: str | None, after_id: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        async with translate_errors("reading quarantine"):
            rows = await self._pool.fetch(
                "SELECT id, stream_seq, subject, claimed_org, key_id, reason, detail, raw,"
                " received_at FROM quarantine WHERE id > $1 AND ($2::text IS NULL OR claimed_org = $2)"
                " ORDER BY id LIMIT $3",
                after_id,
                org,
                limit,
            )
        return [dict(r) for r in rows]

    async def seq_bounds(
        self, chain: str, since: datetime | None = None, until: datetime | None = None
    ) -> tuple[int, int] | None:
        """The first and last seq of the chain's entries received in [since, until), or None."""
        async with translate_errors("reading ledger entries"):
            r = await self._pool.fetchrow(
                "SELECT min(seq) AS first, max(seq) AS last FROM ledger_entries WHERE chain = $1"
                " AND ($2::timestamptz IS NULL OR received_at >= $2)"
                " AND ($3::timestamptz IS NULL OR received_at < $3)",
                chain,
                since,
                until,
            )
        if r is None or r["first"] is None:
            return None
        return int(r["first"]), int(r["last"])

    async def chain_names(self) -> list[str]:
        """Every chain, whether it has a `chains` row or only entries (a deleted row hides nothing)."""
        async with translate_errors("listing chains"):
            rows = await self._pool.fetch(
                "SELECT chain FROM chains UNION SELECT DISTINCT chain FROM ledger_entries ORDER BY 1"
            )
        return [r["chain"] for r in rows]

    async def head_and_last_seq(self, chain: str) -> tuple[ChainHead | None, int]:
        """The `chains` head row and the highest stored seq, read in one snapshot."""
        async with translate_errors("reading a chain head"):
            r = await self._pool.fetchrow(
                "SELECT c.head_seq, c.head_hash,"
                " (SELECT coalesce(max(seq), 0) FROM ledger_entries WHERE chain = $1) AS last_seq"
                " FROM (SELECT 1) AS one LEFT JOIN chains c ON c.chain = $1",
                chain,
            )
        head = (
            None
            if r["head_seq"] is None
            else ChainHead(chain, r["head_seq"], bytes(r["head_hash"]))
        )
        return head, int(r["last_seq"])

    async def key_event_bytes(self, chain: str, up_to_seq: int) -> list[bytes]:
        """The bytes of the chain's key registrations and revocations up to a seq, in order."""
        async with translate_errors("reading key events"):
            rows = await self._pool.fetch(
                "SELECT event_bytes FROM ledger_entries WHERE chain = $1 AND seq <= $2"
                " AND kind IN ('publisher_key.registered', 'publisher_key.revoked') ORDER BY seq",
                chain,
                up_to_seq,
            )
        return [bytes(r["event_bytes"]) for r in rows]

    async def entry_hash_at(self, chain: str, seq: int) -> bytes | None:
        async with translate_errors("reading an entry hash"):
            value = await self._pool.fetchval(
                "SELECT entry_hash FROM ledger_entries WHERE chain = $1 AND seq = $2", chain, seq
            )
        return None if value is None else bytes(value)

    async def latest_checkpoint(
        self, chain: str, at_most: int | None = None
    ) -> StoredCheckpoint | None:
        """The checkpoint of the largest size (no larger than `at_most`, when given)."""
        async with translate_errors("reading checkpoints"):
            r = await self._pool.fetchrow(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE chain = $1"
                " AND ($2::bigint IS NULL OR size <= $2) ORDER BY size DESC LIMIT 1",
                chain,
                at_most,
            )
        return None if r is None else StoredCheckpoint(**dict(r))

    async def checkpoint_at(self, chain: str, size: int) -> StoredCheckpoint | None:
        async with translate_errors("reading checkpoints"):
            r = await self._pool.fetchrow(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE chain = $1 AND size = $2",
                chain,
                size,
            )
        return None if r is None else StoredCheckpoint(**dict(r))

    async def checkpoints(
        self, chain: str, min_size: int = 0, max_size: int | None = None, limit: int | None = None
    ) -> list[StoredCheckpoint]:
        """Every checkpoint of a chain from `min_size` up (to `max_size`), smallest first;
        the first `limit` of them when given."""
        async with translate_errors("reading checkpoints"):
            rows = await self._pool.fetch(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE chain = $1 AND size >= $2"
                " AND ($3::bigint IS NULL OR size <= $3) ORDER BY size LIMIT $4",
                chain,
                min_size,
                max_size,
                limit,
            )
        return [StoredCheckpoint(**dict(r)) for r in rows]

    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        """Store a signed checkpoint; if one exists at that size already, that one stands."""
        async with translate_errors("storing a checkpoint"):
            await self._pool.execute(
                f"INSERT INTO checkpoints ({_CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (chain, size) DO NOTHING",
                checkpoint.chain,
                checkpoint.size,
                checkpoint.head_hash,
                checkpoint.signed_at,
                checkpoint.key_name,
                checkpoint.key_id,
                checkpoint.note,
            )
        stored = await self.checkpoint_at(checkpoint.chain, checkpoint.size)
        assert stored is not None
        return stored

    @asynccontextmanager
    async def rebuild_transaction(self) -> AsyncIterator[RebuildTx]:
        """A transaction holding every chain's lock: ingest waits until the rebuild commits."""
        async with (
            translate_errors("rebuilding projections"),
            self._pool.acquire() as conn,
            conn.transaction(),
        ):
            await conn.execute("SELECT chain FROM chains ORDER BY chain FOR UPDATE")
            yield RebuildTx(conn)

    async def dump_projections(self) -> dict[str, list[tuple[object, ...]]]:
        """Every projection row in a fixed order, to compare two states exactly."""
        async with translate_errors("dumping projections"):
            return await projection_tables.dump_projection(self._pool)

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool
