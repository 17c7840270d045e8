"""Online verification: re-check chains in the database with the full rule.

Every entry is re-checked with `ChainAuditor` (links, hashes, publisher
signatures, key rules — docs/ledger-format.md §6) and every stored checkpoint
is checked: its signature by a key registered in the ledger's own chain, and
its head against the recomputed chain. The walk trusts neither the `chains`
head row nor the triggers; the first thing that does not hold is named.
"""

from __future__ import annotations

from collections.abc import Callable

from service.adapters.postgres import EntryRow, LedgerStore
from service.domain.audit import (
    LEDGER_CHAIN,
    AuditEntry,
    ChainAuditor,
    Finding,
    KeyState,
    VerifyMany,
    checkpoint_with_ledger_keys,
    verify_sequentially,
)
from service.domain.chain import to_micros

Progress = Callable[[int], None]
CHUNK = 2000


def audit_entry(entry: EntryRow) -> AuditEntry:
    """The one mapping from a stored row to what the auditor checks."""
    return AuditEntry(
        chain=entry.chain,
        seq=entry.seq,
        received_at_us=to_micros(entry.received_at),
        key_id=entry.key_id,
        signature=entry.signature,
        event=entry.event_bytes,
        prev_hash=entry.prev_hash,
        entry_hash=entry.entry_hash,
    )


async def _expect_checkpoints(
    store: LedgerStore, auditor: ChainAuditor, ledger: KeyState, min_size: int
) -> tuple[Finding | None, int]:
    """Verify the chain's checkpoints from `min_size` up and hand them to the auditor.

    Returns the first finding, and the largest size checked (-1 if none)."""
    largest = -1
    for stored in await store.checkpoints(auditor.chain, min_size):
        largest = stored.size
        checkpoint = checkpoint_with_ledger_keys(stored.note, ledger, auditor.chain)
        if isinstance(checkpoint, str):
            return Finding(
                auditor.chain, stored.size, "checkpoint signature does not verify", "", checkpoint
            ), largest
        if checkpoint.size != stored.size:
            return Finding(
                auditor.chain, stored.size, "checkpoint row disagrees with its signed note",
                f"size {stored.size}", f"size {checkpoint.size}",
            ), largest  # fmt: skip
        if checkpoint.size < auditor.last_seq:
            # An incremental auditor has walked past this size already (the
            # checkpoint was made afterwards): compare with the entry it verified.
            stored_hash = await store.entry_hash_at(auditor.chain, checkpoint.size)
            if stored_hash != checkpoint.head_hash:
                return Finding(
                    auditor.chain, checkpoint.size,
                    f"head at size {checkpoint.size} differs from the signed checkpoint",
                    checkpoint.head_hash.hex(), stored_hash.hex() if stored_hash else "no entry",
                ), largest  # fmt: skip
            continue
        finding = auditor.expect_checkpoint(checkpoint)
        if finding is not None:
            return finding, largest
    return None, largest


async def _walk(
    store: LedgerStore,
    auditor: ChainAuditor,
    verify_many: VerifyMany,
    progress: Progress | None,
) -> Finding | None:
    """Feed the entries after the auditor's position to it, a chunk at a time.

    The head row is read first and the walk stops there: a batch committed
    while we walk belongs to the next walk, not to a false alarm."""
    head, _ = await store.head_and_last_seq(auditor.chain)
    limit = head.seq if head is not None else None
    batch: list[AuditEntry] = []
    async for entry in store.iter_entries(
        auditor.chain, from_seq=auditor.last_seq + 1, chunk=CHUNK
    ):
        if limit is not None and entry.seq > limit:
            break
        batch.append(audit_entry(entry))
        if len(batch) >= CHUNK:
            finding = auditor.check(batch, verify_many)
            if finding is not None:
                return finding
            if progress is not None:
                progress(len(batch))
            batch = []
    if batch:
        finding = auditor.check(batch, verify_many)
        if finding is not None:
            return finding
        if progress is not None:
            progress(len(batch))
    if head is None:
        return Finding(auditor.chain, None, "entries exist but the chain has no head row")
    finding = auditor.finish()
    if finding is not None:
        return finding
    if (head.seq, head.hash) != (auditor.last_seq, auditor.last_hash):
        return Finding(
            auditor.chain, auditor.last_seq, "the chains table's head disagrees with the entries",
            f"({auditor.last_seq}, {auditor.last_hash.hex()})", f"({head.seq}, {head.hash.hex()})",
        )  # fmt: skip
    # One snapshot: the head row must name the last stored entry. (Later commits
    # move both together; entries beyond the head row mean the row was rewound.)
    now, last_seq = await store.head_and_last_seq(auditor.chain)
    if now is not None and now.seq != last_seq:
        return Finding(
            auditor.chain, now.seq + 1, "entries beyond the chains table's head",
            f"last seq {now.seq}", f"last seq {last_seq}",
        )  # fmt: skip
    return None


