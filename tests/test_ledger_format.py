"""An independent verifier written from `docs/ledger-format.md` alone, checked on the vectors.

The first part of this file is the verifier: the chain rule (sections 4-6), signed
checkpoints (section 12) and export files (sections 13-14). It uses only the
standard library, `blake3` and `nacl`, and must never import the service (a test
below parses this file to make sure): an auditor should be able to lift it out as
is. The tests then hold both it and the service's own code to the same vectors in
`tests/vectors/` (chain-v1.json, checkpoint-v1.json, export-v1*.jsonl), run it
over entries shaped exactly like `GET /v1/chains/{org}/entries` returns them, and
over a real export of a chain built through NATS.
"""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import importlib.util
import io
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import blake3
import nacl.exceptions
import nacl.signing
import pytest

# ======================================================================================
# The independent verifier (docs/ledger-format.md). No service imports.
# ======================================================================================

ENTRY_PREFIX = b"trustledger/entry/v1" + b"\x00"
KEY_ID_PREFIX = b"trustledger/key-id/v1" + b"\x00"
KEY_PROOF_PREFIX = b"trustledger/key-proof/v1" + b"\x00"
GENESIS = bytes(32)
KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
PUBLIC_KEY_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def preimage(
    prev_hash: bytes,
    chain: str,
    seq: int,
    received_at_us: int,
    key_id: str,
    signature: bytes,
    event: bytes,
) -> bytes:
    """Section 4: the bytes BLAKE3 hashes for one entry."""
    assert len(prev_hash) == 32
    return (
        ENTRY_PREFIX
        + prev_hash
        + _lp(chain.encode("utf-8"))
        + struct.pack(">Q", seq)
        + struct.pack(">q", received_at_us)
        + _lp(key_id.encode("ascii"))
        + _lp(signature)
        + _lp(event)
    )


def hash_entry(prev_hash: bytes, *fields: Any) -> bytes:
    """Section 4: entry_hash = BLAKE3(preimage), 32 bytes."""
    return blake3.blake3(preimage(prev_hash, *fields)).digest()


def key_id_of(public_key: bytes) -> str:
    """Section 5.1: hex of the first 8 bytes of BLAKE3(prefix || public key)."""
    assert len(public_key) == 32
    return blake3.blake3(KEY_ID_PREFIX + public_key).digest()[:8].hex()


def ed25519_verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Section 5.2: libsodium's Ed25519 verification of the exact bytes."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def _public_key(text: object) -> bytes | None:
    if not isinstance(text, str) or not PUBLIC_KEY_RE.fullmatch(text):
        return None
    return base64.urlsafe_b64decode(text + "=")


def b64url_decode(text: str) -> bytes:
    """Section 1: unpadded base64url, one spelling only (ValueError on anything else)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise ValueError("not canonical base64url")
    return data


def key_proof_message(org: str, key_id: str, event_id: str) -> bytes:
    """Section 5.4: the bytes the registered key signs to prove possession."""
    return (
        KEY_PROOF_PREFIX
        + _lp(org.encode("utf-8"))
        + _lp(key_id.encode("ascii"))
        + _lp(event_id.encode("utf-8"))
    )


def proof_holds(doc: Mapping[str, Any], public_key: bytes) -> bool:
    """Section 5.4: a registration's `proof`, if it has one, proves possession of its key.

    Called after step 5 (org and id are strings) and the key id check of step 7."""
    if "proof" not in doc:
        return True  # registered before the ledger required proofs
    proof = doc["proof"]
    if not isinstance(proof, str):
        return False
    try:
        signature = b64url_decode(proof)
    except ValueError:
        return False
    message = key_proof_message(doc["org"], doc["key_id"], doc["id"])
    return ed25519_verifies(public_key, message, signature)


MAX_JSON_DEPTH = 16  # section 4.1, E3
MAX_INTEGER_DIGITS = 4300  # section 4.1, E6
SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("repeated member name")  # E4
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # E2


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number rounds to infinity")  # E6
    return value


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise ValueError("integer of too many digits")  # E6
    return int(text)


def _depth_and_surrogates(value: Any) -> int:
    """E3 and E5: the nesting depth of `value`; ValueError for a lone surrogate anywhere."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if SURROGATE_RE.search(item):  # json.loads joins pairs: what is left is lone
                raise ValueError("lone surrogate")
        elif isinstance(item, dict | list):
            deepest = max(deepest, depth)
            members = [*item, *item.values()] if isinstance(item, dict) else item
            stack.extend((m, depth + 1) for m in members)
    return deepest


def parse_json_object(data: bytes) -> dict[str, Any] | None:
    """Section 4.1, E1-E6: the object the bytes hold, or None if they break a rule."""
    try:
        value = json.loads(
            data.decode("utf-8"),  # E1 (json.loads refuses a leading BOM)
            object_pairs_hook=_unique_members,
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_integer,
        )
        if _depth_and_surrogates(value) > MAX_JSON_DEPTH:
            return None
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Break:
    """The first thing that does not verify, and why: an entry's seq, and a file's line."""

    seq: int | None
    reason: str
    line: int | None = None


