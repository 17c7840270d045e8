"""The first posture projection: judging actions, folding events, bands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.domain.events import (
    ActionObserved,
    ActionPerformed,
    AgentRegistered,
    AgentRetired,
    AuditContext,
    CommitmentAmended,
    CommitmentDeclared,
    CommitmentRevoked,
    CommitmentTerms,
    Event,
)
from service.domain.patterns import matches
from service.domain.posture import (
    Commitment,
    PostureCounts,
    PostureProjector,
    band_of,
    judge,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _terms(
    actions: tuple[str, ...] = ("payments.refund",),
    resources: tuple[str, ...] = ("order:*",),
    valid_from: datetime = T0,
    valid_until: datetime | None = None,
) -> CommitmentTerms:
    return CommitmentTerms(
        principal="alice",
        purpose="refunds",
        allowed_actions=list(actions),
        resource_bounds=list(resources),
        valid_from=valid_from,
        valid_until=valid_until,
        audit=AuditContext(policy_version="v1"),
    )


def _commitment(terms: CommitmentTerms, revoked_at: datetime | None = None) -> Commitment:
    return Commitment("acme", "bot", "c1", 1, terms, 1, 1, revoked_at)


@pytest.mark.parametrize(
    ("action", "resource", "at", "commitments", "retired", "violation"),
    [
        pytest.param(
            "payments.refund", "order:1", T0, [_commitment(_terms())], False, None, id="within"
        ),
        pytest.param(
            "payments.refund", "order:1", T0, [], False, "uncommitted", id="no-commitment"
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0 - timedelta(microseconds=1),
            [_commitment(_terms())],
            False,
            "uncommitted",
            id="just-before-valid-from",
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0 + timedelta(hours=1),
            [_commitment(_terms(valid_until=T0 + timedelta(hours=1)))],
            False,
            "uncommitted",
            id="exactly-at-valid-until",
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0 + timedelta(hours=1) - timedelta(microseconds=1),
            [_commitment(_terms(valid_until=T0 + timedelta(hours=1)))],
            False,
            None,
            id="just-before-valid-until",
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0 + timedelta(minutes=5),
            [_commitment(_terms(), revoked_at=T0 + timedelta(minutes=5))],
            False,
            "uncommitted",
            id="at-revocation",
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0 + timedelta(minutes=4),
            [_commitment(_terms(), revoked_at=T0 + timedelta(minutes=5))],
            False,
            None,
            id="before-revocation",
        ),
        pytest.param(
            "payments.payout",
            "order:1",
            T0,
            [_commitment(_terms())],
            False,
            "action_not_allowed",
            id="action-not-allowed",
        ),
        pytest.param(
            "payments.refund",
            "acct:1",
            T0,
            [_commitment(_terms())],
            False,
            "resource_out_of_bounds",
            id="resource-out-of-bounds",
        ),
        pytest.param(
            "payments.refund",
            "order:1",
            T0,
            [_commitment(_terms())],
            True,
            "agent_retired",
            id="retired-agent",
        ),
        pytest.param(
            "payments.refund",
            "acct:1",
            T0,
            [_commitment(_terms()), _commitment(_terms(resources=("acct:*",)))],
            False,
            None,
            id="second-commitment-covers",
        ),
    ],
)
def test_judge_names_violation_when_action_breaks_a_bound(
    action: str,
    resource: str,
    at: datetime,
    commitments: list[Commitment],
    retired: bool,
    violation: str | None,
) -> None:
    """judge() returns the first violated bound, or within when a commitment covers the action."""
    verdict = judge(action, resource, at, commitments, retired=retired)
    assert verdict.violation == violation
    assert verdict.within == (violation is None)


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("payments.refund", "payments.refund", True),
        ("payments.refund", "payments.refunds", False),
        ("payments.*", "payments.refund", True),
        ("payments.*", "payments.", True),
        ("payments.*", "payment", False),
        ("*", "", True),
        ("order:*:line", "order:1:line", True),
        ("order:*:line", "order:1:item", False),
        ("a.b", "axb", False),
        ("[x]", "[x]", True),
        ("[x]", "x", False),
    ],
)
def test_matches_treats_only_star_as_wildcard_when_pattern_has_specials(
    pattern: str, value: str, expected: bool
) -> None:
    """`*` is the only wildcard; dots and brackets match themselves, and the whole value must match."""
    assert matches(pattern, value) is expected


def _fold(events: list[Event]) -> PostureProjector:
    projector = PostureProjector()
    for seq, event in enumerate(events, start=1):
        projector.apply(event, "acme", seq)
    return projector


def _act(n: int, action: str = "payments.refund", resource: str = "order:1") -> ActionPerformed:
    return ActionPerformed(
        id=f"a{n}",
        org="acme",
        occurred_at=T0 + timedelta(minutes=n),
        agent="bot",
        action=action,
        resource=resource,
    )


def test_projector_counts_and_references_violation_when_actions_follow_commitment() -> None:
    """Actions are counted within/outside and the latest violation points at its entry."""
    projector = _fold(
        [
            AgentRegistered(
                id="r",
                org="acme",
                occurred_at=T0,
                agent="bot",
                display_name="Bot",
                principal="alice",
            ),
            CommitmentDeclared(
                id="c", org="acme", occurred_at=T0, agent="bot", commitment_id="c1", terms=_terms()
            ),
            _act(1),
            _act(2, action="payments.payout"),
            _act(3),
        ]
    )
    counts = projector.posture[("acme", "bot")]
    assert (counts.actions_total, counts.actions_within, counts.actions_outside) == (3, 2, 1)
    assert counts.last_violation == "action_not_allowed"
    assert (counts.last_violation_chain, counts.last_violation_seq) == ("acme", 4)
    assert counts.last_action_at == T0 + timedelta(minutes=3)


def test_projector_uses_amended_terms_when_commitment_is_amended_mid_stream() -> None:
    """After an amendment the new terms judge later actions; a stale version is ignored."""
    widened = _terms(actions=("payments.*",))
    projector = _fold(
        [
            CommitmentDeclared(
                id="c", org="acme", occurred_at=T0, agent="bot", commitment_id="c1", terms=_terms()
            ),
            _act(1, action="payments.payout"),
            CommitmentAmended(
                id="m",
                org="acme",
                occurred_at=T0,
                agent="bot",
                commitment_id="c1",
                version=2,
                terms=widened,
            ),
            _act(2, action="payments.payout"),
            CommitmentAmended(
                id="m1",
                org="acme",
                occurred_at=T0,
                agent="bot",
                commitment_id="c1",
                version=2,
                terms=_terms(),
            ),
            _act(3, action="payments.payout"),
        ]
    )
    counts = projector.posture[("acme", "bot")]
    assert (counts.actions_within, counts.actions_outside) == (2, 1)
    assert projector.commitments[("acme", "bot")]["c1"].version == 2


def test_projector_flags_actions_when_revoked_between_two_actions() -> None:
    """An action after the revocation instant is uncommitted; one before it is within."""
    projector = _fold(
        [
            CommitmentDeclared(
                id="c", org="acme", occurred_at=T0, agent="bot", commitment_id="c1", terms=_terms()
            ),
            _act(1),
            CommitmentRevoked(
                id="x",
                org="acme",
                occurred_at=T0 + timedelta(minutes=2),
                agent="bot",
                commitment_id="c1",
            ),
            _act(3),
        ]
    )
    counts = projector.posture[("acme", "bot")]
    assert (counts.actions_within, counts.actions_outside, counts.last_violation) == (
        1,
        1,
        "uncommitted",
    )


def test_projector_flags_every_action_when_agent_is_retired() -> None:
    """Once retired, an agent's actions are violations whatever its commitments say."""
    projector = _fold(
        [
            AgentRegistered(
                id="r",
                org="acme",
                occurred_at=T0,
                agent="bot",
                display_name="Bot",
                principal="alice",
            ),
            CommitmentDeclared(
                id="c", org="acme", occurred_at=T0, agent="bot", commitment_id="c1", terms=_terms()
            ),
            AgentRetired(id="t", org="acme", occurred_at=T0, agent="bot"),
            _act(1),
        ]
    )
    assert projector.posture[("acme", "bot")].last_violation == "agent_retired"
    assert projector.agents[("acme", "bot")].retired_seq == 3


