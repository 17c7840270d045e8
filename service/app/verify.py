"""Online verification: re-check chains in the database with the full rule.

Every entry is re-checked with `ChainAuditor` (links, hashes, publisher
signatures, key rules — docs/ledger-format.md §6) and every stored checkpoint
is checked: its signature by a key registered in the ledger's own chain, and
its head against the recomputed chain. The walk trusts neither the `chains`
head row nor the triggers; the first thing that does not hold is named.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

from service.adapters.postgres import EntryRow, LedgerStore
from service.domain.audit import (
    LEDGER_CHAIN,
    AuditEntry,
    ChainAuditor,
    Finding,
    KeyState,
    SignatureCheck,
    VerifyMany,
    verify_sequentially,
)
from service.domain.chain import to_micros
from service.domain.checkpoint import Checkpoint, CheckpointError, verify_checkpoint

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


def parallel_verifier(executor: Executor | None, parts: int = 2) -> VerifyMany:
    """A `VerifyMany` spreading signature checks over `parts` threads of `executor`."""
    if executor is None:
        return verify_sequentially

    def verify_many(checks: list[SignatureCheck] | tuple[SignatureCheck, ...]) -> list[bool]:
        size = max(1, -(-len(checks) // parts))
        chunks = [checks[i : i + size] for i in range(0, len(checks), size)]
        return [ok for part in executor.map(verify_sequentially, chunks) for ok in part]

    return verify_many  # type: ignore[return-value]


def checkpoint_with_ledger_keys(note: str, keys: KeyState) -> Checkpoint | str:
    """Verify a note against every registered ledger key; the checkpoint or why not."""
    problems = []
    for key_id in sorted(keys.registered):
        public_key = keys.active.get(key_id)
        if public_key is None:
            continue
        try:
            return verify_checkpoint(note, keys.labels[key_id], public_key)
        except CheckpointError as e:
            problems.append(str(e))
    return "; ".join(problems) or "no ledger key is registered"


async def _expect_checkpoints(
    store: LedgerStore, auditor: ChainAuditor, ledger: KeyState, min_size: int
) -> Finding | None:
    for stored in await store.checkpoints(auditor.chain, min_size):
        checkpoint = checkpoint_with_ledger_keys(stored.note, ledger)
        if isinstance(checkpoint, str):
            return Finding(
                auditor.chain, stored.size, "checkpoint signature does not verify", "", checkpoint
            )
        if checkpoint.size < auditor.last_seq:
            # An incremental auditor has walked past this size already (the
            # checkpoint was made afterwards): compare with the entry it verified.
            stored_hash = await store.entry_hash_at(auditor.chain, checkpoint.size)
            if stored_hash != checkpoint.head_hash:
                return Finding(
                    auditor.chain, checkpoint.size,
                    f"head at size {checkpoint.size} differs from the signed checkpoint",
                    checkpoint.head_hash.hex(), stored_hash.hex() if stored_hash else "no entry",
                )  # fmt: skip
            continue
        finding = auditor.expect_checkpoint(checkpoint)
        if finding is not None:
            return finding
    return None


async def _walk(
    store: LedgerStore,
    auditor: ChainAuditor,
    verify_many: VerifyMany,
    progress: Progress | None,
) -> Finding | None:
    """Feed the entries after the auditor's position to it, a chunk at a time."""
    batch: list[AuditEntry] = []
    async for entry in store.iter_entries(
        auditor.chain, from_seq=auditor.last_seq + 1, chunk=CHUNK
    ):
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
    finding = auditor.finish()
    if finding is not None:
        return finding
    head = await store.chain_head(auditor.chain)
    if head is not None and (head.seq, head.hash) != (auditor.last_seq, auditor.last_hash):
        return Finding(
            auditor.chain, auditor.last_seq, "the chains table's head disagrees with the entries",
            f"({auditor.last_seq}, {auditor.last_hash.hex()})", f"({head.seq}, {head.hash.hex()})",
        )  # fmt: skip
    return None


async def verify_ledger_keys(store: LedgerStore, verify_many: VerifyMany) -> KeyState | Finding:
    """Check the ledger's own key chain; its keys, or what is wrong with it."""
    ledger = ChainAuditor(LEDGER_CHAIN)
    entries = [audit_entry(e) async for e in store.iter_entries(LEDGER_CHAIN)]
    finding = ledger.check(entries, verify_many) or ledger.finish()
    return finding if finding is not None else ledger.keys


async def verify_all(
    store: LedgerStore,
    only: str | None = None,
    verify_many: VerifyMany = verify_sequentially,
    progress: Progress | None = None,
) -> list[Finding]:
    """Check the ledger's key chain, then every chain (or `only` one), from seq 1."""
    ledger = await verify_ledger_keys(store, verify_many)
    if isinstance(ledger, Finding):
        return [ledger]
    findings: list[Finding] = []
    for head in await store.chain_heads():
        if head.chain == LEDGER_CHAIN or (only is not None and head.chain != only):
            continue
        auditor = ChainAuditor(head.chain)
        finding = await _expect_checkpoints(store, auditor, ledger, 0) or await _walk(
            store, auditor, verify_many, progress
        )
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
        for head in await self._store.chain_heads():
            chain = head.chain
            if chain == LEDGER_CHAIN or chain in self.broken:
                continue
            auditor = self.auditors.setdefault(chain, ChainAuditor(chain, track_event_ids=False))
            seen = self._checkpoint_sizes.get(chain, -1)
            finding = await _expect_checkpoints(self._store, auditor, ledger, seen + 1)
            latest = await self._store.latest_checkpoint(chain)
            if latest is not None:
                self._checkpoint_sizes[chain] = latest.size
            finding = finding or await _walk(self._store, auditor, self._verify_many, None)
            if finding is not None:
                self.broken[chain] = finding
        return self.broken
