"""The ledger's own signing key, registered in the ledger's own chain.

Checkpoints (and, later, signed answers) are signed with an Ed25519 key the
ledger holds. Its public key is not just published: it is registered in the
chain `_ledger` with exactly the rule org chains use for publisher keys (the
first registration self-signed, every later one signed by a key already
registered there). A rotation is therefore recorded in the log itself, and an
auditor who verifies `_ledger` knows every key that ever signed a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.adapters.postgres import LedgerStore
from service.app.ingest import Clock, chain_entry, utc_now
from service.app.verify import verify_ledger_keys
from service.domain.admission import Admitted, Incoming
from service.domain.audit import LEDGER_CHAIN, Finding, KeyState, verify_sequentially
from service.domain.events import encode_event
from service.domain.key_proof import registration
from service.domain.signing import SigningKey, b64url
from service.errors import ConfigError, IntegrityError, StorageError


@dataclass(frozen=True, slots=True)
class LedgerSigner:
    """The ledger key and the name it signs notes under."""

    name: str
    key: SigningKey


async def ledger_keys(store: LedgerStore) -> KeyState:
    """Verify the `_ledger` chain and return its keys (every one ever registered)."""
    keys = await verify_ledger_keys(store, verify_sequentially)
    if isinstance(keys, Finding):
        raise IntegrityError(f"the ledger's key chain does not verify: {keys}")
    return keys


async def ensure_registered(
    store: LedgerStore,
    signer: LedgerSigner,
    endorser: LedgerSigner | None = None,
    clock: Clock = utc_now,
) -> int:
    """Register `signer`'s key in `_ledger` unless it is there; returns its entry's seq.

    The first ledger key registers itself. A later one (a rotation) must be
    endorsed: its registration is signed by `endorser`, an already registered key."""
    keys = await ledger_keys(store)
    key_id = signer.key.key_id
    if key_id in keys.registered:
        if keys.labels[key_id] != signer.name:
            # Checkpoints are verified under the name the key was registered with.
            raise ConfigError(
                f"ledger key {key_id} is registered under the name {keys.labels[key_id]!r}, "
                f"but TRUSTLEDGER_LEDGER_NAME is {signer.name!r}: set it back, or rotate to a "
                "new key registered under the new name"
            )
        return await _registration_seq(store, key_id)
    if keys.registered and (endorser is None or endorser.key.key_id not in keys.active):
        raise ConfigError(
            f"ledger key {key_id} is not registered in {LEDGER_CHAIN} and the chain already has "
            f"keys ({', '.join(sorted(keys.registered))}): rotate to it with "
            "`trustledger ledger rotate-key`, which signs its registration with the current key"
        )
    by = endorser.key if keys.registered and endorser is not None else signer.key
    event = registration(
        signer.key, f"ledger-key-{key_id}", clock(), signer.name, org=LEDGER_CHAIN
    )  # the same proof of possession as a publisher key's (ledger-format.md §5.4)
    data = encode_event(event)
    signature = by.sign(data)
    message = Incoming(LEDGER_CHAIN, data, by.key_id, b64url(signature), 0)
    async with store.transaction() as tx:
        heads = await tx.lock_chains([LEDGER_CHAIN])
        head = heads[LEDGER_CHAIN]
        if await tx.existing_event_ids([(LEDGER_CHAIN, event.id)]):
            # Another process registered it while we were checking (both started at once).
            return await _registration_seq(store, key_id)
        entry = chain_entry(head, Admitted(message, event, by.key_id, signature), clock())
        await tx.append_entries([entry])
        await tx.save_heads([head])
    return entry.seq


async def _registration_seq(store: LedgerStore, key_id: str) -> int:
    async for entry in store.iter_entries(LEDGER_CHAIN):
        if entry.event_id == f"ledger-key-{key_id}":
            return entry.seq
    raise StorageError(f"ledger key {key_id} is registered but its entry is missing")
