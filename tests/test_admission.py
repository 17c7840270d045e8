"""Admission: every quarantine reason, in the documented order, and the happy path."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.domain.admission import (
    REASONS,
    Admitted,
    Incoming,
    PublisherKey,
    Refused,
    admit,
    subject_org,
)
from service.domain.events import ActionPerformed, PublisherKeyRegistered, encode_event
from service.domain.signing import SigningKey, b64url

ACME = SigningKey(org="acme", seed=bytes(range(32)))
BETA = SigningKey(org="beta", seed=bytes(range(1, 33)))
STRANGER = SigningKey(org="acme", seed=bytes(range(2, 34)))
KEYS = {
    ACME.key_id: PublisherKey(ACME.key_id, "acme", ACME.public_key),
    BETA.key_id: PublisherKey(BETA.key_id, "beta", BETA.public_key),
}
REVOKED_KEYS = {ACME.key_id: PublisherKey(ACME.key_id, "acme", ACME.public_key, revoked=True)}
AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _action(org: str = "acme") -> bytes:
    return encode_event(
        ActionPerformed(id="e1", org=org, occurred_at=AT, agent="bot", action="a", resource="r")
    )


def _message(
    data: bytes,
    key: SigningKey | None = ACME,
    subject: str = "tl.ev.acme.bot",
    signature: str | None = None,
) -> Incoming:
    if signature is None and key is not None:
        signature = b64url(key.sign(data))
    return Incoming(
        subject=subject,
        data=data,
        key_id=key.key_id if key else None,
        signature=signature,
        stream_seq=7,
    )


@pytest.mark.parametrize(
    ("message", "keys", "reason"),
    [
        pytest.param(_message(_action(), key=None), KEYS, "missing_signature", id="no-headers"),
        pytest.param(
            _message(_action(), signature="***"), KEYS, "bad_signature_encoding", id="not-base64"
        ),
        pytest.param(
            _message(_action(), signature=b64url(b"short")),
            KEYS,
            "bad_signature_encoding",
            id="short-signature",
        ),
        pytest.param(_message(_action(), key=STRANGER), KEYS, "unknown_key", id="unknown-key"),
        pytest.param(_message(_action()), REVOKED_KEYS, "key_revoked", id="revoked-key"),
        pytest.param(
            _message(_action(), signature=b64url(ACME.sign(b"other bytes"))),
            KEYS,
            "bad_signature",
            id="signature-of-other-bytes",
        ),
        pytest.param(_message(b"{not json"), KEYS, "malformed_json", id="malformed-json"),
        pytest.param(_message(b'{"kind": "nope"}'), KEYS, "schema_invalid", id="unknown-kind"),
        pytest.param(_message(_action(), key=BETA), KEYS, "key_org_mismatch", id="other-orgs-key"),
        pytest.param(
            _message(_action(), subject="tl.ev.beta.bot"),
            KEYS,
            "subject_mismatch",
            id="subject-of-other-org",
        ),
        pytest.param(
            _message(_action(), subject="tl.events.acme"),
            KEYS,
            "subject_mismatch",
            id="subject-of-other-shape",
        ),
    ],
)
def test_admit_refuses_with_reason_when_check_fails(
    message: Incoming, keys: dict[str, PublisherKey], reason: str
) -> None:
    """Each failed check refuses the message with its documented reason."""
    verdict = admit(message, keys, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == reason
    assert verdict.reason in REASONS
    assert verdict.detail


def test_admit_accepts_when_signed_by_own_orgs_registered_key() -> None:
    """A well-formed event signed by its org's key is admitted with the raw signature."""
    data = _action()
    verdict = admit(_message(data), KEYS, "tl")
    assert isinstance(verdict, Admitted)
    assert verdict.event.id == "e1"
    assert verdict.key_id == ACME.key_id
    assert verdict.signature == ACME.sign(data)


