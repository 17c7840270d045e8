"""Rebuild every projection from the log alone.

Replays the chains in (chain, seq) order through the same `PostureProjector`
that ingest uses, then swaps the result in atomically. Every projection row is
written from exactly one chain (an agent's posture from its org's chain, a
gateway's observations from the gateway org's chain), and each chain is
replayed in its own order, so the result equals the incrementally maintained
tables byte for byte; `tests/test_ingest.py` checks exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

from service.adapters.postgres import LedgerStore
from service.domain.audit import LEDGER_CHAIN
from service.domain.events import decode_event
from service.domain.posture import PostureProjector


async def rebuild_projections(
    store: LedgerStore, progress: Callable[[int], None] | None = None
) -> int:
    """Recompute the projections from the log; returns the number of entries replayed.

    Runs in one transaction holding every chain's lock, so no batch commits
    between the replay and the swap (ingest waits, then resumes)."""
    projector = PostureProjector()
    positions: dict[str, int] = {}
    replayed = 0
    async with store.rebuild_transaction() as tx:
        async for entry in tx.iter_entries():
            if entry.chain == LEDGER_CHAIN:
                continue  # the ledger's key chain feeds no projection
            projector.apply(decode_event(entry.event_bytes), entry.chain, entry.seq)
            positions[entry.chain] = entry.seq
            replayed += 1
            if progress is not None:
                progress(1)
        projector.mark_all_dirty()
        await tx.replace(projector, positions)
    return replayed
