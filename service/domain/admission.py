"""Admission: decide, for one message from the broker, whether it may be chained.

Pure: the caller supplies the registered publisher keys. The checks run in
this order, and the first that fails names the quarantine reason:

1. `missing_signature`      no `Tl-Key-Id` or `Tl-Signature` header
2. `bad_key_id`             the key id header is not 16 lowercase hex characters
3. `bad_signature_encoding` the signature header is not 64 bytes of base64url
4. `event_too_large`        the payload is over `MAX_EVENT_BYTES`
5. `unknown_key`            no publisher key has that id
6. `key_revoked`            the key was revoked before this message was processed
7. `bad_signature`          Ed25519 verification over the exact bytes fails
8. `malformed_json`         the bytes are not JSON (as `load_json_strict` reads it)
9. `schema_invalid`         JSON, but not a valid event of the wire contract
10. `key_org_mismatch`      the event's `org` is not the org that owns the key
11. `subject_mismatch`      the subject's org token is not the event's `org`
12. `key_proof_invalid`     a `publisher_key.registered` without a `proof` by the
                            key it registers for this org and this event id
13. `key_already_registered` a `publisher_key.registered` of a key id that is
                            already registered, by any org (`check_new_key`)

Check 13 is made at chaining, against the registry as it stands at that point
of the batch and after duplicates are dropped (a redelivered registration is a
duplicate, not a refusal); `admit` makes checks 1-12.

Authenticity is checked before the bytes are parsed: nothing unsigned is
interpreted. The headers are checked against their patterns before they are
used (a key id is looked up only once it is 16 hex characters).

`admit` never raises, whatever the broker hands it (any subject, any bytes,
any header text, NULs and lone surrogates included), and every `detail` it
writes is printable and at most `MAX_DETAIL_CHARS` long. The message itself is
kept raw: the quarantine stores what arrived.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from service.domain.events import (
    KEY_ID_PATTERN,
    MAX_EVENT_BYTES,
    SLUG_PATTERN,
    Event,
    EventDecodeError,
    PublisherKeyRegistered,
    decode_event,
    printable,
)
from service.domain.key_proof import key_proof_problem
from service.domain.signing import SIGNATURE_SIZE, from_b64url, key_id_for, verify_signature

KEY_ID_HEADER = "Tl-Key-Id"
SIGNATURE_HEADER = "Tl-Signature"
SIGNATURE_B64_CHARS = 86
"""64 bytes in unpadded base64url."""

REASONS = (
    "missing_signature",
    "bad_key_id",
    "bad_signature_encoding",
    "event_too_large",
    "unknown_key",
    "key_revoked",
    "bad_signature",
    "malformed_json",
    "schema_invalid",
    "key_org_mismatch",
    "subject_mismatch",
    "key_proof_invalid",
    "key_already_registered",
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as the broker delivered it."""

    subject: str
    data: bytes
    key_id: str | None
    signature: str | None
    stream_seq: int


@dataclass(frozen=True, slots=True)
class PublisherKey:
    """A registered publisher key and whether it is still usable."""

    key_id: str
    org: str
    public_key: bytes
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Admitted:
    """A message that may be chained."""

    message: Incoming
    event: Event
    key_id: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class Refused:
    """A message that goes to quarantine, with the reason and a human detail."""

    message: Incoming
    reason: str
    detail: str


_KEY_ID = re.compile(KEY_ID_PATTERN)
_SLUG = re.compile(SLUG_PATTERN)


def subject_org(subject: str, prefix: str) -> str | None:
    """The org token of `<prefix>.ev.<org>.<agent>`, or None if the subject has another shape.

    The token is returned only when it is a slug, so what this returns is
    always safe to store, whatever bytes the subject carried."""
    parts = subject.split(".")
    head = prefix.split(".")
    if len(parts) != len(head) + 3 or parts[: len(head)] != head or parts[len(head)] != "ev":
        return None
    org = parts[len(head) + 1]
    return org if _SLUG.match(org) else None


