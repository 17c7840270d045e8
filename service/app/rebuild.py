"""Rebuild every projection from the log alone.

Replays the chains in (chain, seq) order through the same `Projector` that
ingest uses, then swaps the result in atomically. Every projection row is
written from exactly one chain (an agent's evidence from its org's chain, a
gateway's observations from the gateway org's chain), and each chain is
replayed in its own order, so the result equals the incrementally maintained
tables byte for byte; `tests/test_rebuild.py` checks exactly that. The
posture cache is emptied and every agent queued, so the scheduler's next tick
re-assesses them all.
"""

from __future__ import annotations

from collections.abc import Callable

from service.adapters.postgres import LedgerStore
from service.domain.audit import LEDGER_CHAIN
from service.domain.events import decode_event
from service.domain.projection import Projector

FLUSH_EVERY = 5000
"""Entries replayed between writes of the rows they produced."""


async def rebuild_projections(
    store: LedgerStore, progress: Callable[[int], None] | None = None
) -> int:
    """Recompute the projections from the log; returns the number of entries replayed.

    Runs in one transaction holding every chain's lock, so no batch commits
    between the replay and the swap (ingest waits, then resumes)."""
    projector = Projector()
    positions: dict[str, int] = {}
    replayed = 0
    async with store.rebuild_transaction() as tx:
        await tx.truncate()
        async for entry in tx.iter_entries():
            if entry.chain == LEDGER_CHAIN:
                continue  # the ledger's key chain feeds no projection
            projector.apply(
                decode_event(entry.event_bytes), entry.chain, entry.seq, entry.received_at
            )
            positions[entry.chain] = entry.seq
            replayed += 1
            if replayed % FLUSH_EVERY == 0:
                await tx.flush(projector)
            if progress is not None:
                progress(1)
        projector.touched.clear()  # the rebuild queues every agent itself
        await tx.replace(projector, positions)
    return replayed