class Broken(Exception):
    """Raised inside the verifier; turned into a `Break` at the top."""

    def __init__(self, seq: int | None, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.seq, self.reason, self.line = seq, reason, line


@dataclass
class Keys:
    """Section 5.3: a chain's key state."""

    active: dict[str, bytes] = field(default_factory=dict)  # key id -> public key, usable now
    registered: dict[str, int] = field(default_factory=dict)  # key id -> registering seq (0: given)
    labels: dict[str, str] = field(default_factory=dict)  # key id -> its registration's label


class ChainCheck:
    """Section 6, entry after entry, from genesis or from a given (seq, hash, key state)."""

    def __init__(
        self, chain: str, after_seq: int = 0, after_hash: bytes = GENESIS, keys: Keys | None = None
    ) -> None:
        self.chain = chain
        self.seq = after_seq
        self.head = after_hash
        self.keys = keys if keys is not None else Keys()
        self.event_ids: set[str] = set()
        self.self_signed: list[int] = []  # seqs of self-signed registrations
        self.expected: dict[int, bytes] = {}  # checkpoint size -> head hash it signs

    def expect_head(self, size: int, head_hash: bytes) -> None:
        """A verified checkpoint: the chain's head at `size` must be `head_hash`."""
        if size < self.seq:
            raise Broken(size, f"checkpoint at size {size} precedes the entries being checked")
        if size == self.seq:
            self._compare(size, head_hash, self.head)
        else:
            self.expected[size] = head_hash

    def _compare(self, size: int, signed: bytes, computed: bytes) -> None:
        if signed != computed:
            raise Broken(size, f"head at size {size} differs from the signed checkpoint")

    def add(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Check the next entry (members as in sections 9 and 13.2); returns its event."""
        chain, seq = self.chain, entry["seq"]
        # 1. chain name and gapless seq
        if entry["chain"] != chain:
            raise Broken(seq, f"entry belongs to chain {entry['chain']!r}")
        if seq != self.seq + 1:
            raise Broken(seq, f"expected seq {self.seq + 1}")
        # 2. link
        if bytes.fromhex(entry["prev_hash"]) != self.head:
            raise Broken(seq, "prev_hash does not equal the previous entry_hash")
        # 4. field shapes (before the hash: a key id that is not ASCII has no encoding)
        key_id = entry["key_id"]
        signature = bytes.fromhex(entry["signature"])
        if not KEY_ID_RE.fullmatch(key_id) or len(signature) != 64:
            raise Broken(seq, "malformed key id or signature")
        # 3. hash
        try:
            event = entry["event"].encode("utf-8")
        except UnicodeEncodeError:
            raise Broken(seq, "event text is not valid UTF-8") from None
        computed = hash_entry(
            self.head, chain, seq, entry["received_at_us"], key_id, signature, event
        )
        if computed != bytes.fromhex(entry["entry_hash"]):
            raise Broken(seq, "entry_hash does not match the recomputed hash")
        # 5. the event: UTF-8 JSON object of this org, id unique in the chain
        doc = parse_json_object(event)
        if doc is None or not isinstance(doc.get("kind"), str):
            raise Broken(seq, "event is not a JSON object with a kind")
        if doc.get("org") != chain:
            raise Broken(seq, f"event org {doc.get('org')!r} is not the chain")
        if not isinstance(doc.get("id"), str) or doc["id"] in self.event_ids:
            raise Broken(seq, f"event id {doc.get('id')!r} missing or repeated")
        self.event_ids.add(doc["id"])
        kind = doc["kind"]
        # 6. the signing key is authorised
        keys = self.keys
        if key_id in keys.active:
            if not ed25519_verifies(keys.active[key_id], event, signature):
                raise Broken(seq, f"signature does not verify under key {key_id}")
        elif (
            kind == "publisher_key.registered"
            and doc.get("key_id") == key_id
            and key_id not in keys.registered
        ):
            public_key = _public_key(doc.get("public_key"))
            if public_key is None or key_id_of(public_key) != key_id:
                raise Broken(seq, "self-signed registration: key id does not match public key")
            if not ed25519_verifies(public_key, event, signature):
                raise Broken(seq, "self-signed registration: signature does not verify")
            self.self_signed.append(seq)
        else:
            raise Broken(seq, f"key {key_id} is not registered and active in this chain")
        if seq == 1 and self.self_signed != [1]:
            raise Broken(seq, "entry 1 is not a self-signed key registration")
        # 7. effect on key state
        if kind == "publisher_key.registered":
            registered = doc.get("key_id")
            public_key = _public_key(doc.get("public_key"))
            if (
                not isinstance(registered, str)
                or public_key is None
                or key_id_of(public_key) != registered
            ):
                raise Broken(seq, "registration: key id does not match public key")
            if not proof_holds(doc, public_key):
                raise Broken(seq, "registration: proof of possession does not verify")
            if registered not in keys.registered:
                keys.registered[registered] = seq
                keys.active[registered] = public_key
                label = doc.get("label")
                keys.labels[registered] = label if isinstance(label, str) else ""
        elif kind == "publisher_key.revoked":
            keys.active.pop(str(doc.get("key_id")), None)
        self.seq, self.head = seq, computed
        if seq in self.expected:
            self._compare(seq, self.expected.pop(seq), computed)
        return doc

    def finish(self) -> None:
        """After the last entry: every expected head must have been reached."""
        if self.expected:
            size = min(self.expected)
            raise Broken(
                self.seq + 1,
                f"a signed checkpoint covers {size} entries but the chain ends at {self.seq}",
            )


def verify_api_entries(chain: str, entries: Iterable[Mapping[str, Any]]) -> Break | None:
    """Section 6 over entries as `GET /v1/chains/{org}/entries` returns them (section 9).

    `entries` is every entry of the chain from seq 1, in order (the pages joined).
    Returns None when the chain is valid, else the first break.
    """
    walk = ChainCheck(chain)
    try:
        for entry in entries:
            doc = walk.add(entry)
            # unhashed columns (section 8): re-derived, not trusted
            if (
                entry.get("event_id", doc["id"]) != doc["id"]
                or entry.get("kind", doc["kind"]) != doc["kind"]
            ):
                raise Broken(entry["seq"], "event_id/kind columns disagree with the event bytes")
    except Broken as b:
        return Break(b.seq, b.reason)
    return None


# --- Signed checkpoints (section 12) ------------------------------------------------

NOTE_SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")
TIME_LINE_RE = re.compile(
    r"time ([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z"
)
MAX_NOTE_BYTES = 65536
MAX_NOTE_SIGNATURES = 100
# Section 12.4 step 2: the White_Space characters a key name must not hold.
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {
    chr(c) for c in range(0x2000, 0x200B)
}


def canonical_b64(text: str) -> bytes:
    """Section 1: padded standard base64 in its one spelling (ValueError on anything else)."""
    if not re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", text) or len(text) % 4:
        raise ValueError("not padded base64")
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode() != text:
        raise ValueError("not canonical base64")
    return data


class NoteError(ValueError):
    """A note that does not parse or does not verify."""


@dataclass(frozen=True)
class CheckpointBody:
    origin: str
    size: int
    head_hash: bytes
    time: str  # as written, e.g. 2026-01-15T09:32:00.000000Z


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes  # 4 bytes
    signature: bytes


def note_key_id(name: str, public_key: bytes) -> bytes:
    """Section 12.3: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n\x01" + public_key).digest()[:4]


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Section 12.4 steps 1-2: the signed text (through its last newline) and the signature lines."""
    try:
        if len(note.encode("utf-8")) > MAX_NOTE_BYTES:
            raise NoteError("note too large")
    except UnicodeEncodeError:
        raise NoteError("note is not UTF-8") from None
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F for c in note):
        raise NoteError("control character in note")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("a note is text, an empty line, then signature lines")
    text, block = note[: cut + 1], note[cut + 2 : -1]
    lines = block.split("\n") if block else []
    if not 1 <= len(lines) <= MAX_NOTE_SIGNATURES:
        raise NoteError("a note has 1 to 100 signature lines")
    signatures = []
    for line in lines:
        if not line.startswith(NOTE_SIGNATURE_PREFIX):
            raise NoteError(f"not a signature line: {line!r}")
        name, _, blob_b64 = line[len(NOTE_SIGNATURE_PREFIX) :].partition(" ")
        if not name or "+" in name or WHITE_SPACE & set(name):
            raise NoteError(f"invalid key name {name!r}")
        try:
            blob = canonical_b64(blob_b64)
        except (ValueError, binascii.Error):
            raise NoteError("signature is not canonical base64") from None
        if len(blob) < 5:
            raise NoteError("malformed signature line")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    return text, signatures


def parse_checkpoint_body(text: str) -> CheckpointBody:
    """Sections 12.2 and 12.4 step 4: origin, size, base64 head hash, exactly one `time` line."""
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4 or "" in lines[:-1]:
        raise NoteError("a body has at least three non-empty newline-terminated lines")
    origin, size, head_b64, *extensions = lines[:-1]
    if not DECIMAL_RE.fullmatch(size) or len(size) > 19 or int(size) > 2**63 - 1:
        raise NoteError("bad size")
    try:
        head = canonical_b64(head_b64)
    except (ValueError, binascii.Error):
        raise NoteError("head hash is not canonical base64") from None
    if len(head) != 32:
        raise NoteError("head hash is not 32 bytes")
    times = [e for e in extensions if e.startswith("time ")]
    if len(times) != 1 or not (match := TIME_LINE_RE.fullmatch(times[0])):
        raise NoteError("a checkpoint has exactly one `time <RFC 3339, 6 digits>Z` line")
    try:
        datetime(*(int(part) for part in match.groups()))  # a real instant
    except ValueError:
        raise NoteError("the time is not an instant") from None
    return CheckpointBody(origin, int(size), head, times[0][len("time ") :])


def verify_checkpoint_note(note: str, name: str, public_key: bytes) -> CheckpointBody:
    """Section 12.4 step 3: the note carries a signature line of this key, and every such line verifies."""
    text, signatures = split_note(note)
    key_id = note_key_id(name, public_key)
    ours = [s for s in signatures if s.name == name and s.key_id == key_id]
    if not ours:
        raise NoteError(f"no signature by {name}+{key_id.hex()}")
    if not all(ed25519_verifies(public_key, text.encode("utf-8"), s.signature) for s in ours):
        raise NoteError(f"signature by {name}+{key_id.hex()} does not verify")
    return parse_checkpoint_body(text)


def verify_checkpoint_by_ledger(note: str, ledger: Keys) -> CheckpointBody:
    """Sections 12.1 and 12.4: accepted when one active `_ledger` key (named by its label) signed it."""
    problems = []
    for key_id in sorted(ledger.active):
        try:
            return verify_checkpoint_note(note, ledger.labels[key_id], ledger.active[key_id])
        except NoteError as e:
            problems.append(str(e))
    raise NoteError("; ".join(problems) or "no ledger key")


# --- Export files (sections 13 and 14) ----------------------------------------------

EXPORT_FORMAT = "trustledger-export/v1"
EXPORT_SIGNATURE_PREFIX = b"trustledger/export/v1" + b"\x00"
LEDGER_CHAIN = "_ledger"
ORG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
HEX_RE = re.compile(r"(?:[0-9a-f]{2})*")
MAX_SEQ = 2**63 - 1
MAX_LINE = 4 * 1024 * 1024  # section 13.1: bytes of a line, LF included
LEDGER_NAME_RE = re.compile(r"[A-Za-z0-9._~/:-]{1,200}")
EXPORTED_AT_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{6}))?Z"
)

# Section 13.2: every member of every line type, and its JSON type.
LINE_MEMBERS: dict[str, dict[str, type]] = {
    "header": {
        "format": str, "chain": str, "from_seq": int, "to_seq": int,
        "chain_size": int, "ledger_name": str, "exported_at": str,
    },
    "entry": {
        "chain": str, "seq": int, "received_at_us": int, "key_id": str,
        "signature": str, "event": str, "prev_hash": str, "entry_hash": str,
    },
    "publisher_key": {"key_id": str, "public_key": str, "label": str, "active": bool},
    "prev": {"seq": int, "entry_hash": str},
    "checkpoint": {"note": str},
    "end": {"entries": int, "digest": str, "key_name": str, "key_id": str, "signature": str},
}  # fmt: skip
SEQ_MEMBERS = {"from_seq", "to_seq", "chain_size", "seq", "entries"}


def parse_export_line(raw: bytes) -> dict[str, Any]:
    """Sections 13.1-13.2 (check L5): one JSON object with exactly the members of its type (ValueError if not)."""
    line = parse_json_object(raw)
    if line is None or line.get("type") not in LINE_MEMBERS:
        raise ValueError("not a JSON object of a known line type")
    members = LINE_MEMBERS[line["type"]]
    if set(line) != {"type", *members}:
        raise ValueError(f"members of a {line['type']} line are {sorted(members)}")
    for name, kind in members.items():
        value = line[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{name} must be a JSON {kind.__name__}")
    for name in SEQ_MEMBERS & set(members):
        if not 0 <= line[name] <= MAX_SEQ:
            raise ValueError(f"{name} out of range")
    if line["type"] == "entry" and (
        not -(2**63) <= line["received_at_us"] < 2**63 or not HEX_RE.fullmatch(line["signature"])
    ):
        raise ValueError("received_at_us out of range or signature not hex")
    for name in ("prev_hash", "entry_hash", "digest"):
        if name in members and not HEX64_RE.fullmatch(line[name]):
            raise ValueError(f"{name} must be 64 lowercase hex characters")
    if line["type"] == "header":
        match = EXPORTED_AT_RE.fullmatch(line["exported_at"])
        if match is None:
            raise ValueError("exported_at is not YYYY-MM-DDThh:mm:ss[.ffffff]Z")
        datetime(*(int(part or 0) for part in match.groups()))  # a real instant
    if line["type"] == "end":
        spelling = (
            f'{{"type":"end","entries":{line["entries"]},"digest":"{line["digest"]}",'
            f'"key_name":"{line["key_name"]}","key_id":"{line["key_id"]}",'
            f'"signature":"{line["signature"]}"}}'
        )
        if raw.removesuffix(b"\n") != spelling.encode("utf-8"):
            raise ValueError("the end line is not in its one spelling")
    return line


_HEADER, _LEDGER, _KEYS, _CHECKPOINTS, _ENTRIES, _DONE = range(6)


class ExportCheck:
    """Section 14.1, one line at a time; raises `Broken` at the first thing that does not hold."""

    def __init__(self, trusted_checkpoints: Iterable[str], ledger_root: bytes | None) -> None:
        self.trusted = list(trusted_checkpoints)
        self.ledger_root = ledger_root
        self.section = _HEADER
        self.n = 0  # line number
        self.digest = blake3.blake3()
        self.header: dict[str, Any] = {}
        self.ledger = ChainCheck(LEDGER_CHAIN)
        self.keys = Keys()
        self.walk: ChainCheck | None = None
        self.last_size = -1  # the last checkpoint size seen in the file
        self.last_in_range: int | None = None
        self.beyond: dict[int, bytes] = {}  # size -> head, checkpoints beyond to_seq
        self.entries = 0

    def fail(self, reason: str, seq: int | None = None) -> Broken:
        return Broken(seq, reason, self.n)

    def next_seq(self) -> int | None:
        """The seq a line cut off or unreadable in the entries would have held."""
        if self.walk is None or self.walk.seq + 1 > self.header["to_seq"]:
            return None
        return self.walk.seq + 1

    def run(self, stream: BinaryIO) -> None:
        while raw := stream.readline(MAX_LINE + 1):  # a binary stream splits at 0x0A only
            self.n += 1
            if self.section == _DONE:  # L1
                raise self.fail("a line follows the trailer")
            if len(raw) > MAX_LINE:  # L2
                raise self.fail("the line is longer than 4 MiB", self.next_seq())
            if not raw.endswith(b"\n"):  # L3
                raise self.fail("the line is cut off (no newline)", self.next_seq())
            if b"\r" in raw:  # L4
                raise self.fail("the line holds a CR", self.next_seq())
            try:  # L5
                line = parse_export_line(raw)
            except ValueError as e:
                raise self.fail(f"not an export line: {e}", self.next_seq()) from None
            if line["type"] == "end":
                self.end(line)
                continue
            self.digest.update(raw)
            self.dispatch[line["type"]](line)
        if self.section != _DONE:
            raise self.fail("the file ends without its trailer", self.next_seq())

    @property
    def dispatch(self) -> dict[str, Any]:
        return {
            "header": self.header_line,
            "entry": self.entry,
            "publisher_key": self.publisher_key,
            "prev": self.prev,
            "checkpoint": self.checkpoint,
        }

    def out_of_order(self, line: dict[str, Any]) -> Broken:
        return self.fail(f"a {line['type']} line is out of order", self.next_seq())

    # step 1: the header
    def header_line(self, h: dict[str, Any]) -> None:
        if self.section != _HEADER:
            raise self.fail("a second header")
        if h["format"] != EXPORT_FORMAT:
            raise self.fail(f"unsupported format {h['format']!r}")
        if h["chain"] == LEDGER_CHAIN or not ORG_RE.fullmatch(h["chain"]):
            raise self.fail("the header names no org chain")
        if not 1 <= h["from_seq"] <= h["to_seq"] <= h["chain_size"]:
            raise self.fail("the header's range is impossible")
        if not LEDGER_NAME_RE.fullmatch(h["ledger_name"]):
            raise self.fail("the header names no valid ledger name")
        self.header = h
        self.section = _LEDGER

    # steps 2 (the ledger's key chain) and 7 (the entries)
    def entry(self, line: dict[str, Any]) -> None:
        if self.section == _HEADER:
            raise self.fail("the file does not start with a header")
        if self.section == _LEDGER and line["chain"] == LEDGER_CHAIN:
            self.ledger.add(line)
            return
        if self.section == _CHECKPOINTS:
            self.close_checkpoints()
        if self.section != _ENTRIES:
            raise self.out_of_order(line)
        assert self.walk is not None
        if line["seq"] > self.header["to_seq"]:
            raise self.fail("an entry beyond the range", line["seq"])
        self.walk.add(line)
        self.entries += 1

    def close_ledger(self) -> None:
        self.ledger.finish()
        if not self.ledger.keys.active:
            raise self.fail("no ledger key is registered in _ledger")
        if self.ledger_root is not None:
            # Trust anchor (section 14.2): entry 1 registers the pinned key, and every
            # later ledger key is endorsed by one registered before it.
            first = [k for k, seq in self.ledger.keys.registered.items() if seq == 1]
            root_id = key_id_of(self.ledger_root)
            if first != [root_id] or self.ledger.self_signed != [1]:
                raise self.fail("the ledger's key chain is not rooted in the pinned key")
        self.section = _KEYS

    # step 3: key state before the range
    def publisher_key(self, line: dict[str, Any]) -> None:
        if self.section == _HEADER:
            raise self.fail("the file does not start with a header")
        if self.section == _LEDGER:
            self.close_ledger()
        if self.section != _KEYS:
            raise self.out_of_order(line)
        if self.header["from_seq"] == 1:
            raise self.fail("publisher keys in an export from seq 1")
        try:
            public_key = b64url_decode(line["public_key"])
        except ValueError:
            raise self.fail("publisher key is not base64url") from None
        key_id = line["key_id"]
        if (
            len(public_key) != 32
            or key_id_of(public_key) != key_id
            or key_id in self.keys.registered
        ):
            raise self.fail("publisher key's id is wrong or repeated")
        self.keys.registered[key_id] = 0
        self.keys.labels[key_id] = line["label"]
        if line["active"]:
            self.keys.active[key_id] = public_key

    # step 4: the link before the range
    def prev(self, line: dict[str, Any]) -> None:
        if self.section == _HEADER:
            raise self.fail("the file does not start with a header")
        if self.section == _LEDGER:
            self.close_ledger()
        if self.section != _KEYS:
            raise self.out_of_order(line)
        first = self.header["from_seq"]
        prev_hash = bytes.fromhex(line["entry_hash"])
        if line["seq"] != first - 1:
            raise self.fail("the prev line is not the entry before the range", line["seq"])
        if first == 1 and prev_hash != GENESIS:
            raise self.fail("the prev line of an export from seq 1 is not 32 zero bytes", 0)
        self.walk = ChainCheck(self.header["chain"], first - 1, prev_hash, self.keys)
        self.section = _CHECKPOINTS

    # steps 5 and 6: the file's checkpoints (in order) and the auditor's own (trusted)
    def checkpoint(self, line: dict[str, Any], trusted: bool = False) -> None:
        if self.section == _HEADER:
            raise self.fail("the file does not start with a header")
        if not trusted and self.section != _CHECKPOINTS:
            raise self.out_of_order(line)
        h, walk = self.header, self.walk
        assert walk is not None
        try:
            cp = verify_checkpoint_by_ledger(line["note"], self.ledger.keys)
        except NoteError as e:
            try:  # name the size the note claims, if it has one
                claimed: int | None = parse_checkpoint_body(split_note(line["note"])[0]).size
            except NoteError:
                claimed = None
            raise self.fail(f"checkpoint signature does not verify: {e}", claimed) from None
        # Any name a ledger key was registered under: a rotation may rename the ledger.
        if cp.origin not in {f"{name}/{h['chain']}" for name in self.ledger.keys.labels.values()}:
            raise self.fail(f"checkpoint of another log: {cp.origin!r}", cp.size)
        if cp.size > h["chain_size"]:
            raise self.fail(
                f"a checkpoint covers {cp.size} entries, the header says {h['chain_size']}",
                h["chain_size"] + 1,
            )
        if not trusted:
            if cp.size <= self.last_size:
                raise self.fail("checkpoints out of order", cp.size)
            self.last_size = cp.size
        if cp.size > h["to_seq"]:
            if self.beyond.setdefault(cp.size, cp.head_hash) != cp.head_hash:
                raise self.fail(f"two checkpoints disagree at size {cp.size}", cp.size)
        elif cp.size >= h["from_seq"] - 1:
            known = walk.expected.get(cp.size)
            if known is not None and known != cp.head_hash:
                raise self.fail(f"two checkpoints disagree at size {cp.size}", cp.size)
            if known is None:
                walk.expect_head(cp.size, cp.head_hash)
            if not trusted:
                self.last_in_range = cp.size
        elif not trusted:
            raise self.fail("checkpoint precedes the entries being checked", cp.size)

    def close_checkpoints(self) -> None:
        for note in self.trusted:
            self.checkpoint({"note": note}, trusted=True)
        if self.last_in_range != self.header["to_seq"]:
            raise self.fail("no signed checkpoint at the range's last entry", self.header["to_seq"])
        self.section = _ENTRIES

    # steps 8-10: the end of the range, the trailer
    def end(self, end: dict[str, Any]) -> None:
        if self.section == _CHECKPOINTS:
            self.close_checkpoints()
        if self.section != _ENTRIES:
            raise self.out_of_order(end)
        h, walk = self.header, self.walk
        assert walk is not None
        walk.finish()
        if walk.seq != h["to_seq"]:
            raise self.fail("the file ends before the end of its range", walk.seq + 1)
        if end["entries"] != self.entries:
            raise self.fail("the trailer's entry count disagrees with the file")
        digest = self.digest.digest()
        if end["digest"] != digest.hex():
            raise self.fail("the trailer's digest does not match the file")
        public_key = self.ledger.keys.active.get(end["key_id"])
        if public_key is None:
            raise self.fail("the trailer is not signed by an active ledger key")
        if end["key_name"] != self.ledger.keys.labels[end["key_id"]] or (
            end["key_name"] != h["ledger_name"]
        ):
            raise self.fail("the trailer's key_name is not the signing key's name")
        try:
            signature = b64url_decode(end["signature"])
        except ValueError:
            raise self.fail("the trailer's signature is not base64url") from None
        if not ed25519_verifies(public_key, EXPORT_SIGNATURE_PREFIX + digest, signature):
            raise self.fail("the trailer's signature does not verify")
        self.section = _DONE


def verify_export_file(
    data: bytes | BinaryIO,
    trusted_checkpoints: Iterable[str] = (),
    ledger_root: bytes | None = None,
) -> Break | None:
    """Section 14.1 over a whole export file; None when it verifies, else the first break.

    `trusted_checkpoints` are notes the auditor kept; `ledger_root` is the ledger's first
    key (32 bytes) when the auditor pins it."""
    check = ExportCheck(trusted_checkpoints, ledger_root)
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        check.run(stream)
    except Broken as b:
        return Break(b.seq, b.reason, b.line if b.line is not None else check.n)
    return None


# ======================================================================================
# Tests. Service code is imported inside the tests that compare against it.
# ======================================================================================

REPO = Path(__file__).resolve().parents[1]
VECTORS_PATH = REPO / "tests" / "vectors" / "chain-v1.json"
GENERATOR_PATH = REPO / "tests" / "vectors" / "generate.py"
SPEC_PATH = REPO / "docs" / "ledger-format.md"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
ENTRIES: list[dict[str, Any]] = VECTORS["entries"]
ENTRY_IDS = [f"seq-{e['seq']}" for e in ENTRIES]
VECTOR_DIR = REPO / "tests" / "vectors"
EXPORT_GENERATOR_PATH = VECTOR_DIR / "generate_export.py"
CHECKPOINT_VECTOR: dict[str, Any] = json.loads(
    (VECTOR_DIR / "checkpoint-v1.json").read_text(encoding="utf-8")
)
EXPORT_FILES = ["export-v1.jsonl", "export-v1-partial.jsonl"]
EXPORT_META: dict[str, Any] = json.loads((VECTOR_DIR / "export-v1.json").read_text("utf-8"))
LEDGER_PUBLIC_KEY = bytes.fromhex(CHECKPOINT_VECTOR["ledger_key"]["public_key_hex"])
LEDGER_NAME = CHECKPOINT_VECTOR["ledger_key"]["name"]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generator() -> ModuleType:
    return _load(GENERATOR_PATH, "trustledger_vector_generator")


def _export_generator() -> ModuleType:
    return _load(EXPORT_GENERATOR_PATH, "trustledger_export_vector_generator")


def _fields(entry: Mapping[str, Any]) -> tuple[str, int, int, str, bytes, bytes]:
    return (
        entry["chain"],
        entry["seq"],
        entry["received_at_us"],
        entry["key_id"],
        bytes.fromhex(entry["signature_hex"]),
        entry["event"].encode("utf-8"),
    )


def _as_api(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A vector entry renamed to the members of the API's EntryView."""
    return {
        "chain": entry["chain"],
        "seq": entry["seq"],
        "received_at_us": entry["received_at_us"],
        "key_id": entry["key_id"],
        "signature": entry["signature_hex"],
        "event": entry["event"],
        "prev_hash": entry["prev_hash_hex"],
        "entry_hash": entry["entry_hash_hex"],
    }


# --- the vectors file ---------------------------------------------------------------


def test_vectors_file_equals_generator_output_when_regenerated() -> None:
    """tests/vectors/chain-v1.json is exactly what generate.py writes from service code."""
    assert _generator().render() == VECTORS_PATH.read_bytes(), (
        "stale vectors: run `python tests/vectors/generate.py`"
    )


def test_spec_embeds_generated_worked_example_when_rendered() -> None:
    """The worked example in docs/ledger-format.md is the generator's current output."""
    assert _generator().markdown() in SPEC_PATH.read_text(encoding="utf-8"), (
        "docs/ledger-format.md section 15 is stale: paste `generate.py --markdown`"
    )


def test_vector_constants_match_spec_when_read() -> None:
    """Domain prefix, genesis hash and key id come out as the spec states them."""
    assert bytes.fromhex(VECTORS["entry_domain_hex"]) == ENTRY_PREFIX
    assert bytes.fromhex(VECTORS["genesis_prev_hash_hex"]) == GENESIS
    key = VECTORS["key"]
    public_key = bytes.fromhex(key["public_key_hex"])
    assert blake3.blake3(key["seed_label"].encode()).hexdigest() == key["seed_hex"]
    assert bytes.fromhex(key["key_id_preimage_hex"]) == KEY_ID_PREFIX + public_key
    assert key_id_of(public_key) == key["key_id"]
    assert base64.urlsafe_b64decode(key["public_key_b64url"] + "=") == public_key
    seed_key = nacl.signing.SigningKey(bytes.fromhex(key["seed_hex"]))
    assert bytes(seed_key.verify_key) == public_key


# --- (a) the independent implementation reproduces the vectors --------------------


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_independent_preimage_matches_vector_when_built_from_fields(
    entry: dict[str, Any],
) -> None:
    """Section 4, implemented from the spec, gives the vector's preimage and hash."""
    prev = bytes.fromhex(entry["prev_hash_hex"])
    assert preimage(prev, *_fields(entry)).hex() == entry["preimage_hex"]
    assert hash_entry(prev, *_fields(entry)).hex() == entry["entry_hash_hex"]


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_vector_signature_verifies_when_checked_with_vector_key(entry: dict[str, Any]) -> None:
    """Each event's signature verifies over the exact event bytes, and only over them."""
    public_key = bytes.fromhex(VECTORS["key"]["public_key_hex"])
    event = entry["event"].encode("utf-8")
    signature = bytes.fromhex(entry["signature_hex"])
    assert VECTORS["signatures_verify"]
    assert entry["signature_valid"]
    assert event.hex() == entry["event_hex"]
    assert ed25519_verifies(public_key, event, signature)
    assert not ed25519_verifies(public_key, event + b" ", signature)


def test_vector_chain_links_when_walked_from_genesis() -> None:
    """prev_hash of each entry is the entry_hash of the one before; the head is the last."""
    prev = GENESIS.hex()
    for entry in ENTRIES:
        assert entry["prev_hash_hex"] == prev
        prev = entry["entry_hash_hex"]
    assert VECTORS["head"] == {"seq": len(ENTRIES), "hash_hex": prev}


def test_independent_verifier_accepts_vector_chain_when_untouched() -> None:
    """The full section-6 check passes on the vector chain."""
    assert verify_api_entries("acme", [_as_api(e) for e in ENTRIES]) is None


@pytest.mark.parametrize("example", VECTORS["received_at_examples"], ids=lambda e: e["received_at"])
def test_received_at_encoding_matches_vector_when_computed_independently(
    example: dict[str, Any],
) -> None:
    """Microseconds since the epoch by integer arithmetic, then i64 big-endian."""
    at = datetime.fromisoformat(example["received_at"])
    days = at.toordinal() - datetime(1970, 1, 1).toordinal()
    seconds = at.hour * 3600 + at.minute * 60 + at.second
    us = (days * 86_400 + seconds) * 1_000_000 + at.microsecond
    assert us == example["received_at_us"]
    assert struct.pack(">q", us).hex() == example["i64be_hex"]


# --- (b) the service's implementation reproduces the same vectors ------------------


@pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
def test_service_entry_hash_matches_vector_when_built_from_fields(entry: dict[str, Any]) -> None:
    """service.domain.chain gives the same preimage and hash as the spec and the vectors."""
    from service.domain.chain import EntryFields, entry_hash, entry_preimage, to_micros

    chain, seq, received_at_us, key_id, signature, event = _fields(entry)
    fields = EntryFields(chain, seq, received_at_us, key_id, signature, event)
    prev = bytes.fromhex(entry["prev_hash_hex"])
    assert entry_preimage(prev, fields).hex() == entry["preimage_hex"]
    assert entry_hash(prev, fields).hex() == entry["entry_hash_hex"]
    assert to_micros(datetime.fromisoformat(entry["received_at"])) == received_at_us


def test_service_key_id_matches_vector_when_derived() -> None:
    """service.domain.signing.key_id_for agrees with the spec's key id."""
    from service.domain.signing import key_id_for

    key = VECTORS["key"]
    assert key_id_for(bytes.fromhex(key["public_key_hex"])) == key["key_id"]


def test_independent_verifier_imports_no_service_code_when_parsed() -> None:
    """Module-level imports of this file stay outside `service`, so the verifier is independent."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "service" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "service"


# --- checkpoint and export vectors: both implementations ------------------------


def test_checkpoint_and_export_vector_files_equal_generator_output_when_regenerated() -> None:
    """checkpoint-v1.json and the export files are exactly what generate_export.py writes."""
    for path, data in _export_generator().outputs().items():
        assert path.read_bytes() == data, (
            f"stale {path.name}: run `python tests/vectors/generate_export.py`"
        )


def test_spec_embeds_generated_checkpoint_and_export_example_when_rendered() -> None:
    """The checkpoint and export worked example in the spec is the generator's current output."""
    assert _export_generator().markdown() in SPEC_PATH.read_text(encoding="utf-8"), (
        "docs/ledger-format.md section 15 is stale: paste `generate_export.py --markdown`"
    )


def test_checkpoint_vector_values_follow_spec_when_recomputed_independently() -> None:
    """Ledger key, note key id, body bytes, signature and note come out as section 12 states."""
    key, cp = CHECKPOINT_VECTOR["ledger_key"], CHECKPOINT_VECTOR["checkpoint"]
    seed = blake3.blake3(key["seed_label"].encode()).digest()
    assert bytes(nacl.signing.SigningKey(seed).verify_key) == LEDGER_PUBLIC_KEY
    assert key_id_of(LEDGER_PUBLIC_KEY) == key["key_id"]
    name = key["name"]
    preimage_ = name.encode() + b"\x0a\x01" + LEDGER_PUBLIC_KEY
    assert preimage_.hex() == key["note_key_id_preimage_hex"]
    assert note_key_id(name, LEDGER_PUBLIC_KEY).hex() == key["note_key_id_hex"]
    verifier = base64.b64encode(b"\x01" + LEDGER_PUBLIC_KEY).decode()
    assert key["verifier_key"] == f"{name}+{key['note_key_id_hex']}+{verifier}"
    # The body, built from the values alone; the head is the chain-v1 head.
    head = bytes.fromhex(cp["head_hash_hex"])
    assert (cp["size"], cp["head_hash_hex"]) == (
        VECTORS["head"]["seq"],
        VECTORS["head"]["hash_hex"],
    )
    body = f"{name}/{cp['chain']}\n{cp['size']}\n{base64.b64encode(head).decode()}\ntime {cp['time']}\n"
    assert body == CHECKPOINT_VECTOR["body"]
    assert body.encode().hex() == CHECKPOINT_VECTOR["body_hex"]
    signature = bytes.fromhex(CHECKPOINT_VECTOR["signature_hex"])
    assert nacl.signing.SigningKey(seed).sign(body.encode()).signature == signature
    blob = note_key_id(name, LEDGER_PUBLIC_KEY) + signature
    line = f"\u2014 {name} {base64.b64encode(blob).decode()}"
    assert line == CHECKPOINT_VECTOR["signature_line"]
    assert f"{body}\n{line}\n" == CHECKPOINT_VECTOR["note"]
    assert CHECKPOINT_VECTOR["note"].encode().hex() == CHECKPOINT_VECTOR["note_hex"]


def test_both_verify_checkpoint_vector_when_untouched() -> None:
    """The independent note verifier and service.domain.checkpoint accept the vector note."""
    from service.domain.checkpoint import verify_checkpoint

    note, cp = CHECKPOINT_VECTOR["note"], CHECKPOINT_VECTOR["checkpoint"]
    mine = verify_checkpoint_note(note, LEDGER_NAME, LEDGER_PUBLIC_KEY)
    theirs = verify_checkpoint(note, LEDGER_NAME, LEDGER_PUBLIC_KEY)
    assert (mine.origin, mine.size, mine.head_hash.hex(), mine.time) == (
        cp["origin"], cp["size"], cp["head_hash_hex"], cp["time"],
    )  # fmt: skip
    assert (theirs.origin, theirs.size, theirs.head_hash) == (
        mine.origin, mine.size, mine.head_hash,
    )  # fmt: skip


def _other_key() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(blake3.blake3(b"test/not-the-ledger").digest())


def _tampered_note(case: str) -> tuple[str, str, bytes]:
    """(note, key name, public key) for one way of getting a checkpoint wrong."""
    note, name, body = CHECKPOINT_VECTOR["note"], LEDGER_NAME, CHECKPOINT_VECTOR["body"]
    sig_line = CHECKPOINT_VECTOR["signature_line"]
    if case == "size-changed":
        return note.replace("\n3\n", "\n4\n", 1), name, LEDGER_PUBLIC_KEY
    if case == "time-changed":
        return note.replace("09:32:00", "09:33:00", 1), name, LEDGER_PUBLIC_KEY
    if case == "origin-changed":
        return note.replace("/acme\n", "/beta\n", 1), name, LEDGER_PUBLIC_KEY
    if case == "signature-byte-flipped":
        blob = bytearray(bytes.fromhex(CHECKPOINT_VECTOR["signature_line_blob_hex"]))
        blob[10] ^= 1
        return f"{body}\n\u2014 {name} {base64.b64encode(blob).decode()}\n", name, LEDGER_PUBLIC_KEY
    if case == "other-key":
        return note, name, bytes(_other_key().verify_key)
    if case == "other-key-name":
        return note, "ledger.other", LEDGER_PUBLIC_KEY
    if case == "no-empty-line":
        return f"{body}{sig_line}\n", name, LEDGER_PUBLIC_KEY
    if case == "no-time-line":
        other = _other_key()
        text = body.split("time ")[0]
        blob = note_key_id(name, bytes(other.verify_key)) + other.sign(text.encode()).signature
        forged = f"{text}\n\u2014 {name} {base64.b64encode(blob).decode()}\n"
        return forged, name, bytes(other.verify_key)
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "size-changed",
        "time-changed",
        "origin-changed",
        "signature-byte-flipped",
        "other-key",
        "other-key-name",
        "no-empty-line",
        "no-time-line",
    ],
)
def test_both_reject_checkpoint_note_when_tampered(case: str) -> None:
    """A changed body, a bad or foreign signature, or a malformed note verifies in neither."""
    from service.domain.checkpoint import CheckpointError, verify_checkpoint

    note, name, public_key = _tampered_note(case)
    with pytest.raises(NoteError):
        verify_checkpoint_note(note, name, public_key)
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, name, public_key)


