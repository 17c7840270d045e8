"""The ingest loop: be the consumer's single writer, fetch a batch, commit it, ack it.

The invariants (docs/reliability.md):

* **One writer per consumer.** A process first takes the consumer's writer lease
  (a PostgreSQL advisory lock, with a fencing epoch every batch checks); while
  another process holds it, this one waits as a standby and takes over when
  that one dies. A writer that loses its lease stops writing at once.
* **The committed position never passes an unprocessed message.** The consumer
  is (re)bound to deliver from the committed position, every delivery must carry
  the next delivery number (a gap means messages were lost in transit on a
  broken connection), and on a gap the fetch is discarded and the consumer
  rebound from the committed position. So per-agent order holds after any fault.
* **Nothing is dropped by position.** A redelivered message below the position
  goes through the batch like any other; the ledger's `(chain, event id)`
  uniqueness and the quarantine's `(stream incarnation, seq)` uniqueness prove
  it is already there.
* **Transient failures are retried, permanent ones isolated.** A batch that
  fails because the database is unreachable is retried in place until it
  commits (never skipped, never overtaken). A batch that fails for any other
  reason is split in halves until the message that fails alone is found; that
  one is quarantined as `unprocessable` with the failure named, and everything
  after it lands.

Backpressure comes from the pull model: the next batch is fetched only after
the previous one committed, so a backlog waits in JetStream, never in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from service import metrics
from service.adapters.broker import Delivery, EventConsumer
from service.adapters.postgres import LedgerStore, StreamPosition, WriterLease
from service.app.ingest import BatchOutcome, ingest_batch, quarantine_unprocessable
from service.domain.admission import Incoming
from service.errors import (
    BrokerError,
    DeliveryGapError,
    StorageUnavailableError,
    WriterFencedError,
)

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
STANDBY_POLL_S = 2.0
FAILING_AFTER = 3
"""Readiness fails after this many consecutive failed attempts (commit, fetch, bind);
this many failed fetches in a row also rebind the consumer."""
PROBE_IDLE_S = 5.0
"""While idle, ask the broker about the consumer this often (it may have been lost)."""

Binder = Callable[[int], Awaitable[EventConsumer]]
"""Binds the consumer to deliver from after the given stream sequence."""


class _LeaseLost(Exception):
    """This process stopped being the consumer's writer (fenced, or its session died)."""


@dataclass(slots=True)
class IngestStatus:
    """What readiness and metrics say about the loop."""

    state: str = "starting"
    """starting, standby (another process writes), active, stopped."""
    position: int = 0
    last_commit_monotonic: float | None = None
    consecutive_failures: int = 0
    last_error: str = ""


