"""Online verification: walk chains in the database and name the first broken entry.

The walk recomputes every hash from the stored fields and compares it with the
stored `entry_hash` and with the next entry's `prev_hash`; it trusts neither
the `chains` head nor the triggers. Walkers keep their position, so the
scheduled job only checks entries added since its last run.
"""

from __future__ import annotations

from collections.abc import Callable

from service.adapters.postgres import EntryRow, LedgerStore
from service.domain.chain import ChainBreak, ChainWalker, EntryFields, to_micros

Progress = Callable[[int], None]


def fields_of(entry: EntryRow) -> EntryFields:
    return EntryFields(
        chain=entry.chain,
        seq=entry.seq,
        received_at_us=to_micros(entry.received_at),
        key_id=entry.key_id,
        signature=entry.signature,
        event_bytes=entry.event_bytes,
    )


async def verify_chain(
    store: LedgerStore, walker: ChainWalker, progress: Progress | None = None
) -> ChainBreak | None:
    """Check the entries after the walker's position; stops at the first break."""
    async for entry in store.iter_entries(walker.chain, from_seq=walker.next_seq):
        if entry.prev_hash != walker.prev_hash:
            return ChainBreak(
                walker.chain,
                entry.seq,
                f"prev_hash {entry.prev_hash.hex()} does not link to entry {walker.next_seq - 1}"
                f" ({walker.prev_hash.hex()})",
            )
        broken = walker.check(fields_of(entry), entry.entry_hash)
        if broken is not None:
            return broken
        if progress is not None:
            progress(1)
    head = await store.chain_head(walker.chain)
    if head is not None and head.seq != walker.next_seq - 1:
        return ChainBreak(
            walker.chain,
            walker.next_seq,
            f"chain head says {head.seq} entries but only {walker.next_seq - 1} link up",
        )
    return None


async def verify_all(
    store: LedgerStore,
    walkers: dict[str, ChainWalker],
    only: str | None = None,
    progress: Progress | None = None,
) -> list[ChainBreak]:
    """Verify every chain (or `only` one), continuing from each walker's position."""
    breaks: list[ChainBreak] = []
    for head in await store.chain_heads():
        if only is not None and head.chain != only:
            continue
        walker = walkers.setdefault(head.chain, ChainWalker(head.chain))
        broken = await verify_chain(store, walker, progress)
        if broken is not None:
            breaks.append(broken)
    return breaks