def _ledger_note(body: str) -> str:
    """A note over `body`, signed with the vector ledger key (its seed is public)."""
    seed = bytes.fromhex(CHECKPOINT_VECTOR["ledger_key"]["seed_hex"])
    signature = nacl.signing.SigningKey(seed).sign(body.encode()).signature
    blob = note_key_id(LEDGER_NAME, LEDGER_PUBLIC_KEY) + signature
    return f"{body}\n\u2014 {LEDGER_NAME} {base64.b64encode(blob).decode()}\n"


def _export_vector(name: str) -> bytes:
    return (VECTOR_DIR / name).read_bytes()


@pytest.mark.parametrize("name", EXPORT_FILES)
def test_independent_verifier_accepts_export_vector_when_untouched(name: str) -> None:
    """Section 14 from the spec alone accepts the export files, also with both trust anchors."""
    data = _export_vector(name)
    assert verify_export_file(data) is None
    pinned = verify_export_file(
        data, trusted_checkpoints=[CHECKPOINT_VECTOR["note"]], ledger_root=LEDGER_PUBLIC_KEY
    )
    assert pinned is None
    facts = next(f for f in EXPORT_META["files"] if f["file"] == name)
    lines = data.split(b"\n")[:-1]
    assert blake3.blake3(data[: len(data) - len(lines[-1]) - 1]).hexdigest() == facts["digest_hex"]
    digest = bytes.fromhex(facts["digest_hex"])
    assert (EXPORT_SIGNATURE_PREFIX + digest).hex() == facts["signed_message_hex"]
    assert [json.loads(line)["type"] for line in lines] == facts["types"]


