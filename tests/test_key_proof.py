"""Key registrations prove possession of the new key: no org registers a key it does not hold.

Unit tests of `service.domain.key_proof` and admission checks 12-13, then the
key-squatting sequence end to end (NATS, ingest, PostgreSQL), the batch and
operator paths, and old ledgers (registrations without a proof) still verifying.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    ServiceFactory,
    chain_entries,
    performed,
    registered,
    wait_for_chain,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from service.adapters.postgres import LedgerStore
from service.app.ingest import append_operator_event, ingest_batch
from service.app.keys import register_key
from service.app.verify import verify_all
from service.domain.admission import (
    REASONS,
    Admitted,
    Incoming,
    PublisherKey,
    Refused,
    admit,
    check_new_key,
)
from service.domain.events import PublisherKeyRegistered, decode_event, encode_event
from service.domain.key_proof import (
    KEY_PROOF_DOMAIN,
    key_proof_message,
    key_proof_problem,
    make_key_proof,
    registration,
)
from service.domain.signing import SigningKey, b64url
from service.errors import AdmissionError

REPO = Path(__file__).resolve().parents[1]
AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
A = SigningKey(org="a", seed=bytes(range(32)))
B = SigningKey(org="b", seed=bytes(range(1, 33)))
NEW = SigningKey(org="a", seed=bytes(range(2, 34)))
"""A's new key: only A holds its seed (in the squatting tests)."""
KEYS = {
    A.key_id: PublisherKey(A.key_id, "a", A.public_key),
    B.key_id: PublisherKey(B.key_id, "b", B.public_key),
}


def _reg(org: str, proof: str | None, event_id: str = "reg-1", key: SigningKey = NEW) -> bytes:
    """`org` registers `key`'s public key with `proof` (None: no proof member)."""
    event = PublisherKeyRegistered(
        id=event_id, org=org, occurred_at=AT, key_id=key.key_id, public_key=b64url(key.public_key)
    )
    if proof is not None:
        event.proof = proof
    return encode_event(event)


def _signed_by(signer: SigningKey, data: bytes, org: str) -> Incoming:
    return Incoming(f"tl.ev.{org}._", data, signer.key_id, b64url(signer.sign(data)), 7)


# --- the proof itself ------------------------------------------------------------------


def test_key_proof_message_is_prefix_and_length_prefixed_fields_when_built() -> None:
    """The message is the domain prefix then u32be-length-prefixed org, key id and event id."""
    message = key_proof_message("a", "0123456789abcdef", "e-1")
    assert message == (
        b"trustledger/key-proof/v1\x00"
        + b"\x00\x00\x00\x01a"
        + b"\x00\x00\x00\x100123456789abcdef"
        + b"\x00\x00\x00\x03e-1"
    )
    assert message.startswith(KEY_PROOF_DOMAIN)


@pytest.mark.parametrize(
    ("org", "event_id"),
    [("b", "reg-1"), ("a", "reg-2"), ("ab", "reg-1"), ("a", "reg-1x")],
    ids=["other-org", "other-event-id", "longer-org", "longer-event-id"],
)
def test_key_proof_does_not_verify_when_offered_for_another_org_or_event(
    org: str, event_id: str
) -> None:
    """A's proof for (a, reg-1) proves nothing for any other org or event id."""
    proof = make_key_proof(NEW, "a", "reg-1")
    assert key_proof_problem("a", NEW.key_id, "reg-1", NEW.public_key, proof) is None
    assert key_proof_problem(org, NEW.key_id, event_id, NEW.public_key, proof) is not None


def test_wire_contract_snippet_builds_the_vector_proof_when_run() -> None:
    """The PyNaCl snippet of wire-contract.md §3.3 makes the proof of key-proof-v1.json."""
    text = (REPO / "docs" / "wire-contract.md").read_text(encoding="utf-8")
    at = text.index("def key_proof(seed")
    snippet = text[text.rindex("```python", 0, at) + len("```python") : text.index("```", at)]
    namespace: dict[str, object] = {}
    exec(snippet, namespace)  # noqa: S102 - our own document's example, run to keep it true
    vector = json.loads((REPO / "tests" / "vectors" / "key-proof-v1.json").read_text("utf-8"))
    build = namespace["key_proof"]
    assert callable(build)
    seed = bytes.fromhex(vector["key"]["seed_hex"])
    made = build(seed, vector["org"], vector["key"]["key_id"], vector["event_id"])
    assert made == vector["proof_b64url"]


# --- admission, check 12 ------------------------------------------------------------------


