"""The chain rule (`service/domain/chain.py`) and publisher keys (`service/domain/signing.py`)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import blake3
import pytest

from service.domain.chain import (
    ENTRY_DOMAIN,
    GENESIS_PREV_HASH,
    ChainBreak,
    ChainWalker,
    EntryFields,
    entry_hash,
    entry_preimage,
    from_micros,
    to_micros,
)
from service.domain.signing import (
    PUBLIC_KEY_SIZE,
    SigningKey,
    b64url,
    from_b64url,
    key_id_for,
    verify_signature,
)

KEY = SigningKey(org="acme", seed=bytes(range(32)))
OTHER_KEY = SigningKey(org="acme", seed=bytes(range(1, 33)))
T0 = 1_768_469_400_123_456  # 2026-01-15T09:30:00.123456Z

Chain = list[tuple[EntryFields, bytes]]


def _build_chain(n: int = 4, chain: str = "acme") -> Chain:
    """`n` linked entries of `chain` as (fields, stored entry_hash), signed by KEY."""
    entries: Chain = []
    prev = GENESIS_PREV_HASH
    for seq in range(1, n + 1):
        event = f'{{"kind":"action.performed","id":"e{seq}","org":"{chain}"}}'.encode()
        fields = EntryFields(
            chain=chain,
            seq=seq,
            received_at_us=T0 + seq * 1_000,
            key_id=KEY.key_id,
            signature=KEY.sign(event),
            event_bytes=event,
        )
        prev = entry_hash(prev, fields)
        entries.append((fields, prev))
    return entries


def _walk(entries: Chain, chain: str = "acme") -> tuple[ChainWalker, ChainBreak | None]:
    walker = ChainWalker(chain)
    for fields, stored in entries:
        broken = walker.check(fields, stored)
        if broken is not None:
            return walker, broken
    return walker, None


def _edit(index: int, **changes: object) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        out = list(entries)
        fields, stored = out[index]
        out[index] = (replace(fields, **changes), stored)  # type: ignore[arg-type]
        return out

    return tamper


def _flip_event_byte(index: int) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        fields = entries[index][0]
        data = bytearray(fields.event_bytes)
        data[10] ^= 0x01
        return _edit(index, event_bytes=bytes(data))(entries)

    return tamper


def _flip_signature_byte(index: int) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        sig = bytearray(entries[index][0].signature)
        sig[0] ^= 0x80
        return _edit(index, signature=bytes(sig))(entries)

    return tamper


def _shift_received_at(index: int) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        return _edit(index, received_at_us=entries[index][0].received_at_us + 1)(entries)

    return tamper


def _drop(index: int) -> Callable[[Chain], Chain]:
    return lambda entries: entries[:index] + entries[index + 1 :]


def _swap_order(i: int, j: int) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        out = list(entries)
        out[i], out[j] = out[j], out[i]
        return out

    return tamper


def _swap_payloads(i: int, j: int) -> Callable[[Chain], Chain]:
    """Keep seqs and stored hashes in place, exchange what the entries say."""

    def tamper(entries: Chain) -> Chain:
        out = list(entries)
        (fi, hi), (fj, hj) = out[i], out[j]
        out[i] = (replace(fj, seq=fi.seq), hi)
        out[j] = (replace(fi, seq=fj.seq), hj)
        return out

    return tamper


def _duplicate(index: int) -> Callable[[Chain], Chain]:
    return lambda entries: entries[: index + 1] + entries[index:]


def _replace_stored_hash(index: int) -> Callable[[Chain], Chain]:
    def tamper(entries: Chain) -> Chain:
        out = list(entries)
        fields, stored = out[index]
        out[index] = (fields, bytes([stored[0] ^ 0xFF]) + stored[1:])
        return out

    return tamper


# --- ChainWalker --------------------------------------------------------------------


def test_walker_accepts_every_entry_when_chain_is_untouched() -> None:
    """An untampered chain verifies and the walker ends at its head."""
    entries = _build_chain()
    walker, broken = _walk(entries)
    assert broken is None
    assert walker.next_seq == len(entries) + 1
    assert walker.prev_hash == entries[-1][1]


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        pytest.param(_flip_event_byte(1), 2, "hash mismatch", id="event-byte"),
        pytest.param(_flip_event_byte(3), 4, "hash mismatch", id="event-byte-last"),
        pytest.param(_flip_signature_byte(1), 2, "hash mismatch", id="signature"),
        pytest.param(_shift_received_at(2), 3, "hash mismatch", id="received-at-1us"),
        pytest.param(_edit(1, key_id=OTHER_KEY.key_id), 2, "hash mismatch", id="key-id"),
        pytest.param(_edit(0, chain="beta"), 1, "belongs to chain 'beta'", id="chain-first"),
        pytest.param(_edit(2, chain="beta"), 3, "belongs to chain 'beta'", id="chain-middle"),
        pytest.param(_drop(1), 3, "expected seq 2, found 3", id="gap"),
        pytest.param(_drop(0), 2, "expected seq 1, found 2", id="missing-first"),
        pytest.param(_edit(2, seq=5), 5, "expected seq 3, found 5", id="seq-renumbered"),
        pytest.param(_swap_order(1, 2), 3, "expected seq 2, found 3", id="swapped-order"),
        pytest.param(_swap_payloads(1, 2), 2, "hash mismatch", id="swapped-payloads"),
        pytest.param(_duplicate(1), 2, "expected seq 3, found 2", id="replayed-entry"),
        pytest.param(_replace_stored_hash(0), 1, "hash mismatch", id="stored-hash-first"),
        pytest.param(_replace_stored_hash(2), 3, "hash mismatch", id="stored-hash-middle"),
    ],
)
def test_walker_names_first_bad_seq_when_chain_is_tampered(
    tamper: Callable[[Chain], Chain], seq: int, reason: str
) -> None:
    """Each kind of tampering is reported at the seq where it happened, with its reason."""
    _, broken = _walk(tamper(_build_chain()))
    assert broken is not None
    assert broken.chain == "acme"
    assert broken.seq == seq
    assert reason in broken.reason


def test_walker_stays_put_when_an_entry_breaks() -> None:
    """A failed check does not advance the walker's seq or hash."""
    entries = _build_chain()
    walker = ChainWalker("acme")
    assert walker.check(*entries[0]) is None
    broken = walker.check(entries[1][0], bytes(32))
    assert broken is not None
    assert (walker.next_seq, walker.prev_hash) == (2, entries[0][1])
    assert walker.check(*entries[1]) is None


