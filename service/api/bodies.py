"""HTTP response bodies: msgspec Structs, the single source of truth for the API's shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from service.domain.events import CommitmentTerms


class LedgerRef(msgspec.Struct):
    """A ledger entry: the chain (org), its sequence number."""

    chain: str
    seq: int


class EvidenceView(msgspec.Struct):
    """One piece of evidence: an action (self-reported or seen by a gateway) or a finding."""

    at: datetime
    """When it counts from: the action's `occurred_at`, or a finding's deadline."""
    source: str
    """`self` (the agent's org) or `third_party` (another org's gateway)."""
    kind: str
    """`action`, `unreported` or `contradicted`."""
    severity: int
    """0 within bounds, 1-3 otherwise."""
    violations: list[str]
    ref: LedgerRef
    event_id: str
    detail: str


class CountsView(msgspec.Struct):
    """Evidence whose instant falls in the window, from one source."""

    actions: int
    within: int
    violations: int
    findings: int


class BudgetView(msgspec.Struct):
    kind: str
    """`spend_window` (minor units) or `rate` (actions)."""
    window_s: int
    limit: int
    used: int
    currency: str | None


class CommitmentInForceView(msgspec.Struct):
    commitment_id: str
    version: int
    ref: LedgerRef
    """The entry that declared or amended this version."""
    per_action_minor: int | None
    currency: str | None
    budgets: list[BudgetView]


class PostureView(msgspec.Struct):
    """An agent's posture as of `as_of` (docs/posture-model.md defines every field)."""

    org: str
    agent: str
    model: str
    as_of: datetime
    known_at: datetime | None
    """Set for a historical answer: only what the ledger had received by then counts."""
    evidence: str
    """`all`, or `third_party` (other orgs' gateways only)."""
    band: str
    score: int | None
    confidence: int
    good: int
    bad: int
    mass: int
    """The model's sums (weight-microseconds), so the score can be checked by hand."""
    registered: bool
    retired: bool
    next_change_at: datetime | None
    next_change: str | None
    windows: dict[str, dict[str, CountsView]]
    """Window (`1h`, `24h`, `7d`, `30d`) -> source (`self`, `third_party`) -> counts."""
    coverage_permille: int | None
    """Share of the counting self-reported actions that a gateway corroborated."""
    observed_by: dict[str, int]
    recent_violations: list[EvidenceView]
    commitments_in_force: list[CommitmentInForceView]
    positions: list[LedgerRef]
    """The newest entry of each chain the answer rests on."""


class TimelinePointView(msgspec.Struct):
    at: datetime
    before: str
    after: str
    evidence: list[EvidenceView]
    """The evidence that took effect at this instant: at most 10 of them."""
    evidence_total: int
    """How many took effect at this instant."""


class TimelineView(msgspec.Struct):
    org: str
    agent: str
    model: str
    start: datetime
    end: datetime
    start_band: str
    start_score: int | None
    changes: list[TimelinePointView]
    truncated: bool
    next_from: datetime | None
    """When `truncated`: pass as `from` (same `to`) for the next page of changes."""


class PostureSummaryView(msgspec.Struct):
    """The scheduler's latest assessment of an agent (as of its last tick)."""

    org: str
    agent: str
    as_of: datetime
    band: str
    score: int | None
    confidence: int
    next_change_at: datetime | None


class PosturesPage(msgspec.Struct):
    items: list[PostureSummaryView]
    next_after: str | None
    """Pass as `after` for the next page (`org/agent`)."""


class VersionView(msgspec.Struct):
    version: int
    effective_from: datetime
    ref: LedgerRef


class CommitmentView(msgspec.Struct):
    """A commitment's latest terms; `versions` lists every version in chain order."""

    commitment_id: str
    version: int
    status: str
    terms: CommitmentTerms
    revoked_at: datetime | None
    declared: LedgerRef
    updated: LedgerRef
    versions: list[VersionView]
    """The newest 20 versions, oldest first."""
    versions_total: int


class CommitmentsPage(msgspec.Struct):
    org: str
    agent: str
    commitments: list[CommitmentView]
    """By commitment id, at most `limit` (100)."""
    next_after: str | None
    """Pass as `after` for the next page."""


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


class Readiness(msgspec.Struct, omit_defaults=True):
    status: str
    """`ready` or `not ready`."""
    checks: dict[str, str] | None = None
    """Each dependency's result; shown to operators only."""


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


class NatsCredentialsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What to issue: a label saying who will use the credentials (printable, ≤ 200)."""

    label: Annotated[str, msgspec.Meta(max_length=200)] = ""


class NatsUserView(msgspec.Struct):
    """One of an org's NATS users: its public key and permissions, never its seed."""

    public_key: str
    """The user's public nkey (`U...`, 56 characters): what revokes it."""
    org: str
    label: str
    created_at: datetime
    publish: list[str]
    """Subjects it may publish on: `<prefix>.ev.<org>.>`."""
    subscribe: list[str]
    """Subjects it may subscribe to: its own inbox, `_INBOX.<prefix>.<org>.>`."""
    revoked_at: datetime | None


class NatsUsersPage(msgspec.Struct):
    """An org's active NATS users, oldest first (at most 20)."""

    items: list[NatsUserView]


class IssuedNatsCredentials(msgspec.Struct):
    """New NATS credentials: the seed is in this answer only; the service keeps none."""

    user: NatsUserView
    seed: str
    """The nkey seed (`SU...`): store it as a file of mode 0600 (nats-py `nkeys_seed=`,
    nats.go `nats.NkeyOptionFromSeed`, the `nats` CLI `--nkey`)."""
    inbox_prefix: str
    """The inbox prefix the client must use (nats-py `inbox_prefix`)."""
    applied: bool
    """True: the embedded NATS server reloaded its users and admits it now; false: an
    external server admits it after its operator reloads it (docs/operations.md §8)."""


class RevokedNatsCredentials(msgspec.Struct):
    user: NatsUserView
    applied: bool
    """True: the NATS server reloaded and cut the user off now; false: after the next
    reload of the external server."""
