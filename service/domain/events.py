"""The wire contract: every event a publisher may put on NATS.

These msgspec Structs are the single source of truth. The JSON Schema files in
`schemas/` are generated from them (`trustledger schemas write`), and a test
fails when the files are stale.

Rules that hold for every event:

* `kind` names the event type (a tagged union on that field).
* `id` is assigned by the publisher and unique within its org; the ledger
  refuses a second event with the same `(org, id)` whatever the broker does.
* `org` is the publishing org; the signing key must belong to it.
* Times are RFC 3339 in UTC (`Z` or `+00:00`); amounts are integers in minor
  units (cents), with an ISO 4217 currency code. There are no floats anywhere.

Schema evolution: new fields are added with defaults; a field is never
repurposed. Unknown fields are refused, so a typo never passes silently.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import msgspec

# Every pattern ends in `(?!\n)$`, not a bare `$`: Python's `$` also matches
# before a trailing newline, so `"acme\n"` would pass as a slug. The lookahead
# means the same in JSON Schema's ECMA-262 regexes, so the published schema
# and the decoder agree.
SLUG_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}(?!\n)$"
"""Org and agent ids: lowercase, digits, `-` and `_`, at most 63 characters.

They travel as NATS subject tokens, so they can hold neither `.` nor `*`/`>`."""

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN, description="lowercase id")]
EventId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern="^[A-Za-z0-9][A-Za-z0-9._:-]*(?!\n)$",
        description="publisher-assigned id, unique within the org (a UUID or ULID is ideal)",
    ),
]
Text = Annotated[str, msgspec.Meta(max_length=1024)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Pattern = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        description="`*` matches any run of characters, everything else is literal",
    ),
]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}(?!\n)$", description="ISO 4217 code")]
MinorUnits = Annotated[int, msgspec.Meta(ge=0, description="amount in minor units (cents)")]
PositiveSeconds = Annotated[int, msgspec.Meta(gt=0, le=366 * 24 * 3600)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339, UTC")]
DataClass = Annotated[str, msgspec.Meta(pattern="^[a-z0-9][a-z0-9_.-]{0,62}(?!\n)$")]
Base64Key = Annotated[
    str,
    msgspec.Meta(
        pattern="^[A-Za-z0-9_-]{43}(?!\n)$",
        description="Ed25519 public key, 32 bytes, base64url without padding",
    ),
]
KeyId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}(?!\n)$")]


class Money(msgspec.Struct, forbid_unknown_fields=True):
    """An amount in minor units of one currency."""

    amount_minor: MinorUnits
    currency: Currency


class SpendCeiling(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Spend bounds: per single action and per rolling window, in one currency."""

    currency: Currency
    per_action_minor: MinorUnits | None = None
    per_window_minor: MinorUnits | None = None
    window_s: PositiveSeconds | None = None


class RateLimit(msgspec.Struct, forbid_unknown_fields=True):
    """At most `max_count` actions in any rolling window of `window_s` seconds."""

    max_count: Annotated[int, msgspec.Meta(ge=0)]
    window_s: PositiveSeconds


