"""Ingest one batch: admit, chain, quarantine and project, in one transaction.

The caller (the consumer loop) acks the batch's messages only after
`ingest_batch` returns, i.e. after commit. A crash before that leaves them
unacked and the broker redelivers them; the ledger's `(chain, event_id)`
uniqueness and the quarantine's stream-sequence uniqueness make the retry
harmless, so the log holds each event exactly once.

Cost per batch: signature checks run on a thread pool (libsodium releases the
GIL), then a fixed number of round trips to PostgreSQL whatever the batch
size: lock heads, look up duplicates, read keys, read the projection state of
the agents touched, COPY the entries, write quarantine, heads and projections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.adapters.postgres import ChainHead, EntryRow, LedgerStore, LedgerTx, StreamPosition
from service.domain.admission import (
    Admitted,
    Incoming,
    PublisherKey,
    Refused,
    admit,
    check_new_key,
    new_key_problem,
    subject_org,
)
from service.domain.chain import EntryFields, entry_hash, to_micros
from service.domain.events import (
    EventDecodeError,
    PublisherKeyRegistered,
    PublisherKeyRevoked,
    agent_of,
    decode_event,
    event_kind,
)
from service.domain.signing import b64url, from_b64url
from service.errors import AdmissionError

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class BatchOutcome:
    """What one batch did; the consumer turns it into metrics and log lines."""

    appended: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    quarantined_new: int = 0
    """Quarantine rows written (a redelivered message already held is not written again)."""
    chains: dict[str, int] = field(default_factory=dict)
    """Head seq per chain after the batch."""


def _admit_chunk(
    messages: Sequence[Incoming], keys: dict[str, PublisherKey], prefix: str
) -> list[Admitted | Refused]:
    return [admit(m, keys, prefix) for m in messages]


async def admit_all(
    messages: Sequence[Incoming],
    keys: dict[str, PublisherKey],
    prefix: str,
    executor: Executor | None,
    chunks: int = 2,
) -> list[Admitted | Refused]:
    """Admission checks for a batch, spread over `chunks` threads."""
    loop = asyncio.get_running_loop()
    size = max(1, -(-len(messages) // chunks))
    parts = [messages[i : i + size] for i in range(0, len(messages), size)]
    results = await asyncio.gather(
        *(loop.run_in_executor(executor, _admit_chunk, part, keys, prefix) for part in parts)
    )
    return [verdict for part in results for verdict in part]


# Reasons that may change once keys registered earlier in the same batch (or by
# another writer since the snapshot) are known: re-checked inside the transaction.
_KEY_DEPENDENT = frozenset({"unknown_key", "key_revoked"})


async def ingest_batch(
    store: LedgerStore,
    messages: Sequence[Incoming],
    subject_prefix: str,
    executor: Executor | None = None,
    clock: Clock = utc_now,
    position: StreamPosition | None = None,
    writer_epoch: int | None = None,
) -> BatchOutcome:
    """Admit, chain, quarantine and project one batch of broker messages.

    `position`, when given, is stored in the same transaction: the consumer's
    progress is exactly as durable as the entries it produced. `writer_epoch`,
    when given, fences the transaction: it commits only while this process is
    still the consumer's single writer (`WriterFencedError` otherwise)."""
    snapshot = await store.load_keys()
    verdicts = await admit_all(messages, snapshot, subject_prefix, executor)
    async with store.transaction() as tx:
        if position is not None and writer_epoch is not None:
            await tx.fence(position.consumer, writer_epoch)
        outcome = await _apply(tx, verdicts, subject_prefix, clock, position=position)
        if position is not None:
            await tx.save_position(position)
        return outcome


UNPROCESSABLE = "unprocessable"
"""The quarantine reason of a message that made its batch fail for a reason that
is not transient (isolated by the consumer; the detail names the failure)."""


async def quarantine_unprocessable(
    store: LedgerStore,
    message: Incoming,
    detail: str,
    subject_prefix: str,
    clock: Clock = utc_now,
    position: StreamPosition | None = None,
    writer_epoch: int | None = None,
) -> BatchOutcome:
    """Quarantine one message that cannot be processed, with its position, in one
    transaction: it is kept (raw bytes, reason), and it no longer blocks what follows."""
    async with store.transaction() as tx:
        if position is not None and writer_epoch is not None:
            await tx.fence(position.consumer, writer_epoch)
        await tx.quarantine(
            [Refused(message, UNPROCESSABLE, detail)],
            clock().astimezone(UTC),
            subject_prefix,
            _incarnation(position),
        )
        if position is not None:
            await tx.save_position(position)
    return BatchOutcome(quarantined={UNPROCESSABLE: 1})


