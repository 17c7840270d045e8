"""Checkpoints and the ledger key: note format, key rules, HTTP, rotation, tamper detection."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import blake3
import httpx
import msgspec
import nacl.signing
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    ServiceFactory,
    at,
    bearer,
    chain_entries,
    issue_api_key,
    key_registered,
    key_revoked,
    performed,
    registered,
    wait_for_chain,
    wait_until,
)

from service import cli
from service.adapters.keyfile import load_key, save_key
from service.adapters.postgres import ENTRY_COLUMNS, EntryRow, LedgerStore
from service.app.checkpoints import make_checkpoint, make_due_checkpoints
from service.app.verify import IncrementalVerifier, verify_all, verify_ledger_keys
from service.config import Settings
from service.domain.audit import (
    LEDGER_CHAIN,
    AuditEntry,
    ChainAuditor,
    Finding,
    SignatureCheck,
    verify_sequentially,
)
from service.domain.chain import GENESIS_PREV_HASH, EntryFields, entry_hash, to_micros
from service.domain.checkpoint import (
    Checkpoint,
    CheckpointError,
    note_key_id,
    sign_checkpoint,
    split_note,
    verifier_key,
    verify_checkpoint,
)
from service.domain.events import (
    PublisherKeyRegistered,
    encode_event,
)
from service.domain.key_proof import registration
from service.domain.signing import SigningKey, b64url, from_b64url
from service.roles import Roles, load_ledger_signer, run_roles

# ==== the C2SP signed-note format (unit) =======================================================

LEDGER_NAME = "ledger.test"
LEDGER_KEY = SigningKey(org=LEDGER_CHAIN, seed=bytes(range(32)))
OTHER_LEDGER_KEY = SigningKey(org=LEDGER_CHAIN, seed=bytes(range(1, 33)))
HEAD = blake3.blake3(b"a chain head").digest()
SIGNED_AT = datetime(2026, 11, 22, 16, 50, 0, 123456, tzinfo=UTC)
CHECKPOINT = Checkpoint(f"{LEDGER_NAME}/acme", 1041, HEAD, SIGNED_AT)
EM_DASH = "\u2014"

# The example of golang.org/x/mod/sumdb/note (and of c2sp.org/signed-note tooling).
GO_PRIVATE_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    f"{EM_DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    "ngotpRZb6KE6RyyBwJnAM=\n"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _sign_text(text: str, name: str = LEDGER_NAME, key: SigningKey = LEDGER_KEY) -> str:
    """Any text as a signed note, built from the signed-note spec without the service."""
    key_hash = hashlib.sha256(name.encode() + b"\n\x01" + key.public_key).digest()[:4]
    return f"{text}\n{EM_DASH} {name} {_b64(key_hash + key.sign(text.encode()))}\n"


def _body(size: str = "1041", head: str = _b64(HEAD), *extra: str) -> str:
    lines = [f"{LEDGER_NAME}/acme", size, head, *(extra or ("time 2026-11-22T16:50:00.123456Z",))]
    return "".join(f"{line}\n" for line in lines)


def _parse_verifier_key(vkey: str) -> tuple[str, bytes, bytes]:
    """(name, 4-byte key hash, public key) of a `<name>+<hex>+<base64(0x01 || key)>` key."""
    name, key_hash, typed = vkey.split("+", 2)
    raw = base64.b64decode(typed, validate=True)
    assert raw[0] == 1, "algorithm 1: Ed25519"
    return name, bytes.fromhex(key_hash), raw[1:]


def test_body_is_origin_size_head_and_time_lines_when_formatted() -> None:
    """The body is the origin, the decimal size, the base64 head and one `time` line."""
    assert CHECKPOINT.body == (
        f"ledger.test/acme\n1041\n{_b64(HEAD)}\ntime 2026-11-22T16:50:00.123456Z\n"
    )


@pytest.mark.parametrize(
    ("at_time", "spelled"),
    [
        pytest.param(SIGNED_AT, "2026-11-22T16:50:00.123456Z", id="utc"),
        pytest.param(
            SIGNED_AT.astimezone(timezone(timedelta(hours=2))),
            "2026-11-22T16:50:00.123456Z",
            id="plus-two-hours",
        ),
        pytest.param(datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00.000000Z", id="whole"),
    ],
)
def test_time_line_is_utc_with_microseconds_when_any_offset_is_given(
    at_time: datetime, spelled: str
) -> None:
    """The `time` extension always spells the instant in UTC with six fraction digits."""
    body = dc_replace(CHECKPOINT, time=at_time).body
    assert body.splitlines()[3] == f"time {spelled}"


def test_signature_line_is_name_and_key_hash_with_signature_when_signed() -> None:
    """The note is body, blank line, `— <name> base64(4-byte key id || 64-byte signature)`."""
    note = sign_checkpoint(CHECKPOINT, LEDGER_NAME, LEDGER_KEY)
    body = CHECKPOINT.body
    assert note.startswith(body + "\n")
    line = note[len(body) + 1 :]
    match = re.fullmatch(f"{EM_DASH} ledger\\.test ([A-Za-z0-9+/]+=*)\n", line)
    assert match is not None, line
    blob = base64.b64decode(match.group(1), validate=True)
    assert len(blob) == 4 + 64
    expected_id = hashlib.sha256(b"ledger.test" + b"\x0a" + b"\x01" + LEDGER_KEY.public_key)
    assert blob[:4] == expected_id.digest()[:4]
    nacl.signing.VerifyKey(LEDGER_KEY.public_key).verify(body.encode(), blob[4:])


@pytest.mark.parametrize("name", ["ledger.test", "trustledger.local", "a", "x.example/log"])
def test_note_key_id_is_sha256_prefix_when_computed_from_name_and_key(name: str) -> None:
    """The note key id is the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key)."""
    digest = hashlib.sha256(name.encode() + bytes([0x0A, 0x01]) + LEDGER_KEY.public_key).digest()
    assert note_key_id(name, LEDGER_KEY.public_key) == digest[:4]


def test_note_equals_go_sumdb_example_when_its_text_is_signed_with_its_key() -> None:
    """Signing Go's example text with Go's example key gives Go's note, byte for byte."""
    _, _, _, key_hash, typed_seed = GO_PRIVATE_KEY.split("+", 4)
    seed = base64.b64decode(typed_seed)[1:]
    key = SigningKey(org=LEDGER_CHAIN, seed=seed)
    assert note_key_id("PeterNeumann", key.public_key).hex() == key_hash
    assert verifier_key("PeterNeumann", key.public_key) == GO_VERIFIER_KEY
    assert _sign_text(GO_TEXT, "PeterNeumann", key) == GO_NOTE
    text, signatures = split_note(GO_NOTE)
    assert text == GO_TEXT
    assert [(s.name, s.key_id.hex()) for s in signatures] == [("PeterNeumann", "c74f20a3")]