def test_admit_accepts_registration_when_proof_holds() -> None:
    """A's registration of its new key, signed by A's key, with NEW's proof: admitted."""
    data = encode_event(registration(NEW, "reg-1", AT))
    verdict = admit(_signed_by(A, data, "a"), KEYS, "tl")
    assert isinstance(verdict, Admitted)


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        pytest.param(_reg("b", None), "must carry a proof", id="no-proof"),
        pytest.param(_reg("b", make_key_proof(NEW, "a", "reg-1")), "not a signature", id="a-proof"),
        pytest.param(
            _reg("b", make_key_proof(NEW, "a", "reg-1"), event_id="other"),
            "not a signature",
            id="a-proof-under-another-event-id",
        ),
        pytest.param(
            _reg("b", b64url(B.sign(key_proof_message("b", NEW.key_id, "reg-1")))),
            "not a signature",
            id="proof-made-by-bs-own-key",
        ),
        pytest.param(
            _reg("b", b64url(NEW.sign(b"anything else"))), "not a signature", id="other-bytes"
        ),
    ],
)
def test_admit_refuses_squatters_registration_when_proof_is_missing_or_borrowed(
    data: bytes, detail: str
) -> None:
    """B registering A's public key, signed by B's own key, is refused as key_proof_invalid."""
    verdict = admit(_signed_by(B, data, "b"), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert (verdict.reason, verdict.reason in REASONS) == ("key_proof_invalid", True)
    assert detail in verdict.detail


def test_admit_refuses_replayed_proof_when_a_registers_again_under_a_new_event_id() -> None:
    """A proof is bound to its event id: re-used by its own org for another event, refused."""
    data = _reg("a", make_key_proof(NEW, "a", "reg-1"), event_id="reg-2")
    verdict = admit(_signed_by(A, data, "a"), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "key_proof_invalid"


def test_decode_reads_registration_without_proof_when_admission_refuses_it() -> None:
    """Old ledgers still decode (rebuild reads them), though admission now refuses the same bytes."""
    data = _reg("a", None)
    assert b'"proof"' not in data  # no member at all, byte for byte as before proofs existed
    assert isinstance(decode_event(data), PublisherKeyRegistered)
    verdict = admit(_signed_by(A, data, "a"), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "key_proof_invalid"


def test_decode_refuses_registration_when_proof_is_null() -> None:
    """`"proof": null` is not an absent proof: it is schema_invalid."""
    data = _reg("a", None).replace(b'"key_id"', b'"proof":null,"key_id"', 1)
    verdict = admit(_signed_by(A, data, "a"), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "schema_invalid"


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@settings(max_examples=300, deadline=None)
@given(
    proof=st.one_of(
        st.binary(min_size=64, max_size=64).map(b64url),
        st.text(alphabet=_B64URL, min_size=86, max_size=86),
    ),
    org=st.sampled_from(["a", "b"]),
)
def test_random_proof_never_admits_when_fuzzed(proof: str, org: str) -> None:
    """Random 64-byte signatures and random 86-character strings never pass as a proof."""
    signer = A if org == "a" else B
    verdict = admit(_signed_by(signer, _reg(org, proof), org), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "key_proof_invalid"


# --- check 13 -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "detail"),
    [
        ({NEW.key_id: PublisherKey(NEW.key_id, "a", NEW.public_key)}, "by another org"),
        ({NEW.key_id: PublisherKey(NEW.key_id, "b", NEW.public_key)}, "for 'b'"),
        (
            {NEW.key_id: PublisherKey(NEW.key_id, "b", NEW.public_key, revoked=True)},
            "for 'b' and revoked",
        ),
    ],
    ids=["other-org", "same-org", "same-org-revoked"],
)
def test_check_new_key_refuses_when_key_id_is_registered_even_with_a_valid_proof(
    registry: dict[str, PublisherKey], detail: str
) -> None:
    """A valid registration of a key id already in the registry is key_already_registered."""
    data = encode_event(registration(NEW, "reg-1", AT, org="b"))
    verdict = admit(_signed_by(B, data, "b"), KEYS, "tl")
    assert isinstance(verdict, Admitted)
    assert check_new_key(verdict, KEYS) is verdict
    refused = check_new_key(verdict, KEYS | registry)
    assert isinstance(refused, Refused)
    assert refused.reason == "key_already_registered"
    assert detail in refused.detail
    assert "'a'" not in refused.detail  # the holder is not named to the squatter


# --- end to end: NATS, ingest, PostgreSQL -----------------------------------------------


async def test_squatter_registration_fails_and_holder_registers_when_key_seen_in_quarantine(
    org_key: OrgKeyFactory, publisher: PublisherFactory, start_service: ServiceFactory
) -> None:
    """B copies A's quarantined registration: every way B tries fails; A's own then succeeds."""
    key_a, key_b = await org_key("a"), await org_key("b")
    new = SigningKey.generate("a")
    svc = await start_service()
    pub_a, pub_b, pub_new = await publisher(key_a), await publisher(key_b), await publisher(new)

    # A's registration, signed by the new key before it is registered: quarantined
    # (unknown_key), so its bytes (public key and proof) are there to be seen.
    seen = registration(new, "reg-a-1", AT, "a's new key")
    await pub_new.publish(seen)
    assert isinstance(seen.proof, str)

    def squat(event_id: str, proof: str | None) -> PublisherKeyRegistered:
        event = PublisherKeyRegistered(
            id=event_id, org="b", occurred_at=AT, key_id=new.key_id, public_key=seen.public_key
        )
        if proof is not None:
            event.proof = proof
        return event

    attempts = [
        squat("squat-1", None),
        squat("squat-2", seen.proof),  # A's proof, copied
        squat("reg-a-1", seen.proof),  # A's proof and A's event id
        squat("squat-4", b64url(key_b.sign(key_proof_message("b", new.key_id, "squat-4")))),
    ]
    for event in attempts:
        await pub_b.publish(event)
    await pub_b.publish(registered("b", "sentinel"))
    await wait_for_chain(svc.store, "b", 2)

    quarantined = await svc.store.quarantined("b")
    assert [q["reason"] for q in quarantined] == ["key_proof_invalid"] * len(attempts)
    assert new.key_id not in await svc.store.load_keys()

    # The holder registers its key for itself, and the key signs A's events.
    own = registration(new, "reg-a-2", AT, "a's new key")
    await pub_a.publish(own)
    action = performed("a", "bot", "x.y", "r", t=1)
    await pub_new.publish(registered("a", "bot"))
    await pub_new.publish(action)
    await wait_for_chain(svc.store, "a", 4)
    entries = await chain_entries(svc.store, "a")
    assert [(e.event_id, e.key_id) for e in entries[1:]] == [
        (own.id, key_a.key_id),
        (entries[2].event_id, new.key_id),
        (action.id, new.key_id),
    ]
    registry = await svc.store.load_keys()
    assert registry[new.key_id].org == "a"

    # Even holding the key (a valid proof for b), B cannot register it now.
    shared = SigningKey(org="b", seed=new.seed)
    await pub_b.publish(registration(shared, "squat-5", AT))
    await pub_b.publish(registered("b", "sentinel-2"))
    await wait_for_chain(svc.store, "b", 3)
    quarantined = await svc.store.quarantined("b")
    assert quarantined[-1]["reason"] == "key_already_registered"
    assert "by another org" in quarantined[-1]["detail"]
    assert (await svc.store.load_keys())[new.key_id].org == "a"
    assert await verify_all(svc.store) == []


async def test_redelivered_registration_counts_as_duplicate_when_its_key_is_now_registered(
    store: LedgerStore, org_key: OrgKeyFactory
) -> None:
    """After a lost ack the registration comes again: a duplicate, never a quarantine."""
    first = await org_key("a")
    new = SigningKey.generate("a")
    message = _signed_by(first, encode_event(registration(new, "reg-1", AT)), "a")
    once = await ingest_batch(store, [message], "tl")
    again = await ingest_batch(store, [message], "tl")
    assert (once.appended, once.quarantined) == (1, {})
    assert (again.appended, again.duplicates, again.quarantined) == (0, 1, {})


async def test_second_registration_of_one_key_is_refused_when_both_are_in_one_batch(
    store: LedgerStore, org_key: OrgKeyFactory
) -> None:
    """Two registrations of one new key in a batch: the first registers it, the second is refused."""
    first = await org_key("a")
    new = SigningKey.generate("a")
    messages = [
        _signed_by(first, encode_event(registration(new, f"reg-{n}", AT)), "a") for n in (1, 2)
    ]
    outcome = await ingest_batch(store, messages, "tl")
    assert (outcome.appended, outcome.quarantined) == (1, {"key_already_registered": 1})


async def test_operator_registration_is_refused_when_key_is_another_orgs_or_has_no_proof(
    store: LedgerStore, org_key: OrgKeyFactory
) -> None:
    """`keys create` for a key id another org holds, or a self-signed one without proof: refused."""
    key_a = await org_key("a")
    with pytest.raises(AdmissionError, match=r"^key_already_registered: .*by another org"):
        await register_key(store, SigningKey(org="b", seed=key_a.seed))
    lone = SigningKey.generate("c")
    data = _reg("c", None, event_id=f"key-{lone.key_id}", key=lone)
    with pytest.raises(AdmissionError, match=r"^key_proof_invalid: "):
        await append_operator_event(store, data, lone.key_id, lone.sign(data))
    assert await store.chain_head("b") is None
    assert await store.chain_head("c") is None
    assert await register_key(store, lone) == 1  # with its proof, the same key registers
