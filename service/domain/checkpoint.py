"""Signed checkpoints of chain heads, as C2SP signed notes (c2sp.org/tlog-checkpoint).

A checkpoint says: "chain C had N entries and its head hash was H, at time T",
signed with the ledger's Ed25519 key. Its text is a C2SP checkpoint body, so
note tooling and witnesses can read it:

    trustledger.example/acme                    origin: <ledger name>/<chain>
    1041                                        size: entries in the chain
    0Fy5m1...base64 head hash...=               the entry_hash of entry N (32 zero bytes if N = 0)
    time 2026-11-22T16:50:00.123456Z            extension line

    — trustledger.example Az3grl...base64(key id || signature)...=

Deviation from tlog-checkpoint, documented in docs/ledger-format.md: the third
line is the head of a hash chain, not the root of an RFC 6962 Merkle tree, so
consistency between two checkpoints is shown by the entries between them, not
by a consistency proof. The signature follows c2sp.org/signed-note exactly
(Ed25519, key ID = SHA-256(name || 0x0A || 0x01 || public key)[:4]).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from service.domain.signing import SigningKey, verify_signature

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # ASCII digits only, no leading zeros
ED25519_TYPE = b"\x01"
TIME_EXTENSION = "time "


class CheckpointError(ValueError):
    """A note or checkpoint that does not parse or does not verify."""


def note_key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte C2SP key ID of an Ed25519 note key."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519_TYPE + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The key in the `<name>+<hex key id>+<base64(0x01 || key)>` form note tools accept."""
    key_id = note_key_id(name, public_key).hex()
    return f"{name}+{key_id}+{base64.b64encode(ED25519_TYPE + public_key).decode()}"


def format_time(at: datetime) -> str:
    """RFC 3339 UTC with microseconds and a `Z`, the one spelling checkpoints use."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The signed statement about one chain head."""

    origin: str
    size: int
    head_hash: bytes
    time: datetime

    @property
    def body(self) -> str:
        """The note text: origin, size, base64 head hash, `time` extension; newline-terminated."""
        head = base64.b64encode(self.head_hash).decode()
        return f"{self.origin}\n{self.size}\n{head}\n{TIME_EXTENSION}{format_time(self.time)}\n"


def sign_checkpoint(checkpoint: Checkpoint, key_name: str, key: SigningKey) -> str:
    """The signed note: body, a blank line, one signature line."""
    body = checkpoint.body
    signature = key.sign(body.encode())
    blob = note_key_id(key_name, key.public_key) + signature
    return f"{body}\n{SIGNATURE_PREFIX}{key_name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signature lines (not yet verified)."""
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in note):
        raise CheckpointError("a note must not contain control characters other than newline")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise CheckpointError("a note is text, a blank line, then signature lines")
    text, sig_block = note[: cut + 1], note[cut + 2 :]
    signatures: list[NoteSignature] = []
    for line in sig_block.splitlines():
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"not a signature line: {line[:60]!r}")
        name, _, blob_b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            blob = base64.b64decode(blob_b64, validate=True)
        except binascii.Error as e:
            raise CheckpointError(f"signature of {name!r} is not base64") from e
        if not name or len(blob) < 5:
            raise CheckpointError(f"malformed signature line for {name!r}")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    if not signatures:
        raise CheckpointError("a note needs at least one signature line")
    return text, signatures


def parse_body(text: str) -> Checkpoint:
    """Parse a checkpoint body (origin, size, head hash, `time` extension)."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4:
        raise CheckpointError("a checkpoint body has at least three newline-terminated lines")
    lines = lines[:-1]
    origin, size_text, head_b64, *extensions = lines
    if not origin:
        raise CheckpointError("empty origin line")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError(f"size must be a decimal without leading zeros, got {size_text!r}")
    try:
        head = base64.b64decode(head_b64, validate=True)
    except binascii.Error as e:
        raise CheckpointError("head hash is not base64") from e
    if len(head) != 32:
        raise CheckpointError(f"head hash must be 32 bytes, got {len(head)}")
    times = [e for e in extensions if e.startswith(TIME_EXTENSION)]
    if len(times) != 1:
        raise CheckpointError("a trustledger checkpoint has exactly one `time` extension line")
    try:
        at = datetime.strptime(times[0][len(TIME_EXTENSION) :], "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError as e:
        raise CheckpointError(f"bad time extension {times[0]!r}") from e
    return Checkpoint(origin, int(size_text), head, at.replace(tzinfo=UTC))


def verify_checkpoint(note: str, key_name: str, public_key: bytes) -> Checkpoint:
    """Verify the note's signature by the given ledger key and parse its body.

    Signatures by other keys are ignored (as signed-note requires); a signature
    by this key that fails makes the whole note invalid."""
    text, signatures = split_note(note)
    key_id = note_key_id(key_name, public_key)
    ours = [s for s in signatures if s.name == key_name and s.key_id == key_id]
    if not ours:
        raise CheckpointError(f"no signature by ledger key {key_name}+{key_id.hex()}")
    for s in ours:
        if not verify_signature(public_key, text.encode(), s.signature):
            raise CheckpointError(f"signature by {key_name}+{key_id.hex()} does not verify")
    return parse_body(text)


def origin_for(ledger_name: str, chain: str) -> str:
    """Each chain is its own log: `<ledger name>/<chain>`."""
    return f"{ledger_name}/{chain}"