def test_verifier_key_is_name_hex_id_and_typed_key_when_formatted() -> None:
    """`verifier_key` is `<name>+<8 hex>+<base64(0x01 || 32-byte key)>` and parses back."""
    vkey = verifier_key(LEDGER_NAME, LEDGER_KEY.public_key)
    assert re.fullmatch(r"ledger\.test\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}", vkey), vkey
    name, key_hash, public_key = _parse_verifier_key(vkey)
    assert (name, key_hash, public_key) == (
        LEDGER_NAME,
        note_key_id(LEDGER_NAME, LEDGER_KEY.public_key),
        LEDGER_KEY.public_key,
    )


def test_checkpoint_round_trips_when_signed_then_split_and_verified() -> None:
    """A signed checkpoint splits into its body and one signature and verifies back to itself."""
    note = sign_checkpoint(CHECKPOINT, LEDGER_NAME, LEDGER_KEY)
    text, signatures = split_note(note)
    assert text == CHECKPOINT.body
    assert [(s.name, s.key_id) for s in signatures] == [
        (LEDGER_NAME, note_key_id(LEDGER_NAME, LEDGER_KEY.public_key))
    ]
    assert verify_checkpoint(note, LEDGER_NAME, LEDGER_KEY.public_key) == CHECKPOINT


def test_checkpoint_verifies_when_a_witness_cosigned_it() -> None:
    """Signature lines of other keys (a witness's cosignature) are ignored, as signed-note says."""
    note = sign_checkpoint(CHECKPOINT, LEDGER_NAME, LEDGER_KEY)
    cosigned = (
        note + _sign_text(CHECKPOINT.body, "witness.example", OTHER_LEDGER_KEY).split("\n\n")[1]
    )
    assert len(split_note(cosigned)[1]) == 2
    assert verify_checkpoint(cosigned, LEDGER_NAME, LEDGER_KEY.public_key) == CHECKPOINT


def _note() -> str:
    return sign_checkpoint(CHECKPOINT, LEDGER_NAME, LEDGER_KEY)


def _with_signature_blob(blob_b64: str) -> str:
    body = CHECKPOINT.body
    return f"{body}\n{EM_DASH} {LEDGER_NAME} {blob_b64}\n"


def _flipped_signature() -> str:
    text, signature_line = _note().split("\n\n")
    prefix, blob_b64 = signature_line.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(blob_b64))
    blob[10] ^= 0x01
    return f"{text}\n\n{prefix} {_b64(bytes(blob))}\n"


@pytest.mark.parametrize(
    ("make_note", "key", "message"),
    [
        pytest.param(
            lambda: _with_signature_blob("not*base64!"),
            LEDGER_KEY,
            "is not base64",
            id="bad-base64",
        ),
        pytest.param(
            lambda: _with_signature_blob(_b64(b"\x01\x02\x03\x04")),
            LEDGER_KEY,
            "malformed signature line",
            id="blob-without-signature",
        ),
        pytest.param(_note, OTHER_LEDGER_KEY, "no signature by ledger key", id="wrong-key"),
        pytest.param(_flipped_signature, LEDGER_KEY, "does not verify", id="flipped-signature"),
        pytest.param(
            lambda: _note().replace("\n1041\n", "\n1042\n"),
            LEDGER_KEY,
            "does not verify",
            id="edited-size",
        ),
        pytest.param(
            lambda: _note().replace(_b64(HEAD), _b64(bytes(32))),
            LEDGER_KEY,
            "does not verify",
            id="edited-head",
        ),
        pytest.param(
            lambda: _note().replace("ledger.test/acme", "ledger.test/acme\t"),
            LEDGER_KEY,
            "control characters",
            id="tab",
        ),
        pytest.param(
            lambda: _note().replace("\n", "\r\n"),
            LEDGER_KEY,
            "control characters",
            id="crlf",
        ),
        pytest.param(
            lambda: _note().replace("\n\n", "\n"),
            LEDGER_KEY,
            "a blank line",
            id="missing-blank-line",
        ),
        pytest.param(
            lambda: _note().rstrip("\n"), LEDGER_KEY, "a blank line", id="no-final-newline"
        ),
        pytest.param(
            lambda: CHECKPOINT.body + "\n", LEDGER_KEY, "at least one signature", id="unsigned"
        ),
        pytest.param(
            lambda: _note().replace(EM_DASH, "-"),
            LEDGER_KEY,
            "not a signature line",
            id="hyphen-not-em-dash",
        ),
        # Signed by the right key: only the body rule refuses these.
        pytest.param(
            lambda: _sign_text(_body("1041", _b64(HEAD), "other extension")),
            LEDGER_KEY,
            "exactly one `time` extension",
            id="no-time-extension",
        ),
        pytest.param(
            lambda: _sign_text(
                _body(
                    "1041",
                    _b64(HEAD),
                    "time 2026-11-22T16:50:00.123456Z",
                    "time 2026-11-22T16:51:00.123456Z",
                )
            ),
            LEDGER_KEY,
            "exactly one `time` extension",
            id="two-time-lines",
        ),
        pytest.param(
            lambda: _sign_text(_body("01041")),
            LEDGER_KEY,
            "without leading zeros",
            id="size-leading-zero",
        ),
        pytest.param(
            lambda: _sign_text(_body("-1")), LEDGER_KEY, "without leading zeros", id="size-negative"
        ),
        pytest.param(
            lambda: _sign_text(_body("+1")), LEDGER_KEY, "without leading zeros", id="size-plus"
        ),
        pytest.param(
            lambda: _sign_text(_body("")), LEDGER_KEY, "without leading zeros", id="size-empty"
        ),
        pytest.param(
            lambda: _sign_text(_body("1041", _b64(HEAD[:31]))),
            LEDGER_KEY,
            "must be 32 bytes",
            id="head-31-bytes",
        ),
        pytest.param(
            lambda: _sign_text(_body("1041", _b64(HEAD).replace("=", "!"))),
            LEDGER_KEY,
            "head hash is not base64",
            id="head-not-base64",
        ),
        pytest.param(
            lambda: _sign_text(_body("1041", _b64(HEAD), "time 2026-11-22T16:50:00+00:00")),
            LEDGER_KEY,
            "bad time extension",
            id="time-not-z",
        ),
        pytest.param(
            lambda: _sign_text(_body().replace(f"{LEDGER_NAME}/acme", "", 1)),
            LEDGER_KEY,
            "empty origin",
            id="empty-origin",
        ),
        pytest.param(
            lambda: _sign_text(f"{LEDGER_NAME}/acme\n1041\n"),
            LEDGER_KEY,
            "at least three",
            id="two-lines",
        ),
    ],
)
def test_verify_refuses_note_when_malformed_or_altered(
    make_note: Callable[[], str], key: SigningKey, message: str
) -> None:
    """Every malformed, altered or foreign note is refused with a CheckpointError saying why."""
    with pytest.raises(CheckpointError, match=re.escape(message)):
        verify_checkpoint(make_note(), LEDGER_NAME, key.public_key)


def test_verify_refuses_note_when_key_name_differs() -> None:
    """The key name is part of the note key id: the same key under another name does not match."""
    with pytest.raises(CheckpointError, match="no signature by ledger key"):
        verify_checkpoint(_note(), "other.test", LEDGER_KEY.public_key)


# ==== the chain auditor's key rules (unit) ======================================================