def test_walker_continues_when_started_from_a_known_head() -> None:
    """A walker seeded with (prev_hash, next_seq) checks only the entries after it."""
    entries = _build_chain()
    walker = ChainWalker("acme", prev_hash=entries[1][1], next_seq=3)
    assert all(walker.check(f, h) is None for f, h in entries[2:])
    assert walker.next_seq == 5


def test_walker_refuses_first_entry_when_genesis_is_not_zero() -> None:
    """Entry 1 must link to 32 zero bytes, not to any other value."""
    fields, _ = _build_chain(1)[0]
    forged = entry_hash(b"\x01" * 32, fields)
    broken = ChainWalker("acme").check(fields, forged)
    assert broken is not None
    assert broken.seq == 1


# --- the preimage -------------------------------------------------------------------


def test_preimage_has_documented_layout_when_built() -> None:
    """Domain, prev_hash, then each field with its fixed size or u32be length prefix."""
    fields, _ = _build_chain(1)[0]
    pre = entry_preimage(GENESIS_PREV_HASH, fields)
    chain, event = fields.chain.encode(), fields.event_bytes
    assert ENTRY_DOMAIN == b"trustledger/entry/v1\x00"
    assert len(pre) == 165 + len(chain) + len(event)
    assert pre == (
        b"trustledger/entry/v1\x00"
        + bytes(32)
        + struct.pack(">I", 4)
        + b"acme"
        + struct.pack(">Q", 1)
        + struct.pack(">q", fields.received_at_us)
        + struct.pack(">I", 16)
        + fields.key_id.encode()
        + struct.pack(">I", 64)
        + fields.signature
        + struct.pack(">I", len(event))
        + event
    )
    assert entry_hash(GENESIS_PREV_HASH, fields) == blake3.blake3(pre).digest()


