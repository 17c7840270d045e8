"""Proof of possession: a key registration signed by the key it registers.

Every `publisher_key.registered` the ledger admits carries `proof`, an Ed25519
signature by the NEW key over

    "trustledger/key-proof/v1" 0x00
    || u32be(len(org)) || org              UTF-8, the registering org (the chain)
    || u32be(len(key_id)) || key_id        ASCII, the registered key id
    || u32be(len(event_id)) || event_id    UTF-8, the registration's own `id`

Without it, anyone who saw a public key (in a quarantined registration, an
export, a key file's public half) could register it for their own org first
("key squatting") and so take the key id from its holder: key ids are unique
across orgs. The message binds the org and the registration's event id, so a
proof lifted from one registration proves nothing for another org or another
registration; the key is bound by the key id and by Ed25519 itself, whose
challenge hash covers the public key. Length prefixes keep the encoding
injective whatever the fields hold; the domain prefix keeps these signatures
apart from event signatures (an event is JSON, it never starts with this prefix).

`docs/wire-contract.md` §3.3 gives the bytes with a test vector;
`docs/ledger-format.md` §5.4 says how verifiers treat the member.
"""

from __future__ import annotations

import struct
from datetime import datetime

from service.domain.events import PublisherKeyRegistered
from service.domain.signing import (
    SIGNATURE_SIZE,
    SigningKey,
    b64url,
    from_b64url,
    key_id_for,
    verify_signature,
)

KEY_PROOF_DOMAIN = b"trustledger/key-proof/v1\x00"


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def key_proof_message(org: str, key_id: str, event_id: str) -> bytes:
    """The exact bytes the new key signs to prove it is held by whoever registers it."""
    return b"".join(
        (
            KEY_PROOF_DOMAIN,
            _lp(org.encode("utf-8")),
            _lp(key_id.encode("ascii")),
            _lp(event_id.encode("utf-8")),
        )
    )


def make_key_proof(key: SigningKey, org: str, event_id: str) -> str:
    """The `proof` member (unpadded base64url) of a registration of `key` by `org`."""
    return b64url(key.sign(key_proof_message(org, key.key_id, event_id)))


def registration(
    key: SigningKey, event_id: str, occurred_at: datetime, label: str = "", org: str | None = None
) -> PublisherKeyRegistered:
    """A `publisher_key.registered` of `key` for `org` (default: `key.org`), with its proof."""
    org = key.org if org is None else org
    return PublisherKeyRegistered(
        id=event_id,
        org=org,
        occurred_at=occurred_at,
        key_id=key.key_id,
        public_key=b64url(key.public_key),
        label=label,
        proof=make_key_proof(key, org, event_id),
    )


def key_proof_problem(
    org: object, key_id: object, event_id: object, public_key: bytes, proof: object
) -> str | None:
    """Why `proof` does not prove possession of `public_key` for this registration, or None.

    Takes the members as found (`object`), so that the auditor can ask it about
    any JSON; `public_key` must already be checked against `key_id`."""
    if not isinstance(proof, str):
        return f"proof must be a string, got {type(proof).__name__}"
    if not (isinstance(org, str) and isinstance(key_id, str) and isinstance(event_id, str)):
        return "org, key_id and id must be strings"
    try:
        signature = from_b64url(proof)
        message = key_proof_message(org, key_id, event_id)
    except (ValueError, UnicodeEncodeError) as e:
        return f"proof: {e}"
    if len(signature) != SIGNATURE_SIZE:
        return f"proof is {len(signature)} bytes, expected {SIGNATURE_SIZE}"
    if len(public_key) != 32 or key_id_for(public_key) != key_id:
        return f"public_key is not the key {key_id}"
    if not verify_signature(public_key, message, signature):
        return (
            f"proof is not a signature by key {key_id} over the key proof of"
            f" org {org!r} and event {event_id!r}"
        )
    return None