K1 = SigningKey(org="acme", seed=bytes(range(2, 34)))
K2 = SigningKey(org="acme", seed=bytes(range(3, 35)))
BETA_KEY = SigningKey(org="beta", seed=bytes(range(4, 36)))
T_US = 1_768_469_400_000_000


@dataclass(frozen=True, slots=True)
class Step:
    """One entry to chain: the event bytes, the key that signs them, the key id it claims."""

    signer: SigningKey
    event: bytes
    key_id: str | None = None


def _reg(key: SigningKey, org: str = "acme", event_id: str | None = None) -> bytes:
    if event_id is None:
        return encode_event(key_registered(org, key))
    return encode_event(registration(key, event_id, at(0), "test key", org=org))


def _rev(key: SigningKey, org: str = "acme") -> bytes:
    return encode_event(key_revoked(org, key))


def _act(n: int, org: str = "acme", event_id: str | None = None) -> bytes:
    event = performed(org, "bot", "x.read", f"r/{n}", t=n)
    return encode_event(msgspec.structs.replace(event, id=event_id or f"act-{n}"))


def _chain(steps: Sequence[Step], chain: str = "acme") -> list[AuditEntry]:
    """The steps as correctly linked and hashed entries (whatever they say)."""
    entries: list[AuditEntry] = []
    prev = GENESIS_PREV_HASH
    for seq, step in enumerate(steps, start=1):
        signature = step.signer.sign(step.event)
        key_id = step.key_id or step.signer.key_id
        fields = EntryFields(chain, seq, T_US + seq, key_id, signature, step.event)
        digest = entry_hash(prev, fields)
        entries.append(
            AuditEntry(chain, seq, T_US + seq, key_id, signature, step.event, prev, digest)
        )
        prev = digest
    return entries


def _audit(
    entries: Sequence[AuditEntry], checkpoints: Sequence[Checkpoint] = (), chain: str = "acme"
) -> Finding | None:
    auditor = ChainAuditor(chain)
    for checkpoint in checkpoints:
        finding = auditor.expect_checkpoint(checkpoint)
        if finding is not None:
            return finding
    return auditor.check(entries, verify_sequentially) or auditor.finish()


def _checkpoint(size: int, head: bytes) -> Checkpoint:
    return Checkpoint(f"{LEDGER_NAME}/acme", size, head, SIGNED_AT)


GOOD_START = [Step(K1, _reg(K1)), Step(K1, _act(2))]
NOT_AUTHORISED = "signing key not authorised here"


@pytest.mark.parametrize(
    ("entries", "seq", "problem", "found"),
    [
        pytest.param(
            _chain([Step(K1, _act(1))]),
            1,
            NOT_AUTHORISED,
            "entry 1 must be a self-signed key registration",
            id="first-entry-not-a-registration",
        ),
        pytest.param(
            _chain([Step(K2, _reg(K1))]),
            1,
            NOT_AUTHORISED,
            "entry 1 must be a self-signed key registration",
            id="first-registration-signed-by-another-key",
        ),
        pytest.param(
            _chain([Step(K2, _reg(K1), key_id=K1.key_id)]),
            1,
            "signature does not verify",
            "a signature that does not verify",
            id="first-registration-claims-a-key-it-does-not-hold",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, _reg(K2)), Step(K1, _rev(K2)), Step(K2, _act(5))]),
            5,
            NOT_AUTHORISED,
            f"{K2.key_id} (revoked)",
            id="revoked-key",
        ),
        pytest.param(
            _chain(
                [
                    *GOOD_START,
                    Step(K1, _reg(K2)),
                    Step(K1, _rev(K2)),
                    Step(K2, _reg(K2, event_id="again")),
                ]
            ),
            5,
            NOT_AUTHORISED,
            f"{K2.key_id} (revoked)",
            id="revoked-key-registering-itself-again",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(BETA_KEY, _act(3))]),
            3,
            NOT_AUTHORISED,
            f"{BETA_KEY.key_id} (never registered)",
            id="key-of-another-chain",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, _act(3, event_id="act-2"))]),
            3,
            "event id missing or repeated",
            "act-2",
            id="repeated-event-id",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, _act(3, org="beta"))]),
            3,
            "event of another org in this chain",
            "beta",
            id="org-mismatch",
        ),
        pytest.param(
            _chain([Step(BETA_KEY, _reg(BETA_KEY, "beta"))], chain="beta"),
            1,
            "entry of another chain",
            "beta",
            id="entry-of-another-chain",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K2, _act(3), key_id=K1.key_id)]),
            3,
            "signature does not verify",
            "a signature that does not verify",
            id="signature-by-another-key",
        ),
        pytest.param(
            _chain(
                [
                    *GOOD_START,
                    Step(
                        K1,
                        encode_event(
                            PublisherKeyRegistered(
                                id="key-mismatch",
                                org="acme",
                                occurred_at=at(3),
                                key_id=K2.key_id,
                                public_key=b64url(BETA_KEY.public_key),
                            )
                        ),
                    ),
                ]
            ),
            3,
            "invalid key registration",
            f"key_id {K2.key_id} is not the key id of public_key",
            id="registration-key-id-of-another-key",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, _act(3), key_id="NOT-A-KEY-ID")]),
            3,
            "malformed key id or signature",
            "'NOT-A-KEY-ID'",
            id="malformed-key-id",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, b"not json")]),
            3,
            "event bytes are not a valid event object",
            "",
            id="not-json",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, b'{"kind":"a","kind":"b","id":"x","org":"acme"}')]),
            3,
            "event bytes are not a valid event object",
            "kind",
            id="repeated-member",
        ),
        pytest.param(
            _chain([*GOOD_START, Step(K1, b'{"id":"x","org":"acme"}')]),
            3,
            "event has no kind",
            "None",
            id="no-kind",
        ),
    ],
)
def test_auditor_names_entry_when_a_chain_rule_is_broken(
    entries: list[AuditEntry], seq: int, problem: str, found: str
) -> None:
    """Each rule of docs/ledger-format.md §6 is refused at the entry that breaks it."""
    finding = _audit(entries)
    assert finding is not None
    assert (finding.chain, finding.seq, finding.problem) == ("acme", seq, problem)
    assert found in finding.found


def test_auditor_accepts_chain_when_keys_rotate_and_revoke_by_the_rules() -> None:
    """Registration by an active key, self-revocation and later self-registrations all pass."""
    k3 = SigningKey(org="acme", seed=bytes(range(5, 37)))
    entries = _chain(
        [
            *GOOD_START,
            Step(K1, _reg(K2)),  # endorsed by K1
            Step(K2, _act(4)),
            Step(K1, _rev(K1)),  # a key may sign its own revocation
            Step(K2, _act(6)),
            Step(k3, _reg(k3)),  # the operator's self-signed registration, later on
            Step(k3, _act(8)),
        ]
    )
    auditor = ChainAuditor("acme")
    assert auditor.check(entries, verify_sequentially) is None
    assert auditor.finish() is None
    assert (auditor.last_seq, auditor.last_hash) == (8, entries[-1].entry_hash)
    assert set(auditor.keys.active) == {K2.key_id, k3.key_id}
    assert auditor.keys.registered == {K1.key_id, K2.key_id, k3.key_id}


