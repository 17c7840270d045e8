"""Rebuild every projection from the log alone.

Replays the chains in (chain, seq) order through the same `PostureProjector`
that ingest uses, then swaps the result in atomically. Because projection
state of an agent depends only on its own org's chain order (and on counts of
observations, which commute), the result equals the incrementally maintained
tables byte for byte; `tests/test_ingest.py` checks exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

from service.adapters.postgres import LedgerStore
from service.domain.events import decode_event
from service.domain.posture import PostureProjector


async def rebuild_projections(
    store: LedgerStore, progress: Callable[[int], None] | None = None
) -> int:
    """Recompute the projections from the log; returns the number of entries replayed."""
    projector = PostureProjector()
    positions: dict[str, int] = {}
    replayed = 0
    async for entry in store.iter_entries():
        projector.apply(decode_event(entry.event_bytes), entry.chain, entry.seq)
        positions[entry.chain] = entry.seq
        replayed += 1
        if progress is not None:
            progress(1)
    projector.dirty_agents = set(projector.agents)
    projector.dirty_commitments = {
        (org, agent, cid) for (org, agent), by_id in projector.commitments.items() for cid in by_id
    }
    projector.dirty_posture = set(projector.posture)
    await store.replace_projections(projector, positions)
    return replayed
