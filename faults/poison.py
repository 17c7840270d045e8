"""Hostile messages, one class per defect listed in issue 8 (defects 3, 4 and 5).

Each class is a message built for a lab (its subject prefix and org keys),
published between good events of a running ingest. Some need no key at all
(a NUL or an invalid UTF-8 byte in the subject, a NUL in the key id header);
the others are signed by an org's own key, so they pass every authenticity
check and reach the decoder, the projection and the database.

`expect` says what a correct ledger does with it: `quarantine` (refused with a
reason), or `settle` for a valid event that must simply be handled in bounded
time (chained, or refused by a bound that admission documents).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import msgspec

from faults.workload import GATEWAY, T0, agent_names
from service.adapters.publisher import MSG_ID_HEADER
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER
from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AuditContext,
    CommitmentAmended,
    CommitmentDeclared,
    CommitmentTerms,
    Event,
    Money,
    encode_event,
)
from service.domain.signing import SigningKey, b64url

ORG = "acme"
AGENT = agent_names(ORG)[0]
LONG_RESOURCE = "arn:aws:s3:::" + "/" * 687
"""700 characters, slashes all the way, no `.json` at the end: a backtracking match
against `arn:aws:s3:::*/*/*/*.json` tries every split of the slashes (5 s a match
with the regex matcher of e4da86a on this machine)."""
BACKTRACK_BOUND = "arn:aws:s3:::*/*/*/*.json"
OWN_BOUND = "*a*a*a*a*a*b"
OWN_RESOURCE = "a" * 1000


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes as they go on the wire: subject, payload, headers (None: a plain PUB)."""

    subject: bytes
    payload: bytes
    headers: list[tuple[bytes, bytes]] | None


@dataclass(frozen=True, slots=True)
class Poison:
    name: str
    description: str
    build: Callable[[str, dict[str, SigningKey]], Raw]
    expect: Literal["quarantine", "settle"] = "quarantine"
    setup: Callable[[], list[Event]] = field(default=lambda: [])
    """Events of `acme` published (signed) before the poison, e.g. a commitment to match."""
    posture_read: bool = False
    """Also time a posture read of the agent afterwards (pattern matching must be linear)."""


def _signed(data: bytes, key: SigningKey, subject: str, event_id: str) -> Raw:
    return Raw(
        subject.encode(),
        data,
        [
            (MSG_ID_HEADER.encode(), f"{key.org}/{event_id}".encode()),
            (KEY_ID_HEADER.encode(), key.key_id.encode()),
            (SIGNATURE_HEADER.encode(), b64url(key.sign(data)).encode()),
        ],
    )


def _base(kind: str, event_id: str, org: str = ORG) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": event_id,
        "org": org,
        "occurred_at": (T0 + timedelta(seconds=1)).isoformat().replace("+00:00", "Z"),
    }


def _action_dict(event_id: str) -> dict[str, Any]:
    return {
        **_base("action.performed", event_id),
        "agent": AGENT,
        "action": "records.read",
        "resource": f"res:{AGENT}/poison",
    }


def _json(value: object) -> bytes:
    return msgspec.json.encode(value)


def _event(event: Event, key: SigningKey, prefix: str) -> Raw:
    about = event.agent_org if isinstance(event, ActionObserved) else ORG
    token = AGENT if about == event.org else "_"
    return _signed(encode_event(event), key, f"{prefix}.ev.{event.org}.{token}", event.id)