_SIG = bytes(range(64))
_BASE = EntryFields(
    chain="a", seq=1, received_at_us=0, key_id="k", signature=_SIG, event_bytes=b"{}"
)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        pytest.param(
            replace(_BASE, chain="ab", key_id="c"),
            replace(_BASE, chain="a", key_id="bc"),
            id="chain-key_id",
        ),
        pytest.param(
            replace(_BASE, key_id="ab", signature=_SIG),
            replace(_BASE, key_id="a", signature=b"b" + _SIG),
            id="key_id-signature",
        ),
        pytest.param(
            replace(_BASE, signature=_SIG, event_bytes=b"{}"),
            replace(_BASE, signature=_SIG[:63], event_bytes=_SIG[63:] + b"{}"),
            id="signature-event",
        ),
        pytest.param(
            replace(_BASE, chain="ab", key_id="", event_bytes=b""),
            replace(_BASE, chain="a", key_id="b", event_bytes=b""),
            id="chain-empty-key_id",
        ),
    ],
)
def test_hashes_differ_when_same_bytes_are_split_differently(
    left: EntryFields, right: EntryFields
) -> None:
    """Length prefixes keep field boundaries: equal bare concatenations, different hashes."""

    def bare(f: EntryFields) -> bytes:
        return f.chain.encode() + f.key_id.encode() + f.signature + f.event_bytes

    assert bare(left) == bare(right)
    assert entry_preimage(GENESIS_PREV_HASH, left) != entry_preimage(GENESIS_PREV_HASH, right)
    assert entry_hash(GENESIS_PREV_HASH, left) != entry_hash(GENESIS_PREV_HASH, right)


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_preimage_refuses_prev_hash_when_not_32_bytes(size: int) -> None:
    """prev_hash is exactly 32 bytes; anything else is a programming error."""
    with pytest.raises(ValueError, match="32 bytes"):
        entry_preimage(bytes(size), _BASE)


@pytest.mark.parametrize("seq", [0, -1, -(2**63)])
def test_preimage_refuses_seq_when_below_one(seq: int) -> None:
    """Sequence numbers start at 1."""
    with pytest.raises(ValueError, match="seq starts at 1"):
        entry_preimage(GENESIS_PREV_HASH, replace(_BASE, seq=seq))


@pytest.mark.parametrize(
    ("us", "encoded"),
    [
        pytest.param(0, "0000000000000000", id="epoch"),
        pytest.param(-1, "ffffffffffffffff", id="minus-1us"),
        pytest.param(2**63 - 1, "7fffffffffffffff", id="max"),
        pytest.param(-(2**63), "8000000000000000", id="min"),
    ],
)
def test_received_at_is_i64_big_endian_when_hashed(us: int, encoded: str) -> None:
    """received_at_us sits at a fixed offset as signed 64-bit big-endian."""
    pre = entry_preimage(GENESIS_PREV_HASH, replace(_BASE, received_at_us=us))
    offset = 21 + 32 + 4 + len(_BASE.chain) + 8
    assert pre[offset : offset + 8].hex() == encoded


# --- time -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "us"),
    [
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), 0, id="epoch"),
        pytest.param(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC), 1, id="epoch+1us"),
        pytest.param(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1, id="epoch-1us"),
        pytest.param(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), -1_000_000, id="epoch-1s"),
        pytest.param(datetime(1900, 1, 1, tzinfo=UTC), -2_208_988_800_000_000, id="1900"),
        pytest.param(datetime(1, 1, 1, tzinfo=UTC), -62_135_596_800_000_000, id="year-1"),
        pytest.param(
            datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC), 1_768_469_400_123_456, id="2026"
        ),
        pytest.param(
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            253_402_300_799_999_999,
            id="year-9999",
        ),
    ],
)
def test_micros_round_trip_when_instant_is_utc(at: datetime, us: int) -> None:
    """to_micros and from_micros are exact inverses, before and after 1970."""
    assert to_micros(at) == us
    assert from_micros(us) == at
    assert from_micros(us).utcoffset() == timedelta(0)
    assert to_micros(from_micros(us)) == us


@pytest.mark.parametrize("hours", [-12, -5, 2, 14])
def test_to_micros_counts_the_instant_when_offset_is_not_utc(hours: int) -> None:
    """An aware datetime in another zone gives the micros of the same instant."""
    local = datetime(1970, 1, 1, tzinfo=UTC).astimezone(timezone(timedelta(hours=hours)))
    assert to_micros(local) == 0
    assert to_micros(local + timedelta(microseconds=7)) == 7


@pytest.mark.parametrize(
    "at",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),
        datetime(2026, 1, 15, 9, 30, 0, 123456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC),
    ],
)
def test_to_micros_keeps_each_microsecond_when_far_from_epoch(at: datetime) -> None:
    """One microsecond later is exactly one more (no float rounding anywhere)."""
    assert to_micros(at + timedelta(microseconds=1)) - to_micros(at) == 1


def test_to_micros_refuses_datetime_when_naive() -> None:
    """A naive datetime has no instant; the ledger only stores UTC instants."""
    with pytest.raises(ValueError, match="naive"):
        to_micros(datetime(2026, 1, 1))


