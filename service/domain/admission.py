"""Admission: decide, for one message from the broker, whether it may be chained.

Pure: the caller supplies the registered publisher keys. The checks run in
this order, and the first that fails names the quarantine reason:

1. `missing_signature`   no `Tl-Key-Id` or `Tl-Signature` header
2. `bad_signature_encoding` the signature header is not 64 bytes of base64url
3. `unknown_key`         no publisher key has that id
4. `key_revoked`         the key was revoked before this message was processed
5. `bad_signature`       Ed25519 verification over the exact bytes fails
6. `malformed_json`      the bytes are not JSON
7. `schema_invalid`      JSON, but not a valid event of the wire contract
8. `key_org_mismatch`    the event's `org` is not the org that owns the key
9. `subject_mismatch`    the subject's org token is not the event's `org`

Authenticity is checked before the bytes are parsed: nothing unsigned is
interpreted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.domain.events import Event, EventDecodeError, PublisherKeyRegistered, decode_event
from service.domain.signing import SIGNATURE_SIZE, from_b64url, key_id_for, verify_signature

KEY_ID_HEADER = "Tl-Key-Id"
SIGNATURE_HEADER = "Tl-Signature"

REASONS = (
    "missing_signature",
    "bad_signature_encoding",
    "unknown_key",
    "key_revoked",
    "bad_signature",
    "malformed_json",
    "schema_invalid",
    "key_org_mismatch",
    "subject_mismatch",
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


def subject_org(subject: str, prefix: str) -> str | None:
    """The org token of `<prefix>.ev.<org>.<agent>`, or None if the subject has another shape."""
    parts = subject.split(".")
    head = prefix.split(".")
    if len(parts) != len(head) + 3 or parts[: len(head)] != head or parts[len(head)] != "ev":
        return None
    return parts[len(head) + 1]


def admit(
    message: Incoming, keys: Mapping[str, PublisherKey], subject_prefix: str
) -> Admitted | Refused:
    """Run every admission check on one message."""
    if not message.key_id or not message.signature:
        return Refused(
            message, "missing_signature", "Tl-Key-Id and Tl-Signature headers are required"
        )
    try:
        signature = from_b64url(message.signature)
    except ValueError as e:
        return Refused(message, "bad_signature_encoding", str(e))
    if len(signature) != SIGNATURE_SIZE:
        return Refused(
            message, "bad_signature_encoding", f"signature is {len(signature)} bytes, expected 64"
        )
    key = keys.get(message.key_id)
    if key is None:
        return Refused(message, "unknown_key", f"no publisher key {message.key_id!r} is registered")
    if key.revoked:
        return Refused(
            message, "key_revoked", f"publisher key {key.key_id} of {key.org} is revoked"
        )
    if not verify_signature(key.public_key, message.data, signature):
        return Refused(
            message, "bad_signature", f"Ed25519 signature does not verify with key {key.key_id}"
        )
    try:
        event = decode_event(message.data)
    except EventDecodeError as e:
        return Refused(message, e.reason, e.detail)
    if isinstance(event, PublisherKeyRegistered):
        problem = _key_registration_problem(event)
        if problem:
            return Refused(message, "schema_invalid", problem)
    if event.org != key.org:
        return Refused(
            message,
            "key_org_mismatch",
            f"event claims org {event.org!r} but key {key.key_id} belongs to {key.org!r}",
        )
    claimed = subject_org(message.subject, subject_prefix)
    if claimed != event.org:
        return Refused(
            message,
            "subject_mismatch",
            f"subject {message.subject!r} does not carry the event's org {event.org!r}",
        )
    return Admitted(message, event, key.key_id, signature)


def _key_registration_problem(event: PublisherKeyRegistered) -> str | None:
    try:
        public_key = from_b64url(event.public_key)
        expected = key_id_for(public_key)
    except ValueError as e:
        return f"public_key: {e}"
    if event.key_id != expected:
        return f"key_id {event.key_id} does not match public_key (expected {expected})"
    return None
