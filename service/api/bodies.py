"""HTTP response bodies: msgspec Structs, the single source of truth for the API's shapes."""

from __future__ import annotations

from datetime import datetime

import msgspec

from service.domain.events import CommitmentTerms


class LedgerRef(msgspec.Struct):
    """A ledger entry: the chain (org), its sequence number."""

    chain: str
    seq: int


class PostureView(msgspec.Struct):
    """An agent's posture as of `position` (the last entry of the agent's chain applied)."""

    org: str
    agent: str
    band: str
    score: int | None
    registered: bool
    retired: bool
    actions_total: int
    actions_within: int
    actions_outside: int
    observed_total: int
    observed_by: dict[str, int]
    """Actions seen by gateways, per observing org."""
    last_action_at: datetime | None
    last_violation: str | None
    last_violation_ref: LedgerRef | None
    position: LedgerRef


class CommitmentView(msgspec.Struct):
    commitment_id: str
    version: int
    status: str
    terms: CommitmentTerms
    revoked_at: datetime | None
    declared: LedgerRef
    updated: LedgerRef


class CommitmentsPage(msgspec.Struct):
    org: str
    agent: str
    commitments: list[CommitmentView]


class ChainHeadView(msgspec.Struct):
    chain: str
    size: int
    head_hash: str


class EntryView(msgspec.Struct):
    """One entry, with every field its hash commits to (binary as lowercase hex)."""

    chain: str
    seq: int
    event_id: str
    kind: str
    occurred_at: datetime
    received_at: datetime
    received_at_us: int
    key_id: str
    signature: str
    event: str
    prev_hash: str
    entry_hash: str


class EntriesPage(msgspec.Struct):
    chain: str
    entries: list[EntryView]
    next_after_seq: int | None


class QuarantineView(msgspec.Struct):
    id: int
    stream_seq: int | None
    subject: str
    claimed_org: str | None
    key_id: str | None
    reason: str
    detail: str
    raw_base64: str
    received_at: datetime


class QuarantinePage(msgspec.Struct):
    items: list[QuarantineView]
    next_after_id: int | None


class Readiness(msgspec.Struct):
    status: str
    checks: dict[str, str]


class LedgerKeyView(msgspec.Struct):
    """A ledger key from the verified `_ledger` chain: what checkpoints are signed with."""

    key_id: str
    """The key id (docs/ledger-format.md §5.1), as in the `_ledger` chain."""
    name: str
    """The note key name its checkpoint signatures carry (its registration's label)."""
    public_key: str
    """The Ed25519 public key, base64url without padding."""
    verifier_key: str
    """`<name>+<hex note key id>+<base64(0x01 || key)>`, the form signed-note tools accept."""
    registered_seq: int
    """The `_ledger` entry that registered it."""
    active: bool
    """Registered and not revoked: checkpoints signed with it verify."""
    signing: bool
    """The key this API process signs new checkpoints with."""


class LedgerKeysView(msgspec.Struct):
    chain: str
    keys: list[LedgerKeyView]
    signing_key_id: str | None


class CheckpointView(msgspec.Struct):
    """A signed checkpoint of a chain head; `note` is the C2SP signed note, exactly as signed."""

    chain: str
    size: int
    head_hash: str
    signed_at: datetime
    key_name: str
    key_id: str
    note: str