class AuditContext(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Why the commitment exists: the policy version and the task it serves."""

    policy_version: ShortText
    task_digest: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class CommitmentTerms(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an agent promises: the bounds its actions must stay inside."""

    principal: ShortText
    purpose: Text
    allowed_actions: list[Pattern]
    resource_bounds: list[Pattern]
    valid_from: UtcTime
    valid_until: UtcTime | None = None
    spend: SpendCeiling | None = None
    rate: RateLimit | None = None
    data_classes: list[DataClass] = msgspec.field(default_factory=list)
    audit: AuditContext


class _Event(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, kw_only=True):
    id: EventId
    org: Slug
    occurred_at: UtcTime


class AgentRegistered(_Event, tag="agent.registered"):
    """An org introduces one of its agents."""

    agent: Slug
    display_name: ShortText
    principal: ShortText
    runtime: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class AgentRetired(_Event, tag="agent.retired"):
    """The agent will act no more; anything it does after this is a violation."""

    agent: Slug
    reason: Text = ""


class CommitmentDeclared(_Event, tag="commitment.declared"):
    """A new commitment, version 1."""

    agent: Slug
    commitment_id: Slug
    terms: CommitmentTerms


class CommitmentAmended(_Event, tag="commitment.amended"):
    """A new version of an existing commitment; it replaces the previous terms."""

    agent: Slug
    commitment_id: Slug
    version: Annotated[int, msgspec.Meta(ge=2)]
    terms: CommitmentTerms


class CommitmentRevoked(_Event, tag="commitment.revoked"):
    """The commitment stops covering any action from `occurred_at` on."""

    agent: Slug
    commitment_id: Slug
    reason: Text = ""


class ActionPerformed(_Event, tag="action.performed"):
    """An action, self-reported by the agent's own runtime."""

    agent: Slug
    action: ShortText
    resource: Annotated[str, msgspec.Meta(max_length=1024)]
    amount: Money | None = None
    data_classes: list[DataClass] = msgspec.field(default_factory=list)
    correlation_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class ActionObserved(_Event, tag="action.observed"):
    """A gateway of `org` saw an agent (possibly of another org) act through it."""

    agent_org: Slug
    agent: Slug
    gateway: ShortText
    action: ShortText
    resource: Annotated[str, msgspec.Meta(max_length=1024)]
    amount: Money | None = None
    data_classes: list[DataClass] = msgspec.field(default_factory=list)
    correlation_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class PublisherKeyRegistered(_Event, tag="publisher_key.registered"):
    """A new Ed25519 publisher key for `org`, signed by a key the org already has.

    An org's first key is registered by the operator (`trustledger keys create`);
    that event is signed by the new key itself and appended without NATS."""

    key_id: KeyId
    public_key: Base64Key
    label: Annotated[str, msgspec.Meta(max_length=256)] = ""


class PublisherKeyRevoked(_Event, tag="publisher_key.revoked"):
    """Events signed by `key_id` after this one are quarantined."""

    key_id: KeyId
    reason: Text = ""


Event = (
    AgentRegistered
    | AgentRetired
    | CommitmentDeclared
    | CommitmentAmended
    | CommitmentRevoked
    | ActionPerformed
    | ActionObserved
    | PublisherKeyRegistered
    | PublisherKeyRevoked
)

EVENT_TYPES: tuple[type[_Event], ...] = (
    AgentRegistered,
    AgentRetired,
    CommitmentDeclared,
    CommitmentAmended,
    CommitmentRevoked,
    ActionPerformed,
    ActionObserved,
    PublisherKeyRegistered,
    PublisherKeyRevoked,
)

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


class EventDecodeError(ValueError):
    """The bytes are not a valid event; `reason` is `malformed_json` or `schema_invalid`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_event(data: bytes) -> Event:
    """Decode and validate one event, raising `EventDecodeError` with a reason."""
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as e:
        raise EventDecodeError("schema_invalid", str(e)) from e
    except msgspec.DecodeError as e:
        raise EventDecodeError("malformed_json", str(e)) from e
    _refuse_duplicate_members(data)
    for name, value in _times(event):
        offset = value.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise EventDecodeError("schema_invalid", f"{name} must be UTC, got {value.isoformat()}")
    return event


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise EventDecodeError("schema_invalid", f"duplicate member(s) {', '.join(repeated)}")
    return dict(pairs)


def load_json_strict(data: bytes) -> object:
    """Parse UTF-8 JSON, refusing `{"kind": "a", "kind": "b"}`-style repeated members.

    JSON parsers disagree on which duplicate wins; an auditor's parser must
    read exactly what the ledger read, so no event may have one."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise EventDecodeError("malformed_json", str(e)) from e


def _refuse_duplicate_members(data: bytes) -> None:
    load_json_strict(data)


def encode_event(event: Event) -> bytes:
    """Encode an event to JSON bytes (publishers sign exactly these bytes)."""
    return _encoder.encode(event)


def event_kind(event: Event) -> str:
    """The `kind` tag of an event."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def agent_of(event: Event) -> tuple[str, str] | None:
    """The (org, agent) an event is about, or None for org-level events."""
    if isinstance(event, ActionObserved):
        return (event.agent_org, event.agent)
    if isinstance(event, PublisherKeyRegistered | PublisherKeyRevoked):
        return None
    return (event.org, event.agent)


def _times(event: Event) -> list[tuple[str, datetime]]:
    times = [("occurred_at", event.occurred_at)]
    if isinstance(event, CommitmentDeclared | CommitmentAmended):
        times.append(("terms.valid_from", event.terms.valid_from))
        if event.terms.valid_until is not None:
            times.append(("terms.valid_until", event.terms.valid_until))
    return times
