"""The ingest loop: fetch a batch, commit it to the ledger, then ack it.

Order: the consumer delivers in stream order from the position committed with
the last batch, and a batch that cannot be committed (database down) is
retried in place until it commits — never skipped, never overtaken by later
messages. Messages at or below the committed position (a late redelivery) are
acked and dropped: they are in the ledger already.

Backpressure comes from the pull model: the next batch is fetched only after
the previous one committed, so a backlog waits in JetStream, never in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from service import metrics
from service.adapters.broker import Delivery, EventConsumer
from service.adapters.postgres import LedgerStore, StreamPosition
from service.app.ingest import BatchOutcome, ingest_batch
from service.errors import BrokerError, StorageError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


class IngestWorker:
    """Runs batches until `stop` is set; the batch in flight always finishes first."""

    def __init__(
        self,
        store: LedgerStore,
        consumer: EventConsumer,
        subject_prefix: str,
        batch_max: int,
        fetch_wait_s: float,
        position: StreamPosition,
        verify_threads: int = 2,
    ) -> None:
        self._store = store
        self._consumer = consumer
        self._prefix = subject_prefix
        self._batch_max = batch_max
        self._fetch_wait_s = fetch_wait_s
        self._position = position
        self._executor = ThreadPoolExecutor(verify_threads, thread_name_prefix="verify")
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
                try:
                    deliveries = await self._consumer.fetch(self._batch_max, self._fetch_wait_s)
                except BrokerError as e:
                    # NATS is restarting or unreachable; the client reconnects on its own.
                    log.warning("fetch failed, retrying: %s", e)
                    await _sleep_unless(stop, 1.0)
                    continue
                fresh = [d for d in deliveries if d.incoming.stream_seq > self.position]
                if len(fresh) < len(deliveries):
                    await self._consumer.ack([d for d in deliveries if d not in fresh])
                if fresh and not await self._commit(fresh, stop):
                    return  # stopping with the batch uncommitted: it stays unacked
        finally:
            self.running = False
            self._executor.shutdown(wait=False)

    async def _commit(self, deliveries: list[Delivery], stop: asyncio.Event) -> bool:
        """Commit one batch, retrying until it commits; False if asked to stop first."""
        position = replace(self._position, stream_seq=deliveries[-1].incoming.stream_seq)
        backoff_s = 0.5
        while True:
            started = time.perf_counter()
            try:
                outcome = await ingest_batch(
                    self._store,
                    [d.incoming for d in deliveries],
                    self._prefix,
                    self._executor,
                    position=position,
                )
                break
            except StorageError as e:
                metrics.INGEST_FAILURES.inc()
                log.error(
                    "batch of %d not committed, retrying in %.1f s: %s",
                    len(deliveries), backoff_s, e,
                )  # fmt: skip
                await self._consumer.in_progress(deliveries)
                if await _sleep_unless(stop, backoff_s):
                    return False
                backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
        await self._consumer.ack(deliveries)
        self._position = position
        self.batches += 1
        _record(outcome, len(deliveries), time.perf_counter() - started, deliveries[-1])
        return True


def _record(outcome: BatchOutcome, size: int, elapsed_s: float, last: Delivery) -> None:
    metrics.BATCH_SECONDS.observe(elapsed_s)
    metrics.BATCH_SIZE.observe(size)
    metrics.INGEST_EVENTS.labels("appended").inc(outcome.appended)
    metrics.INGEST_EVENTS.labels("duplicate").inc(outcome.duplicates)
    for reason, count in outcome.quarantined.items():
        metrics.INGEST_EVENTS.labels("quarantined").inc(count)
        metrics.QUARANTINED.labels(reason).inc(count)
        log.warning("quarantined %d message(s): %s", count, reason)
    metrics.CONSUMER_PENDING.set(last.msg.metadata.num_pending or 0)
    log.debug(
        "batch: %d appended, %d duplicate, %s quarantined in %.1f ms",
        outcome.appended, outcome.duplicates, outcome.quarantined, elapsed_s * 1000,
    )  # fmt: skip


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
