"""Export a chain, or a range of it, as a `trustledger-export/v1` file.

The file carries everything an auditor needs to re-check the range offline
(`service.app.offline_verify`): the ledger's key chain, the key state before
the range, the link to the entry before it, every signed checkpoint from
there on (one made now at the range's end if none is there), the entries,
and a trailer signed by the ledger key over the digest of all of it. The line
types are in `service.domain.export_format`.

Lines are produced one at a time and entries are read in chunks, so memory
does not grow with the chain. Only entries of `_ledger` and of the exported
org are read: an export never holds a byte of another org's events.

Everything that can refuse (unknown org, bad or empty range, a chain that does
not verify before the range, a head the ledger will not sign) is checked
before the first line is produced, so a caller can pull the first line to
surface errors before it starts streaming.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import blake3

from service.adapters.postgres import LedgerStore
from service.app.checkpoints import checkpoint_at_size
from service.app.ingest import Clock, utc_now
from service.app.ledger_key import LedgerSigner
from service.app.verify import CHUNK, audit_entry
from service.domain.audit import (
    LEDGER_CHAIN,
    AuditEntry,
    ChainAuditor,
    KeyState,
    verify_sequentially,
)
from service.domain.events import SLUG_PATTERN
from service.domain.export_format import (
    FORMAT,
    CheckpointLine,
    EndLine,
    ExportLine,
    Header,
    PrevLine,
    PublisherKeyLine,
    encode_line,
    entry_line,
    signed_message,
)
from service.domain.signing import b64url
from service.errors import ConfigError, IntegrityError, NotFoundError, StorageError

Progress = Callable[[int], None]
_SLUG = re.compile(SLUG_PATTERN)


async def export_range(
    store: LedgerStore,
    org: str,
    from_seq: int = 1,
    to_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[int, int]:
    """The seq range (first, last) to export: `from_seq`..`to_seq` (default: the head),
    narrowed to the entries received in [`since`, `until`) when either is given.

    The ledger's clock may step back, so the range is the smallest contiguous one
    holding every entry received in the window (it may hold a few outside it)."""
    if org == LEDGER_CHAIN or not _SLUG.match(org):
        raise ConfigError(f"{org!r} is not an org id")
    if from_seq < 1:
        raise ConfigError(f"from_seq must be at least 1, got {from_seq}")
    if to_seq is not None and to_seq < from_seq:
        raise ConfigError(f"to_seq {to_seq} is before from_seq {from_seq}")
    for name, at in (("since", since), ("until", until)):
        if at is not None and at.tzinfo is None:
            raise ConfigError(f"{name} must carry a UTC offset, got {at.isoformat()}")
    if since is not None and until is not None and since >= until:
        raise ConfigError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    head = await store.chain_head(org)
    if head is None or head.seq == 0:
        raise NotFoundError(f"no chain for org {org!r}")
    if to_seq is not None and to_seq > head.seq:
        raise ConfigError(f"{org} has {head.seq} entries; to_seq {to_seq} is beyond its head")
    if from_seq > head.seq:
        raise NotFoundError(f"{org} has {head.seq} entries; there is none from seq {from_seq}")
    first, last = from_seq, head.seq if to_seq is None else to_seq
    if since is not None or until is not None:
        window = f"[{since.isoformat() if since else '-'}, {until.isoformat() if until else '-'})"
        bounds = await store.seq_bounds(org, since, until)
        if bounds is None:
            raise NotFoundError(f"no entry of {org} was received in {window}")
        first, last = max(first, bounds[0]), min(last, bounds[1])
        if first > last:
            raise NotFoundError(
                f"no entry of {org} in seqs {from_seq}..{to_seq or head.seq} was received in {window}"
            )
    return first, last


async def key_state_before(store: LedgerStore, org: str, seq: int) -> tuple[KeyState, bytes]:
    """Walk (and so verify, §6) the entries before `seq`; the key state and hash after them."""
    auditor = ChainAuditor(org, track_event_ids=False)
    batch: list[AuditEntry] = []

    async def check() -> None:
        # Off the event loop: signature checks are CPU work.
        finding = await asyncio.to_thread(auditor.check, batch, verify_sequentially)
        if finding is not None:
            raise IntegrityError(
                f"refusing to export {org} from seq {seq}: the entries before it do not verify: "
                f"{finding}"
            )

    if seq > 1:
        async for row in store.iter_entries(org, from_seq=1, chunk=CHUNK):
            if row.seq >= seq:
                break
            batch.append(audit_entry(row))
            if len(batch) >= CHUNK:
                await check()
                batch = []
        if batch:
            await check()
    if auditor.last_seq != seq - 1:
        raise IntegrityError(
            f"refusing to export {org} from seq {seq}: its entries before it end at seq "
            f"{auditor.last_seq}"
        )
    return auditor.keys, auditor.last_hash


async def export_chain(
    store: LedgerStore,
    signer: LedgerSigner,
    org: str,
    from_seq: int = 1,
    to_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    clock: Clock = utc_now,
    progress: Progress | None = None,
    sign_missing_checkpoint: bool = True,
) -> AsyncIterator[bytes]:
    """The lines of an export of `org`'s chain, each newline-terminated.

    With `sign_missing_checkpoint` false (the HTTP API: a GET changes nothing),
    no checkpoint is made: the range ends at the largest stored checkpoint within
    it, and `NotFoundError` says so when there is none.

    Raises `NotFoundError` (unknown org, empty range), `ConfigError` (bad range) or
    `IntegrityError` (the chain before the range does not verify, or the ledger
    will not sign its head at the range's end) before the first line; see
    `export_range` for the range. `StorageError` if the database fails."""
    first, last = await export_range(store, org, from_seq, to_seq, since, until)
    if not sign_missing_checkpoint:
        covering = await store.latest_checkpoint(org, at_most=last)
        if covering is None or covering.size < first:
            raise NotFoundError(
                f"no signed checkpoint of {org} lies in seqs {first}..{last} yet: an export ends "
                "at a checkpoint (the scheduler signs moved chains every minute)"
            )
        last = covering.size
    keys, prev_hash = await key_state_before(store, org, first)
    latest = await store.latest_checkpoint(org)
    # Read after the latest checkpoint: every checkpoint honestly made up to it is
    # within this size, so a larger one in the file proves entries were removed.
    head = await store.chain_head(org)
    if head is None or head.seq < last:
        raise IntegrityError(f"the head of {org} moved back below seq {last} during the export")
    if await store.checkpoint_at(org, last) is None:
        await checkpoint_at_size(store, signer, org, last, clock)
    # Checkpoints made while the file is written are left out: they may exceed `head`.
    bound = max(last, latest.size if latest is not None else 0)

    hasher = blake3.blake3()

    def emit(line: ExportLine) -> bytes:
        data = encode_line(line)
        hasher.update(data)
        return data

    yield emit(
        Header(
            format=FORMAT,
            chain=org,
            from_seq=first,
            to_seq=last,
            chain_size=head.seq,
            ledger_name=signer.name,
            exported_at=clock().astimezone(UTC),
        )
    )
    async for row in store.iter_entries(LEDGER_CHAIN, chunk=CHUNK):
        yield emit(entry_line(audit_entry(row)))
    for key_id, label in keys.labels.items():
        yield emit(
            PublisherKeyLine(
                key_id=key_id,
                public_key=b64url(keys.public_keys[key_id]),
                label=label,
                active=key_id in keys.active,
            )
        )
    yield emit(PrevLine(seq=first - 1, entry_hash=prev_hash.hex()))
    min_size = first - 1
    while True:
        page = await store.checkpoints(org, min_size, max_size=bound, limit=CHUNK)
        for checkpoint in page:
            yield emit(CheckpointLine(note=checkpoint.note))
        if len(page) < CHUNK:
            break
        min_size = page[-1].size + 1
    count = reported = 0
    async for row in store.iter_entries(org, from_seq=first, chunk=CHUNK):
        if row.seq > last:
            break
        if row.chain != org:  # the query filters by chain; never let another org's byte out
            raise StorageError(f"reading {org} returned an entry of {row.chain}")
        yield emit(entry_line(audit_entry(row)))
        count += 1
        if progress is not None and count - reported >= CHUNK:
            progress(count - reported)
            reported = count
    if progress is not None and count > reported:
        progress(count - reported)
    digest = hasher.digest()
    yield encode_line(
        EndLine(
            entries=count,
            digest=digest.hex(),
            key_name=signer.name,
            key_id=signer.key.key_id,
            signature=b64url(signer.key.sign(signed_message(digest))),
        )
    )