@pytest.mark.parametrize("name", EXPORT_FILES)
def test_service_verifier_accepts_export_vector_when_untouched(name: str) -> None:
    """service.app.offline_verify.verify_export accepts the same files, and the kept checkpoint."""
    from service.app.offline_verify import verify_export

    report = verify_export(VECTOR_DIR / name, trusted_checkpoints=[CHECKPOINT_VECTOR["note"]])
    assert report.finding is None
    facts = next(f for f in EXPORT_META["files"] if f["file"] == name)
    assert report.entries == facts["to_seq"] - facts["from_seq"] + 1


def _lines(name: str) -> list[bytes]:
    return _export_vector(name).split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _edit(line: bytes, **members: Any) -> bytes:
    doc = json.loads(line)
    doc.update(members)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _index(lines: list[bytes], kind: str, seq: int | None = None) -> int:
    for i, line in enumerate(lines):
        doc = json.loads(line)
        if doc["type"] == kind and (seq is None or (doc["chain"], doc["seq"]) == ("acme", seq)):
            return i
    raise AssertionError(f"no {kind} line {seq}")


def _tampered_export(case: str) -> bytes:
    """One export vector, changed one way."""
    whole, part = _lines("export-v1.jsonl"), _lines("export-v1-partial.jsonl")
    if case == "changed-event-byte":
        i = _index(whole, "entry", 2)
        whole[i] = whole[i].replace(b"zoe-bot", b"zoe-boT", 1)
    elif case == "dropped-entry-line":
        del whole[_index(whole, "entry", 2)]
    elif case == "dropped-checkpoint-line":
        del whole[_index(whole, "checkpoint")]
    elif case == "truncated-last-line":
        return _join(whole)[:-1]
    elif case == "truncated-mid-entry":
        data = _join(whole)
        return data[: data.index(whole[_index(whole, "entry", 3)]) + 100]
    elif case == "bad-trailer-signature":
        end = json.loads(whole[-1])
        signature = bytearray(b64url_decode(end["signature"]))
        signature[0] ^= 1
        whole[-1] = _edit(whole[-1], signature=base64.urlsafe_b64encode(signature).decode()[:86])
    elif case == "changed-export-time":
        whole[0] = whole[0].replace(b"09:32:00Z", b"09:32:01Z")
    elif case == "line-after-trailer":
        whole.append(whole[-2])
    elif case == "forged-checkpoint":
        i = _index(whole, "checkpoint")
        whole[i] = _edit(whole[i], note=json.loads(whole[i])["note"].replace("+1zU=", "+1zQ="))
    elif case == "other-ledger-name":
        whole[0] = _edit(whole[0], ledger_name="ledger.other")
    elif case == "checkpoint-of-other-chain":
        i = _index(whole, "checkpoint")
        body = CHECKPOINT_VECTOR["body"].replace("/acme\n", "/beta\n")
        whole[i] = _edit(whole[i], note=_ledger_note(body))
    elif case == "checkpoint-beyond-chain-size":
        body = CHECKPOINT_VECTOR["body"].replace("\n3\n", "\n4\n")
        whole.insert(_index(whole, "checkpoint") + 1, _edit(whole[3], note=_ledger_note(body)))
    elif case == "chain-size-below-checkpoint":
        part[0] = _edit(part[0], chain_size=2)
        return _join(part)
    elif case == "revoked-publisher-key":
        i = _index(part, "publisher_key")
        part[i] = _edit(part[i], active=False)
        return _join(part)
    elif case == "changed-prev-hash":
        i = _index(part, "prev")
        part[i] = _edit(part[i], entry_hash="11" * 32)
        return _join(part)
    else:
        raise AssertionError(case)
    return _join(whole)


