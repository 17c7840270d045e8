"""The full chain rule of docs/ledger-format.md §6, plus checkpoints, in one auditor.

`ChainAuditor` walks one chain's entries in order, in constant memory, and
checks every link, every hash, every signature and every key rule, and
compares the head at each signed checkpoint. The same code serves
`trustledger ledger verify` (entries read from PostgreSQL) and
`trustledger verify FILE` (entries read from an export): what an auditor runs
offline is exactly what the service runs online.

Signatures are checked in batches through a caller-supplied function, so the
caller can spread them over threads (libsodium releases the GIL); everything
else is sequential and cheap.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from service.domain.chain import GENESIS_PREV_HASH, EntryFields, entry_hash
from service.domain.checkpoint import Checkpoint, CheckpointError, origin_for, verify_checkpoint
from service.domain.events import EventDecodeError, load_json_strict
from service.domain.key_proof import key_proof_problem
from service.domain.signing import SIGNATURE_SIZE, key_id_for, verify_signature

LEDGER_CHAIN = "_ledger"
"""The ledger's own chain: it registers the ledger's checkpoint keys with the
same rule as an org's publisher keys. Not a valid org id, so never an org's chain."""

_KEY_ID = re.compile(r"[0-9a-f]{16}")
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9_-]{43}")

SignatureCheck = tuple[bytes, bytes, bytes]
"""(public key, message, signature)."""
VerifyMany = Callable[[Sequence[SignatureCheck]], list[bool]]


def verify_sequentially(checks: Sequence[SignatureCheck]) -> list[bool]:
    """The plain `VerifyMany`: one signature after another."""
    return [verify_signature(pub, msg, sig) for pub, msg, sig in checks]


def parallel_verifier(executor: Executor | None, parts: int = 2) -> VerifyMany:
    """A `VerifyMany` spreading signature checks over `parts` threads of `executor`."""
    if executor is None:
        return verify_sequentially

    def verify_many(checks: Sequence[SignatureCheck]) -> list[bool]:
        size = max(1, -(-len(checks) // parts))
        chunks = [checks[i : i + size] for i in range(0, len(checks), size)]
        return [ok for part in executor.map(verify_sequentially, chunks) for ok in part]

    return verify_many


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """Every field of a ledger entry, as stored or as exported."""

    chain: str
    seq: int
    received_at_us: int
    key_id: str
    signature: bytes
    event: bytes
    prev_hash: bytes
    entry_hash: bytes


@dataclass(frozen=True, slots=True)
class Finding:
    """The first thing that does not hold: where, what, what was expected, what was found."""

    chain: str
    seq: int | None
    problem: str
    expected: str = ""
    found: str = ""

    def __str__(self) -> str:
        where = f"{self.chain}#{self.seq}" if self.seq is not None else self.chain
        text = f"{where}: {self.problem}"
        if self.expected or self.found:
            text += f" (expected {self.expected}, found {self.found})"
        return text


@dataclass(slots=True)
class KeyState:
    """Publisher keys of one chain (§5.3): active ones, and every id ever registered."""

    active: dict[str, bytes] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    labels: dict[str, str] = field(default_factory=dict)
    public_keys: dict[str, bytes] = field(default_factory=dict)
    """Every registered key's public key, revoked ones included (for exports)."""

    def apply(self, event: dict[str, object]) -> bytes | None:
        """Apply a key event's effect (§5.3); returns the public key it registered, if any."""
        kind, key_id = event.get("kind"), event.get("key_id")
        if not isinstance(key_id, str):
            return None
        if kind == "publisher_key.registered" and key_id not in self.registered:
            public_key = _registered_key(event)
            if isinstance(public_key, bytes):
                self.registered.add(key_id)
                self.active[key_id] = public_key
                self.public_keys[key_id] = public_key
                label = event.get("label")
                self.labels[key_id] = label if isinstance(label, str) else ""
                return public_key
        elif kind == "publisher_key.revoked":
            self.active.pop(key_id, None)
        return None

    @classmethod
    def replay(cls, events: Iterable[bytes]) -> KeyState:
        """The key state after these key events (of an already verified prefix), in order."""
        state = cls()
        for data in events:
            event = _event_object(data)
            if isinstance(event, dict):
                state.apply(event)
        return state


def checkpoint_with_ledger_keys(
    note: str, keys: KeyState, chain: str | None = None
) -> Checkpoint | str:
    """Verify a note against every registered ledger key; the checkpoint or why not.

    With `chain`, the note's origin must be `<key name>/<chain>`: a checkpoint
    of one chain can never stand in for another's."""
    problems = []
    for key_id in sorted(keys.registered):
        public_key = keys.active.get(key_id)
        if public_key is None:
            continue
        name = keys.labels[key_id]
        try:
            checkpoint = verify_checkpoint(note, name, public_key)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if chain is not None and checkpoint.origin != origin_for(name, chain):
            return f"origin {checkpoint.origin!r} is not {origin_for(name, chain)!r}"
        return checkpoint
    return "; ".join(problems) or "no ledger key is registered"


