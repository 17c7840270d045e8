"""Every text, integer, list, time and the whole event have a bound: at it, admitted; past it, refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nats.js.errors
import pytest

from service.adapters import broker
from service.app.schemas import render_schemas
from service.config import Settings
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER
from service.domain.events import (
    MAX_COUNT,
    MAX_EVENT_BYTES,
    MAX_JSON_DEPTH,
    MAX_LIST_ITEMS,
    MAX_SAFE_INTEGER,
    STREAM_MAX_MESSAGE_BYTES,
    EventDecodeError,
    decode_event,
    load_json_strict,
    printable,
)

_ACTION: dict[str, object] = {
    "kind": "action.performed",
    "id": "01JPAE81WRZWTQC8HYHVYJPAPX",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent": "billing-bot",
    "action": "payments.refund",
    "resource": "order:42",
    "amount": {"amount_minor": 12900, "currency": "EUR"},
    "data_classes": ["pii"],
    "correlation_id": "req-1",
}
_COMMITMENT: dict[str, object] = {
    "kind": "commitment.amended",
    "id": "c-2",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent": "billing-bot",
    "commitment_id": "refunds",
    "version": 2,
    "terms": {
        "principal": "finance-ops@acme.example",
        "purpose": "refunds",
        "allowed_actions": ["payments.refund"],
        "resource_bounds": ["order:*"],
        "valid_from": "2025-03-03T09:00:00Z",
        "valid_until": "2026-03-03T09:00:00Z",
        "spend": {
            "currency": "EUR",
            "per_action_minor": 1000,
            "per_window_minor": 5000,
            "window_s": 3600,
        },
        "rate": {"max_count": 10, "window_s": 60},
        "data_classes": ["pii"],
        "audit": {"policy_version": "7", "task_digest": "sha256:ab"},
    },
}
_OBSERVED: dict[str, object] = {
    "kind": "action.observed",
    "id": "o-1",
    "org": "gw",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent_org": "acme",
    "agent": "billing-bot",
    "gateway": "edge-1",
    "action": "payments.refund",
    "resource": "order:42",
}
_REGISTERED: dict[str, object] = {
    "kind": "agent.registered",
    "id": "a-1",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent": "billing-bot",
    "display_name": "Billing bot",
    "principal": "finance-ops@acme.example",
    "runtime": "py",
}
_RETIRED: dict[str, object] = {
    "kind": "agent.retired",
    "id": "a-2",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent": "billing-bot",
    "reason": "done",
}
_KEY_REVOKED: dict[str, object] = {
    "kind": "publisher_key.revoked",
    "id": "k-2",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "key_id": "0123456789abcdef",
    "reason": "lost",
}
_KEY_REGISTERED: dict[str, object] = {
    "kind": "publisher_key.registered",
    "id": "k-1",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "key_id": "0123456789abcdef",
    "public_key": "A" * 43,
    "label": "ops",
}


def _with(base: dict[str, object], path: str, value: object) -> bytes:
    """`base` with the member at the dotted `path` set to `value`, as JSON bytes."""
    event = json.loads(json.dumps(base))
    *parents, leaf = path.split(".")
    target = event
    for name in parents:
        target = target[name]
    target[leaf] = value
    return json.dumps(event).encode()


# (event, path, longest allowed, shortest refused) for every free text of the contract.
_TEXTS = [
    (_ACTION, "action", 256),
    (_ACTION, "resource", 1024),
    (_ACTION, "correlation_id", 128),
    (_OBSERVED, "gateway", 256),
    (_OBSERVED, "action", 256),
    (_OBSERVED, "resource", 1024),
    (_REGISTERED, "display_name", 256),
    (_REGISTERED, "principal", 256),
    (_REGISTERED, "runtime", 256),
    (_RETIRED, "reason", 1024),
    (_KEY_REVOKED, "reason", 1024),
    (_KEY_REGISTERED, "label", 256),
    (_COMMITMENT, "terms.principal", 256),
    (_COMMITMENT, "terms.purpose", 1024),
    (_COMMITMENT, "terms.audit.policy_version", 256),
    (_COMMITMENT, "terms.audit.task_digest", 256),
]
_TEXT_IDS = [f"{e['kind']}.{p}" for e, p, _ in _TEXTS]


@pytest.mark.parametrize(("base", "path", "limit"), _TEXTS, ids=_TEXT_IDS)
def test_text_is_admitted_at_its_bound_and_refused_past_it_when_decoded(
    base: dict[str, object], path: str, limit: int
) -> None:
    """A free text of exactly its maximum length decodes; one character more is schema_invalid."""
    decode_event(_with(base, path, "é" * limit))
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_with(base, path, "é" * (limit + 1)))
    assert caught.value.reason == "schema_invalid"


@pytest.mark.parametrize(
    "character",
    ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"],
    ids=lambda c: f"U+{ord(c):04X}",
)
@pytest.mark.parametrize(("base", "path", "limit"), _TEXTS, ids=_TEXT_IDS)
def test_text_is_refused_when_it_holds_a_control_character(
    base: dict[str, object], path: str, limit: int, character: str
) -> None:
    """NUL and every other C0/C1 control or DEL, anywhere in a free text, is schema_invalid."""
    for text in (character, f"a{character}b", f"ab{character}"):
        with pytest.raises(EventDecodeError) as caught:
            decode_event(_with(base, path, text))
        assert caught.value.reason == "schema_invalid"
        assert "control characters" in caught.value.detail


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [
        pytest.param(_ACTION, "org", "a" * 63, id="slug-63"),
        pytest.param(_ACTION, "id", "x" * 128, id="event-id-128"),
        pytest.param(_ACTION, "amount.amount_minor", MAX_SAFE_INTEGER, id="amount-max"),
        pytest.param(_ACTION, "amount.amount_minor", 0, id="amount-zero"),
        pytest.param(_ACTION, "data_classes", ["d"] * MAX_LIST_ITEMS, id="data-classes-64"),
        pytest.param(_ACTION, "resource", "ü" * 1024, id="resource-1024"),
        pytest.param(_ACTION, "correlation_id", "\U0001f600", id="astral-character"),
        pytest.param(_COMMITMENT, "version", MAX_COUNT, id="version-max"),
        pytest.param(_COMMITMENT, "terms.rate.max_count", MAX_COUNT, id="max-count-max"),
        pytest.param(
            _COMMITMENT, "terms.spend.per_action_minor", MAX_SAFE_INTEGER, id="per-action-max"
        ),
        pytest.param(
            _COMMITMENT, "terms.spend.per_window_minor", MAX_SAFE_INTEGER, id="per-window-max"
        ),
        pytest.param(_COMMITMENT, "terms.rate.window_s", 366 * 86400, id="window-366d"),
        pytest.param(
            _COMMITMENT, "terms.allowed_actions", ["a*"] * MAX_LIST_ITEMS, id="actions-64"
        ),
        pytest.param(
            _COMMITMENT, "terms.resource_bounds", ["*" * 256] * MAX_LIST_ITEMS, id="bounds-64x256"
        ),
        pytest.param(_COMMITMENT, "terms.data_classes", ["d"] * MAX_LIST_ITEMS, id="classes-64"),
        pytest.param(_ACTION, "occurred_at", "1970-01-01T00:00:00Z", id="earliest-time"),
        pytest.param(_ACTION, "occurred_at", "8999-12-31T23:59:59.999999Z", id="latest-time"),
        pytest.param(
            _COMMITMENT, "terms.valid_until", "8999-12-31T23:59:59Z", id="latest-valid-until"
        ),
    ],
)
def test_value_is_admitted_when_it_is_at_its_bound(
    base: dict[str, object], path: str, value: object
) -> None:
    """Each bound is inclusive where the table says so: the value at the bound decodes."""
    decode_event(_with(base, path, value))


@pytest.mark.parametrize(
    ("base", "path", "value"),
    [
        pytest.param(_ACTION, "org", "a" * 64, id="slug-64"),
        pytest.param(_ACTION, "id", "x" * 129, id="event-id-129"),
        pytest.param(_ACTION, "amount.amount_minor", MAX_SAFE_INTEGER + 1, id="amount-2^53"),
        pytest.param(_ACTION, "amount.amount_minor", 2**63, id="amount-2^63"),
        pytest.param(_ACTION, "amount.amount_minor", 2**64, id="amount-2^64"),
        pytest.param(_ACTION, "amount.amount_minor", 10**40, id="amount-10^40"),
        pytest.param(_ACTION, "data_classes", ["d"] * (MAX_LIST_ITEMS + 1), id="data-classes-65"),
        pytest.param(_ACTION, "data_classes", ["d" * 64], id="data-class-64-chars"),
        pytest.param(_ACTION, "amount.currency", "EURO", id="currency-4"),
        pytest.param(_OBSERVED, "agent_org", "a\x00", id="agent-org-nul"),
        pytest.param(_COMMITMENT, "version", MAX_COUNT + 1, id="version-over"),
        pytest.param(_COMMITMENT, "version", 2**31, id="version-2^31"),
        pytest.param(_COMMITMENT, "terms.rate.max_count", MAX_COUNT + 1, id="max-count-over"),
        pytest.param(
            _COMMITMENT,
            "terms.spend.per_action_minor",
            MAX_SAFE_INTEGER + 1,
            id="per-action-over",
        ),
        pytest.param(
            _COMMITMENT,
            "terms.spend.per_window_minor",
            2**63,
            id="per-window-2^63",
        ),
        pytest.param(_COMMITMENT, "terms.rate.window_s", 366 * 86400 + 1, id="window-over"),
        pytest.param(_COMMITMENT, "terms.spend.window_s", 0, id="window-zero"),
        pytest.param(
            _COMMITMENT,
            "terms.allowed_actions",
            ["a*"] * (MAX_LIST_ITEMS + 1),
            id="actions-65",
        ),
        pytest.param(
            _COMMITMENT,
            "terms.resource_bounds",
            ["r"] * (MAX_LIST_ITEMS + 1),
            id="bounds-65",
        ),
        pytest.param(_COMMITMENT, "terms.resource_bounds", ["*" * 257], id="pattern-257"),
        pytest.param(_COMMITMENT, "terms.resource_bounds", [""], id="pattern-empty"),
        pytest.param(
            _COMMITMENT,
            "terms.data_classes",
            ["d"] * (MAX_LIST_ITEMS + 1),
            id="classes-65",
        ),
        pytest.param(_ACTION, "occurred_at", "1969-12-31T23:59:59.999999Z", id="before-1970"),
        pytest.param(_ACTION, "occurred_at", "0001-01-01T00:00:00Z", id="year-1"),
        pytest.param(_ACTION, "occurred_at", "9000-01-01T00:00:00Z", id="year-9000"),
        pytest.param(_ACTION, "occurred_at", "9999-12-31T23:59:59Z", id="year-9999"),
        pytest.param(_COMMITMENT, "terms.valid_from", "0001-01-01T00:00:00Z", id="valid-from-1"),
        pytest.param(
            _COMMITMENT, "terms.valid_until", "9999-12-31T23:59:59Z", id="valid-until-9999"
        ),
        pytest.param(_ACTION, "kind", "action.performed\x00", id="kind-with-nul"),
    ],
)
def test_value_is_refused_when_it_is_past_its_bound(
    base: dict[str, object], path: str, value: object
) -> None:
    """Past each bound, the event is schema_invalid (never an OverflowError, never admitted)."""
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_with(base, path, value))
    assert caught.value.reason == "schema_invalid"
    assert caught.value.detail.isprintable()


def test_member_name_is_refused_when_it_holds_a_nul() -> None:
    """A member name with a NUL is an unknown member, and the detail shows it escaped."""
    data = _with(_ACTION, "agent\x00", "x")
    with pytest.raises(EventDecodeError) as caught:
        decode_event(data)
    assert caught.value.reason == "schema_invalid"
    assert "\x00" not in caught.value.detail
    assert "\\x00" in caught.value.detail


def test_event_is_admitted_at_max_size_and_refused_one_byte_over_when_decoded() -> None:
    """The whole event is bounded in bytes: exactly MAX_EVENT_BYTES decodes, one more is refused."""
    data = json.dumps(_ACTION).encode()
    at_bound = data[:-1] + b" " * (MAX_EVENT_BYTES - len(data)) + b"}"
    assert len(at_bound) == MAX_EVENT_BYTES
    decode_event(at_bound)
    with pytest.raises(EventDecodeError) as caught:
        decode_event(at_bound[:-1] + b" }")
    assert caught.value.reason == "event_too_large"


def _nested(depth: int, before_kind: bool) -> bytes:
    """A valid event with an extra member nesting `depth` arrays, before or after `kind`."""
    deep = b"[" * depth + b"]" * depth
    body = json.dumps(_ACTION).encode()[1:]
    if before_kind:
        return b'{"x":' + deep + b"," + body
    return body[:-1].join([b"{", b',"x":' + deep + b"}"])


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 1_000, 32_000])
@pytest.mark.parametrize("before_kind", [True, False], ids=["before-kind", "after-kind"])
def test_decode_refuses_without_recursing_when_event_nests_deeply(
    depth: int, before_kind: bool
) -> None:
    """Nesting of any depth is a schema_invalid refusal, never a RecursionError."""
    with pytest.raises(EventDecodeError) as caught:
        decode_event(_nested(depth, before_kind))
    assert caught.value.reason == "schema_invalid"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b'{"a": NaN}', "malformed_json", id="nan"),
        pytest.param(b'{"a": Infinity}', "malformed_json", id="infinity"),
        pytest.param(b'{"a": -Infinity}', "malformed_json", id="minus-infinity"),
        pytest.param(b'{"a": 1e400}', "malformed_json", id="double-overflow"),
        pytest.param(b'{"a": ' + b"9" * 4301 + b"}", "malformed_json", id="4301-digits"),
        pytest.param(b'{"a": "\\ud800"}', "malformed_json", id="lone-high-surrogate"),
        pytest.param(b'{"a": "\\udc00"}', "malformed_json", id="lone-low-surrogate"),
        pytest.param(b'{"a": "\\udc00\\ud800"}', "malformed_json", id="reversed-pair"),
        pytest.param(b'{"\\ud800": 1}', "malformed_json", id="surrogate-member-name"),
        pytest.param(b'{"a": ["x", {"b": "\\ud83d"}]}', "malformed_json", id="nested-surrogate"),
        pytest.param(b'{"a": "\xed\xa0\x80"}', "malformed_json", id="utf8-encoded-surrogate"),
        pytest.param(b'{"a": "\xff"}', "malformed_json", id="invalid-utf8"),
        pytest.param(b'{"a": 1, "a": 1}', "schema_invalid", id="repeated-member"),
        pytest.param(
            b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
            "schema_invalid",
            id="depth-over",
        ),
        pytest.param(b"[" * 200_000, "schema_invalid", id="unclosed-deep"),
        pytest.param(b'"\\"' * 30_000, "malformed_json", id="unterminated-escapes"),
    ],
)
def test_strict_reader_refuses_with_reason_when_json_is_not_what_the_ledger_reads(
    data: bytes, reason: str
) -> None:
    """`load_json_strict` refuses non-JSON constants, lone surrogates, repeats and deep nesting."""
    with pytest.raises(EventDecodeError) as caught:
        load_json_strict(data)
    assert caught.value.reason == reason
    assert caught.value.detail.isprintable()


@pytest.mark.parametrize(
    ("data", "value"),
    [
        pytest.param(b'"\\ud83d\\ude00"', "\U0001f600", id="surrogate-pair"),
        pytest.param(
            b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
            json.loads(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH),
            id="depth-at-bound",
        ),
        pytest.param(b'"[[[[[[[[[[[[[[[[[[[[[[["', "[" * 23, id="brackets-in-string"),
        pytest.param(b'["\\"[[[[[[[[[[[[[[[[[[["]', ['"' + "[" * 19], id="escaped-quote"),
        pytest.param(b'{"a": 1.5e300, "b": -0}', {"a": 1.5e300, "b": 0}, id="finite-numbers"),
        pytest.param(b"9" * 4300, int("9" * 4300), id="4300-digits"),
    ],
)
def test_strict_reader_accepts_when_json_is_within_bounds(data: bytes, value: object) -> None:
    """Pairs, nesting at the bound, brackets inside strings and large finite numbers parse."""
    assert load_json_strict(data) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("nul\x00here", "nul\\x00here"),
        ("tab\tnewline\n", "tab\\tnewline\\n"),
        ("lone \ud800", "lone \\ud800"),
        ("é and \U0001f600", "é and \U0001f600"),
        ("x" * 600, "x" * 509 + "..."),
    ],
)
def test_printable_escapes_and_cuts_when_text_is_hostile(text: str, expected: str) -> None:
    """Details are printable: controls and lone surrogates escaped, at most 512 characters."""
    assert printable(text) == expected


def _schemas_of(value: object) -> Iterator[dict[str, object]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _schemas_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from _schemas_of(item)


@pytest.mark.parametrize("name", sorted(render_schemas()))
def test_schema_states_a_bound_for_every_string_integer_and_array_when_rendered(
    name: str,
) -> None:
    """Each published schema carries maxLength, maximum and maxItems wherever they apply."""
    document = json.loads(render_schemas()[name])
    for schema in _schemas_of(document):
        kind = schema.get("type")
        if kind == "string" and "format" not in schema and "enum" not in schema:
            assert "maxLength" in schema, schema
        elif kind == "integer":
            assert "maximum" in schema, schema
        elif kind == "array":
            assert "maxItems" in schema, schema


def test_checked_in_schema_states_the_bounds_when_read() -> None:
    """The checked-in union schema names the amount, version and list bounds."""
    text = (Path(__file__).parents[1] / "schemas" / "event.schema.json").read_text()
    assert f'"maximum": {MAX_SAFE_INTEGER}' in text
    assert f'"maximum": {MAX_COUNT}' in text
    assert f'"maxItems": {MAX_LIST_ITEMS}' in text
    assert f"{MAX_EVENT_BYTES} bytes" in text


async def test_stream_refuses_publish_when_message_exceeds_its_max_size(settings: Settings) -> None:
    """The stream stores an event of MAX_EVENT_BYTES with its headers; a larger message is
    refused to its publisher, never stored."""
    assert settings.nats_url is not None
    nc = await broker.connect(settings.nats_url, name="test-max-message")
    try:
        js = nc.jetstream()
        await broker.ensure_stream(js, settings)
        subject = f"{settings.subject_prefix}.ev.acme.bot"
        headers = {KEY_ID_HEADER: "0" * 16, SIGNATURE_HEADER: "A" * 86, "Nats-Msg-Id": "x" * 200}
        ack = await js.publish(subject, b" " * MAX_EVENT_BYTES, headers=headers)
        assert ack.seq == 1
        with pytest.raises(nats.js.errors.APIError, match="maximum"):
            await js.publish(subject, b" " * (STREAM_MAX_MESSAGE_BYTES + 1))
        assert (await js.stream_info(settings.stream)).state.messages == 1
    finally:
        await nc.close()