async def verify_ledger_keys(store: LedgerStore, verify_many: VerifyMany) -> KeyState | Finding:
    """Check the ledger's own key chain; its keys, or what is wrong with it."""
    ledger = ChainAuditor(LEDGER_CHAIN)
    entries = [audit_entry(e) async for e in store.iter_entries(LEDGER_CHAIN)]
    finding = ledger.check(entries, verify_many) or ledger.finish()
    return finding if finding is not None else ledger.keys


async def _from_latest_checkpoint(
    store: LedgerStore, chain: str, ledger: KeyState
) -> tuple[ChainAuditor, Finding | None]:
    """An auditor positioned at the chain's latest checkpoint (or at the start if none).

    The prefix up to the checkpoint is taken as verified by an earlier full walk:
    its head is bound by the ledger's signature, and only its key events are
    replayed to know which keys may sign what follows."""
    latest = await store.latest_checkpoint(chain)
    if latest is None:
        return ChainAuditor(chain), None
    checkpoint = checkpoint_with_ledger_keys(latest.note, ledger, chain)
    if isinstance(checkpoint, str):
        return ChainAuditor(chain), Finding(
            chain, latest.size, "checkpoint signature does not verify", "", checkpoint
        )
    stored_hash = await store.entry_hash_at(chain, checkpoint.size) if checkpoint.size else None
    if checkpoint.size and stored_hash != checkpoint.head_hash:
        return ChainAuditor(chain), Finding(
            chain, checkpoint.size,
            f"head at size {checkpoint.size} differs from the signed checkpoint",
            checkpoint.head_hash.hex(), stored_hash.hex() if stored_hash else "no entry",
        )  # fmt: skip
    keys = KeyState.replay(await store.key_event_bytes(chain, checkpoint.size))
    return ChainAuditor(chain, checkpoint.size, checkpoint.head_hash, keys), None


async def verify_all(
    store: LedgerStore,
    only: str | None = None,
    verify_many: VerifyMany = verify_sequentially,
    progress: Progress | None = None,
    from_checkpoint: bool = False,
) -> list[Finding]:
    """Check the ledger's key chain, then every chain (or `only` one).

    From seq 1, or with `from_checkpoint` only what follows each chain's latest
    signed checkpoint (a quick check of recent appends; the full walk is what
    proves the whole history). `_ledger` itself is walked like any chain too,
    so its checkpoints and head are checked. Chains are found from the entries
    as well as the head rows: a deleted head row hides nothing."""
    ledger = await verify_ledger_keys(store, verify_many)
    if isinstance(ledger, Finding):
        return [ledger]
    findings: list[Finding] = []
    for chain in await store.chain_names():
        if only is not None and chain != only:
            continue
        if from_checkpoint:
            auditor, finding = await _from_latest_checkpoint(store, chain, ledger)
        else:
            auditor, finding = ChainAuditor(chain), None
        if finding is None:
            finding, _ = await _expect_checkpoints(store, auditor, ledger, auditor.last_seq)
        finding = finding or await _walk(store, auditor, verify_many, progress)
        if finding is not None:
            findings.append(finding)
    return findings


class IncrementalVerifier:
    """The scheduled check: each run verifies only what was added since the last one.

    Keeps one auditor per chain (without the per-id memory; the database's
    UNIQUE constraint and the full `trustledger ledger verify` cover ids). A
    chain found broken stays reported until the process restarts."""

    def __init__(self, store: LedgerStore, verify_many: VerifyMany = verify_sequentially) -> None:
        self._store = store
        self._verify_many = verify_many
        self.auditors: dict[str, ChainAuditor] = {}
        self.broken: dict[str, Finding] = {}
        self._checkpoint_sizes: dict[str, int] = {}

    async def run(self) -> dict[str, Finding]:
        """Verify new entries and checkpoints of every chain; returns the broken chains."""
        ledger = await verify_ledger_keys(self._store, self._verify_many)
        if isinstance(ledger, Finding):
            self.broken[LEDGER_CHAIN] = ledger
            return self.broken
        for chain in await self._store.chain_names():
            if chain in self.broken:
                continue
            auditor = self.auditors.setdefault(chain, ChainAuditor(chain, track_event_ids=False))
            seen = self._checkpoint_sizes.get(chain, -1)
            finding, largest = await _expect_checkpoints(self._store, auditor, ledger, seen + 1)
            self._checkpoint_sizes[chain] = max(seen, largest)
            finding = finding or await _walk(self._store, auditor, self._verify_many, None)
            if finding is not None:
                self.broken[chain] = finding
        return self.broken
