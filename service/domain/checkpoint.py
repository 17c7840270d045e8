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
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from service.domain.signing import SigningKey, verify_signature

SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")  # ASCII digits only, no leading zeros
ED25519_TYPE = b"\x01"
TIME_EXTENSION = "time "
MAX_SIZE = 2**63 - 1
"""The largest size a checkpoint may state (a seq is a PostgreSQL bigint)."""
MAX_NOTE_BYTES = 65_536
"""The largest note (UTF-8 bytes) a verifier reads; the ledger's are under 500."""
MAX_SIGNATURES = 100
"""Signature lines per note, as Go's golang.org/x/mod/sumdb/note allows."""
# `[0-9]`, never `\d`: Python's `\d` also matches other scripts' digits.
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# Unicode White_Space (Go's unicode.IsSpace): a signed-note key name holds none of them.
_WHITE_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


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
    """Split a signed note into its text and its signature lines (not yet verified).

    docs/ledger-format.md §12.4 steps 1-2: at most `MAX_NOTE_BYTES`, no control
    character but LF, split at the last empty line, 1 to `MAX_SIGNATURES`
    signature lines, each `— <name> <base64>` with a name that golang.org/x/mod's
    sumdb/note accepts (non-empty, no White_Space, no `+`)."""
    try:
        size = len(note.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise CheckpointError("a note must be UTF-8 (it holds a lone surrogate)") from e
    if size > MAX_NOTE_BYTES:
        raise CheckpointError(f"a note is at most {MAX_NOTE_BYTES} bytes, this one {size}")
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in note):
        raise CheckpointError("a note must not contain control characters other than newline")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise CheckpointError("a note is text, a blank line, then signature lines")
    text, sig_block = note[: cut + 1], note[cut + 2 : -1]
    # split("\n"), not splitlines(): only LF ends a line (not U+2028, U+0085, ...).
    lines = sig_block.split("\n") if sig_block else []
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"a note has at most {MAX_SIGNATURES} signature lines")
    signatures: list[NoteSignature] = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"not a signature line: {line[:60]!r}")
        name, _, blob_b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not name or "+" in name or not _WHITE_SPACE.isdisjoint(name):
            raise CheckpointError(f"key name {name[:60]!r} is empty or holds a space or '+'")
        blob = _canonical_base64(blob_b64)
        if blob is None:
            raise CheckpointError(
                f"signature of {name!r} is not base64 in its one (canonical) spelling"
            )
        if len(blob) < 5:
            raise CheckpointError(f"malformed signature line for {name!r}")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    if not signatures:
        raise CheckpointError("a note needs at least one signature line")
    return text, signatures


def _canonical_base64(text: str) -> bytes | None:
    """Standard base64 with padding, in its one spelling (unused bits zero), or None."""
    if not _BASE64.fullmatch(text):
        return None
    data = base64.b64decode(text)
    return data if base64.b64encode(data).decode() == text else None


def parse_body(text: str) -> Checkpoint:
    """Parse a checkpoint body (origin, size, head hash, `time` extension), §12.4 step 4."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4:
        raise CheckpointError("a checkpoint body has at least three newline-terminated lines")
    origin, size_text, head_b64, *extensions = lines[:-1]
    if not origin:
        raise CheckpointError("empty origin line")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > MAX_SIZE:
        raise CheckpointError(
            f"size must be a decimal 0..2^63-1 without leading zeros, got {size_text[:40]!r}"
        )
    head = _canonical_base64(head_b64)
    if head is None:
        raise CheckpointError("head hash is not base64 in its one (canonical) spelling")
    if len(head) != 32:
        raise CheckpointError(f"head hash must be 32 bytes, got {len(head)}")
    if "" in extensions:
        raise CheckpointError("an extension line is empty (tlog-checkpoint)")
    times = [e for e in extensions if e.startswith(TIME_EXTENSION)]
    if len(times) != 1:
        raise CheckpointError("a trustledger checkpoint has exactly one `time` extension line")
    match = _TIME.fullmatch(times[0], len(TIME_EXTENSION))
    if match is None:
        raise CheckpointError(
            f"bad time extension {times[0][:60]!r}: not `time YYYY-MM-DDThh:mm:ss.ffffffZ`"
        )
    try:
        year, month, day, hour, minute, second, micro = (int(part) for part in match.groups())
        at = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    except ValueError as e:
        raise CheckpointError(f"bad time extension {times[0]!r}: not an instant") from e
    return Checkpoint(origin, int(size_text), head, at)


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