@dataclass(slots=True)
class _Pending:
    entry: AuditEntry
    public_key: bytes


class ChainAuditor:
    """Checks one chain (or a suffix of it, given the state before the suffix)."""

    def __init__(
        self,
        chain: str,
        after_seq: int = 0,
        after_hash: bytes = GENESIS_PREV_HASH,
        keys: KeyState | None = None,
        track_event_ids: bool = True,
    ) -> None:
        self.chain = chain
        # Remembering every id costs memory in proportion to the entries walked;
        # a long-running incremental check leaves it to the database's UNIQUE.
        self.track_event_ids = track_event_ids
        self.last_seq = after_seq
        self.last_hash = after_hash
        self.keys = keys if keys is not None else KeyState()
        self.checkpoints: dict[int, Checkpoint] = {}
        self.first_key: bytes | None = None
        """The public key registered by the chain's first entry (its root of trust)."""
        self.later_self_signed: int | None = None
        """The first seq after 1 holding a self-signed registration (the operator's
        authority in an org chain; never written by the ledger to `_ledger`)."""
        self.event_ids: set[str] = set()
        self._first_seq = after_seq + 1
        self.failed_at: int | None = None
        """After `check` returned a finding: the index of the entry it is about."""

    def expect_checkpoint(self, checkpoint: Checkpoint) -> Finding | None:
        """Remember a verified checkpoint; its head is compared when the walk reaches it."""
        if checkpoint.size < self.last_seq:
            return Finding(
                self.chain, checkpoint.size, "checkpoint precedes the entries being checked",
                f"size >= {self.last_seq}", str(checkpoint.size),
            )  # fmt: skip
        if checkpoint.size == self.last_seq:
            return self._compare(checkpoint, self.last_hash)
        self.checkpoints[checkpoint.size] = checkpoint
        return None

    def check(self, entries: Sequence[AuditEntry], verify_many: VerifyMany) -> Finding | None:
        """Check the next entries in order; returns the first failure, if any.

        On failure `failed_at` is the index in `entries` of the entry the finding is
        about, and the auditor is left in an undefined state: stop walking."""
        pending: list[_Pending] = []
        structural: Finding | None = None
        self.failed_at = None
        for entry in entries:
            result = self._step(entry)
            if isinstance(result, Finding):
                structural = result
                self.failed_at = len(pending)
                break
            pending.append(_Pending(entry, result))
        if pending:
            oks = verify_many([(p.public_key, p.entry.event, p.entry.signature) for p in pending])
            for index, (p, ok) in enumerate(zip(pending, oks, strict=True)):
                if not ok:
                    self.failed_at = index
                    return Finding(
                        self.chain, p.entry.seq, "signature does not verify",
                        f"Ed25519 signature by key {p.entry.key_id} over the event bytes",
                        "a signature that does not verify",
                    )  # fmt: skip
        return structural

    def finish(self) -> Finding | None:
        """After the last entry: every checkpoint must have been reached."""
        beyond = [size for size in self.checkpoints if size > self.last_seq]
        if beyond:
            size = min(beyond)
            return Finding(
                self.chain, self.last_seq + 1,
                f"a signed checkpoint covers {size} entries but the chain ends at {self.last_seq}",
                f"entries up to seq {size}", f"last entry seq {self.last_seq}",
            )  # fmt: skip
        return None

    # -- one entry ---------------------------------------------------------------

    def _step(self, e: AuditEntry) -> bytes | Finding:
        """Steps 1-7 but the signature; returns the public key to check it with."""
        chain = self.chain
        if e.chain != chain:
            return Finding(chain, e.seq, "entry of another chain", chain, e.chain)
        if e.seq != self.last_seq + 1:
            return Finding(
                chain, e.seq, "sequence gap or reordering", str(self.last_seq + 1), str(e.seq)
            )
        if e.prev_hash != self.last_hash:
            return Finding(
                chain, e.seq, "prev_hash does not link to the previous entry",
                self.last_hash.hex(), e.prev_hash.hex(),
            )  # fmt: skip
        if not _KEY_ID.fullmatch(e.key_id) or len(e.signature) != SIGNATURE_SIZE:
            return Finding(chain, e.seq, "malformed key id or signature", "16 hex chars, 64 bytes",
                           f"{e.key_id!r}, {len(e.signature)} bytes")  # fmt: skip
        fields = EntryFields(chain, e.seq, e.received_at_us, e.key_id, e.signature, e.event)
        computed = entry_hash(e.prev_hash, fields)
        if computed != e.entry_hash:
            return Finding(chain, e.seq, "entry hash does not match its fields",
                           computed.hex(), e.entry_hash.hex())  # fmt: skip
        event = _event_object(e.event)
        if isinstance(event, str):
            return Finding(chain, e.seq, "event bytes are not a valid event object", "", event)
        if event.get("org") != chain:
            return Finding(
                chain, e.seq, "event of another org in this chain", chain, str(event.get("org"))
            )
        event_id = event.get("id")
        if not isinstance(event_id, str) or (self.track_event_ids and event_id in self.event_ids):
            return Finding(chain, e.seq, "event id missing or repeated", "a new id", str(event_id))
        if not isinstance(event.get("kind"), str):
            return Finding(chain, e.seq, "event has no kind", "a string", str(event.get("kind")))
        public_key = self._signer(e, event)
        if isinstance(public_key, Finding):
            return public_key
        self._apply_keys(event)
        if self.track_event_ids:
            self.event_ids.add(event_id)
        self.last_seq = e.seq
        self.last_hash = computed
        checkpoint = self.checkpoints.pop(e.seq, None)
        if checkpoint is not None:
            mismatch = self._compare(checkpoint, computed)
            if mismatch is not None:
                return mismatch
        return public_key

    def _signer(self, e: AuditEntry, event: dict[str, object]) -> bytes | Finding:
        """Step 6: the key authorised to sign this entry."""
        registers = event.get("kind") == "publisher_key.registered"
        if registers and event.get("key_id") == e.key_id and e.key_id not in self.keys.registered:
            # Self-signed registration (§6 step 6, second case).
            public_key = _valid_registration(event)
            if isinstance(public_key, str):
                return Finding(self.chain, e.seq, "invalid key registration", "", public_key)
            if e.seq > 1 and self.later_self_signed is None:
                self.later_self_signed = e.seq
            return public_key
        active = self.keys.active.get(e.key_id)
        if active is None:
            state = "revoked" if e.key_id in self.keys.registered else "never registered"
            if e.seq == 1:
                state = "entry 1 must be a self-signed key registration"
            return Finding(self.chain, e.seq, "signing key not authorised here",
                           "a key active at this entry", f"{e.key_id} ({state})")  # fmt: skip
        problem = _valid_registration(event) if registers else b""
        if isinstance(problem, str):
            return Finding(self.chain, e.seq, "invalid key registration", "", problem)
        return active

    def _apply_keys(self, event: dict[str, object]) -> None:
        registered = self.keys.apply(event)
        if registered is not None and self.last_seq == 0 and self.first_key is None:
            self.first_key = registered

    def _compare(self, checkpoint: Checkpoint, head: bytes) -> Finding | None:
        if checkpoint.head_hash != head:
            return Finding(
                self.chain, checkpoint.size,
                f"head at size {checkpoint.size} differs from the signed checkpoint",
                checkpoint.head_hash.hex(), head.hex(),
            )  # fmt: skip
        return None