def _incarnation(position: StreamPosition | None) -> str | None:
    """Names the stream incarnation a stream sequence belongs to (sequences restart
    when a stream is recreated)."""
    return None if position is None else f"{position.stream}/{position.stream_created}"


async def append_operator_event(
    store: LedgerStore,
    data: bytes,
    key_id: str,
    signature: bytes,
    clock: Clock = utc_now,
) -> BatchOutcome:
    """Chain one signed event without the broker, on the operator's authority.

    Used to register an org's first key: a `publisher_key.registered` event
    signed by the very key it registers. Every other admission check still
    applies (the signature must verify, the key id must match the public key,
    the proof must verify, the key id must be new to the registry), so the
    chain always shows which key vouched for every entry."""
    try:
        event = decode_event(data)
    except EventDecodeError as e:
        raise AdmissionError(f"{e.reason}: {e.detail}") from e
    keys = await store.load_keys()
    if isinstance(event, PublisherKeyRegistered) and event.key_id == key_id:
        known = keys.get(key_id)
        if known is not None and known.org != event.org:
            # Said as such, not as the key_org_mismatch that admission would find.
            raise AdmissionError(f"key_already_registered: {new_key_problem(event, keys)}")
        if known is None:
            try:
                keys[key_id] = PublisherKey(key_id, event.org, from_b64url(event.public_key))
            except ValueError as e:
                raise AdmissionError(f"schema_invalid: public_key: {e}") from e
    message = Incoming(
        subject=f"operator.ev.{event.org}._",
        data=data,
        key_id=key_id,
        signature=b64url(signature),
        stream_seq=0,
    )
    verdict = admit(message, keys, "operator")
    if isinstance(verdict, Refused):
        raise AdmissionError(f"{verdict.reason}: {verdict.detail}")
    async with store.transaction() as tx:
        outcome = await _apply(tx, [verdict], "operator", clock, bootstrap=True)
    if outcome.quarantined:
        raise AdmissionError(f"refused: {', '.join(outcome.quarantined)}")
    return outcome