# (case, the seq both name, the independent verifier's reason, the service's problem)
EXPORT_TAMPERING = [
    ("changed-event-byte", 2, "entry_hash does not match", "entry hash does not match"),
    ("dropped-entry-line", 3, "expected seq 2", "sequence gap"),
    ("dropped-checkpoint-line", 3, "no signed checkpoint at", "no signed checkpoint covers"),
    ("truncated-last-line", None, "cut off", "cut off"),
    ("truncated-mid-entry", 3, "cut off", "cut off"),
    ("bad-trailer-signature", None, "signature does not verify", "signature does not verify"),
    ("changed-export-time", None, "digest does not match", "digest does not match"),
    ("line-after-trailer", None, "follows the trailer", "follows the trailer"),
    ("forged-checkpoint", 3, "checkpoint signature does not", "checkpoint signature does not"),
    ("other-ledger-name", None, "digest does not match", "digest does not match"),
    ("checkpoint-of-other-chain", 3, "checkpoint of another log", "checkpoint of another log"),
    ("checkpoint-beyond-chain-size", 4, "covers 4 entries", "covers 4 entries"),
    ("chain-size-below-checkpoint", 3, "covers 3 entries", "covers 3 entries"),
    ("revoked-publisher-key", 2, "not registered and active", "signing key not authorised"),
    ("changed-prev-hash", 2, "prev_hash does not equal", "prev_hash does not link"),
]