class IngestWorker:
    """Runs batches until `stop` is set; the batch in flight always finishes first."""

    def __init__(
        self,
        store: LedgerStore,
        bind: Binder,
        start: StreamPosition,
        subject_prefix: str,
        batch_max: int,
        fetch_wait_s: float,
        verify_threads: int = 2,
        standby_poll_s: float = STANDBY_POLL_S,
        stall_s: float = 30.0,
    ) -> None:
        self._store = store
        self._bind = bind
        self._fresh = start
        """The position of a consumer that never committed in this stream incarnation."""
        self._position = start
        self._prefix = subject_prefix
        self._batch_max = batch_max
        self._fetch_wait_s = fetch_wait_s
        self._standby_poll_s = standby_poll_s
        self._stall_s = stall_s
        """Readiness fails when messages wait and nothing committed for this long."""
        self._executor = ThreadPoolExecutor(verify_threads, thread_name_prefix="verify")
        self._consumer: EventConsumer | None = None
        self._writer = f"{socket.gethostname()}:{os.getpid()}"
        self.status = IngestStatus()
        self._active_since = time.monotonic()
        self.running = False
        self.batches = 0

    @property
    def position(self) -> int:
        """The last stream sequence committed to the ledger."""
        return self._position.stream_seq

    async def run(self, stop: asyncio.Event) -> None:
        self.running = True
        try:
            while not stop.is_set():
                lease = await self._acquire(stop)
                if lease is None:
                    return
                try:
                    await self._lead(lease, stop)
                except _LeaseLost as e:
                    log.warning("no longer the writer of consumer %s: %s", lease.consumer, e)
                finally:
                    await self._unbind()
                    await lease.release()
                    metrics.INGEST_ACTIVE.set(0)
        finally:
            self.running = False
            self.status.state = "stopped"
            self._executor.shutdown(wait=False)

    def check_ready(self) -> None:
        """Raise, saying why, unless the loop is making progress (or is a healthy standby)."""
        status = self.status
        if not self.running:
            raise RuntimeError("ingest loop is not running")
        if status.consecutive_failures >= FAILING_AFTER:
            raise RuntimeError(
                f"{status.consecutive_failures} consecutive failed attempts: {status.last_error}"
            )

    async def check_progress(self) -> None:
        """`check_ready`, and ask the broker whether messages wait while nothing commits."""
        self.check_ready()
        if self.status.state != "active" or self._consumer is None:
            return
        undelivered, unacked = await self._consumer.pending()
        metrics.CONSUMER_PENDING.set(undelivered)
        waiting = undelivered + unacked
        since = self.status.last_commit_monotonic
        idle_s = time.monotonic() - (since if since is not None else self._active_since)
        if waiting and idle_s > self._stall_s:
            raise RuntimeError(
                f"no commit for {idle_s:.0f} s with {waiting} message(s) waiting"
                + (f"; last error: {self.status.last_error}" if self.status.last_error else "")
            )

    # ---- the writer lease --------------------------------------------------------------

    async def _acquire(self, stop: asyncio.Event) -> WriterLease | None:
        """Take the consumer's writer lease, waiting as a standby while another holds it."""
        consumer = self._fresh.consumer
        announced = False
        backoff = _Backoff(stop)
        while not stop.is_set():
            try:
                lease = await self._store.try_acquire_writer(consumer, self._writer)
            except StorageUnavailableError as e:
                self._failed(e)
                log.warning(
                    "cannot take the writer lock, retrying in %.1f s: %s", backoff.delay_s, e
                )
                if await backoff.wait():
                    return None
                continue
            if lease is not None:
                log.info("writer of consumer %s (epoch %d)", consumer, lease.epoch)
                return lease
            self.status.state = "standby"
            if not announced:
                holder = await _quietly(self._store.writer_of(consumer))
                log.info(
                    "standby: consumer %s is written by %s; taking over when it stops",
                    consumer, holder or "another process",
                )  # fmt: skip
                announced = True
            if await _sleep_unless(stop, self._standby_poll_s):
                return None
        return None

    async def _lead(self, lease: WriterLease, stop: asyncio.Event) -> None:
        self._position = self._resume_from(lease.saved)
        self.status.state = "active"
        self.status.position = self.position
        self._active_since = time.monotonic()
        metrics.INGEST_ACTIVE.set(1)
        fetch_failures = 0
        probed = time.monotonic()
        while not stop.is_set():
            if lease.lost:
                raise _LeaseLost("the session holding the writer lock ended")
            if self._consumer is None and not await self._rebind(stop):
                return
            assert self._consumer is not None
            try:
                deliveries = await self._consumer.fetch(self._batch_max, self._fetch_wait_s)
                if not deliveries and (fetch_failures or time.monotonic() - probed > PROBE_IDLE_S):
                    # An idle fetch looks the same whether nothing was published or the
                    # consumer is gone (deleted, or lost by a server): ask about it.
                    metrics.CONSUMER_PENDING.set((await self._consumer.pending())[0])
                    probed = time.monotonic()
            except DeliveryGapError as e:
                metrics.DELIVERY_GAPS.inc()
                log.warning(
                    "deliveries lost in transit (%s); rebinding from seq %d", e, self.position
                )
                await self._unbind()
                continue
            except BrokerError as e:
                # NATS is restarting or unreachable: the client reconnects on its own.
                # If fetches keep failing, the consumer itself may be gone (a server that
                # lost its state, an operator's delete): bind it again.
                self._failed(e)
                fetch_failures += 1
                if fetch_failures >= FAILING_AFTER:
                    log.warning(
                        "fetch failed %d times (%s); rebinding the consumer", fetch_failures, e
                    )
                    await self._unbind()
                    fetch_failures = 0
                else:
                    log.warning("fetch failed, retrying: %s", e)
                await _sleep_unless(stop, 1.0)
                continue
            # The broker answered (an idle fetch too): past failures to reach it are over.
            fetch_failures = 0
            self._recovered()
            if deliveries and not await self._commit_isolating(deliveries, lease, stop):
                return  # stopping with the batch uncommitted: it stays unacked

    def _resume_from(self, saved: StreamPosition | None) -> StreamPosition:
        """After the last committed message of this stream incarnation."""
        if saved is None:
            return self._fresh
        if (saved.stream, saved.stream_created) != (self._fresh.stream, self._fresh.stream_created):
            # Sequence numbers restarted with a new stream: start at its beginning;
            # the ledger's event-id uniqueness drops anything already chained.
            log.warning(
                "stream %s is not the one ingest last read (%s created %s); reading it from the start",
                self._fresh.stream, saved.stream, saved.stream_created,
            )  # fmt: skip
            return self._fresh
        return saved

    async def _rebind(self, stop: asyncio.Event) -> bool:
        """Bind the consumer to deliver after the committed position; False if stopped."""
        backoff = _Backoff(stop)
        while not stop.is_set():
            try:
                self._consumer = await self._bind(self.position)
                return True
            except BrokerError as e:
                self._failed(e)
                log.warning("cannot bind the consumer, retrying in %.1f s: %s", backoff.delay_s, e)
                if await backoff.wait():
                    return False
        return False

    async def _unbind(self) -> None:
        if self._consumer is not None:
            await self._consumer.unsubscribe()
            self._consumer = None

    # ---- committing --------------------------------------------------------------------

    async def _commit_isolating(
        self, deliveries: Sequence[Delivery], lease: WriterLease, stop: asyncio.Event
    ) -> bool:
        """Commit the batch; if it fails for a reason that is not transient, split it
        until the failing message stands alone, and quarantine that one. In stream
        order throughout. False if asked to stop first."""
        try:
            return await self._commit(deliveries, lease, stop)
        except (_LeaseLost, asyncio.CancelledError):
            raise
        except Exception as e:  # anything not transient: find the message that causes it
            if len(deliveries) == 1:
                return await self._quarantine(deliveries[0], e, lease, stop)
            log.warning(
                "batch of %d failed (%s: %s); isolating the message that causes it",
                len(deliveries), type(e).__name__, e,
            )  # fmt: skip
            mid = len(deliveries) // 2
            return await self._commit_isolating(
                deliveries[:mid], lease, stop
            ) and await self._commit_isolating(deliveries[mid:], lease, stop)

    async def _commit(
        self, deliveries: Sequence[Delivery], lease: WriterLease, stop: asyncio.Event
    ) -> bool:
        """Commit one batch, retrying transient failures until it commits."""

        async def attempt() -> BatchOutcome:
            return await ingest_batch(
                self._store,
                [d.incoming for d in deliveries],
                self._prefix,
                self._executor,
                position=self._advanced(deliveries),
                writer_epoch=lease.epoch,
            )

        return await self._retrying(attempt, deliveries, lease, stop)

    async def _quarantine(
        self, delivery: Delivery, error: Exception, lease: WriterLease, stop: asyncio.Event
    ) -> bool:
        detail = f"{type(error).__name__}: {error}"
        log.error(
            "stream seq %d cannot be processed (%s); quarantined as unprocessable",
            delivery.incoming.stream_seq, detail,
        )  # fmt: skip

        async def quarantine(message: Incoming, why: str) -> BatchOutcome:
            return await quarantine_unprocessable(
                self._store,
                message,
                why,
                self._prefix,
                position=self._advanced([delivery]),
                writer_epoch=lease.epoch,
            )

        async def attempt() -> BatchOutcome:
            try:
                return await quarantine(delivery.incoming, detail)
            except (WriterFencedError, StorageUnavailableError):
                raise
            except Exception as e:
                # Not even the quarantine row could be stored as received: keep the
                # raw bytes with nothing else; if that fails too, the database is
                # refusing everything, so wait and retry (readiness says so).
                log.error("quarantine refused stream seq %d (%s); storing its bytes only",
                          delivery.incoming.stream_seq, e)  # fmt: skip
                bare = Incoming(
                    "", delivery.incoming.data, None, None, delivery.incoming.stream_seq
                )
                try:
                    return await quarantine(bare, f"{detail}; quarantine refused the row: {e}")
                except (WriterFencedError, StorageUnavailableError):
                    raise
                except Exception as again:
                    raise StorageUnavailableError(f"quarantine refused: {again}") from again

        return await self._retrying(attempt, [delivery], lease, stop)

    async def _retrying(
        self,
        attempt: Callable[[], Awaitable[BatchOutcome]],
        deliveries: Sequence[Delivery],
        lease: WriterLease,
        stop: asyncio.Event,
    ) -> bool:
        """Run `attempt` until it commits (transient failures are waited out), then ack.
        Anything else it raises is the caller's to isolate."""
        backoff = _Backoff(stop)
        while True:
            started = time.perf_counter()
            try:
                outcome = await attempt()
                break
            except WriterFencedError as e:
                raise _LeaseLost(str(e)) from e
            except StorageUnavailableError as e:
                self._failed(e)
                if lease.lost:
                    raise _LeaseLost("the session holding the writer lock ended") from e
                log.error(
                    "batch of %d not committed, retrying in %.1f s: %s",
                    len(deliveries), backoff.delay_s, e,
                )  # fmt: skip
                await self._consumer_in_progress(deliveries)
                if await backoff.wait():
                    return False
        position = self._advanced(deliveries)
        if self._consumer is not None:
            await self._consumer.ack(deliveries)
        self._position = position
        self.batches += 1
        self.status.position = position.stream_seq
        self.status.last_commit_monotonic = time.monotonic()
        self._recovered()
        _record(outcome, len(deliveries), time.perf_counter() - started, deliveries[-1])
        return True

    def _advanced(self, deliveries: Sequence[Delivery]) -> StreamPosition:
        """The position after `deliveries`: never behind the committed one."""
        last = max(d.incoming.stream_seq for d in deliveries)
        return replace(self._position, stream_seq=max(self.position, last))

    async def _consumer_in_progress(self, deliveries: Sequence[Delivery]) -> None:
        if self._consumer is not None:
            await self._consumer.in_progress(deliveries)

    def _recovered(self) -> None:
        if self.status.consecutive_failures:
            self.status.consecutive_failures = 0
            self.status.last_error = ""
            metrics.INGEST_CONSECUTIVE_FAILURES.set(0)

    def _failed(self, error: Exception) -> None:
        metrics.INGEST_FAILURES.inc()
        self.status.consecutive_failures += 1
        self.status.last_error = str(error)
        metrics.INGEST_CONSECUTIVE_FAILURES.set(self.status.consecutive_failures)


