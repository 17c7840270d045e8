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
repurposed. Unknown fields are refused, so a typo never passes silently. A new
field that admission must require from then on (`ADMISSION_REQUIRED`) still gets
a default here, so that events admitted before it existed still decode.

Bounds. Every text, integer, list and time below has a bound, and so has the
whole event (`MAX_EVENT_BYTES`, `MAX_JSON_DEPTH`): a publisher may be hostile,
and what the ledger admits must fit PostgreSQL (no NUL in `text`, `bigint` and
`integer` columns), Python's arithmetic (`datetime` ends at year 9999) and
every consumer's JSON (integers within +-(2^53 - 1)). Texts hold no control
character (`PRINTABLE_PATTERN`). The JSON Schema states each bound the schema
language can express; `docs/wire-contract.md` ("Bounds") lists them all.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated

import msgspec

MAX_EVENT_BYTES = 65_536
"""The largest event payload admitted, in bytes of UTF-8 JSON."""

MAX_JSON_DEPTH = 16
"""The deepest nesting of JSON arrays and objects admitted (the deepest valid event has 3)."""

STREAM_MAX_MESSAGE_BYTES = MAX_EVENT_BYTES + 4_096
"""The stream's limit on a whole message: one event plus room for its headers."""

MAX_SAFE_INTEGER = 2**53 - 1
"""The largest amount: exact in every JSON reader (I-JSON, RFC 7493), and 1024 of
them still sum inside a PostgreSQL `bigint`."""

MAX_COUNT = 1_000_000_000
"""The largest `rate.max_count` and commitment `version`: inside PostgreSQL `integer`."""

MAX_LIST_ITEMS = 64
"""The most patterns in `allowed_actions` or `resource_bounds`, and data classes in a list."""

EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC)
"""Times are refused outside `[EARLIEST_TIME, LATEST_TIME)`: window and expiry arithmetic
on them must never leave `datetime`'s range (years 1 to 9999)."""

# Every pattern ends in `(?!\n)$`, not a bare `$`: Python's `$` also matches
# before a trailing newline, so `"acme\n"` would pass as a slug. The lookahead
# means the same in JSON Schema's ECMA-262 regexes, so the published schema
# and the decoder agree.
SLUG_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}(?!\n)$"
"""Org and agent ids: lowercase, digits, `-` and `_`, at most 63 characters.

They travel as NATS subject tokens, so they can hold neither `.` nor `*`/`>`."""

PRINTABLE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]*(?!\n)$"
"""Free text: no C0 control (NUL, tab, newline, ...), no DEL, no C1 control.

PostgreSQL `text` refuses NUL; the rest would let one event forge lines in a
log, a terminal or an auditor's report. (Lone surrogates, which no UTF-8 can
carry, are refused by the JSON reader: `load_json_strict`.)"""

_PRINTABLE_MEANS = "without control characters (U+0000-U+001F, U+007F-U+009F)"

KEY_ID_PATTERN = "^[0-9a-f]{16}(?!\n)$"


def _text(
    max_length: int, *, min_length: int | None = None, description: str | None = None
) -> msgspec.Meta:
    return msgspec.Meta(
        min_length=min_length,
        max_length=max_length,
        pattern=PRINTABLE_PATTERN,
        description=description,
    )


