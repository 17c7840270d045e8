"""Publisher keys registered on the operator's authority."""

from __future__ import annotations

from datetime import UTC, datetime

from service.adapters.postgres import LedgerStore
from service.app.ingest import append_operator_event
from service.domain.events import encode_event
from service.domain.key_proof import registration
from service.domain.signing import SigningKey


async def register_new_key(store: LedgerStore, org: str, label: str = "") -> tuple[SigningKey, int]:
    """Generate a key pair for `org` and chain its self-signed registration.

    Returns the key and the sequence number of its registration entry. This is
    how an org gets its first key; later keys can be registered over NATS by a
    `publisher_key.registered` event signed with a key the org already has."""
    key = SigningKey.generate(org)
    return key, await register_key(store, key, label)


async def register_key(store: LedgerStore, key: SigningKey, label: str = "") -> int:
    """Chain the self-signed registration of an existing key pair, with its proof of
    possession; returns the entry's seq."""
    org = key.org
    event = registration(key, f"key-{key.key_id}", datetime.now(UTC), label)
    data = encode_event(event)
    outcome = await append_operator_event(store, data, key.key_id, key.sign(data))
    return outcome.chains[org]