@pytest.mark.parametrize(
    ("case", "seq", "reason", "problem"), EXPORT_TAMPERING, ids=[c[0] for c in EXPORT_TAMPERING]
)
def test_both_verifiers_reject_export_vector_when_tampered(
    case: str, seq: int | None, reason: str, problem: str
) -> None:
    """Each change to an export file fails both verifiers, at the same seq and line."""
    from service.app.offline_verify import verify_export

    data = _tampered_export(case)
    mine = verify_export_file(data)
    theirs = verify_export(io.BytesIO(data))
    assert mine is not None
    assert reason in mine.reason
    assert theirs.finding is not None
    assert problem in theirs.finding.problem
    assert (mine.seq, mine.line) == (seq, theirs.line)
    assert theirs.finding.seq == seq


def test_independent_verifier_rejects_export_when_trust_anchors_disagree() -> None:
    """A kept checkpoint or a pinned ledger key that the file's ledger keys do not match fails."""
    other = _other_key()
    data = _export_vector("export-v1.jsonl")
    pinned = verify_export_file(data, ledger_root=bytes(other.verify_key))
    assert pinned is not None
    assert "not rooted in the pinned key" in pinned.reason
    # A checkpoint at size 3 that names another head: the export contradicts what was kept.
    kept = _ledger_note(CHECKPOINT_VECTOR["body"].replace("Koyh", "Loyh", 1))
    broken = verify_export_file(data, trusted_checkpoints=[kept])
    assert broken is not None
    assert "disagree at size 3" in broken.reason


# --- (c) API-shaped entries built by the service, checked by the verifier ----------
#
# The database-backed check: a real chain, produced by NATS → ingest → PostgreSQL and
# read back over HTTP, re-verified by the independent implementation above. The
# fixtures start the service (tests/conftest.py); nothing from service.domain.chain
# is used to check it.


async def test_real_chain_verifies_independently_when_read_page_by_page_from_the_api(
    service: Any, org_key: Any, publisher: Any
) -> None:
    """Entries chained by the running service pass the rule re-implemented from the document."""
    from conftest import performed, registered, wait_for_chain

    key = await org_key("acme")
    second = await org_key("acme")
    pub, pub2 = await publisher(key), await publisher(second)
    events = [registered("acme", "bot")] + [
        performed("acme", "bot", "x.read", f"r/{i}", t=10 + i) for i in range(25)
    ]
    for n, event in enumerate(events):
        await (pub if n % 2 else pub2).publish(event)
    await wait_for_chain(service.store, "acme", 2 + len(events))

    entries: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = (await service.http.get(f"/v1/chains/acme/entries?after_seq={after}&limit=7")).json()
        entries += page["entries"]
        after = page["next_after_seq"]
    assert [e["seq"] for e in entries] == list(range(1, len(events) + 3))
    assert verify_api_entries("acme", entries) is None
    head = (await service.http.get("/v1/chains/acme")).json()
    assert head["head_hash"] == entries[-1]["entry_hash"]

    tampered = [dict(e) for e in entries]
    tampered[9]["event"] = tampered[9]["event"].replace("r/", "R/", 1)
    broken = verify_api_entries("acme", tampered)
    assert broken is not None
    assert broken.seq == 10


