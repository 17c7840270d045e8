"""Signed checkpoints: made on a schedule for chains that grew, and on demand.

Before signing a head, the entries since the chain's previous checkpoint are
re-linked from that checkpoint's head hash: the ledger never signs a head that
does not extend what it signed before (c2sp.org/tlog-checkpoint's MUST).
"""

from __future__ import annotations

import logging

from service.adapters.postgres import LedgerStore, StoredCheckpoint
from service.app.ingest import Clock, utc_now
from service.app.ledger_key import LedgerSigner
from service.app.verify import audit_entry
from service.domain.chain import GENESIS_PREV_HASH, ChainWalker, EntryFields
from service.domain.checkpoint import Checkpoint, origin_for, sign_checkpoint
from service.errors import NotFoundError, StorageError

log = logging.getLogger(__name__)


async def make_checkpoint(
    store: LedgerStore, signer: LedgerSigner, chain: str, clock: Clock = utc_now
) -> StoredCheckpoint:
    """Sign the chain's current head (or return the checkpoint already at that size)."""
    head = await store.chain_head(chain)
    if head is None:
        raise NotFoundError(f"no chain for org {chain!r}")
    existing = await store.checkpoint_at(chain, head.seq)
    if existing is not None:
        return existing
    previous = await store.latest_checkpoint(chain)
    walker = ChainWalker(chain)
    if previous is not None:
        walker.prev_hash, walker.next_seq = previous.head_hash, previous.size + 1
    async for row in store.iter_entries(chain, from_seq=walker.next_seq):
        if row.seq > head.seq:
            break
        entry = audit_entry(row)
        broken = walker.check(
            EntryFields(chain, entry.seq, entry.received_at_us, entry.key_id, entry.signature,
                        entry.event),
            entry.entry_hash,
        )  # fmt: skip
        if broken is not None:
            raise StorageError(
                f"refusing to sign {chain} at size {head.seq}: it does not extend the checkpoint "
                f"at size {previous.size if previous else 0}: {broken.reason} (seq {broken.seq})"
            )
    expected = head.hash if head.seq else GENESIS_PREV_HASH
    if walker.next_seq - 1 != head.seq or walker.prev_hash != expected:
        raise StorageError(
            f"refusing to sign {chain}: its head row ({head.seq}) disagrees with its entries "
            f"({walker.next_seq - 1})"
        )
    checkpoint = Checkpoint(origin_for(signer.name, chain), head.seq, head.hash, clock())
    note = sign_checkpoint(checkpoint, signer.name, signer.key)
    return await store.save_checkpoint(
        StoredCheckpoint(
            chain=chain,
            size=head.seq,
            head_hash=head.hash,
            signed_at=checkpoint.time,
            key_name=signer.name,
            key_id=signer.key.key_id,
            note=note,
        )
    )


async def make_due_checkpoints(
    store: LedgerStore, signer: LedgerSigner, clock: Clock = utc_now
) -> list[StoredCheckpoint]:
    """A checkpoint for every chain whose head moved since its latest checkpoint."""
    made: list[StoredCheckpoint] = []
    for head in await store.chain_heads():
        latest = await store.latest_checkpoint(head.chain)
        if latest is not None and latest.size == head.seq:
            continue
        try:
            made.append(await make_checkpoint(store, signer, head.chain, clock))
        except StorageError as e:
            log.error("%s", e)
    return made