def _record(outcome: BatchOutcome, size: int, elapsed_s: float, last: Delivery) -> None:
    metrics.BATCH_SECONDS.observe(elapsed_s)
    metrics.BATCH_SIZE.observe(size)
    metrics.INGEST_EVENTS.labels("appended").inc(outcome.appended)
    metrics.INGEST_EVENTS.labels("duplicate").inc(outcome.duplicates)
    metrics.INGEST_LAST_COMMIT.set_to_current_time()
    metrics.INGEST_CONSECUTIVE_FAILURES.set(0)
    for reason, count in outcome.quarantined.items():
        metrics.INGEST_EVENTS.labels("quarantined").inc(count)
        metrics.QUARANTINED.labels(reason).inc(count)
        log.warning("quarantined %d message(s): %s", count, reason)
    metrics.CONSUMER_PENDING.set(last.msg.metadata.num_pending or 0)
    log.debug(
        "batch: %d appended, %d duplicate, %s quarantined in %.1f ms",
        outcome.appended, outcome.duplicates, outcome.quarantined, elapsed_s * 1000,
    )  # fmt: skip


class _Backoff:
    """Waits between retries: 0.5 s, doubling to `MAX_BACKOFF_S`; cut short by `stop`."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.delay_s = 0.5

    async def wait(self) -> bool:
        """Wait the current delay and lengthen the next; True if `stop` was set meanwhile."""
        if await _sleep_unless(self._stop, self.delay_s):
            return True
        self.delay_s = min(self.delay_s * 2, MAX_BACKOFF_S)
        return False


async def _quietly(result: Awaitable[str]) -> str:
    try:
        return await result
    except Exception:
        return ""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
