"""Property tests: the decoder and admission never raise, whatever arrives, and admit what is valid."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.domain.admission import REASONS, Admitted, Incoming, PublisherKey, Refused, admit
from service.domain.events import (
    MAX_COUNT,
    MAX_DETAIL_CHARS,
    MAX_LIST_ITEMS,
    MAX_SAFE_INTEGER,
    ActionObserved,
    ActionPerformed,
    AuditContext,
    CommitmentAmended,
    CommitmentTerms,
    Event,
    EventDecodeError,
    Money,
    RateLimit,
    SpendCeiling,
    decode_event,
    encode_event,
)
from service.domain.signing import SigningKey, b64url

ACME = SigningKey(org="acme", seed=bytes(range(32)))
KEYS = {ACME.key_id: PublisherKey(ACME.key_id, "acme", ACME.public_key)}
DECODE_REASONS = {"event_too_large", "malformed_json", "schema_invalid"}
FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any code point at all, lone surrogates and NUL included: what a header or subject may carry.
_ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=100)
# What the contract calls text: no control character, no surrogate.
_PRINTABLE = st.characters(exclude_categories=("Cc", "Cs"))
_SLUG = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
_TIME = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(8999, 12, 31), timezones=st.just(UTC)
)
_AMOUNT = st.integers(0, MAX_SAFE_INTEGER)


def _text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(_PRINTABLE, min_size=min_size, max_size=max_size)


def _check_verdict(verdict: Admitted | Refused) -> None:
    if isinstance(verdict, Refused):
        assert verdict.reason in REASONS
        assert verdict.detail.isprintable()
        assert 0 < len(verdict.detail) <= MAX_DETAIL_CHARS
    else:
        _check_admitted(verdict.event)


def _check_admitted(event: Event) -> None:
    """An admitted event is within every bound: printable texts, integers that fit."""
    pending: list[object] = [json.loads(encode_event(event))]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            assert len(item) <= MAX_LIST_ITEMS
            pending.extend(item)
        elif isinstance(item, str):
            assert not any(0 <= ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in item), item
            item.encode("utf-8")  # no lone surrogate
        elif isinstance(item, int):
            assert 0 <= item <= MAX_SAFE_INTEGER


def _signed(data: bytes, subject: str = "tl.ev.acme.bot") -> Incoming:
    return Incoming(subject, data, ACME.key_id, b64url(ACME.sign(data)), 1)


# --- random input --------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=2_000))
def test_decode_raises_only_a_decode_error_when_bytes_are_random(data: bytes) -> None:
    """Random bytes decode or raise EventDecodeError with a documented reason; nothing else."""
    try:
        outcome: Event | EventDecodeError = decode_event(data)
    except EventDecodeError as e:
        outcome = e
    if isinstance(outcome, EventDecodeError):
        assert outcome.reason in DECODE_REASONS
        assert outcome.detail.isprintable()
    else:
        _check_admitted(outcome)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.dictionaries(_ANY_TEXT, _JSON, max_size=8),
    kind=st.sampled_from(["action.performed", "commitment.declared", "agent.registered", "x"]),
)
def test_admit_never_raises_when_signed_json_is_random(
    members: dict[str, object], kind: str
) -> None:
    """Signed random JSON objects (any member names, values, surrogates) get a verdict, never an exception."""
    data = json.dumps({"kind": kind, **members}).encode("utf-8", "surrogatepass")
    _check_verdict(admit(_signed(data), KEYS, "tl"))


@FAST
@given(
    subject=_ANY_TEXT,
    data=st.binary(max_size=500),
    key_id=st.none() | _ANY_TEXT | st.just(ACME.key_id),
    signature=st.none() | _ANY_TEXT | st.binary(min_size=64, max_size=64).map(b64url),
)
def test_admit_never_raises_when_message_is_random(
    subject: str, data: bytes, key_id: str | None, signature: str | None
) -> None:
    """Any subject, bytes and header text (NUL, lone surrogates, junk) is refused with a reason."""
    _check_verdict(admit(Incoming(subject, data, key_id, signature, 1), KEYS, "tl"))


# --- mutations of a valid signed event -----------------------------------------------

_VALID = encode_event(
    CommitmentAmended(
        id="c-2",
        org="acme",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        agent="bot",
        commitment_id="refunds",
        version=2,
        terms=CommitmentTerms(
            principal="finance-ops@acme.example",
            purpose="refunds",
            allowed_actions=["payments.*"],
            resource_bounds=["order:*"],
            valid_from=datetime(2026, 1, 1, tzinfo=UTC),
            spend=SpendCeiling(currency="EUR", per_action_minor=100, per_window_minor=1000),
            rate=RateLimit(max_count=5, window_s=60),
            data_classes=["pii"],
            audit=AuditContext(policy_version="1"),
        ),
    )
)
_POISON = st.sampled_from(
    [
        b"\x00",
        b"\\u0000",
        b"\\ud800",
        b"\\udfff\\ud800",
        b"NaN",
        b"-Infinity",
        b"1e999",
        b"9" * 30,
        b"9223372036854775808",
        b"2147483648",
        b"[" * 1_000,
        b"{" * 1_000,
        b'{"a":' * 500,
        b'"',
        b"\\",
        b",",
        b":",
        b"\xff",
        b"\xed\xa0\x80",
        b"\x85",
        b" " * 70_000,
    ]
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "insert", "poison", "delete", "truncate"]))
        if operation == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "poison":
            data[at:at] = draw(_POISON)
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


@FAST
@given(data=_mutated())
def test_admit_never_raises_when_valid_event_is_mutated_and_resigned(data: bytes) -> None:
    """Byte flips, insertions, poison, deletions and truncations of a signed event, re-signed so
    that they reach the decoder, get a verdict with a reason; an admitted one is within bounds."""
    _check_verdict(admit(_signed(data), KEYS, "tl"))


@FAST
@given(data=_mutated())
def test_admit_refuses_as_bad_signature_when_valid_event_is_mutated_after_signing(
    data: bytes,
) -> None:
    """A mutation after signing is a bad_signature (nothing unsigned is parsed)."""
    verdict = admit(
        Incoming("tl.ev.acme.bot", data, ACME.key_id, b64url(ACME.sign(_VALID)), 1), KEYS, "tl"
    )
    if data == _VALID:
        assert isinstance(verdict, Admitted)
    else:
        assert isinstance(verdict, Refused)
        assert verdict.reason in {"bad_signature", "event_too_large"}


# --- valid events ----------------------------------------------------------------------


_ACTIONS = st.builds(
    ActionPerformed,
    id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True),
    org=st.just("acme"),
    occurred_at=_TIME,
    agent=_SLUG,
    action=_text(1, 256),
    resource=_text(0, 1024),
    amount=st.none()
    | st.builds(Money, amount_minor=_AMOUNT, currency=st.from_regex(r"[A-Z]{3}", fullmatch=True)),
    data_classes=st.lists(
        st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,62}", fullmatch=True), max_size=MAX_LIST_ITEMS
    ),
    correlation_id=st.none() | _text(0, 128),
)
_OBSERVATIONS = st.builds(
    ActionObserved,
    id=st.just("o-1"),
    org=st.just("acme"),
    occurred_at=_TIME,
    agent_org=_SLUG,
    agent=_SLUG,
    gateway=_text(1, 256),
    action=_text(1, 256),
    resource=_text(0, 1024),
    amount=st.none() | st.builds(Money, amount_minor=_AMOUNT, currency=st.just("EUR")),
)
_AMENDMENTS = st.builds(
    CommitmentAmended,
    id=st.just("c-2"),
    org=st.just("acme"),
    occurred_at=_TIME,
    agent=_SLUG,
    commitment_id=_SLUG,
    version=st.integers(2, MAX_COUNT),
    terms=st.builds(
        CommitmentTerms,
        principal=_text(1, 256),
        purpose=_text(0, 1024),
        allowed_actions=st.lists(_text(1, 256), max_size=8),
        resource_bounds=st.lists(_text(1, 256), max_size=8),
        valid_from=_TIME,
        valid_until=st.none() | _TIME,
        spend=st.none()
        | st.builds(
            SpendCeiling,
            currency=st.just("EUR"),
            per_action_minor=st.none() | _AMOUNT,
            per_window_minor=st.none() | _AMOUNT,
            window_s=st.none() | st.integers(1, 366 * 86400),
        ),
        rate=st.none()
        | st.builds(
            RateLimit, max_count=st.integers(0, MAX_COUNT), window_s=st.integers(1, 366 * 86400)
        ),
        data_classes=st.just([]),
        audit=st.builds(
            AuditContext, policy_version=_text(1, 256), task_digest=st.none() | _text(0, 256)
        ),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=_ACTIONS | _OBSERVATIONS | _AMENDMENTS)
def test_admit_accepts_when_signed_event_is_within_every_bound(event: Event) -> None:
    """Any event inside the contract's bounds, signed by its org's key, is admitted unchanged."""
    data = encode_event(event)
    verdict = admit(_signed(data), KEYS, "tl")
    assert isinstance(verdict, Admitted), verdict
    assert verdict.event == event