async def test_real_export_verifies_independently_when_fetched_from_the_running_service(
    service: Any, org_key: Any, publisher: Any
) -> None:
    """Exports of a 30-entry chain built through NATS pass the verifier written from the spec."""
    from conftest import key_registered, key_revoked, performed, registered, wait_for_chain

    from service.app.offline_verify import verify_export
    from service.domain.signing import SigningKey

    first = await org_key("acme")  # seq 1: the operator's self-signed registration
    second = SigningKey.generate("acme")
    by_first, by_second = await publisher(first), await publisher(second)
    await by_first.publish(registered("acme", "bot"))  # seq 2
    await by_first.publish(key_registered("acme", second, t=1))  # seq 3
    for i in range(12):  # seqs 4-15
        await by_second.publish(performed("acme", "bot", "x.read", f"r/{i}", t=10 + i))
    await by_second.publish(key_revoked("acme", first, t=30))  # seq 16
    # An export over HTTP ends at a signed checkpoint and never signs one itself:
    # sign at 25 (the end of the range exported below) and at the head, 30.
    for first_n, size in ((0, 25), (9, 30)):  # seqs 17-25, then 26-30
        for n in range(first_n, size - 16):
            await by_second.publish(performed("acme", "bot", "x.write", f"w/{n}", t=40 + n))
        await wait_for_chain(service.store, "acme", size)
        signed = await service.http.post("/v1/chains/acme/checkpoints")
        assert signed.status_code in (200, 201), signed.text
        assert signed.json()["size"] == size

    response = await service.http.get("/v1/chains/acme/export")
    assert response.status_code == 200
    data = response.content
    # The auditor's trust anchors: the ledger's first key and a checkpoint kept from the API.
    keys = (await service.http.get("/v1/ledger/keys")).json()["keys"]
    root = b64url_decode(next(k for k in keys if k["registered_seq"] == 1)["public_key"])
    kept = (await service.http.get("/v1/chains/acme/checkpoint")).text
    assert parse_checkpoint_body(split_note(kept)[0]).size == 30

    assert verify_export_file(data) is None
    assert verify_export_file(data, trusted_checkpoints=[kept], ledger_root=root) is None
    assert verify_export(io.BytesIO(data), trusted_checkpoints=[kept]).finding is None
    lines = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert sum(line["type"] == "entry" and line["chain"] == "acme" for line in lines) == 30

    # A range after the revocation: the key state before it travels as publisher_key lines.
    response = await service.http.get("/v1/chains/acme/export?from_seq=20&to_seq=25")
    partial = response.content
    assert verify_export_file(partial, trusted_checkpoints=[kept], ledger_root=root) is None
    key_lines = [json.loads(line) for line in partial.split(b"\n") if b'"publisher_key"' in line]
    assert {k["key_id"]: k["active"] for k in key_lines} == {
        first.key_id: False,
        second.key_id: True,
    }

    # One changed byte in entry 10's event is named by both verifiers.
    tampered = data.replace(b"r/6", b"r/7", 1)
    broken = verify_export_file(tampered)
    assert broken is not None
    assert (broken.seq, broken.reason) == (10, "entry_hash does not match the recomputed hash")
    theirs = verify_export(io.BytesIO(tampered)).finding
    assert theirs is not None
    assert theirs.seq == 10


@dataclass(frozen=True)
class Step:
    """One event to chain: who signs it, and optionally a forged signature or key id."""

    signer: str
    event: dict[str, Any]
    signature_over: bytes | None = None  # sign these bytes instead of the event's
    key_id: str | None = None  # claim this key id instead of the signer's


def _keys() -> dict[str, Any]:
    from service.domain.signing import SigningKey

    return {
        name: SigningKey(org="acme", seed=blake3.blake3(f"test/{name}".encode()).digest())
        for name in ("first", "second", "stranger")
    }


def _event(kind: str, n: int, **extra: Any) -> dict[str, Any]:
    base = {"kind": kind, "id": f"evt-{n}", "org": "acme", "occurred_at": "2026-01-15T09:30:00Z"}
    return base | extra


def _registration(keys: dict[str, Any], name: str, n: int) -> dict[str, Any]:
    from service.domain.signing import b64url

    key = keys[name]
    return _event(
        "publisher_key.registered",
        n,
        key_id=key.key_id,
        public_key=b64url(key.public_key),
        label=name,
    )


def _action(n: int) -> dict[str, Any]:
    return _event("action.performed", n, agent="bot", action="pay", resource="invoice/1")


def _service_entries(steps: list[Step], chain: str = "acme") -> list[dict[str, Any]]:
    """Chain the steps with service code (no admission checks) and render them as the API does."""
    import msgspec

    from service.adapters.postgres import ChainHead
    from service.api.bodies import EntriesPage, EntryView
    from service.app.ingest import chain_entry
    from service.domain.admission import Admitted, Incoming
    from service.domain.chain import GENESIS_PREV_HASH, to_micros
    from service.domain.events import decode_event, encode_event
    from service.domain.signing import b64url

    keys = _keys()
    head = ChainHead(chain, 0, GENESIS_PREV_HASH)
    received = datetime.fromisoformat("2026-01-15T09:31:00.000001+00:00")
    views = []
    for step in steps:
        event = decode_event(json.dumps(step.event).encode())
        data = encode_event(event)
        key = keys[step.signer]
        signature = key.sign(data if step.signature_over is None else step.signature_over)
        key_id = step.key_id or key.key_id
        message = Incoming(f"tl.ev.{chain}._", data, key_id, b64url(signature), 1)
        e = chain_entry(head, Admitted(message, event, key_id, signature), received)
        # The same mapping as service.api.controllers.ChainController.entries.
        views.append(
            EntryView(
                chain=e.chain,
                seq=e.seq,
                event_id=e.event_id,
                kind=e.kind,
                occurred_at=e.occurred_at,
                received_at=e.received_at,
                received_at_us=to_micros(e.received_at),
                key_id=e.key_id,
                signature=e.signature.hex(),
                event=e.event_bytes.decode("utf-8", errors="replace"),
                prev_hash=e.prev_hash.hex(),
                entry_hash=e.entry_hash.hex(),
            )
        )
    body = msgspec.json.encode(EntriesPage(chain=chain, entries=views, next_after_seq=None))
    entries: list[dict[str, Any]] = json.loads(body)["entries"]
    return entries


def _good_steps(keys: dict[str, Any]) -> list[Step]:
    """First key self-signed; it registers a second key; the second revokes the first."""
    return [
        Step("first", _registration(keys, "first", 1)),
        Step("first", _action(2)),
        Step("first", _registration(keys, "second", 3)),
        Step("second", _action(4)),
        Step("second", _event("publisher_key.revoked", 5, key_id=keys["first"].key_id)),
        Step("second", _action(6)),
    ]


def test_api_entries_verify_when_built_by_service_chaining() -> None:
    """Entries chained by ingest's `chain_entry` and rendered as EntryView pass section 6."""
    entries = _service_entries(_good_steps(_keys()))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert verify_api_entries("acme", entries) is None


def test_service_walker_agrees_when_api_entries_are_untouched() -> None:
    """The service's ChainWalker accepts the same API entries (hash steps 1-3 only)."""
    from service.domain.chain import ChainWalker, EntryFields

    walker = ChainWalker("acme")
    for e in _service_entries(_good_steps(_keys())):
        fields = EntryFields(
            e["chain"],
            e["seq"],
            e["received_at_us"],
            e["key_id"],
            bytes.fromhex(e["signature"]),
            e["event"].encode(),
        )
        assert walker.check(fields, bytes.fromhex(e["entry_hash"])) is None


def _steps_case(name: str) -> tuple[list[Step], int, str]:
    """Chains the service can hash but must never have admitted: (steps, bad seq, reason)."""
    keys = _keys()
    good = _good_steps(keys)
    cases: dict[str, tuple[list[Step], int, str]] = {
        "revoked-key-signs": (
            [*good, Step("first", _action(7))],
            7,
            "not registered and active",
        ),
        "unregistered-key-signs": (
            [*good[:2], Step("stranger", _action(3))],
            3,
            "not registered and active",
        ),
        "first-entry-not-self-signed": (
            [Step("first", _action(1))],
            1,
            "not registered and active",
        ),
        "first-registration-signed-by-other-key": (
            [Step("second", _registration(keys, "first", 1))],
            1,
            "not registered and active",
        ),
        "bad-signature": (
            [*good[:2], Step("first", _action(3), signature_over=b"something else")],
            3,
            "does not verify",
        ),
        "self-signed-with-bad-signature": (
            [Step("first", _registration(keys, "first", 1), signature_over=b"x")],
            1,
            "does not verify",
        ),
        "key-id-claims-other-key": (
            [*good[:4], Step("second", _action(5), key_id=keys["stranger"].key_id)],
            5,
            "not registered and active",
        ),
        "registration-key-id-mismatch": (
            [
                *good[:2],
                Step(
                    "first",
                    _registration(keys, "second", 3) | {"key_id": keys["stranger"].key_id},
                ),
            ],
            3,
            "does not match public key",
        ),
        "repeated-event-id": (
            [*good[:2], Step("first", _action(2))],
            3,
            "repeated",
        ),
        "revoked-key-re-registered": (
            [
                *good,
                Step("second", _registration(keys, "first", 7)),
                Step("first", _action(8)),
            ],
            8,
            "not registered and active",
        ),
    }
    return cases[name]


@pytest.mark.parametrize(
    "case",
    [
        "revoked-key-signs",
        "unregistered-key-signs",
        "first-entry-not-self-signed",
        "first-registration-signed-by-other-key",
        "bad-signature",
        "self-signed-with-bad-signature",
        "key-id-claims-other-key",
        "registration-key-id-mismatch",
        "repeated-event-id",
        "revoked-key-re-registered",
    ],
)
def test_verifier_names_seq_when_hashes_link_but_signing_rules_fail(case: str) -> None:
    """Hash-consistent chains that break the key rules of section 6 are caught at the right seq."""
    steps, seq, reason = _steps_case(case)
    broken = verify_api_entries("acme", _service_entries(steps))
    assert broken is not None
    assert broken.seq == seq
    assert reason in broken.reason