def test_auditor_reports_earliest_finding_when_a_bad_signature_precedes_a_break() -> None:
    """In one batch, a bad signature at seq 3 is reported before a structural break at seq 4."""
    entries = _chain([*GOOD_START, Step(K2, _act(3), key_id=K1.key_id), Step(K1, _act(4))])
    entries[3] = dc_replace(entries[3], prev_hash=bytes(32))
    finding = _audit(entries)
    assert finding is not None
    assert (finding.seq, finding.problem) == (3, "signature does not verify")


def _valid_chain(n: int = 4) -> list[AuditEntry]:
    return _chain([Step(K1, _reg(K1)), *(Step(K1, _act(i)) for i in range(2, n + 1))])


def test_auditor_accepts_checkpoints_when_heads_match() -> None:
    """Checkpoints at size 0 (genesis), in the middle and at the end all match the walk."""
    entries = _valid_chain()
    checkpoints = [
        _checkpoint(0, GENESIS_PREV_HASH),
        _checkpoint(2, entries[1].entry_hash),
        _checkpoint(4, entries[3].entry_hash),
    ]
    assert _audit(entries, checkpoints) is None


def test_auditor_names_checkpoint_size_when_head_differs_from_it() -> None:
    """A checkpoint whose head is not the walked head is reported at its size, both hashes named."""
    entries = _valid_chain()
    finding = _audit(entries, [_checkpoint(3, entries[1].entry_hash)])
    assert finding == Finding(
        "acme",
        3,
        "head at size 3 differs from the signed checkpoint",
        entries[1].entry_hash.hex(),
        entries[2].entry_hash.hex(),
    )


def test_finish_reports_checkpoint_when_it_covers_more_than_the_chain() -> None:
    """A checkpoint beyond the last entry means entries are missing: `finish` names it."""
    entries = _valid_chain()
    finding = _audit(entries, [_checkpoint(6, HEAD), _checkpoint(9, HEAD)])
    assert finding == Finding(
        "acme",
        5,
        "a signed checkpoint covers 6 entries but the chain ends at 4",
        "entries up to seq 6",
        "last entry seq 4",
    )


def test_expect_checkpoint_refuses_size_when_below_the_walked_entries() -> None:
    """A checkpoint for a size already walked past cannot be compared and is reported."""
    auditor = ChainAuditor("acme")
    assert auditor.check(_valid_chain(), verify_sequentially) is None
    finding = auditor.expect_checkpoint(_checkpoint(2, HEAD))
    assert finding is not None
    assert (finding.seq, finding.problem) == (2, "checkpoint precedes the entries being checked")


@pytest.mark.parametrize(
    ("after_hash", "problem"),
    [
        pytest.param(None, None, id="known-head"),
        pytest.param(HEAD, "prev_hash does not link to the previous entry", id="wrong-head"),
    ],
)
def test_auditor_checks_a_suffix_when_given_the_state_before_it(
    after_hash: bytes | None, problem: str | None
) -> None:
    """An auditor started after seq 2 with the head and keys there checks entries 3.. alone."""
    entries = _valid_chain(6)
    first = ChainAuditor("acme")
    assert first.check(entries[:2], verify_sequentially) is None
    suffix = ChainAuditor(
        "acme", after_seq=2, after_hash=after_hash or first.last_hash, keys=first.keys
    )
    finding = suffix.check(entries[2:], verify_sequentially)
    assert (finding.problem if finding else None) == problem
    if finding is not None:
        assert finding.seq == 3


# ==== helpers for the service tests =============================================================


@dataclass(frozen=True, slots=True)
class CliRun:
    code: int
    out: str
    err: str


CliRunner = Callable[..., Awaitable[CliRun]]


