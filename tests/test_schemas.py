"""The published wire contract: schema files, examples, and what `decode_event` refuses."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from service.app.schemas import (
    EVENT_SCHEMA_NAME,
    event_schema_name,
    render_schemas,
    stale_schemas,
    write_schemas,
)
from service.domain.events import (
    EVENT_TYPES,
    EventDecodeError,
    PublisherKeyRegistered,
    decode_event,
    encode_event,
    event_kind,
)
from service.domain.signing import from_b64url, key_id_for

REPO = Path(__file__).parents[1]
SCHEMAS = REPO / "schemas"
EXAMPLES = SCHEMAS / "examples"
KINDS = sorted(str(t.__struct_config__.tag) for t in EVENT_TYPES)
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))


# --- schema files -------------------------------------------------------------------


def test_checked_in_schemas_are_current_when_rendered_from_the_contract() -> None:
    """The files under `schemas/` equal what the contract renders today."""
    stale = stale_schemas(SCHEMAS)
    assert stale == [], (
        f"schema files out of date with service/domain/events.py: {stale}; "
        "run `trustledger schemas write` and commit the result"
    )


def test_render_is_identical_when_called_twice() -> None:
    """Rendering is deterministic: the same contract gives the same bytes."""
    assert render_schemas() == render_schemas()


def test_rendered_files_are_canonical_json_when_parsed() -> None:
    """Each file is sorted, two-space-indented JSON with a trailing newline and a v1 `$id`."""
    for name, content in render_schemas().items():
        document = json.loads(content)
        assert content == (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert document["$id"] == f"https://trustledger.dev/schemas/v1/{name}"
        assert document["title"]
        assert document["description"]


def test_union_schema_discriminates_on_kind_when_rendered() -> None:
    """`event.schema.json` maps every kind to its definition through `kind`."""
    document = json.loads(render_schemas()[EVENT_SCHEMA_NAME])
    assert document["discriminator"]["propertyName"] == "kind"
    assert sorted(document["discriminator"]["mapping"]) == KINDS


def _indent_descriptions(value: object) -> object:
    """`value` with every description re-indented as msgspec before 0.23 rendered docstrings."""
    if isinstance(value, dict):
        return {
            key: (
                "\n    ".join(item.split("\n"))
                if key == "description"
                else _indent_descriptions(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_indent_descriptions(item) for item in value]
    return value


def test_render_is_unchanged_when_library_formats_docstrings_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The files do not depend on how the installed msgspec renders a Struct's docstring."""
    expected = render_schemas()
    schema = msgspec.json.schema
    monkeypatch.setattr(msgspec.json, "schema", lambda tp: _indent_descriptions(schema(tp)))
    assert render_schemas() == expected


def test_stale_lists_nothing_when_freshly_written(tmp_path: Path) -> None:
    """After `write_schemas`, `stale_schemas` reports no file; a second write writes none."""
    written = write_schemas(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(render_schemas())
    assert stale_schemas(tmp_path) == []
    assert write_schemas(tmp_path) == []


def test_stale_lists_file_when_missing_or_edited(tmp_path: Path) -> None:
    """A deleted or hand-edited schema file is reported by name and rewritten by `write_schemas`."""
    write_schemas(tmp_path)
    edited = event_schema_name("action.performed")
    (tmp_path / EVENT_SCHEMA_NAME).unlink()
    (tmp_path / edited).write_bytes(b"{}\n")
    assert sorted(stale_schemas(tmp_path)) == sorted([EVENT_SCHEMA_NAME, edited])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in write_schemas(tmp_path)) == sorted(
        [EVENT_SCHEMA_NAME, edited]
    )
    assert stale_schemas(tmp_path) == []


# --- examples -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=KINDS)
def test_kind_has_example_and_schema_when_listed_in_event_types(kind: str) -> None:
    """Every kind in `EVENT_TYPES` has a checked-in example and schema file."""
    assert (EXAMPLES / f"{kind}.json").is_file(), f"no example for {kind}"
    assert (SCHEMAS / event_schema_name(kind)).is_file(), f"no schema file for {kind}"


def test_examples_name_known_kinds_when_listed() -> None:
    """No example file exists for a kind the contract does not define."""
    assert sorted(p.stem for p in EXAMPLE_FILES) == KINDS


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.stem for p in EXAMPLE_FILES])
def test_example_round_trips_when_decoded_and_reencoded(path: Path) -> None:
    """An example decodes, has the kind its file names, and re-encodes to the same JSON value."""
    raw = path.read_bytes()
    event = decode_event(raw)
    assert event_kind(event) == path.stem
    assert json.loads(encode_event(event)) == json.loads(raw)


def test_example_key_id_matches_when_publisher_key_registered() -> None:
    """The example key is a real 32-byte key and its `key_id` is derived from it."""
    event = decode_event((EXAMPLES / "publisher_key.registered.json").read_bytes())
    assert isinstance(event, PublisherKeyRegistered)
    public_key = from_b64url(event.public_key)
    assert len(public_key) == 32
    assert event.key_id == key_id_for(public_key)


