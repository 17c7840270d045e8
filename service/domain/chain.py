"""The hash-chain rule: how each ledger entry commits to everything before it.

This module is the executable form of `docs/ledger-format.md`; the two must
agree byte for byte (a test re-implements the rule from the document alone).

    entry_hash = BLAKE3(
        "trustledger/entry/v1" 0x00
        || prev_hash                      32 bytes (32 zero bytes for seq 1)
        || u32be(len(chain)) || chain     UTF-8 org id
        || u64be(seq)                     1, 2, 3, ... without gaps
        || i64be(received_at_us)          microseconds since the Unix epoch, UTC
        || u32be(len(key_id)) || key_id   ASCII
        || u32be(len(sig)) || sig         64-byte Ed25519 signature
        || u32be(len(event)) || event     the exact published bytes
    )

Length prefixes make the encoding injective (no two field lists give the same
bytes); the domain prefix keeps these hashes apart from any other BLAKE3 use.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import blake3

ENTRY_DOMAIN = b"trustledger/entry/v1\x00"
GENESIS_PREV_HASH = bytes(32)
HASH_SIZE = 32

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EntryFields:
    """Everything an entry hash commits to, besides the previous hash."""

    chain: str
    seq: int
    received_at_us: int
    key_id: str
    signature: bytes
    event_bytes: bytes


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def entry_preimage(prev_hash: bytes, fields: EntryFields) -> bytes:
    """The exact bytes hashed for one entry."""
    if len(prev_hash) != HASH_SIZE:
        raise ValueError(f"prev_hash must be {HASH_SIZE} bytes, got {len(prev_hash)}")
    if fields.seq < 1:
        raise ValueError(f"seq starts at 1, got {fields.seq}")
    return b"".join(
        (
            ENTRY_DOMAIN,
            prev_hash,
            _lp(fields.chain.encode()),
            struct.pack(">Q", fields.seq),
            struct.pack(">q", fields.received_at_us),
            _lp(fields.key_id.encode("ascii")),
            _lp(fields.signature),
            _lp(fields.event_bytes),
        )
    )


def entry_hash(prev_hash: bytes, fields: EntryFields) -> bytes:
    """BLAKE3 of the entry preimage: the link the next entry commits to."""
    return blake3.blake3(entry_preimage(prev_hash, fields)).digest()


def to_micros(at: datetime) -> int:
    """Microseconds since the Unix epoch for an aware datetime (exact, no floats)."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: the ledger only stores UTC instants")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    """The UTC datetime for microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first entry of a chain that does not verify, and why."""

    chain: str
    seq: int
    reason: str


@dataclass(slots=True)
class ChainWalker:
    """Checks entries of one chain in order, one at a time, in constant memory."""

    chain: str
    prev_hash: bytes = GENESIS_PREV_HASH
    next_seq: int = 1

    def check(self, fields: EntryFields, stored_hash: bytes) -> ChainBreak | None:
        """Check the next entry; on success advance, on failure return the break."""
        if fields.chain != self.chain:
            return ChainBreak(self.chain, fields.seq, f"entry belongs to chain {fields.chain!r}")
        if fields.seq != self.next_seq:
            return ChainBreak(
                self.chain, fields.seq, f"expected seq {self.next_seq}, found {fields.seq}"
            )
        computed = entry_hash(self.prev_hash, fields)
        if computed != stored_hash:
            return ChainBreak(
                self.chain,
                fields.seq,
                f"hash mismatch: computed {computed.hex()}, stored {stored_hash.hex()}",
            )
        self.prev_hash = computed
        self.next_seq += 1
        return None