async def _apply(
    tx: LedgerTx,
    verdicts: Sequence[Admitted | Refused],
    subject_prefix: str,
    clock: Clock,
    bootstrap: bool = False,
    position: StreamPosition | None = None,
) -> BatchOutcome:
    outcome = BatchOutcome()
    # The ledger's clock, read once per batch, truncated to what is hashed.
    received_at = clock().astimezone(UTC)
    orgs = {v.event.org for v in verdicts if isinstance(v, Admitted)}
    # A refusal for an unknown or revoked key may turn into an admission once
    # keys registered earlier in this batch (or by another writer since the
    # snapshot) are known, so the chain its subject names is locked too, if it
    # exists.
    maybe = {
        org
        for v in verdicts
        if isinstance(v, Refused)
        and v.reason in _KEY_DEPENDENT
        and (org := subject_org(v.message.subject, subject_prefix))
    }
    heads = await tx.lock_chains(orgs, existing_only=maybe)
    keys = await tx.load_keys()
    existing = await tx.existing_event_ids(
        [(v.event.org, v.event.id) for v in verdicts if isinstance(v, Admitted)]
    )

    accepted: list[Admitted] = []
    refused: list[Refused] = []
    seen: set[tuple[str, str]] = set(existing)
    new_keys: list[tuple[PublisherKey, str, int]] = []
    revoked: list[tuple[str, int]] = []
    entries: list[EntryRow] = []
    for verdict in verdicts:
        verdict = _recheck(verdict, keys, subject_prefix, bootstrap)
        if isinstance(verdict, Refused):
            refused.append(verdict)
            continue
        event = verdict.event
        if (event.org, event.id) in seen:
            outcome.duplicates += 1
            continue
        # After the duplicate check: a redelivered registration finds its own key
        # registered, and must count as the duplicate it is.
        verdict = check_new_key(verdict, keys)
        if isinstance(verdict, Refused):
            refused.append(verdict)
            continue
        head = heads.get(event.org)
        if head is None:
            # Not reachable as the locks are taken above (a re-check can only
            # admit an event whose key's org chain exists, and that chain is
            # locked); should it ever happen, quarantine rather than append to
            # a chain this transaction does not hold.
            refused.append(
                Refused(verdict.message, "unknown_key", f"chain {event.org!r} was not locked")
            )
            continue
        seen.add((event.org, event.id))
        entry = chain_entry(head, verdict, received_at)
        entries.append(entry)
        accepted.append(verdict)
        if isinstance(event, PublisherKeyRegistered) and event.key_id not in keys:
            key = PublisherKey(event.key_id, event.org, from_b64url(event.public_key))
            keys[key.key_id] = key
            new_keys.append((key, event.label, entry.seq))
        elif isinstance(event, PublisherKeyRevoked):
            current = keys.get(event.key_id)
            if current is not None and current.org == event.org and not current.revoked:
                keys[event.key_id] = PublisherKey(
                    current.key_id, current.org, current.public_key, revoked=True
                )
                revoked.append((event.key_id, entry.seq))

    await tx.append_entries(entries)
    await tx.register_keys(new_keys)
    await tx.revoke_keys(revoked)
    touched = [h for h in heads.values() if h.chain in {e.chain for e in entries}]
    await tx.save_heads(touched)

    agents = {a for v in accepted if (a := agent_of(v.event)) is not None}
    projector = await tx.load_projection(agents)
    for v, entry in zip(accepted, entries, strict=True):
        projector.apply(v.event, entry.chain, entry.seq, entry.received_at)
    await tx.save_projection(projector, {h.chain: h.seq for h in touched})

    outcome.quarantined_new = await tx.quarantine(
        refused, received_at, subject_prefix, _incarnation(position)
    )
    outcome.appended = len(entries)
    for r in refused:
        outcome.quarantined[r.reason] = outcome.quarantined.get(r.reason, 0) + 1
    outcome.chains = {h.chain: h.seq for h in touched}
    return outcome


def _recheck(
    verdict: Admitted | Refused,
    keys: dict[str, PublisherKey],
    subject_prefix: str,
    bootstrap: bool,
) -> Admitted | Refused:
    """Re-judge against the registry as it stands at this point of the batch."""
    if isinstance(verdict, Refused):
        if verdict.reason in _KEY_DEPENDENT:
            return admit(verdict.message, keys, subject_prefix)
        return verdict
    key = keys.get(verdict.key_id)
    if key is None:
        event = verdict.event
        if (
            bootstrap
            and isinstance(event, PublisherKeyRegistered)
            and event.key_id == verdict.key_id
        ):
            return verdict  # self-signed first key, vouched for by the operator
        return Refused(verdict.message, "unknown_key", f"no publisher key {verdict.key_id!r}")
    if key.revoked:
        return Refused(
            verdict.message, "key_revoked", f"publisher key {key.key_id} of {key.org} is revoked"
        )
    if key.org != verdict.event.org:
        return Refused(
            verdict.message,
            "key_org_mismatch",
            f"event claims org {verdict.event.org!r} but key {key.key_id} belongs to {key.org!r}",
        )
    return verdict


def chain_entry(head: ChainHead, verdict: Admitted, received_at: datetime) -> EntryRow:
    """Append one admitted event to the head (in memory) and return its entry."""
    event = verdict.event
    seq = head.seq + 1
    fields = EntryFields(
        chain=head.chain,
        seq=seq,
        received_at_us=to_micros(received_at),
        key_id=verdict.key_id,
        signature=verdict.signature,
        event_bytes=verdict.message.data,
    )
    digest = entry_hash(head.hash, fields)
    about = agent_of(event)
    entry = EntryRow(
        chain=head.chain,
        seq=seq,
        event_id=event.id,
        kind=event_kind(event),
        agent_org=about[0] if about else None,
        agent=about[1] if about else None,
        occurred_at=event.occurred_at,
        received_at=received_at,
        key_id=verdict.key_id,
        signature=verdict.signature,
        event_bytes=verdict.message.data,
        prev_hash=head.hash,
        entry_hash=digest,
        stream_seq=verdict.message.stream_seq or None,
    )
    head.seq = seq
    head.hash = digest
    return entry