# --- key ids --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_key_id_refuses_public_key_when_not_32_bytes(size: int) -> None:
    """Only a 32-byte Ed25519 public key has a key id."""
    with pytest.raises(ValueError, match="32 bytes"):
        key_id_for(bytes(size))


@pytest.mark.parametrize("key", [KEY, OTHER_KEY], ids=["key", "other-key"])
def test_key_id_is_hex_of_first_8_hash_bytes_when_key_is_32_bytes(key: SigningKey) -> None:
    """key_id = hex(BLAKE3("trustledger/key-id/v1" 0x00 || public key)[:8])."""
    assert len(key.public_key) == PUBLIC_KEY_SIZE
    expected = blake3.blake3(b"trustledger/key-id/v1\x00" + key.public_key).digest()[:8].hex()
    assert key_id_for(key.public_key) == expected == key.key_id
    assert len(key.key_id) == 16


# --- signatures -----------------------------------------------------------------------

MESSAGE = b'{"kind":"action.performed","id":"e1","org":"acme"}'


def test_signature_verifies_when_message_is_unchanged() -> None:
    """sign then verify over the same bytes succeeds, and the signature is 64 bytes."""
    signature = KEY.sign(MESSAGE)
    assert len(signature) == 64
    assert verify_signature(KEY.public_key, MESSAGE, signature)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(MESSAGE[:-1] + b" ", id="last-byte"),
        pytest.param(bytes([MESSAGE[0] ^ 0x01]) + MESSAGE[1:], id="first-bit"),
        pytest.param(MESSAGE + b"\n", id="trailing-newline"),
        pytest.param(b" " + MESSAGE, id="leading-space"),
        pytest.param(MESSAGE[:-1], id="truncated"),
        pytest.param(b"", id="empty"),
    ],
)
def test_signature_fails_when_message_is_modified(message: bytes) -> None:
    """Any change to the signed bytes, even whitespace, fails verification."""
    assert not verify_signature(KEY.public_key, message, KEY.sign(MESSAGE))


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        pytest.param(OTHER_KEY.public_key, KEY.sign(MESSAGE), id="other-key"),
        pytest.param(KEY.public_key, OTHER_KEY.sign(MESSAGE), id="other-signer"),
        pytest.param(KEY.public_key, bytes(64), id="zero-signature"),
        pytest.param(KEY.public_key, KEY.sign(MESSAGE)[:63], id="short-signature"),
        pytest.param(KEY.public_key, KEY.sign(MESSAGE) + b"\x00", id="long-signature"),
        pytest.param(KEY.public_key[:31], KEY.sign(MESSAGE), id="short-key"),
        pytest.param(
            (1).to_bytes(32, "little"), (1).to_bytes(32, "little") + bytes(32), id="identity-key"
        ),
    ],
)
def test_signature_fails_when_key_or_signature_is_wrong(
    public_key: bytes, signature: bytes
) -> None:
    """Wrong key, wrong signer, wrong lengths and small-order keys fail without raising."""
    assert not verify_signature(public_key, MESSAGE, signature)


def test_signature_fails_when_s_is_not_canonical() -> None:
    """S + L (same point equation, non-canonical scalar) is refused, as the spec pins."""
    order = 2**252 + 27742317777372353535851937790883648493
    signature = KEY.sign(MESSAGE)
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + order).to_bytes(32, "little")
    assert not verify_signature(KEY.public_key, MESSAGE, malleated)


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(range(64)), KEY.public_key])
def test_b64url_round_trips_without_padding_when_encoded(data: bytes) -> None:
    """Keys and signatures travel as base64url without `=`, and decode back exactly."""
    text = b64url(data)
    assert "=" not in text
    assert from_b64url(text) == data


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b64url(bytes(range(64))) + "==", id="padded"),
        pytest.param(
            b64url(bytes(range(64))).replace("-", "+").replace("_", "/"), id="std-alphabet"
        ),
        pytest.param("AAAA AAAA", id="space"),
        pytest.param("A", id="impossible-length"),
    ],
)
def test_from_b64url_refuses_other_spellings_when_not_strict_unpadded_base64url(text: str) -> None:
    """Only one spelling of a signature is accepted: padding, `+`/`/` and stray characters are refused."""
    with pytest.raises(ValueError, match="base64url"):
        from_b64url(text)


def test_from_b64url_raises_value_error_when_input_is_not_base64() -> None:
    """Undecodable text is a ValueError, so admission can name the reason."""
    with pytest.raises(ValueError, match="base64url"):
        from_b64url("a")