Slug = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, pattern=SLUG_PATTERN, description="lowercase id")
]
EventId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        pattern="^[A-Za-z0-9][A-Za-z0-9._:-]*(?!\n)$",
        description="publisher-assigned id, unique within the org (a UUID or ULID is ideal)",
    ),
]
Text = Annotated[str, _text(1024)]
ShortText = Annotated[str, _text(256, min_length=1)]
Label = Annotated[str, _text(256)]
Resource = Annotated[str, _text(1024)]
CorrelationId = Annotated[str, _text(128)]
Pattern = Annotated[
    str,
    _text(
        256,
        min_length=1,
        description="`*` matches any run of characters, everything else is literal",
    ),
]
Patterns = Annotated[list[Pattern], msgspec.Meta(max_length=MAX_LIST_ITEMS)]
Currency = Annotated[
    str,
    msgspec.Meta(
        min_length=3, max_length=3, pattern="^[A-Z]{3}(?!\n)$", description="ISO 4217 code"
    ),
]
MinorUnits = Annotated[
    int,
    msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER, description="amount in minor units (cents)"),
]
PositiveSeconds = Annotated[int, msgspec.Meta(gt=0, le=366 * 24 * 3600)]
UtcTime = Annotated[
    datetime,
    msgspec.Meta(
        tz=True,
        description="RFC 3339, UTC, from 1970-01-01T00:00:00Z up to (not including) 9000-01-01T00:00:00Z",
    ),
]
DataClass = Annotated[str, msgspec.Meta(max_length=63, pattern="^[a-z0-9][a-z0-9_.-]{0,62}(?!\n)$")]
DataClasses = Annotated[list[DataClass], msgspec.Meta(max_length=MAX_LIST_ITEMS)]
Base64Key = Annotated[
    str,
    msgspec.Meta(
        min_length=43,
        max_length=43,
        pattern="^[A-Za-z0-9_-]{43}(?!\n)$",
        description="Ed25519 public key, 32 bytes, base64url without padding",
    ),
]
KeyId = Annotated[str, msgspec.Meta(min_length=16, max_length=16, pattern=KEY_ID_PATTERN)]
KeyProof = Annotated[
    str,
    msgspec.Meta(
        min_length=86,
        max_length=86,
        pattern="^[A-Za-z0-9_-]{86}(?!\n)$",
        description=(
            "Ed25519 signature (64 bytes, base64url without padding) by the registered key over"
            " the key proof message of `org`, `key_id` and `id` (wire contract §3.3)"
        ),
    ),
]


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

    max_count: Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
    window_s: PositiveSeconds


class AuditContext(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Why the commitment exists: the policy version and the task it serves."""

    policy_version: ShortText
    task_digest: Label | None = None


class CommitmentTerms(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an agent promises: the bounds its actions must stay inside."""

    principal: ShortText
    purpose: Text
    allowed_actions: Patterns
    resource_bounds: Patterns
    valid_from: UtcTime
    valid_until: UtcTime | None = None
    spend: SpendCeiling | None = None
    rate: RateLimit | None = None
    data_classes: DataClasses = msgspec.field(default_factory=list)
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
    runtime: Label | None = None


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
    version: Annotated[int, msgspec.Meta(ge=2, le=MAX_COUNT)]
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
    resource: Resource
    amount: Money | None = None
    data_classes: DataClasses = msgspec.field(default_factory=list)
    correlation_id: CorrelationId | None = None


class ActionObserved(_Event, tag="action.observed"):
    """A gateway of `org` saw an agent (possibly of another org) act through it."""

    agent_org: Slug
    agent: Slug
    gateway: ShortText
    action: ShortText
    resource: Resource
    amount: Money | None = None
    data_classes: DataClasses = msgspec.field(default_factory=list)
    correlation_id: CorrelationId | None = None


class PublisherKeyRegistered(_Event, tag="publisher_key.registered"):
    """A new Ed25519 publisher key for `org`, signed by a key the org already has.

    An org's first key is registered by the operator (`trustledger keys create`);
    that event is signed by the new key itself and appended without NATS.
    `proof`, a signature by the new key (`service.domain.key_proof`), shows that
    the registering org holds it; the ledger admits no registration without one."""

    key_id: KeyId
    public_key: Base64Key
    label: Label = ""
    # UNSET, not None: a registration without a proof encodes without the member,
    # byte for byte as before proofs existed, and `"proof": null` is refused.
    proof: KeyProof | msgspec.UnsetType = msgspec.UNSET


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

ADMISSION_REQUIRED: dict[type[msgspec.Struct], tuple[str, ...]] = {
    PublisherKeyRegistered: ("proof",)
}
"""Members admission requires although the Struct lets them be absent.

The ledger still reads back events it admitted before such a member existed
(rebuild, verify), so the decoder takes them absent; admission refuses a new
event without them, and the published JSON Schema lists them as required."""

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


MAX_DETAIL_CHARS = 512


def printable(text: str, max_chars: int = MAX_DETAIL_CHARS) -> str:
    """`text` safe for a log line or a PostgreSQL `text`: every character Python does not
    call printable (controls, NUL, lone surrogates, ...) escaped as `\\xNN` / `\\uNNNN`,
    and cut to `max_chars` with a trailing `...`."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class EventDecodeError(ValueError):
    """The bytes are not a valid event.

    `reason` is `event_too_large`, `malformed_json` or `schema_invalid`;
    `detail` is printable (`printable`), so it can go to a log or a table as is."""

    def __init__(self, reason: str, detail: str) -> None:
        detail = printable(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_event(data: bytes) -> Event:
    """Decode and validate one event, raising `EventDecodeError` with a reason.

    The strict JSON reader runs first: it bounds the nesting before anything
    recurses (msgspec, looking for `kind`, recurses through whatever precedes
    it), and it refuses what msgspec would take or misname (repeated members,
    escaped lone surrogates)."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventDecodeError(
            "event_too_large", f"event is {len(data)} bytes, at most {MAX_EVENT_BYTES} admitted"
        )
    load_json_strict(data)
    try:
        event = _decoder.decode(data)
    except msgspec.ValidationError as e:
        detail = str(e).replace(f"matching regex {PRINTABLE_PATTERN!r}", _PRINTABLE_MEANS)
        raise EventDecodeError("schema_invalid", detail) from e
    except msgspec.DecodeError as e:
        raise EventDecodeError("malformed_json", str(e)) from e
    for name, value in _times(event):
        offset = value.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            raise EventDecodeError("schema_invalid", f"{name} must be UTC, got {value.isoformat()}")
        if not EARLIEST_TIME <= value < LATEST_TIME:
            raise EventDecodeError(
                "schema_invalid",
                f"{name} {value.isoformat()} is outside [{EARLIEST_TIME.isoformat()},"
                f" {LATEST_TIME.isoformat()})",
            )
    return event