def admit(
    message: Incoming, keys: Mapping[str, PublisherKey], subject_prefix: str
) -> Admitted | Refused:
    """Run every admission check on one message."""

    def refuse(reason: str, detail: str) -> Refused:
        return Refused(message, reason, printable(detail))

    if not message.key_id or not message.signature:
        return refuse("missing_signature", "Tl-Key-Id and Tl-Signature headers are required")
    if not _KEY_ID.match(message.key_id):
        return refuse(
            "bad_key_id",
            f"Tl-Key-Id {printable(message.key_id, 40)!r} is not 16 lowercase hex characters",
        )
    if len(message.signature) != SIGNATURE_B64_CHARS:
        return refuse(
            "bad_signature_encoding",
            f"Tl-Signature is {len(message.signature)} characters, expected"
            f" {SIGNATURE_B64_CHARS} (64 bytes, unpadded base64url)",
        )
    try:
        signature = from_b64url(message.signature)
    except ValueError as e:
        return refuse("bad_signature_encoding", str(e))
    if len(signature) != SIGNATURE_SIZE:
        return refuse("bad_signature_encoding", f"signature is {len(signature)} bytes, expected 64")
    if len(message.data) > MAX_EVENT_BYTES:
        return refuse(
            "event_too_large",
            f"event is {len(message.data)} bytes, at most {MAX_EVENT_BYTES} admitted",
        )
    key = keys.get(message.key_id)
    if key is None:
        return refuse("unknown_key", f"no publisher key {message.key_id!r} is registered")
    if key.revoked:
        return refuse("key_revoked", f"publisher key {key.key_id} of {key.org} is revoked")
    if not verify_signature(key.public_key, message.data, signature):
        return refuse("bad_signature", f"Ed25519 signature does not verify with key {key.key_id}")
    try:
        event = decode_event(message.data)
    except EventDecodeError as e:
        return refuse(e.reason, e.detail)
    if isinstance(event, PublisherKeyRegistered):
        problem = _key_registration_problem(event)
        if problem:
            return refuse("schema_invalid", problem)
    if event.org != key.org:
        return refuse(
            "key_org_mismatch",
            f"event claims org {event.org!r} but key {key.key_id} belongs to {key.org!r}",
        )
    claimed = subject_org(message.subject, subject_prefix)
    if claimed != event.org:
        return refuse(
            "subject_mismatch",
            f"subject {printable(message.subject, 300)!r} does not carry the event's org"
            f" {event.org!r}",
        )
    if isinstance(event, PublisherKeyRegistered):
        if isinstance(event.proof, msgspec.UnsetType):
            return refuse(
                "key_proof_invalid",
                f"a registration must carry a proof by key {event.key_id} that {event.org!r}"
                " holds it (wire contract §3.3)",
            )
        problem = key_proof_problem(
            event.org, event.key_id, event.id, from_b64url(event.public_key), event.proof
        )
        if problem:
            return refuse("key_proof_invalid", problem)
    return Admitted(message, event, key.key_id, signature)


def check_new_key(verdict: Admitted, keys: Mapping[str, PublisherKey]) -> Admitted | Refused:
    """Check 13 for an admitted registration: its key id must be new to the whole registry."""
    event = verdict.event
    if not isinstance(event, PublisherKeyRegistered):
        return verdict
    problem = new_key_problem(event, keys)
    if problem is None:
        return verdict
    return Refused(verdict.message, "key_already_registered", problem)


def new_key_problem(event: PublisherKeyRegistered, keys: Mapping[str, PublisherKey]) -> str | None:
    """Why `event` may not register its key (already registered), or None.

    Key ids are unique across orgs (a key signs for one org only), so a second
    registration, by another org or by the same one, could only be chained to no
    effect: it is refused, with a proof or without. Another org's key is not
    named to the registering org (the quarantine is its to read)."""
    known = keys.get(event.key_id)
    if known is None:
        return None
    if known.org != event.org:
        where = "by another org"
    else:
        where = f"for {known.org!r}"
        if known.revoked:
            where += " and revoked (a revoked key stays revoked)"
    return printable(f"key {event.key_id} is already registered {where}")


def _key_registration_problem(event: PublisherKeyRegistered) -> str | None:
    try:
        public_key = from_b64url(event.public_key)
        expected = key_id_for(public_key)
    except ValueError as e:
        return f"public_key: {e}"
    if event.key_id != expected:
        return f"key_id {event.key_id} does not match public_key (expected {expected})"
    return None