def nul_subject(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    return Raw(f"{prefix}.ev.{ORG}.bad\x00agent".encode(), b'{"unsigned": true}', None)


def nul_key_id(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    headers = [(KEY_ID_HEADER.encode(), b"0123\x004567"), (SIGNATURE_HEADER.encode(), b"AAAA")]
    return Raw(f"{prefix}.ev.{ORG}.{AGENT}".encode(), b'{"unsigned": true}', headers)


def invalid_utf8_subject(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    return Raw(f"{prefix}.ev.{ORG}.".encode() + b"\xff\xfeagent", b'{"unsigned": true}', None)


def nul_text_field(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = ActionPerformed(
        id="poison-nul-text", org=ORG, occurred_at=T0 + timedelta(seconds=1), agent=AGENT,
        action="records.read\x00", resource=f"res:{AGENT}/nul\x00",
    )  # fmt: skip
    return _event(event, keys[ORG], prefix)


def nul_member_name(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    body = _action_dict("poison-nul-member") | {"x\x00y": 1}
    return _signed(_json(body), keys[ORG], f"{prefix}.ev.{ORG}.{AGENT}", "poison-nul-member")


def nul_kind(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    body = _action_dict("poison-nul-kind") | {"kind": "action.performed\x00"}
    return _signed(_json(body), keys[ORG], f"{prefix}.ev.{ORG}.{AGENT}", "poison-nul-kind")


def huge_version(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = CommitmentAmended(
        id="poison-version", org=ORG, occurred_at=T0 + timedelta(seconds=1), agent=AGENT,
        commitment_id="main", version=2**31, terms=_terms(["records.*"], [f"res:{AGENT}/*"]),
    )  # fmt: skip
    return _event(event, keys[ORG], prefix)


def deep_nesting(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    # Before `kind`: a decoder must skip the nested value to find the tag.
    body = _json(_action_dict("poison-nesting"))
    data = b'{"correlation_id":' + b"[" * 1000 + b"]" * 1000 + b"," + body[1:]
    return _signed(data, keys[ORG], f"{prefix}.ev.{ORG}.{AGENT}", "poison-nesting")


def huge_amount(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = ActionPerformed(
        id="poison-amount", org=ORG, occurred_at=T0 + timedelta(seconds=1), agent=AGENT,
        action="payments.send", resource=f"res:{AGENT}/pay", amount=Money(2**63, "USD"),
    )  # fmt: skip
    return _event(event, keys[ORG], prefix)


def gateway_huge_amount(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = ActionObserved(
        id="poison-gw-amount", org=GATEWAY, occurred_at=T0 + timedelta(seconds=1),
        agent_org=ORG, agent=AGENT, gateway="gw-edge-1", action="payments.send",
        resource=f"res:{AGENT}/pay", amount=Money(2**63, "USD"),
    )  # fmt: skip
    return _event(event, keys[GATEWAY], prefix)


def _terms(actions: list[str], resources: list[str]) -> CommitmentTerms:
    return CommitmentTerms(
        principal="ops@example.test", purpose="fault suite", allowed_actions=actions,
        resource_bounds=resources, valid_from=T0, audit=AuditContext(policy_version="faults-1"),
    )  # fmt: skip


def _declare(commitment_id: str, actions: list[str], bounds: list[str]) -> list[Event]:
    return [
        CommitmentDeclared(
            id=f"setup-{commitment_id}",
            org=ORG,
            occurred_at=T0,
            agent=AGENT,
            commitment_id=commitment_id,
            terms=_terms(actions, bounds),
        )
    ]


def long_resource(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = ActionObserved(
        id="poison-long-resource", org=GATEWAY, occurred_at=T0 + timedelta(seconds=2),
        agent_org=ORG, agent=AGENT, gateway="gw-edge-1", action="s3.get", resource=LONG_RESOURCE,
    )  # fmt: skip
    return _event(event, keys[GATEWAY], prefix)


def own_pattern(prefix: str, keys: dict[str, SigningKey]) -> Raw:
    event = ActionPerformed(
        id="poison-own-pattern", org=ORG, occurred_at=T0 + timedelta(seconds=2), agent=AGENT,
        action="s3.get", resource=OWN_RESOURCE,
    )  # fmt: skip
    return _event(event, keys[ORG], prefix)


POISONS: tuple[Poison, ...] = (
    Poison("nul-subject", "NUL byte in the subject, no key at all", nul_subject),
    Poison("nul-key-id", "NUL byte in the Tl-Key-Id header, no valid key", nul_key_id),
    Poison("invalid-utf8-subject", "bytes FF FE in the subject (not UTF-8)", invalid_utf8_subject),
    Poison("nul-text-field", "signed event, NUL in action and resource", nul_text_field),
    Poison("nul-member-name", "signed event, NUL in a member name", nul_member_name),
    Poison("nul-kind", "signed event, NUL in kind", nul_kind),
    Poison("version-2^31", "signed commitment.amended with version 2^31", huge_version),
    Poison("nesting-1000", "signed event nested 1,000 levels deep", deep_nesting),
    Poison("amount-2^63", "signed action with amount_minor 2^63", huge_amount),
    Poison(
        "gateway-amount-2^63",
        "another org's gateway observation with amount_minor 2^63",
        gateway_huge_amount,
    ),
    Poison(
        "long-resource-vs-pattern",
        f"gateway observation, 700-char resource vs bound `{BACKTRACK_BOUND}`",
        long_resource,
        expect="settle",
        setup=lambda: _declare("s3", ["s3.*"], [BACKTRACK_BOUND]),
        posture_read=True,
    ),
    Poison(
        "own-pattern-backtrack",
        f"own action, 1000 x `a` vs own bound `{OWN_BOUND}`",
        own_pattern,
        expect="settle",
        setup=lambda: _declare("own", ["s3.*"], [OWN_BOUND]),
        posture_read=True,
    ),
)