def load_json_strict(data: bytes) -> object:
    """Parse UTF-8 JSON as the ledger reads event bytes, raising `EventDecodeError`.

    Refused, as `malformed_json`: bytes that are not UTF-8 or not JSON;
    `NaN`, `Infinity`, `-Infinity` (not JSON, though Python's reader takes
    them); a number that overflows a double or an integer of more than
    `MAX_INTEGER_DIGITS` digits; an escaped lone surrogate such as `"\\ud800"`
    (no UTF-8 can carry it: I-JSON, RFC 7493). Refused as `schema_invalid`:
    nesting deeper than `MAX_JSON_DEPTH`, checked before parsing; an object
    that repeats a member name: JSON parsers disagree on which one wins, and an
    auditor's parser must read exactly what the ledger read."""
    depth = _nesting_depth(data, MAX_JSON_DEPTH)
    if depth > MAX_JSON_DEPTH:
        raise EventDecodeError(
            "schema_invalid", f"JSON nests deeper than {MAX_JSON_DEPTH} arrays and objects"
        )
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except EventDecodeError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise EventDecodeError("malformed_json", str(e)) from e
    _refuse_lone_surrogates(value)
    return value


MAX_INTEGER_DIGITS = 4_300
"""Python's own default limit on converting digits to `int` (`sys.int_info`), fixed here
so that the reader does not depend on the interpreter's setting."""

# Strings in JSON bytes, each matched in one pass: possessive quantifiers never
# backtrack, and an unterminated string runs to the end, so the scan is linear.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def _nesting_depth(data: bytes, limit: int) -> int:
    """The deepest nesting of arrays and objects outside strings, counted up to `limit + 1`."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in _OPENING:
            depth += 1
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _unique_members(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise EventDecodeError("schema_invalid", f"duplicate member(s) {', '.join(repeated)}")
    return dict(pairs)


def _refuse_constant(name: str) -> object:
    raise EventDecodeError("malformed_json", f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise EventDecodeError("malformed_json", f"number {text[:40]} overflows a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise EventDecodeError(
            "malformed_json", f"integer of more than {MAX_INTEGER_DIGITS} digits"
        )
    return int(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_lone_surrogates(value: object) -> None:
    # json.loads joins an escaped surrogate pair into one character, so any
    # surrogate left in a string is a lone one. The nesting is bounded, but
    # walk with a stack all the same: nothing here recurses on input.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise EventDecodeError(
                    "malformed_json", f"string {item!r} holds a lone surrogate (not I-JSON)"
                )
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


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