@pytest.fixture
def run_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> CliRunner:
    """Run `trustledger ...` (service.cli.main) against the test's servers and data dir."""

    async def run(*argv: str) -> CliRun:
        assert settings.database_url is not None
        assert settings.nats_url is not None
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        monkeypatch.setenv("NATS_URL", settings.nats_url)
        monkeypatch.setenv("TRUSTLEDGER_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("TRUSTLEDGER_LEDGER_NAME", settings.ledger_name)
        monkeypatch.delenv("TRUSTLEDGER_LEDGER_KEY_FILE", raising=False)
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        try:
            # main() runs its own event loop and points the root logger at stderr.
            code = await asyncio.to_thread(cli.main, list(argv))
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


@dataclass(frozen=True, slots=True)
class Traffic:
    sizes: dict[str, int]
    keys: dict[str, SigningKey]


async def _publish_traffic(
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    actions: dict[str, int],
) -> Traffic:
    """Register each org's key, publish an agent and `actions[org]` actions; wait for the chains."""
    sizes: dict[str, int] = {}
    keys: dict[str, SigningKey] = {}
    for org, count in actions.items():
        keys[org] = await org_key(org)
        pub = await publisher(keys[org])
        await pub.publish(registered(org, "bot"))
        for i in range(count):
            await pub.publish(performed(org, "bot", "x.read", f"r/{i}", t=10 + i))
        sizes[org] = 2 + count
    for org, size in sizes.items():
        await wait_for_chain(store, org, size)
    return Traffic(sizes, keys)


async def _publish_more(
    store: LedgerStore, key: SigningKey, publisher: PublisherFactory, org: str, count: int
) -> int:
    """Publish `count` more actions with `key`; returns the new chain size once chained."""
    head = await store.chain_head(org)
    assert head is not None
    pub = await publisher(key)
    for i in range(count):
        await pub.publish(performed(org, "bot", "x.write", f"more/{head.seq + i}", t=500 + i))
    await wait_for_chain(store, org, head.seq + count)
    return head.seq + count


async def _post_checkpoint(svc: RunningService, org: str) -> dict[str, Any]:
    response = await svc.http.post(f"/v1/chains/{org}/checkpoints")
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


@asynccontextmanager
async def _behind_triggers(dsn: str | None) -> AsyncIterator[asyncpg.Connection]:
    """A superuser session with every trigger off (append-only guards and foreign keys)."""
    assert dsn is not None
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")
        yield conn
    finally:
        await conn.close()


def _relinked(rows: Sequence[EntryRow], first_seq: int, prev_hash: bytes) -> list[EntryRow]:
    """The rows renumbered from `first_seq` and re-hashed from `prev_hash`: a clean rewrite."""
    out: list[EntryRow] = []
    for seq, row in enumerate(rows, start=first_seq):
        fields = EntryFields(
            row.chain, seq, to_micros(row.received_at), row.key_id, row.signature, row.event_bytes
        )
        digest = entry_hash(prev_hash, fields)
        out.append(dc_replace(row, seq=seq, prev_hash=prev_hash, entry_hash=digest))
        prev_hash = digest
    return out


async def _insert(conn: asyncpg.Connection, rows: Sequence[EntryRow]) -> None:
    await conn.copy_records_to_table(
        "ledger_entries", records=[r.as_record() for r in rows], columns=ENTRY_COLUMNS
    )


async def _set_head(conn: asyncpg.Connection, chain: str, seq: int, head_hash: bytes) -> None:
    await conn.execute(
        "UPDATE chains SET head_seq = $2, head_hash = $3 WHERE chain = $1", chain, seq, head_hash
    )


async def _rewrite_from(conn: asyncpg.Connection, rows: Sequence[EntryRow]) -> None:
    """Replace the chain's entries from `rows[0].seq` on with `rows`, and its head row with theirs."""
    chain, first = rows[0].chain, rows[0].seq
    await conn.execute("DELETE FROM ledger_entries WHERE chain = $1 AND seq >= $2", chain, first)
    await _insert(conn, rows)
    await _set_head(conn, chain, rows[-1].seq, rows[-1].entry_hash)


def _flip_signature_byte(note: str) -> str:
    text, signature_line = note.split("\n\n")
    prefix, blob_b64 = signature_line.rstrip("\n").rsplit(" ", 1)
    blob = bytearray(base64.b64decode(blob_b64))
    blob[-1] ^= 0x01
    return f"{text}\n\n{prefix} {_b64(bytes(blob))}\n"


Tamper = Callable[[asyncpg.Connection, list[EntryRow]], Awaitable[None]]
ACME_SIZE = 8  # key registration, agent registration, 6 actions


async def _event_byte_changed(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET event_bytes = set_byte(event_bytes, 30,"
        " get_byte(event_bytes, 30) # 1) WHERE chain = 'acme' AND seq = 4"
    )


async def _entry_hash_changed(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET entry_hash = set_byte(entry_hash, 0,"
        " get_byte(entry_hash, 0) # 255) WHERE chain = 'acme' AND seq = 4"
    )


async def _middle_entry_deleted(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await conn.execute("DELETE FROM ledger_entries WHERE chain = 'acme' AND seq = 4")


async def _entries_swapped(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    # (chain, seq) is the primary key: through a free seq.
    for old, new in ((4, 1_000_004), (5, 4), (1_000_004, 5)):
        await conn.execute(
            "UPDATE ledger_entries SET seq = $2 WHERE chain = 'acme' AND seq = $1", old, new
        )


async def _entry_inserted_in_the_middle(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await conn.execute("UPDATE ledger_entries SET seq = seq + 1000000 WHERE chain = 'acme'")
    await conn.execute(
        "UPDATE ledger_entries SET seq = seq - 1000000 + (CASE WHEN seq >= 1000005 THEN 1 ELSE 0"
        " END) WHERE chain = 'acme'"
    )
    await _insert(conn, [dc_replace(rows[2], seq=5, event_id="inserted-copy")])
    await _set_head(conn, "acme", ACME_SIZE + 1, rows[-1].entry_hash)


async def _signed_event_replayed_at_the_end(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    # A correctly linked and hashed copy of a signed event: only the id rule can tell.
    replay = _relinked(
        [dc_replace(rows[2], event_id="replayed")], ACME_SIZE + 1, rows[-1].entry_hash
    )
    await _insert(conn, replay)
    await _set_head(conn, "acme", replay[0].seq, replay[0].entry_hash)


async def _newest_entries_deleted(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await conn.execute("DELETE FROM ledger_entries WHERE chain = 'acme' AND seq > 6")
    await _set_head(conn, "acme", 6, rows[5].entry_hash)


async def _entries_reordered_and_rehashed(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    # Every link and hash is recomputed: only the signed checkpoint can tell.
    await _rewrite_from(conn, _relinked([rows[4], rows[3], *rows[5:]], 4, rows[2].entry_hash))


async def _event_rewritten_and_rehashed(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    edited = rows[3].event_bytes.replace(b'"x.read"', b'"x.sudo"')
    assert edited != rows[3].event_bytes
    rewritten = [dc_replace(rows[3], event_bytes=edited), *rows[4:]]
    await _rewrite_from(conn, _relinked(rewritten, 4, rows[2].entry_hash))


async def _checkpoint_signature_flipped(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    note = await conn.fetchval(
        "SELECT note FROM checkpoints WHERE chain = 'acme' AND size = $1", ACME_SIZE
    )
    await conn.execute(
        "UPDATE checkpoints SET note = $2 WHERE chain = 'acme' AND size = $1",
        ACME_SIZE,
        _flip_signature_byte(note),
    )


async def _checkpoint_by_unregistered_key(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    # Same name as the ledger key, right head, but a key that is not in `_ledger`.
    name = await conn.fetchval("SELECT key_name FROM checkpoints WHERE chain = 'acme' LIMIT 1")
    forger = SigningKey.generate(LEDGER_CHAIN)
    forged = Checkpoint(f"{name}/acme", 6, rows[5].entry_hash, datetime.now(UTC))
    await conn.execute(
        "INSERT INTO checkpoints (chain, size, head_hash, signed_at, key_name, key_id, note)"
        " VALUES ('acme', 6, $1, $2, $3, $4, $5)",
        forged.head_hash,
        forged.time,
        name,
        forger.key_id,
        sign_checkpoint(forged, name, forger),
    )


async def _head_row_changed(conn: asyncpg.Connection, rows: list[EntryRow]) -> None:
    await _set_head(conn, "acme", ACME_SIZE, rows[-2].entry_hash)


HEAD_DIFFERS = f"head at size {ACME_SIZE} differs from the signed checkpoint"
TAMPERS = [
    pytest.param(_event_byte_changed, 4, "entry hash does not match its fields", id="event-byte"),
    pytest.param(_entry_hash_changed, 4, "entry hash does not match its fields", id="entry-hash"),
    pytest.param(_middle_entry_deleted, 5, "sequence gap or reordering", id="deleted-in-middle"),
    pytest.param(
        _entries_swapped, 4, "prev_hash does not link to the previous entry", id="swapped"
    ),
    pytest.param(
        _entry_inserted_in_the_middle,
        5,
        "prev_hash does not link to the previous entry",
        id="inserted-in-middle",
    ),
    pytest.param(
        _signed_event_replayed_at_the_end,
        ACME_SIZE + 1,
        "event id missing or repeated",
        id="replayed-at-end",
    ),
    pytest.param(
        _newest_entries_deleted,
        7,
        f"a signed checkpoint covers {ACME_SIZE} entries but the chain ends at 6",
        id="newest-deleted",
    ),
    pytest.param(_entries_reordered_and_rehashed, ACME_SIZE, HEAD_DIFFERS, id="reordered-rehashed"),
    pytest.param(
        _event_rewritten_and_rehashed, 4, "signature does not verify", id="rewritten-rehashed"
    ),
    pytest.param(
        _checkpoint_signature_flipped,
        ACME_SIZE,
        "checkpoint signature does not verify",
        id="checkpoint-signature",
    ),
    pytest.param(
        _checkpoint_by_unregistered_key,
        6,
        "checkpoint signature does not verify",
        id="checkpoint-foreign-key",
    ),
    pytest.param(
        _head_row_changed,
        ACME_SIZE,
        "the chains table's head disagrees with the entries",
        id="head-row",
    ),
]


@pytest.mark.parametrize(("tamper", "seq", "problem"), TAMPERS)
async def test_verify_names_the_tamper_when_rows_are_changed_behind_the_triggers(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    run_cli: CliRunner,
    tamper: Tamper,
    seq: int,
    problem: str,
) -> None:
    """A superuser's change to entries, heads or checkpoints is named once, online and by the CLI."""
    traffic = await _publish_traffic(service.store, org_key, publisher, {"acme": 6, "beta": 2})
    assert traffic.sizes == {"acme": ACME_SIZE, "beta": 4}
    for org in traffic.sizes:
        await _post_checkpoint(service, org)
    assert await verify_all(service.store) == []

    rows = await chain_entries(service.store, "acme")
    async with _behind_triggers(service.settings.database_url) as conn:
        await tamper(conn, rows)

    findings = await verify_all(service.store)
    assert [(f.chain, f.seq, f.problem) for f in findings] == [("acme", seq, problem)]
    result = await run_cli("ledger", "verify")
    assert result.code == 1
    assert result.out.splitlines() == [f"BROKEN {findings[0]}"]


# ==== the ledger key and checkpoints over HTTP (integration) ======================================


async def _ledger_entries(store: LedgerStore) -> list[EntryRow]:
    return await chain_entries(store, LEDGER_CHAIN)


def _registers(entry: EntryRow, key: SigningKey, name: str) -> bool:
    """True when `entry` is the registration of `key` under `name`."""
    event = json.loads(entry.event_bytes)
    return (event["kind"], event["key_id"], event["public_key"], event["label"]) == (
        "publisher_key.registered",
        key.key_id,
        b64url(key.public_key),
        name,
    )


def _key_view(key: SigningKey, name: str, seq: int, signing: bool) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "name": name,
        "public_key": b64url(key.public_key),
        "verifier_key": verifier_key(name, key.public_key),
        "registered_seq": seq,
        "active": True,
        "signing": signing,
    }


async def test_service_creates_and_registers_ledger_key_when_started(
    service: RunningService,
) -> None:
    """On first start the ledger key file appears and its self-signed registration is `_ledger#1`."""
    settings = service.settings
    key = load_key(settings.ledger_key_path)
    entries = await _ledger_entries(service.store)
    assert [(e.seq, e.key_id) for e in entries] == [(1, key.key_id)]
    assert _registers(entries[0], key, settings.ledger_name)
    nacl.signing.VerifyKey(key.public_key).verify(entries[0].event_bytes, entries[0].signature)
    keys = await verify_ledger_keys(service.store, verify_sequentially)
    assert not isinstance(keys, Finding)
    assert keys.active == {key.key_id: key.public_key}

    response = await service.http.get("/v1/ledger/keys")
    assert response.status_code == 200
    assert response.json() == {
        "chain": LEDGER_CHAIN,
        "keys": [_key_view(key, settings.ledger_name, 1, signing=True)],
        "signing_key_id": key.key_id,
    }


async def test_posted_checkpoint_verifies_with_published_key_when_fetched_back(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """POST signs the head; the note verifies with GET /v1/ledger/keys and GET returns it exactly."""
    traffic = await _publish_traffic(service.store, org_key, publisher, {"acme": 3})
    size = traffic.sizes["acme"]
    head = (await service.http.get("/v1/chains/acme")).json()

    response = await service.http.post("/v1/chains/acme/checkpoints")
    assert response.status_code == 201
    assert response.headers["location"] == f"/v1/chains/acme/checkpoints/{size}"
    made = response.json()
    ledger_key = (await service.http.get("/v1/ledger/keys")).json()["keys"][0]
    assert {k: made[k] for k in ("chain", "size", "head_hash", "key_name", "key_id")} == {
        "chain": "acme",
        "size": size,
        "head_hash": head["head_hash"],
        "key_name": ledger_key["name"],
        "key_id": ledger_key["key_id"],
    }
    checkpoint = verify_checkpoint(
        made["note"], ledger_key["name"], from_b64url(ledger_key["public_key"])
    )
    assert (checkpoint.origin, checkpoint.size, checkpoint.head_hash.hex()) == (
        f"{ledger_key['name']}/acme",
        size,
        head["head_hash"],
    )
    assert checkpoint.time == datetime.fromisoformat(made["signed_at"])
    # The verifier key string alone is enough to check the note (what note tooling does).
    name, key_hash, public_key = _parse_verifier_key(ledger_key["verifier_key"])
    text, signatures = split_note(made["note"])
    assert [(s.name, s.key_id) for s in signatures] == [(name, key_hash)]
    nacl.signing.VerifyKey(public_key).verify(text.encode(), signatures[0].signature)

    for path in ("/v1/chains/acme/checkpoint", f"/v1/chains/acme/checkpoints/{size}"):
        fetched = await service.http.get(path)
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "text/plain; charset=utf-8"
        assert fetched.text == made["note"]

    again = await service.http.post("/v1/chains/acme/checkpoints")
    assert again.status_code == 200
    assert again.json() == made

    grown = await _publish_more(service.store, traffic.keys["acme"], publisher, "acme", 1)
    newer = await _post_checkpoint(service, "acme")
    assert (newer["size"], newer["key_id"]) == (grown, made["key_id"])
    assert (await service.http.get("/v1/chains/acme/checkpoint")).text == newer["note"]
    assert (await service.http.get(f"/v1/chains/acme/checkpoints/{size}")).text == made["note"]
    assert await verify_all(service.store) == []


@pytest.mark.parametrize(
    ("query", "sizes"),
    [
        pytest.param("", [3, 4, 5], id="all"),
        pytest.param("?limit=2", [3, 4], id="limited"),
        pytest.param("?after_size=3", [4, 5], id="after-size"),
        pytest.param("?after_size=4&limit=1", [5], id="after-size-limited"),
        pytest.param("?after_size=5", [], id="after-the-last"),
    ],
)
async def test_checkpoints_are_listed_by_size_when_paged(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    query: str,
    sizes: list[int],
) -> None:
    """GET /checkpoints lists checkpoints by size, after `after_size`, at most `limit`."""
    traffic = await _publish_traffic(service.store, org_key, publisher, {"acme": 1})
    made = {3: await _post_checkpoint(service, "acme")}
    for _ in range(2):
        size = await _publish_more(service.store, traffic.keys["acme"], publisher, "acme", 1)
        made[size] = await _post_checkpoint(service, "acme")
    response = await service.http.get(f"/v1/chains/acme/checkpoints{query}")
    assert response.status_code == 200
    assert response.json() == [made[size] for size in sizes]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        pytest.param("GET", "/v1/chains/ghost/checkpoint", 404, "not-found", id="unknown-chain"),
        pytest.param("GET", "/v1/chains/acme/checkpoint", 404, "not-found", id="no-checkpoint"),
        pytest.param(
            "GET", "/v1/chains/acme/checkpoints/99", 404, "not-found", id="no-checkpoint-at-size"
        ),
        pytest.param("GET", "/v1/chains/ghost/checkpoints", 404, "not-found", id="list-unknown"),
        pytest.param("POST", "/v1/chains/ghost/checkpoints", 404, "not-found", id="sign-unknown"),
        pytest.param("GET", "/v1/chains/Acme/checkpoint", 400, "invalid-request", id="uppercase"),
        pytest.param(
            "GET", "/v1/chains/acme/checkpoints?limit=0", 400, "invalid-request", id="limit-zero"
        ),
        pytest.param(
            "GET",
            "/v1/chains/acme/checkpoints?after_size=-1",
            400,
            "invalid-request",
            id="negative-after-size",
        ),
        pytest.param(
            "GET", "/v1/chains/acme/checkpoints/-1", 400, "invalid-request", id="negative-size"
        ),
    ],
)
async def test_checkpoint_routes_answer_a_problem_when_request_cannot_be_served(
    service: RunningService,
    org_key: OrgKeyFactory,
    method: str,
    path: str,
    status: int,
    kind: str,
) -> None:
    """Unknown chains, missing checkpoints and bad parameters answer RFC 9457 problems."""
    await org_key("acme")
    response = await service.http.request(method, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == f"https://trustledger.dev/problems/{kind}"


async def test_due_checkpoints_sign_only_chains_that_moved_when_run_again(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """The scheduled job signs every chain once, then only the chains whose head moved."""
    traffic = await _publish_traffic(service.store, org_key, publisher, {"acme": 2, "beta": 1})
    signer = await load_ledger_signer(service.store, service.settings)
    heads = {h.chain: h.seq for h in await service.store.chain_heads()}
    assert heads == {LEDGER_CHAIN: 1, "acme": 4, "beta": 3}

    first = await make_due_checkpoints(service.store, signer)
    assert {(c.chain, c.size) for c in first} == set(heads.items())
    ledger_note = next(c.note for c in first if c.chain == LEDGER_CHAIN)
    assert (await service.http.get(f"/v1/chains/{LEDGER_CHAIN}/checkpoint")).text == ledger_note
    assert await make_due_checkpoints(service.store, signer) == []
    grown = await _publish_more(service.store, traffic.keys["acme"], publisher, "acme", 2)
    assert [(c.chain, c.size) for c in await make_due_checkpoints(service.store, signer)] == [
        ("acme", grown)
    ]
    assert await verify_all(service.store) == []


async def test_ledger_keys_answer_a_problem_naming_the_finding_when_key_chain_is_tampered(
    service: RunningService,
) -> None:
    """A changed `_ledger` entry makes GET /v1/ledger/keys a 500 problem and verify name it."""
    async with _behind_triggers(service.settings.database_url) as conn:
        await conn.execute(
            "UPDATE ledger_entries SET event_bytes = event_bytes || ' '::bytea"
            " WHERE chain = $1 AND seq = 1",
            LEDGER_CHAIN,
        )
    response = await service.http.get("/v1/ledger/keys")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith(
        "the ledger's key chain does not verify: _ledger#1: entry hash does not match its fields"
    )
    findings = await verify_all(service.store)
    assert [(f.chain, f.seq, f.problem) for f in findings] == [
        (LEDGER_CHAIN, 1, "entry hash does not match its fields")
    ]


# ==== rotating the ledger key (integration) ======================================================


@pytest.mark.parametrize("from_file", [False, True], ids=["generated", "from-key-file"])
async def test_rotated_key_is_endorsed_and_old_checkpoints_verify_when_rotated(
    start_service: ServiceFactory,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    run_cli: CliRunner,
    tmp_path: Path,
    from_file: bool,
) -> None:
    """rotate-key registers the new key at `_ledger#2` signed by the old one; both keys' checkpoints verify."""
    svc = await start_service()
    settings, name = svc.settings, svc.settings.ledger_name
    traffic = await _publish_traffic(svc.store, org_key, publisher, {"acme": 2})
    old_checkpoint = await _post_checkpoint(svc, "acme")
    old = load_key(settings.ledger_key_path)
    argv = ["ledger", "rotate-key"]
    supplied = source = None
    if from_file:
        supplied, source = SigningKey.generate(LEDGER_CHAIN), tmp_path / "offline" / "next.json"
        save_key(supplied, source)
        argv += ["--new-key-file", str(source)]

    result = await run_cli(*argv)
    assert result.code == 0, result.err
    assert f"at {LEDGER_CHAIN}#2" in result.out
    new = load_key(settings.ledger_key_path)
    assert new.key_id != old.key_id
    if supplied is not None:
        assert source is not None
        assert (new, source.exists()) == (supplied, True)
    retired = settings.ledger_key_path.with_name(f"ledger-key.{old.key_id}.retired.json")
    assert load_key(retired) == old
    assert {p.name for p in settings.data_dir.glob("ledger-key*")} == {
        "ledger-key.json",
        retired.name,
    }
    entries = await _ledger_entries(svc.store)
    assert [(e.seq, e.key_id) for e in entries] == [(1, old.key_id), (2, old.key_id)]
    assert _registers(entries[1], new, name)
    nacl.signing.VerifyKey(old.public_key).verify(entries[1].event_bytes, entries[1].signature)

    await svc.shutdown()
    svc = await start_service()
    keys = (await svc.http.get("/v1/ledger/keys")).json()
    assert keys == {
        "chain": LEDGER_CHAIN,
        "keys": [_key_view(old, name, 1, signing=False), _key_view(new, name, 2, signing=True)],
        "signing_key_id": new.key_id,
    }
    await _publish_more(svc.store, traffic.keys["acme"], publisher, "acme", 1)
    new_checkpoint = await _post_checkpoint(svc, "acme")
    assert new_checkpoint["key_id"] == new.key_id
    verify_checkpoint(new_checkpoint["note"], name, new.public_key)
    with pytest.raises(CheckpointError, match="no signature by ledger key"):
        verify_checkpoint(new_checkpoint["note"], name, old.public_key)
    verify_checkpoint(old_checkpoint["note"], name, old.public_key)
    assert await verify_all(svc.store) == []
    verified = await run_cli("ledger", "verify")
    assert verified.code == 0
    assert verified.out.startswith("ok:")


async def _no_key(settings: Settings, store: LedgerStore) -> list[str]:
    return []


async def _same_key(settings: Settings, store: LedgerStore) -> list[str]:
    await load_ledger_signer(store, settings)
    return ["--new-key-file", str(settings.ledger_key_path)]


async def _unregistered_current_key(settings: Settings, store: LedgerStore) -> list[str]:
    await load_ledger_signer(store, settings)
    settings.ledger_key_path.unlink()
    save_key(SigningKey.generate(LEDGER_CHAIN), settings.ledger_key_path)
    return []


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        pytest.param(_no_key, "no ledger key at", id="no-key-file"),
        pytest.param(_same_key, "holds the current ledger key", id="same-key"),
        pytest.param(
            _unregistered_current_key,
            "is not an active key of _ledger",
            id="current-not-registered",
        ),
    ],
)
async def test_rotate_key_changes_nothing_when_the_current_key_cannot_endorse(
    settings: Settings,
    store: LedgerStore,
    run_cli: CliRunner,
    prepare: Callable[[Settings, LedgerStore], Awaitable[list[str]]],
    message: str,
) -> None:
    """rotate-key exits 2 naming the problem, and leaves `_ledger` and the key files as they were."""
    extra = await prepare(settings, store)
    files = {p.name: p.read_bytes() for p in settings.data_dir.glob("ledger-key*")}
    entries = await _ledger_entries(store)

    result = await run_cli("ledger", "rotate-key", *extra)
    assert result.code == 2
    assert message in result.err
    assert {p.name: p.read_bytes() for p in settings.data_dir.glob("ledger-key*")} == files
    assert await _ledger_entries(store) == entries


# ==== the scheduled incremental check and readiness (integration) ================================


async def test_incremental_verifier_walks_only_new_entries_when_run_again(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """Each run checks only the entries added since the last; a tamper in new ones is named."""
    store = service.store
    traffic = await _publish_traffic(store, org_key, publisher, {"acme": 3})
    checked: list[bytes] = []

    def recording(checks: Sequence[SignatureCheck]) -> list[bool]:
        checked.extend(message for _, message, _ in checks)
        return verify_sequentially(checks)

    verifier = IncrementalVerifier(store, recording)
    ledger_events = [e.event_bytes for e in await _ledger_entries(store)]

    async def run() -> tuple[dict[str, Finding], list[int]]:
        """One run: the broken chains and the acme seqs whose signatures it checked."""
        checked.clear()
        broken = dict(await verifier.run())
        seq_of = {e.event_bytes: e.seq for e in await chain_entries(store, "acme")}
        # The key chain is re-verified every run (and walked once more, incrementally,
        # for its own checkpoints and head).
        assert set(m for m in checked if m not in seq_of) == set(ledger_events)
        return broken, [seq_of[m] for m in checked if m in seq_of]

    assert await run() == ({}, [1, 2, 3, 4, 5])
    assert verifier.auditors["acme"].last_seq == 5
    size = await _publish_more(store, traffic.keys["acme"], publisher, "acme", 3)
    await _post_checkpoint(service, "acme")
    assert await run() == ({}, [6, 7, 8])
    assert verifier.auditors["acme"].last_seq == size == 8
    assert await run() == ({}, [])

    await _publish_more(store, traffic.keys["acme"], publisher, "acme", 2)
    async with _behind_triggers(service.settings.database_url) as conn:
        await _event_byte_changed_at(conn, 10)
    broken, walked = await run()
    assert walked == [9]
    assert [(c, f.seq, f.problem) for c, f in broken.items()] == [
        ("acme", 10, "entry hash does not match its fields")
    ]
    assert await run() == (broken, [])  # stays reported


async def _event_byte_changed_at(conn: asyncpg.Connection, seq: int) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET event_bytes = set_byte(event_bytes, 30,"
        " get_byte(event_bytes, 30) # 1) WHERE chain = 'acme' AND seq = $1",
        seq,
    )


async def test_readiness_fails_with_the_finding_when_the_scheduler_finds_a_tamper(
    settings: Settings,
    store: LedgerStore,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
) -> None:
    """With the scheduler role, GET /readyz turns 503 and names the forged entry under `ledger`."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_roles(
            dc_replace(settings, checkpoint_interval_s=1, verify_interval_s=1),
            Roles(api=True, ingest=True, scheduler=True),
            stop,
        )
    )
    # The checks' detail is for operators (docs/api.md).
    operator = bearer(await issue_api_key(store, "operator"))
    http = httpx.AsyncClient(
        base_url=f"http://{settings.host}:{settings.port}", timeout=10, headers=operator
    )

    async def readiness() -> httpx.Response | None:
        if task.done():
            task.result()
            pytest.fail("the service stopped")
        try:
            return await http.get("/readyz")
        except httpx.TransportError:
            return None

    async def status_is(code: int) -> bool:
        response = await readiness()
        return response is not None and response.status_code == code

    try:
        await wait_until(lambda: status_is(200), 20, "GET /readyz to answer 200")
        response = await readiness()
        assert response is not None
        assert response.json()["checks"] == {
            "postgres": "ok",
            "nats": "ok",
            "ingest": "ok",
            "ledger": "ok",
        }
        await _publish_traffic(store, org_key, publisher, {"acme": 3})

        async def signed_by_scheduler() -> bool:
            latest = await store.latest_checkpoint("acme")
            return latest is not None and latest.size == 5

        await wait_until(signed_by_scheduler, 10, "the scheduler to sign acme at size 5")
        assert await status_is(200)

        # A forged sixth entry: linked and hashed correctly, but its event bytes are not signed.
        rows = await chain_entries(store, "acme")
        edited = rows[-1].event_bytes.replace(b'"x.read"', b'"x.sudo"')
        forged = _relinked(
            [dc_replace(rows[-1], event_id="forged", event_bytes=edited)], 6, rows[-1].entry_hash
        )
        async with _behind_triggers(settings.database_url) as conn:
            await _insert(conn, forged)

        await wait_until(lambda: status_is(503), 10, "GET /readyz to answer 503")
        response = await readiness()
        assert response is not None
        body = response.json()
        assert body["status"] == "not ready"
        # The forged entry is beyond the head row (the forger did not move it): that
        # is the first inconsistency, and it names the entry.
        assert body["checks"]["ledger"].startswith(
            "failing: acme#6: entries beyond the chains table's head"
        )
        assert {k: v for k, v in body["checks"].items() if k != "ledger"} == {
            "postgres": "ok",
            "nats": "ok",
            "ingest": "ok",
        }
    finally:
        await http.aclose()
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.parametrize(
    ("tampered", "quick_finds_it"),
    [
        pytest.param("after", True, id="entry-after-the-checkpoint"),
        pytest.param("before", False, id="entry-under-the-checkpoint"),
    ],
)
async def test_from_checkpoint_checks_only_what_follows_when_asked_for_a_quick_walk(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    tampered: str,
    quick_finds_it: bool,
) -> None:
    """--from-checkpoint walks only entries after the latest checkpoint; the full walk finds the rest."""
    store = service.store
    traffic = await _publish_traffic(store, org_key, publisher, {"acme": 4})
    signer = await load_ledger_signer(store, service.settings)
    checkpointed = (await make_checkpoint(store, signer, "acme")).size
    size = await _publish_more(store, traffic.keys["acme"], publisher, "acme", 3)
    walked: list[int] = []
    assert await verify_all(store, only="acme", progress=walked.append, from_checkpoint=True) == []
    assert sum(walked) == size - checkpointed

    victim = checkpointed + 2 if tampered == "after" else 3
    async with _behind_triggers(service.settings.database_url) as conn:
        await conn.execute(
            "UPDATE ledger_entries SET event_bytes = set_byte(event_bytes, 30,"
            " get_byte(event_bytes, 30) # 1) WHERE chain = 'acme' AND seq = $1",
            victim,
        )
    quick = await verify_all(store, only="acme", from_checkpoint=True)
    full = await verify_all(store, only="acme")
    assert [(f.chain, f.seq) for f in full] == [("acme", victim)]
    assert [(f.chain, f.seq) for f in quick] == ([("acme", victim)] if quick_finds_it else [])
