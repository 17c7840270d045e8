"""The ingest loop: fetch a batch, commit it to the ledger, then ack it.

Backpressure comes from the pull model: the next batch is fetched only after
the previous one committed, so a backlog waits in JetStream, never in memory.
A batch that cannot be committed (database down) is nak'ed with a growing
delay and retried; nothing is acked before it is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from service import metrics
from service.adapters.broker import EventConsumer
from service.adapters.postgres import LedgerStore
from service.app.ingest import ingest_batch
from service.errors import BrokerError, StorageError

log = logging.getLogger(__name__)

IDLE_FETCH_S = 1.0
MAX_BACKOFF_S = 10.0


class IngestWorker:
    """Runs batches until `stop` is set; the batch in flight always finishes first."""

    def __init__(
        self,
        store: LedgerStore,
        consumer: EventConsumer,
        subject_prefix: str,
        batch_max: int,
        verify_threads: int = 2,
    ) -> None:
        self._store = store
        self._consumer = consumer
        self._prefix = subject_prefix
        self._batch_max = batch_max
        self._executor = ThreadPoolExecutor(verify_threads, thread_name_prefix="verify")
        self.running = False
        self.batches = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.running = True
        backoff_s = 0.5
        try:
            while not stop.is_set():
                try:
                    deliveries = await self._consumer.fetch(self._batch_max, IDLE_FETCH_S)
                except BrokerError as e:
                    # NATS is restarting or unreachable; the client reconnects on its own.
                    log.warning("fetch failed, retrying in %.1f s: %s", backoff_s, e)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                    continue
                if not deliveries:
                    continue
                started = time.perf_counter()
                try:
                    outcome = await ingest_batch(
                        self._store, [d.incoming for d in deliveries], self._prefix, self._executor
                    )
                except StorageError as e:
                    metrics.INGEST_FAILURES.inc()
                    log.error(
                        "batch of %d not committed, will retry in %.1f s: %s",
                        len(deliveries),
                        backoff_s,
                        e,
                    )
                    await self._consumer.nak(deliveries, backoff_s)
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, MAX_BACKOFF_S)
                    continue
                backoff_s = 0.5
                await self._consumer.ack(deliveries)
                self.batches += 1
                elapsed_s = time.perf_counter() - started
                metrics.BATCH_SECONDS.observe(elapsed_s)
                metrics.BATCH_SIZE.observe(len(deliveries))
                metrics.INGEST_EVENTS.labels("appended").inc(outcome.appended)
                metrics.INGEST_EVENTS.labels("duplicate").inc(outcome.duplicates)
                for reason, count in outcome.quarantined.items():
                    metrics.INGEST_EVENTS.labels("quarantined").inc(count)
                    metrics.QUARANTINED.labels(reason).inc(count)
                    log.warning("quarantined %d message(s): %s", count, reason)
                metrics.CONSUMER_PENDING.set(deliveries[-1].msg.metadata.num_pending or 0)
                log.debug(
                    "batch: %d appended, %d duplicate, %s quarantined in %.1f ms",
                    outcome.appended,
                    outcome.duplicates,
                    outcome.quarantined,
                    elapsed_s * 1000,
                )
        finally:
            self.running = False
            self._executor.shutdown(wait=False)
