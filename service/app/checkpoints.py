"""Signed checkpoints: made on a schedule for chains that grew, and on demand.

Before signing a head, the entries since the chain's previous checkpoint are
re-linked from that checkpoint's head hash: the ledger never signs a head that
does not extend what it signed before (c2sp.org/tlog-checkpoint's MUST).
"""

from __future__ import annotations

import logging

from service.adapters.postgres import LedgerStore, StoredCheckpoint
from service.app.ingest import Clock, utc_now
from service.app.ledger_key import LedgerSigner, ledger_keys
from service.app.verify import audit_entry
from service.domain.audit import LEDGER_CHAIN
from service.domain.chain import ChainWalker, EntryFields
from service.domain.checkpoint import Checkpoint, origin_for, sign_checkpoint
from service.errors import ConfigError, IntegrityError, NotFoundError

log = logging.getLogger(__name__)


async def make_checkpoint(
    store: LedgerStore, signer: LedgerSigner, chain: str, clock: Clock = utc_now
) -> StoredCheckpoint:
    """Sign the chain's current head (or return the checkpoint already at that size)."""
    head = await store.chain_head(chain)
    if head is None:
        raise NotFoundError(f"no chain for org {chain!r}")
    latest = await store.latest_checkpoint(chain)
    if latest is not None and latest.size > head.seq:
        raise IntegrityError(
            f"refusing to sign {chain} at size {head.seq}: a checkpoint at size {latest.size} "
            "was signed before, so entries are missing"
        )
    return await checkpoint_at_size(store, signer, chain, head.seq, clock)


async def checkpoint_at_size(
    store: LedgerStore, signer: LedgerSigner, chain: str, size: int, clock: Clock = utc_now
) -> StoredCheckpoint:
    """Sign the chain's head at `size` (entry `size`'s hash), or return the checkpoint there.

    The entries since the previous checkpoint of at most `size` entries are
    re-linked from its head first; the new checkpoint is stored like any other."""
    head = await store.chain_head(chain)
    if head is None:
        raise NotFoundError(f"no chain for org {chain!r}")
    if not 0 <= size <= head.seq:
        raise ConfigError(f"{chain} has {head.seq} entries; cannot sign its head at size {size}")
    existing = await store.checkpoint_at(chain, size)
    if existing is not None:
        return existing
    # Never sign with a key the ledger's own key chain does not vouch for.
    keys = await ledger_keys(store)
    if signer.key.key_id not in keys.active:
        raise IntegrityError(f"the signing key {signer.key.key_id} is not active in {LEDGER_CHAIN}")
    previous = await store.latest_checkpoint(chain, at_most=size)
    walker = ChainWalker(chain)
    if previous is not None:
        walker.prev_hash, walker.next_seq = previous.head_hash, previous.size + 1
    async for row in store.iter_entries(chain, from_seq=walker.next_seq):
        if row.seq > size:
            break
        entry = audit_entry(row)
        broken = walker.check(
            EntryFields(chain, entry.seq, entry.received_at_us, entry.key_id, entry.signature,
                        entry.event),
            entry.entry_hash,
        )  # fmt: skip
        if broken is not None:
            raise IntegrityError(
                f"refusing to sign {chain} at size {size}: it does not extend the checkpoint "
                f"at size {previous.size if previous else 0}: {broken.reason} (seq {broken.seq})"
            )
    if walker.next_seq - 1 != size:
        raise IntegrityError(
            f"refusing to sign {chain} at size {size}: its entries end at seq {walker.next_seq - 1}"
        )
    head_hash = walker.prev_hash
    if size == head.seq and size > 0 and head.hash != head_hash:
        raise IntegrityError(
            f"refusing to sign {chain}: its head row ({head.seq}, {head.hash.hex()}) disagrees "
            f"with its entries ({size}, {head_hash.hex()})"
        )
    checkpoint = Checkpoint(origin_for(signer.name, chain), size, head_hash, clock())
    note = sign_checkpoint(checkpoint, signer.name, signer.key)
    return await store.save_checkpoint(
        StoredCheckpoint(
            chain=chain,
            size=size,
            head_hash=head_hash,
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
        except IntegrityError as e:
            log.error("%s", e)
    return made