# --- decode_event refusals -----------------------------------------------------------

_BASE: dict[str, object] = {
    "kind": "action.performed",
    "id": "01JPAE81WRZWTQC8HYHVYJPAPX",
    "org": "acme",
    "occurred_at": "2025-03-14T13:42:07Z",
    "agent": "billing-bot",
    "action": "payments.refund",
    "resource": "payhub:acct_acme/charges/ch_3PzQ7kLm2Xv9",
    "amount": {"amount_minor": 12900, "currency": "EUR"},
}


def _event(**changes: object) -> bytes:
    """The base event with fields replaced (or dropped, for a value of `...`)."""
    fields = {**_BASE, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def _commitment(valid_from: str) -> bytes:
    terms = {
        "principal": "finance-ops@acme.example",
        "purpose": "refunds",
        "allowed_actions": ["payments.refund"],
        "resource_bounds": ["payhub:*"],
        "valid_from": valid_from,
        "audit": {"policy_version": "1"},
    }
    return _event(
        kind="commitment.declared",
        action=...,
        resource=...,
        amount=...,
        commitment_id="refunds",
        terms=terms,
    )


def test_decode_accepts_when_base_event_is_valid() -> None:
    """The base event of the refusal table decodes, so each refusal is due to its one change."""
    decode_event(_event())
    decode_event(_commitment("2025-03-03T09:00:00Z"))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_event(occurred_at="2025-03-14T13:42:07+00:00"), id="utc-as-plus-zero"),
        pytest.param(_event(amount=..., data_classes=...), id="defaults-omitted"),
        pytest.param(_event(amount=None), id="null-optional"),
        pytest.param(_event(occurred_at="2025-03-14T13:42:07.123456Z"), id="fractional-seconds"),
    ],
)
def test_decode_accepts_when_variant_is_allowed(data: bytes) -> None:
    """Forms the contract allows decode: `+00:00`, omitted defaults, null optionals."""
    decode_event(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b'{"kind": "action.performed",', "malformed_json", id="truncated-json"),
        pytest.param(b"not json", "malformed_json", id="not-json"),
        pytest.param(b"", "malformed_json", id="empty"),
        pytest.param(b"[]", "schema_invalid", id="not-an-object"),
        pytest.param(_event(kind="action.deleted"), "schema_invalid", id="unknown-kind"),
        pytest.param(_event(kind=...), "schema_invalid", id="missing-kind"),
        pytest.param(_event(agent=...), "schema_invalid", id="missing-field"),
        pytest.param(
            _event(amount={"amount_minor": 1.5, "currency": "EUR"}),
            "schema_invalid",
            id="float-amount",
        ),
        pytest.param(
            _event(amount={"amount_minor": -100, "currency": "EUR"}),
            "schema_invalid",
            id="negative-amount",
        ),
        pytest.param(
            _event(amount={"amount_minor": 100, "currency": "eur"}),
            "schema_invalid",
            id="lowercase-currency",
        ),
        pytest.param(
            _event(occurred_at="2025-03-14T15:42:07+02:00"), "schema_invalid", id="non-utc-time"
        ),
        pytest.param(_event(occurred_at="2025-03-14T13:42:07"), "schema_invalid", id="naive-time"),
        pytest.param(
            _commitment("2025-03-03T11:00:00+02:00"), "schema_invalid", id="non-utc-valid-from"
        ),
        pytest.param(_event(note="hi"), "schema_invalid", id="unknown-extra-field"),
        pytest.param(
            _event(amount={"amount_minor": 1, "currency": "EUR", "fx": 1}),
            "schema_invalid",
            id="unknown-nested-field",
        ),
        pytest.param(_event(org="Acme"), "schema_invalid", id="org-uppercase"),
        pytest.param(_event(org="acme.eu"), "schema_invalid", id="org-with-dot"),
        pytest.param(_event(org="acme*"), "schema_invalid", id="org-with-wildcard"),
        pytest.param(
            _event(org="acme\n"),
            "schema_invalid",
            id="org-trailing-newline",
        ),
        pytest.param(_event(id=""), "schema_invalid", id="empty-id"),
    ],
)
def test_decode_refuses_with_reason_when_event_is_invalid(data: bytes, reason: str) -> None:
    """Invalid bytes raise `EventDecodeError` carrying the expected reason."""
    with pytest.raises(EventDecodeError) as caught:
        decode_event(data)
    assert caught.value.reason == reason


def test_decode_error_is_value_error_when_raised() -> None:
    """`EventDecodeError` is a `ValueError` and never leaks msgspec's own exceptions."""
    with pytest.raises(ValueError, match=r"^malformed_json: ") as caught:
        decode_event(b"{")
    assert not isinstance(caught.value, msgspec.DecodeError)