def _event_object(data: bytes) -> dict[str, object] | str:
    """Step 5's parse: a UTF-8 JSON object without repeated members, or why not."""
    try:
        value = load_json_strict(data)
    except EventDecodeError as e:
        return e.detail
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        return str(e)
    if not isinstance(value, dict):
        return "not a JSON object"
    return value


def _valid_registration(event: dict[str, object]) -> bytes | str:
    """Step 7: the public key of a registration, or why it is invalid, proof included.

    A `proof` member, when present, must prove possession (§5.4). A registration
    without one is accepted: the ledger admitted such registrations before it
    required proofs, and a verifier cannot tell from the bytes when an entry was
    admitted."""
    public_key = _registered_key(event)
    if isinstance(public_key, str) or "proof" not in event:
        return public_key
    problem = key_proof_problem(
        event.get("org"), event.get("key_id"), event.get("id"), public_key, event["proof"]
    )
    return public_key if problem is None else problem


def _registered_key(event: dict[str, object]) -> bytes | str:
    """Step 7: the public key of a registration, or why it is invalid."""
    key_id, public_b64 = event.get("key_id"), event.get("public_key")
    if not isinstance(key_id, str) or not isinstance(public_b64, str):
        return "key_id and public_key must be strings"
    if not _PUBLIC_KEY.fullmatch(public_b64):
        return "public_key is not 43 base64url characters"
    try:
        public_key = base64.urlsafe_b64decode(public_b64 + "=")
    except (binascii.Error, ValueError):
        return "public_key is not base64url"
    if key_id_for(public_key) != key_id:
        return f"key_id {key_id} is not the key id of public_key ({key_id_for(public_key)})"
    return public_key