def test_admit_checks_signature_before_parsing_when_bytes_are_unsigned() -> None:
    """Malformed bytes with a bad signature are refused as bad_signature: nothing unsigned is parsed."""
    message = _message(b"{not json", signature=b64url(ACME.sign(b"x")))
    verdict = admit(message, KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "bad_signature"


def test_admit_refuses_key_registration_when_key_id_does_not_match_public_key() -> None:
    """A publisher_key.registered whose key_id is not derived from its public key is schema_invalid."""
    event = PublisherKeyRegistered(
        id="k2",
        org="acme",
        occurred_at=AT,
        key_id=BETA.key_id,
        public_key=b64url(STRANGER.public_key),
    )
    data = encode_event(event)
    verdict = admit(_message(data, subject="tl.ev.acme._"), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "schema_invalid"
    assert "does not match" in verdict.detail


def test_admit_accepts_exact_bytes_when_json_has_unusual_spacing() -> None:
    """The signature covers the bytes as published, whatever their JSON formatting."""
    data = json.dumps(json.loads(_action()), indent=3).encode()
    verdict = admit(_message(data), KEYS, "tl")
    assert isinstance(verdict, Admitted)


@pytest.mark.parametrize(
    ("subject", "prefix", "org"),
    [
        ("tl.ev.acme.bot", "tl", "acme"),
        ("tl.ev.acme._", "tl", "acme"),
        ("a.b.ev.acme.bot", "a.b", "acme"),
        ("tl.ev.acme", "tl", None),
        ("tl.xx.acme.bot", "tl", None),
        ("other.ev.acme.bot", "tl", None),
    ],
)
def test_subject_org_reads_org_token_when_subject_has_the_documented_shape(
    subject: str, prefix: str, org: str | None
) -> None:
    """`<prefix>.ev.<org>.<agent>` yields the org; any other shape yields None."""
    assert subject_org(subject, prefix) == org


def test_admit_refuses_when_event_repeats_a_member() -> None:
    """An object with a repeated member is schema_invalid: parsers disagree on which one wins."""
    data = _action().replace(
        b'"kind":"action.performed"', b'"kind":"action.performed","agent":"x"', 1
    )
    assert data.count(b'"agent"') == 2
    verdict = admit(_message(data), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == "schema_invalid"
    assert "duplicate member" in verdict.detail


# --- hostile messages: headers, subjects and signed poison -----------------------------


def _signed(data: bytes, subject: str = "tl.ev.acme.bot") -> Incoming:
    return _message(data, subject=subject)


def _action_with(**changes: object) -> bytes:
    event = json.loads(_action())
    event.update(changes)
    return json.dumps(event).encode()


_GOOD_SIGNATURE = b64url(ACME.sign(_action()))


@pytest.mark.parametrize(
    ("key_id", "signature", "reason"),
    [
        pytest.param("", _GOOD_SIGNATURE, "missing_signature", id="empty-key-id"),
        pytest.param(ACME.key_id, "", "missing_signature", id="empty-signature"),
        pytest.param(ACME.key_id + "\x00", _GOOD_SIGNATURE, "bad_key_id", id="key-id-nul"),
        pytest.param("\x00" * 16, _GOOD_SIGNATURE, "bad_key_id", id="key-id-all-nul"),
        pytest.param(ACME.key_id.upper(), _GOOD_SIGNATURE, "bad_key_id", id="key-id-uppercase"),
        pytest.param(ACME.key_id + "0", _GOOD_SIGNATURE, "bad_key_id", id="key-id-17"),
        pytest.param(ACME.key_id + "\n", _GOOD_SIGNATURE, "bad_key_id", id="key-id-newline"),
        pytest.param(ACME.key_id[:15] + "\ud800", _GOOD_SIGNATURE, "bad_key_id", id="surrogate"),
        pytest.param("é" * 16, _GOOD_SIGNATURE, "bad_key_id", id="key-id-non-ascii"),
        pytest.param("f" * 1_000_000, _GOOD_SIGNATURE, "bad_key_id", id="key-id-1MB"),
        pytest.param(
            ACME.key_id, _GOOD_SIGNATURE[:-1] + "\x00", "bad_signature_encoding", id="sig-nul"
        ),
        pytest.param(
            ACME.key_id,
            _GOOD_SIGNATURE[:-1] + "\ud800",
            "bad_signature_encoding",
            id="sig-surrogate",
        ),
        pytest.param(ACME.key_id, _GOOD_SIGNATURE + "==", "bad_signature_encoding", id="padded"),
        pytest.param(ACME.key_id, "A" * 1_000_000, "bad_signature_encoding", id="sig-1MB"),
        pytest.param(
            ACME.key_id, "+" + _GOOD_SIGNATURE[1:], "bad_signature_encoding", id="sig-plus"
        ),
    ],
)
def test_admit_refuses_before_any_lookup_when_headers_are_hostile(
    key_id: str, signature: str, reason: str
) -> None:
    """Malformed, oversized, NUL or surrogate headers are refused by pattern, with a printable detail."""
    message = Incoming("tl.ev.acme.bot", _action(), key_id, signature, 7)
    verdict = admit(message, KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert (verdict.reason, verdict.reason in REASONS) == (reason, True)
    assert verdict.detail.isprintable()
    assert len(verdict.detail) <= 512


def _deep(depth: int) -> bytes:
    return b'{"x":' + b"[" * depth + b"]" * depth + b"," + _action()[1:]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(_deep(1_000), "schema_invalid", id="nested-1000-before-kind"),
        pytest.param(_deep(30_000), "schema_invalid", id="nested-30000-before-kind"),
        pytest.param(
            _action_with(amount={"amount_minor": 2**63, "currency": "EUR"}),
            "schema_invalid",
            id="amount-2^63",
        ),
        pytest.param(_action_with(resource="a\x00b"), "schema_invalid", id="nul-in-text"),
        pytest.param(_action_with(kind="action.performed\x00"), "schema_invalid", id="nul-kind"),
        pytest.param(_action_with(**{"agent\x00": "bot"}), "schema_invalid", id="nul-member"),
        pytest.param(_action()[:-1] + b',"x":"\\ud800"}', "malformed_json", id="surrogate"),
        pytest.param(_action()[:-1] + b',"x":NaN}', "malformed_json", id="nan"),
        pytest.param(
            _action()[:-1] + b" " * 65_536 + b"}", "event_too_large", id="over-max-event-bytes"
        ),
    ],
)
def test_admit_refuses_with_reason_when_signed_event_is_poison(data: bytes, reason: str) -> None:
    """Signed poison (deep nesting, huge ints, NULs, surrogates, NaN, oversize) is refused, never raised."""
    verdict = admit(_signed(data), KEYS, "tl")
    assert isinstance(verdict, Refused)
    assert verdict.reason == reason
    assert verdict.detail.isprintable()


def test_admit_refuses_with_printable_detail_when_subject_holds_nul() -> None:
    """A NUL or surrogate in the subject's org token is a subject_mismatch with an escaped detail."""
    for subject in ("tl.ev.acme\x00.bot", "tl.ev.\ud800.bot", "tl.ev.acme.bot\x00"):
        verdict = admit(_signed(_action(), subject=subject), KEYS, "tl")
        if subject.endswith("\x00"):
            assert isinstance(verdict, Admitted)  # the agent token is not checked (docs §1)
            continue
        assert isinstance(verdict, Refused)
        assert verdict.reason == "subject_mismatch"
        assert verdict.detail.isprintable()


@pytest.mark.parametrize(
    "subject", ["tl.ev.acme\x00.bot", "tl.ev.ACME.bot", "tl.ev.\ud800.bot", "tl.ev.a*.bot"]
)
def test_subject_org_is_none_when_org_token_is_not_a_slug(subject: str) -> None:
    """Only a slug is returned as the claimed org, so it is always safe to store."""
    assert subject_org(subject, "tl") is None