def test_projector_counts_observation_for_observed_agent_when_gateway_is_another_org() -> None:
    """A gateway's observation counts for the observed agent, not for the gateway's org."""
    projector = PostureProjector()
    projector.apply(
        ActionObserved(
            id="o",
            org="payhub",
            occurred_at=T0,
            agent_org="acme",
            agent="bot",
            gateway="gw-1",
            action="payments.refund",
            resource="order:1",
        ),
        "payhub",
        9,
    )
    assert projector.observations[("acme", "bot", "payhub")].observed_total == 1
    assert ("acme", "bot") not in projector.posture


@pytest.mark.parametrize(
    ("within", "outside", "retired", "band", "score"),
    [
        (0, 0, False, "unknown", None),
        (10, 0, False, "trusted", 1000),
        (9, 1, False, "watch", 900),
        (89, 11, False, "untrusted", 890),
        (90, 10, False, "watch", 900),
        (5, 0, True, "revoked", 0),
    ],
)
def test_band_of_follows_thresholds_when_counts_vary(
    within: int, outside: int, retired: bool, band: str, score: int | None
) -> None:
    """Bands: unknown without evidence, trusted at zero violations, watch up to 10 %, then untrusted."""
    counts = PostureCounts("acme", "bot", within + outside, within, outside)
    assert band_of(counts, retired) == (band, score)
