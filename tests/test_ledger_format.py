"""An independent verifier written from `docs/ledger-format.md` alone, checked on the vectors.

The first part of this file is the verifier. It uses only the standard library,
`blake3` and `nacl`, and must never import the service (a test below parses
this file to make sure): an auditor should be able to lift it out as is. The
tests then hold both it and the service's own `service.domain.chain` to the
same vectors in `tests/vectors/chain-v1.json`, and run the verifier over
entries shaped exactly like `GET /v1/chains/{org}/entries` returns them.
"""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import blake3
import nacl.exceptions
import nacl.signing
import pytest

# ======================================================================================
# The independent verifier (docs/ledger-format.md, sections 4-6). No service imports.
# ======================================================================================

ENTRY_PREFIX = b"trustledger/entry/v1" + b"\x00"
KEY_ID_PREFIX = b"trustledger/key-id/v1" + b"\x00"
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


@dataclass(frozen=True)
class Break:
    """The first entry that does not verify (section 6), and why."""

    seq: int
    reason: str


def verify_api_entries(chain: str, entries: Iterable[Mapping[str, Any]]) -> Break | None:
    """Section 6 over entries as `GET /v1/chains/{org}/entries` returns them (section 9).

    `entries` is every entry of the chain from seq 1, in order (the pages joined).
    Returns None when the chain is valid, else the first break.
    """
    prev = GENESIS
    active: dict[str, bytes] = {}  # key id -> public key, for keys usable now
    ever_registered: set[str] = set()
    event_ids: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        seq = entry["seq"]
        # 1. chain name and gapless seq
        if entry["chain"] != chain:
            return Break(seq, f"entry belongs to chain {entry['chain']!r}")
        if seq != i:
            return Break(seq, f"expected seq {i}")
        # 2. link
        if bytes.fromhex(entry["prev_hash"]) != prev:
            return Break(seq, "prev_hash does not equal the previous entry_hash")
        # 3. hash
        key_id = entry["key_id"]
        signature = bytes.fromhex(entry["signature"])
        event = entry["event"].encode("utf-8")
        computed = hash_entry(prev, chain, seq, entry["received_at_us"], key_id, signature, event)
        if computed != bytes.fromhex(entry["entry_hash"]):
            return Break(seq, "entry_hash does not match the recomputed hash")
        # 4. field shapes
        if not KEY_ID_RE.fullmatch(key_id) or len(signature) != 64:
            return Break(seq, "malformed key id or signature")
        # 5. the event: UTF-8 JSON object of this org, id unique in the chain
        try:
            doc = json.loads(event.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return Break(seq, "event is not UTF-8 JSON")
        if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
            return Break(seq, "event is not a JSON object with a kind")
        if doc.get("org") != chain:
            return Break(seq, f"event org {doc.get('org')!r} is not the chain")
        if not isinstance(doc.get("id"), str) or doc["id"] in event_ids:
            return Break(seq, f"event id {doc.get('id')!r} missing or repeated")
        event_ids.add(doc["id"])
        kind = doc["kind"]
        # unhashed columns (section 8): re-derived, not trusted
        if entry.get("event_id", doc["id"]) != doc["id"] or entry.get("kind", kind) != kind:
            return Break(seq, "event_id/kind columns disagree with the event bytes")
        # 6. the signing key is authorised
        if key_id in active:
            if not ed25519_verifies(active[key_id], event, signature):
                return Break(seq, f"signature does not verify under key {key_id}")
            self_signed = False
        elif (
            kind == "publisher_key.registered"
            and doc.get("key_id") == key_id
            and key_id not in ever_registered
        ):
            public_key = _public_key(doc.get("public_key"))
            if public_key is None or key_id_of(public_key) != key_id:
                return Break(seq, "self-signed registration: key id does not match public key")
            if not ed25519_verifies(public_key, event, signature):
                return Break(seq, "self-signed registration: signature does not verify")
            self_signed = True
        else:
            return Break(seq, f"key {key_id} is not registered and active in this chain")
        if i == 1 and not self_signed:
            return Break(seq, "entry 1 is not a self-signed key registration")
        # 7. effect on key state
        if kind == "publisher_key.registered":
            registered = doc.get("key_id")
            public_key = _public_key(doc.get("public_key"))
            if (
                not isinstance(registered, str)
                or public_key is None
                or key_id_of(public_key) != registered
            ):
                return Break(seq, "registration: key id does not match public key")
            if registered not in ever_registered:
                ever_registered.add(registered)
                active[registered] = public_key
        elif kind == "publisher_key.revoked":
            active.pop(str(doc.get("key_id")), None)
        prev = computed
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


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trustledger_vector_generator", GENERATOR_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
        "docs/ledger-format.md section 13 is stale: paste `generate.py --markdown`"
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