def _tamper(entries: list[dict[str, Any]], case: str) -> list[dict[str, Any]]:
    out = [dict(e) for e in entries]
    if case == "event-text":
        out[3]["event"] = out[3]["event"].replace("invoice/1", "invoice/2")
    elif case == "received-at-us":
        out[3]["received_at_us"] += 1
    elif case == "prev-hash-column":
        out[3]["prev_hash"] = "00" * 32
    elif case == "entry-hash-column":
        out[3]["entry_hash"] = "ff" * 32
    elif case == "gap":
        del out[3]
    elif case == "other-chain":
        out[3]["chain"] = "beta"
    elif case == "event-id-column":
        out[3]["event_id"] = "evt-99"
    elif case == "kind-column":
        out[3]["kind"] = "agent.retired"
    return out


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("event-text", "entry_hash does not match"),
        ("received-at-us", "entry_hash does not match"),
        ("prev-hash-column", "prev_hash"),
        ("entry-hash-column", "entry_hash does not match"),
        ("gap", "expected seq 4"),
        ("other-chain", "belongs to chain 'beta'"),
        ("event-id-column", "columns disagree"),
        ("kind-column", "columns disagree"),
    ],
)
def test_verifier_names_seq_when_api_entry_is_tampered(case: str, reason: str) -> None:
    """Changing any hashed field or unhashed column of entry 4 is reported at seq 4 or 5."""
    entries = _tamper(_service_entries(_good_steps(_keys())), case)
    broken = verify_api_entries("acme", entries)
    assert broken is not None
    assert broken.seq == (5 if case == "gap" else 4)
    assert reason in broken.reason


# --- proofs of possession (section 5.4) ----------------------------------------------

KEY_PROOF_GENERATOR_PATH = VECTOR_DIR / "generate_key_proof.py"
KEY_PROOF_VECTOR: dict[str, Any] = json.loads(
    (VECTOR_DIR / "key-proof-v1.json").read_text(encoding="utf-8")
)
WIRE_CONTRACT_PATH = REPO / "docs" / "wire-contract.md"
REGISTRATION_EXAMPLE = REPO / "schemas" / "examples" / "publisher_key.registered.json"


def _key_proof_generator() -> ModuleType:
    return _load(KEY_PROOF_GENERATOR_PATH, "trustledger_key_proof_vector_generator")


def test_key_proof_vector_and_example_equal_generator_output_when_regenerated() -> None:
    """key-proof-v1.json, the schema example and the wire contract's worked example are current."""
    generator = _key_proof_generator()
    assert generator.render() == (VECTOR_DIR / "key-proof-v1.json").read_bytes(), (
        "stale key-proof-v1.json: run `python tests/vectors/generate_key_proof.py`"
    )
    assert generator.example() == REGISTRATION_EXAMPLE.read_bytes()
    assert generator.markdown() in WIRE_CONTRACT_PATH.read_text(encoding="utf-8"), (
        "docs/wire-contract.md section 3.3 is stale: paste `generate_key_proof.py --markdown`"
    )


def test_independent_key_proof_matches_vector_and_refuses_replays_when_recomputed() -> None:
    """Section 5.4 from the spec gives the vector's message; its proof verifies there only."""
    v = KEY_PROOF_VECTOR
    public_key = bytes.fromhex(v["key"]["public_key_hex"])
    assert bytes.fromhex(v["domain_hex"]) == KEY_PROOF_PREFIX
    message = key_proof_message(v["org"], v["key"]["key_id"], v["event_id"])
    assert message.hex() == v["message_hex"]
    proof = bytes.fromhex(v["proof_hex"])
    assert b64url_decode(v["proof_b64url"]) == proof
    assert ed25519_verifies(public_key, message, proof)
    assert proof_holds(json.loads(v["event"]), public_key)
    for replay in v["replays"]:
        other = key_proof_message(replay["org"], v["key"]["key_id"], replay["event_id"])
        assert other.hex() == replay["message_hex"]
        assert not ed25519_verifies(public_key, other, proof)
        doc = json.loads(v["event"]) | {"org": replay["org"], "id": replay["event_id"]}
        assert not proof_holds(doc, public_key)


def _proven(keys: dict[str, Any], name: str, n: int, proof: str = "valid") -> dict[str, Any]:
    """A registration of key `name` as event n, its `proof` made as `proof` says."""
    from service.domain.key_proof import make_key_proof
    from service.domain.signing import b64url

    doc = _registration(keys, name, n)
    key = keys[name]
    made = {
        "valid": lambda: make_key_proof(key, "acme", f"evt-{n}"),
        "other-org": lambda: make_key_proof(key, "globex", f"evt-{n}"),
        "other-event": lambda: make_key_proof(key, "acme", f"evt-{n + 100}"),
        "other-key": lambda: make_key_proof(keys["stranger"], "acme", f"evt-{n}"),
        "other-bytes": lambda: b64url(key.sign(b"not a key proof message")),
    }
    return doc | {"proof": made[proof]()}


def _service_finding(entries: list[dict[str, Any]]) -> int | None:
    """The seq the service's own auditor (audit.ChainAuditor) stops at, if any."""
    from service.domain.audit import AuditEntry, ChainAuditor, verify_sequentially

    auditor = ChainAuditor("acme")
    audit_entries = []
    for e in entries:
        hexed = [bytes.fromhex(e[name]) for name in ("signature", "prev_hash", "entry_hash")]
        fields = (e["chain"], e["seq"], e["received_at_us"], e["key_id"], hexed[0])
        audit_entries.append(AuditEntry(*fields, e["event"].encode(), hexed[1], hexed[2]))
    finding = auditor.check(audit_entries, verify_sequentially)
    return None if finding is None else finding.seq


def _proof_steps(first: str = "valid", second: str = "valid") -> list[Step]:
    keys = _keys()
    return [
        Step("first", _proven(keys, "first", 1, first)),
        Step("first", _action(2)),
        Step("first", _proven(keys, "second", 3, second)),
        Step("second", _action(4)),
    ]


@pytest.mark.parametrize(
    "steps",
    [_proof_steps(), _good_steps(_keys())],
    ids=["with-proofs", "without-proofs-as-before-proofs-were-required"],
)
def test_both_verifiers_accept_registrations_when_proofs_hold_or_are_absent(
    steps: list[Step],
) -> None:
    """Proofs that hold pass; a registration without one is a pre-proof entry and passes too."""
    entries = _service_entries(steps)
    assert verify_api_entries("acme", entries) is None
    assert _service_finding(entries) is None


@pytest.mark.parametrize("proof", ["other-org", "other-event", "other-key", "other-bytes"])
@pytest.mark.parametrize(("which", "seq"), [("first", 1), ("second", 3)])
def test_both_verifiers_name_the_registration_when_its_proof_does_not_hold(
    proof: str, which: str, seq: int
) -> None:
    """A proof replayed from another org or event, made by another key or not a proof: that seq."""
    steps = _proof_steps(**{which: proof})
    entries = _service_entries(steps)
    broken = verify_api_entries("acme", entries)
    assert broken is not None
    assert (broken.seq, broken.reason) == (seq, "registration: proof of possession does not verify")
    assert _service_finding(entries) == seq


@pytest.mark.parametrize("value", [None, 7, "", "A" * 86, ["x"]])
def test_both_verifiers_name_the_registration_when_its_proof_member_is_not_a_proof(
    value: object,
) -> None:
    """`proof` present but null, a number, empty, 86 characters of noise or a list: refused."""
    keys = _keys()
    doc = _registration(keys, "second", 3) | {"proof": value}
    steps = [*_good_steps(keys)[:2], Step("first", doc)]
    entries = _service_entries_raw(steps)
    broken = verify_api_entries("acme", entries)
    assert broken is not None
    assert broken.seq == 3
    assert _service_finding(entries) == 3


def _service_entries_raw(steps: list[Step]) -> list[dict[str, Any]]:
    """`_service_entries` for event bytes the wire contract would refuse (chained as given)."""
    from service.adapters.postgres import ChainHead
    from service.app.ingest import chain_entry
    from service.domain.admission import Admitted, Incoming
    from service.domain.chain import GENESIS_PREV_HASH, to_micros
    from service.domain.events import AgentRetired
    from service.domain.signing import b64url

    keys = _keys()
    head = ChainHead("acme", 0, GENESIS_PREV_HASH)
    received = datetime.fromisoformat("2026-01-15T09:31:00.000001+00:00")
    placeholder = AgentRetired(id="x", org="acme", occurred_at=received, agent="x")
    out = []
    for step in steps:
        data = json.dumps(step.event).encode()
        key = keys[step.signer]
        signature = key.sign(data)
        message = Incoming("tl.ev.acme._", data, key.key_id, b64url(signature), 1)
        e = chain_entry(head, Admitted(message, placeholder, key.key_id, signature), received)
        out.append(
            {
                "chain": e.chain, "seq": e.seq, "received_at_us": to_micros(e.received_at),
                "key_id": e.key_id, "signature": e.signature.hex(), "event": data.decode(),
                "prev_hash": e.prev_hash.hex(), "entry_hash": e.entry_hash.hex(),
            }
        )  # fmt: skip
    return out
