"""From projection rows to evidence items: self-reports, gateway observations, findings, status."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.chain import to_micros
from service.domain.evaluation import Violation
from service.domain.events import AuditContext, CommitmentTerms, Money, RateLimit, SpendCeiling
from service.domain.evidence import (
    CONTRADICTED_SEVERITY,
    REPORT_GRACE_US,
    UNREPORTED_SEVERITY,
    Evidence,
    coverage_permille,
    observation_items,
    source_of,
    status_of,
    verdict_item,
)
from service.domain.posture import HORIZON_US, Item, Span, Status, assess
from service.domain.projection import (
    AgentRecord,
    CommitmentRecord,
    ObservationRow,
    VerdictRow,
    VersionRow,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
H = timedelta(hours=1)
DAY = timedelta(days=1)
GRACE = timedelta(microseconds=REPORT_GRACE_US)
HORIZON = timedelta(microseconds=HORIZON_US)

ORG = "acme"
AGENT = "bot"
SEEN_AT = T0 + 10 * DAY
"""When the gateway saw the action (its `occurred_at`)."""
RECEIVED = SEEN_AT + 2 * H
"""When the observation reached the ledger."""
DEADLINE = RECEIVED + GRACE


def _terms(
    resources: tuple[str, ...] = ("order:*",),
    valid_from: datetime = T0,
    valid_until: datetime | None = None,
    spend: SpendCeiling | None = None,
    rate: RateLimit | None = None,
) -> CommitmentTerms:
    return CommitmentTerms(
        principal="alice",
        purpose="refunds",
        allowed_actions=["payments.refund"],
        resource_bounds=list(resources),
        valid_from=valid_from,
        valid_until=valid_until,
        spend=spend,
        rate=rate,
        audit=AuditContext(policy_version="v1"),
    )


def _record(
    *versions: tuple[CommitmentTerms, datetime, datetime],
    cid: str = "c1",
    revoked_at: datetime | None = None,
    revoked_received_at: datetime | None = None,
) -> CommitmentRecord:
    """A commitment from (terms, effective_from, received_at) per version, in chain order."""
    rows = [
        VersionRow(ORG, AGENT, cid, n, terms, eff, 10 * n, received)
        for n, (terms, eff, received) in enumerate(versions, start=1)
    ]
    return CommitmentRecord(
        ORG,
        AGENT,
        cid,
        rows,
        revoked_at,
        99 if revoked_at is not None else None,
        revoked_received_at if revoked_received_at is not None else revoked_at,
    )


def _agent(
    retired_at: datetime | None = None, retired_received_at: datetime | None = None
) -> AgentRecord:
    return AgentRecord(
        ORG,
        AGENT,
        "Bot",
        "alice",
        1,
        T0,
        retired_seq=50 if retired_at is not None else None,
        retired_at=retired_at,
        retired_received_at=retired_received_at,
    )


def _seen(
    observer: str = "payhub",
    correlation_id: str | None = "corr-1",
    resource: str = "order:1",
    amount: Money | None = None,
    received_at: datetime = RECEIVED,
    occurred_at: datetime = SEEN_AT,
    seq: int = 7,
) -> ObservationRow:
    return ObservationRow(
        observer=observer,
        seq=seq,
        event_id=f"obs-{seq}",
        org=ORG,
        agent=AGENT,
        gateway="gw-eu",
        occurred_at=occurred_at,
        received_at=received_at,
        action="payments.refund",
        resource=resource,
        amount=amount,
        data_classes=(),
        correlation_id=correlation_id,
    )


def _report(
    received_at: datetime = RECEIVED,
    correlation_id: str | None = "corr-1",
    action: str = "payments.refund",
    resource: str = "order:1",
    amount: Money | None = None,
    occurred_at: datetime = SEEN_AT,
    seq: int = 20,
    severity: int = 0,
    violations: tuple[Violation, ...] = (),
) -> VerdictRow:
    return VerdictRow(
        org=ORG,
        agent=AGENT,
        seq=seq,
        event_id=f"act-{seq}",
        occurred_at=occurred_at,
        received_at=received_at,
        action=action,
        resource=resource,
        amount=amount,
        data_classes=(),
        correlation_id=correlation_id,
        within=severity == 0,
        severity=severity,
        violations=violations,
        covering="c1" if severity == 0 else None,
        ref=(ORG, 10),
        charge=None,
    )


COMMITTED = _record((_terms(), T0, T0))
"""One commitment, declared and received at T0, covering refunds of orders."""


def _eur(minor: int) -> Money:
    return Money(minor, "EUR")


# --------------------------------------------------------------------------- self-reports


def test_verdict_item_carries_row_facts_when_self_reported() -> None:
    """A verdict row becomes a self-sourced action item at its occurred_at with its severity."""
    violations = (
        Violation("rate_limit", 2, "c1", "3 actions"),
        Violation("spend_window", 3, "c1", "too much"),
    )
    row = _report(seq=33, severity=3, violations=violations)
    assert verdict_item(row) == Item(
        at_us=to_micros(SEEN_AT),
        source="self",
        kind="action",
        severity=3,
        violations=("rate_limit", "spend_window"),
        ref=(ORG, 33),
        event_id="act-33",
        detail="3 actions; too much",
    )


# --------------------------------------------------------------------------- findings


@pytest.mark.parametrize(
    ("reports", "finding"),
    [
        pytest.param([], "unreported", id="no_report"),
        pytest.param([_report(received_at=RECEIVED - H)], None, id="report_before_observation"),
        pytest.param([_report(received_at=DEADLINE)], None, id="report_exactly_at_deadline"),
        pytest.param([_report(received_at=DEADLINE + US)], "unreported", id="report_1us_late"),
        pytest.param([_report(resource="order:2")], "contradicted", id="resource_differs"),
        pytest.param([_report(amount=_eur(5))], "contradicted", id="amount_differs_none_vs_some"),
        pytest.param([_report(action="payments.charge")], "contradicted", id="action_differs"),
        pytest.param(
            [_report(resource="order:2", seq=20), _report(seq=21)],
            None,
            id="one_of_two_agrees",
        ),
        pytest.param(
            [_report(resource="order:2"), _report(received_at=DEADLINE + US, seq=21)],
            "contradicted",
            id="disagrees_in_time_agrees_late",
        ),
        pytest.param(
            [_report(resource="order:2", received_at=DEADLINE + US)],
            "unreported",
            id="disagrees_late_only",
        ),
        pytest.param([_report(correlation_id="corr-2")], "unreported", id="other_correlation"),
    ],
)
def test_finding_settled_at_deadline_when_observation_has_correlation(
    reports: list[VerdictRow], finding: str | None
) -> None:
    """No self-report by received_at + grace is unreported; only disagreeing ones, contradicted."""
    items = observation_items(_seen(), [COMMITTED], _agent(), reports)
    assert items[0].kind == "action"
    assert items[0].at_us == to_micros(SEEN_AT)
    assert [i.kind for i in items[1:]] == ([finding] if finding else [])
    if finding:
        severity = UNREPORTED_SEVERITY if finding == "unreported" else CONTRADICTED_SEVERITY
        assert (UNREPORTED_SEVERITY, CONTRADICTED_SEVERITY) == (2, 3)
        assert items[1].at_us == to_micros(RECEIVED) + REPORT_GRACE_US
        assert items[1].severity == severity
        assert items[1].violations == (finding,)
        assert (items[1].source, items[1].ref, items[1].event_id) == (
            "third_party",
            ("payhub", 7),
            "obs-7",
        )


@pytest.mark.parametrize(
    ("seen", "reports", "finding"),
    [
        pytest.param(_seen(amount=_eur(5)), [_report(amount=_eur(5))], None, id="same_amount"),
        pytest.param(
            _seen(amount=_eur(5)), [_report(amount=_eur(6))], "contradicted", id="other_amount"
        ),
        pytest.param(
            _seen(amount=_eur(5)),
            [_report(amount=Money(5, "USD"))],
            "contradicted",
            id="other_currency",
        ),
        pytest.param(
            _seen(amount=_eur(5)), [_report()], "contradicted", id="report_without_amount"
        ),
    ],
)
def test_contradicted_when_amount_disagrees(
    seen: ObservationRow, reports: list[VerdictRow], finding: str | None
) -> None:
    """A report agrees only with the same action, resource and amount (currency included)."""
    items = observation_items(seen, [COMMITTED], _agent(), reports)
    assert [i.kind for i in items[1:]] == ([finding] if finding else [])


def test_contradiction_names_first_report_when_several_disagree() -> None:
    """The contradicted finding's detail cites the earliest chained disagreeing report."""
    reports = [_report(resource="order:9", seq=30), _report(resource="order:8", seq=25)]
    (_, finding) = observation_items(_seen(), [COMMITTED], _agent(), reports)
    assert "acme#25" in finding.detail
    assert "'order:8'" in finding.detail


def test_no_finding_when_observation_lacks_correlation_id() -> None:
    """Without a correlation id an observation is only an action item, whatever the reports."""
    items = observation_items(_seen(correlation_id=None), [COMMITTED], _agent(), [])
    assert [i.kind for i in items] == ["action"]
    evidence = Evidence(_agent(), [COMMITTED], [], [_seen(correlation_id=None)], [_report()])
    assert [i.kind for i in evidence.items()] == ["action"]


@pytest.mark.parametrize(
    ("observer", "source"),
    [
        pytest.param(ORG, "self", id="own_org_gateway"),
        pytest.param("payhub", "third_party", id="other_org_gateway"),
    ],
)
def test_source_attributed_by_gateway_org_when_observed(observer: str, source: str) -> None:
    """A gateway of the agent's own org is self; another org's is third_party, finding included."""
    assert source_of(observer, ORG) == source
    items = observation_items(_seen(observer=observer), [COMMITTED], _agent(), [])
    assert [(i.kind, i.source, i.ref) for i in items] == [
        ("action", source, (observer, 7)),
        ("unreported", source, (observer, 7)),
    ]


def _mixed_evidence() -> Evidence:
    return Evidence(
        agent=_agent(),
        commitments=[COMMITTED],
        verdicts=[_report(correlation_id=None, seq=20)],
        observations=[
            _seen(observer=ORG, correlation_id="corr-own", seq=3),
            _seen(observer="payhub", correlation_id="corr-1", seq=4),
            _seen(observer="globex", correlation_id="corr-2", seq=5),
        ],
        reports=[_report(correlation_id="corr-1", seq=21)],
    )


def test_items_include_everything_when_not_filtered() -> None:
    """items() gives self-reports, every observation and its finding; reports match by correlation."""
    items = _mixed_evidence().items()
    assert [(i.kind, i.source, i.ref) for i in items] == [
        ("action", "self", (ORG, 20)),
        ("action", "self", (ORG, 3)),
        ("unreported", "self", (ORG, 3)),
        ("action", "third_party", ("payhub", 4)),
        ("action", "third_party", ("globex", 5)),
        ("unreported", "third_party", ("globex", 5)),
    ]


def test_items_only_other_orgs_gateways_when_third_party_only() -> None:
    """third_party_only drops self-reports and the agent's own org's gateway observations."""
    items = _mixed_evidence().items(third_party_only=True)
    assert [(i.kind, i.ref) for i in items] == [
        ("action", ("payhub", 4)),
        ("action", ("globex", 5)),
        ("unreported", ("globex", 5)),
    ]
    assert {i.source for i in items} == {"third_party"}


@pytest.mark.parametrize(
    ("observers", "counted"),
    [
        # Three gateways of payhub are one observer: ranks 1 and 3 count.
        pytest.param(("payhub", "payhub", "payhub"), 2, id="one_org_three_gateways"),
        pytest.param(("payhub", "globex", "initech"), 3, id="three_orgs"),
        # The agent's own org's gateways are the self source: each counts, weight 1.
        pytest.param((ORG, ORG, ORG), 0, id="own_org"),
    ],
)
def test_sightings_ranked_per_observer_org_when_gateways_differ(
    observers: tuple[str, ...], counted: int
) -> None:
    """Renaming gateways does not escape the ranks: an org's sightings are ranked together."""
    sightings = [
        replace(_seen(observer=o, correlation_id=None, seq=n), gateway=f"gw-{n}")
        for n, o in enumerate(observers)
    ]
    items = Evidence(_agent(), [COMMITTED], [], sightings, []).items()
    as_of = to_micros(SEEN_AT)
    a = assess(items, Status(), as_of)
    # Fresh: a counted third-party sighting weighs 2 * H, an own-org one H.
    assert a.good == (2 * counted or len(observers)) * HORIZON_US


# --------------------------------------------------------------------------- gateway judgement

WIDER = _terms(resources=("order:*", "invoice:*"))
"""An amendment that also allows invoices."""


@pytest.mark.parametrize(
    ("resource", "commitments", "agent", "expected"),
    [
        pytest.param("order:1", [COMMITTED], _agent(), [], id="declared_before_within"),
        pytest.param(
            "order:1",
            [_record((_terms(), T0, RECEIVED))],
            _agent(),
            [],
            id="declared_received_exactly_at_observation",
        ),
        pytest.param(
            "order:1",
            [_record((_terms(), T0, RECEIVED + US))],
            _agent(),
            ["uncommitted"],
            id="declared_received_1us_after",
        ),
        pytest.param(
            "invoice:1",
            [_record((_terms(), T0, T0), (WIDER, T0 + DAY, RECEIVED + H))],
            _agent(),
            ["resource_out_of_bounds"],
            id="excusing_amendment_received_later",
        ),
        pytest.param(
            "invoice:1",
            [_record((_terms(), T0, T0), (WIDER, T0 + DAY, RECEIVED - US))],
            _agent(),
            [],
            id="excusing_amendment_received_before",
        ),
        pytest.param(
            "order:1",
            [_record((_terms(), T0, T0), revoked_at=T0 + DAY, revoked_received_at=RECEIVED + US)],
            _agent(),
            [],
            id="revocation_received_later",
        ),
        pytest.param(
            "order:1",
            [_record((_terms(), T0, T0), revoked_at=T0 + DAY, revoked_received_at=RECEIVED)],
            _agent(),
            ["revoked"],
            id="revocation_received_by_then",
        ),
        pytest.param(
            "order:1", [COMMITTED], _agent(T0 + DAY, RECEIVED), ["agent_retired"], id="retired"
        ),
        pytest.param(
            "order:1",
            [COMMITTED],
            _agent(T0 + DAY, RECEIVED + US),
            [],
            id="retirement_received_later",
        ),
        pytest.param("order:1", [COMMITTED], None, [], id="unregistered_agent"),
        pytest.param(
            "order:1",
            [_record((_terms(rate=RateLimit(max_count=0, window_s=60)), T0, T0))],
            _agent(),
            [],
            id="rate_limit_not_checked",
        ),
        pytest.param(
            "order:1",
            [_record((_terms(valid_until=SEEN_AT), T0, T0))],
            _agent(),
            ["outside_validity"],
            id="outside_validity",
        ),
    ],
)
def test_observation_judged_as_known_when_received(
    resource: str,
    commitments: list[CommitmentRecord],
    agent: AgentRecord | None,
    expected: list[str],
) -> None:
    """Gateway observations are judged on versions, revocations and retirement received by then."""
    seen = _seen(resource=resource, correlation_id=None)
    (item,) = observation_items(seen, commitments, agent, [])
    assert list(item.violations) == expected
    severities = {"outside_validity": 2}
    assert item.severity == max((severities.get(k, 3) for k in expected), default=0)


def test_spend_per_action_checked_when_observed() -> None:
    """Only the rolling-window checks are skipped; a per-action ceiling still applies."""
    spend = SpendCeiling(currency="EUR", per_action_minor=100, per_window_minor=1, window_s=60)
    commitments = [_record((_terms(spend=spend), T0, T0))]
    (item,) = observation_items(
        _seen(amount=_eur(101), correlation_id=None), commitments, _agent(), []
    )
    assert item.violations == ("spend_per_action",)
    assert item.severity == 3


# --------------------------------------------------------------------------- status


def _us(at: datetime) -> int:
    return to_micros(at)


@pytest.mark.parametrize(
    ("record", "spans"),
    [
        pytest.param(
            _record((_terms(valid_until=T0 + 10 * DAY), T0 - DAY, T0)),
            [(T0, T0 + 10 * DAY)],
            id="one_version_from_valid_from",
        ),
        pytest.param(
            _record(
                (_terms(valid_until=T0 + 10 * DAY), T0 - DAY, T0),
                (_terms(valid_until=T0 + 5 * DAY), T0 + 2 * DAY, T0 + 2 * DAY),
            ),
            [(T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 5 * DAY)],
            id="amended_mid_way_shortened",
        ),
        pytest.param(
            _record(
                (_terms(valid_until=T0 + 3 * DAY), T0 - DAY, T0),
                (_terms(valid_until=T0 + 20 * DAY), T0 + 2 * DAY, T0 + 2 * DAY),
            ),
            [(T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 20 * DAY)],
            id="amended_mid_way_extended",
        ),
        pytest.param(
            _record(
                (_terms(valid_until=T0 + DAY), T0 - DAY, T0),
                (_terms(), T0 + 2 * DAY, T0 + 2 * DAY),
            ),
            [(T0, T0 + DAY), (T0 + 2 * DAY, None)],
            id="gap_then_reopened_by_amendment",
        ),
        pytest.param(
            _record(
                (_terms(), T0 - DAY, T0),
                (_terms(valid_from=T0 + 4 * DAY), T0 + 2 * DAY, T0 + 2 * DAY),
            ),
            [(T0, T0 + 2 * DAY), (T0 + 4 * DAY, None)],
            id="amendment_with_later_valid_from",
        ),
        pytest.param(
            _record(
                (_terms(), T0 - DAY, T0),
                (_terms(valid_until=T0 + DAY), T0 + 2 * DAY, T0 + 2 * DAY),
            ),
            [(T0, T0 + 2 * DAY)],
            id="amendment_already_expired_has_no_span",
        ),
        pytest.param(
            _record(
                (_terms(valid_until=T0 + 9 * DAY), T0 + 3 * DAY, T0),
                (_terms(), T0 + DAY, T0 + DAY),
            ),
            [(T0 + DAY, T0 + 3 * DAY), (T0 + 3 * DAY, T0 + 9 * DAY)],
            id="versions_ordered_by_effective_from_not_version",
        ),
    ],
)
def test_status_spans_follow_versions_when_commitment_amended(
    record: CommitmentRecord, spans: list[tuple[datetime, datetime | None]]
) -> None:
    """Each version is in force from max(effective_from, valid_from) to the next version or valid_until."""
    status = status_of(_agent(), [record])
    assert status.retired_at_us is None
    assert list(status.spans) == [
        Span("c1", _us(start), None if end is None else _us(end)) for start, end in spans
    ]


def test_status_spans_carry_revocation_when_commitment_revoked() -> None:
    """Every span of a revoked commitment ends at its revocation."""
    record = _record(
        (_terms(), T0 - DAY, T0),
        (_terms(), T0 + 2 * DAY, T0 + 2 * DAY),
        revoked_at=T0 + 3 * DAY,
    )
    status = status_of(None, [record])
    assert [s.revoked_at_us for s in status.spans] == [_us(T0 + 3 * DAY)] * 2
    assert status.in_force(_us(T0 + 3 * DAY) - 1) == ("c1",)
    assert status.revoked_at(_us(T0 + 3 * DAY))
    assert not status.revoked_at(_us(T0 + 3 * DAY) - 1)


@pytest.mark.parametrize(
    ("known_at", "spans", "revoked"),
    [
        pytest.param(None, [(T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 5 * DAY)], True, id="all"),
        pytest.param(
            T0 + 7 * DAY, [(T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 5 * DAY)], True, id="after_all"
        ),
        pytest.param(
            T0 + 7 * DAY - US,
            [(T0, T0 + 2 * DAY), (T0 + 2 * DAY, T0 + 5 * DAY)],
            False,
            id="before_revocation_received",
        ),
        pytest.param(
            T0 + 6 * DAY - US, [(T0, T0 + 10 * DAY)], False, id="before_amendment_received"
        ),
        pytest.param(T0 - US, [], False, id="before_declaration_received"),
    ],
)
def test_status_as_known_when_known_at_given(
    known_at: datetime | None, spans: list[tuple[datetime, datetime]], revoked: bool
) -> None:
    """status_of(known_at) uses only versions and revocations received by known_at."""
    record = _record(
        (_terms(valid_until=T0 + 10 * DAY), T0 - DAY, T0),
        # amended at T0 + 2d (occurred_at), but the ledger received it only at T0 + 6d
        (_terms(valid_until=T0 + 5 * DAY), T0 + 2 * DAY, T0 + 6 * DAY),
        revoked_at=T0 + 8 * DAY,
        revoked_received_at=T0 + 7 * DAY,
    )
    status = status_of(None, [record], known_at)
    revoked_us = _us(T0 + 8 * DAY) if revoked else None
    assert list(status.spans) == [Span("c1", _us(a), _us(b), revoked_us) for a, b in spans]


@pytest.mark.parametrize(
    ("agent", "known_at", "retired"),
    [
        pytest.param(_agent(), None, False, id="not_retired"),
        pytest.param(None, None, False, id="unregistered"),
        pytest.param(_agent(T0, T0 + H), None, True, id="retired"),
        pytest.param(_agent(T0, T0 + H), T0 + H, True, id="retirement_received_by_known_at"),
        pytest.param(_agent(T0, T0 + H), T0 + H - US, False, id="retirement_received_later"),
    ],
)
def test_status_retirement_at_occurred_at_when_known(
    agent: AgentRecord | None, known_at: datetime | None, retired: bool
) -> None:
    """A retirement received by known_at retires the agent from its occurred_at."""
    status = status_of(agent, [], known_at)
    assert status.retired_at_us == (_us(T0) if retired else None)
    assert status.spans == ()


@pytest.mark.parametrize(
    ("revoked_at", "revoked"),
    [pytest.param(None, False, id="not_revoked"), pytest.param(T0, True, id="revoked")],
)
def test_status_counts_commitment_when_never_in_force(
    revoked_at: datetime | None, revoked: bool
) -> None:
    """A commitment never in force (valid_until before valid_from) still counts for 'all revoked'."""
    record = _record(
        (_terms(valid_from=T0 + DAY, valid_until=T0), T0, T0),
        revoked_at=revoked_at,
    )
    status = status_of(_agent(), [record])
    assert status.in_force(_us(T0 + DAY)) == ()
    assert status.revoked_at(_us(T0 + 2 * DAY)) is revoked


def test_status_not_revoked_when_a_never_in_force_commitment_is_unrevoked() -> None:
    """One revoked commitment plus one never in force and not revoked: not every one is revoked."""
    live = _record((_terms(), T0, T0), cid="a", revoked_at=T0 + DAY)
    never = _record((_terms(valid_from=T0 + DAY, valid_until=T0), T0, T0), cid="b")
    status = status_of(_agent(), [live, never])
    assert status.in_force(_us(T0)) == ("a",)
    assert not status.revoked_at(_us(T0 + 2 * DAY))


@st.composite
def _versions(draw: st.DrawFn) -> CommitmentRecord:
    def instant(max_days: int = 10) -> datetime:
        return (
            T0
            + draw(st.integers(0, max_days * 4)) * 6 * H
            + draw(st.sampled_from([timedelta(0), US]))
        )

    versions: list[tuple[CommitmentTerms, datetime, datetime]] = []
    for _ in range(draw(st.integers(1, 4))):
        valid_from = instant()
        until = draw(st.one_of(st.none(), st.integers(-1, 20).map(lambda n: n * 6 * H)))
        terms = _terms(
            valid_from=valid_from, valid_until=None if until is None else valid_from + until
        )
        versions.append((terms, instant(), T0))
    revoked = draw(st.one_of(st.none(), st.builds(instant)))
    return _record(*versions, revoked_at=revoked)


@settings(max_examples=200, deadline=None)
@given(record=_versions(), hours=st.lists(st.integers(-24, 12 * 24), min_size=1, max_size=10))
def test_status_in_force_matches_version_at_when_versions_random(
    record: CommitmentRecord, hours: list[int]
) -> None:
    """in force at t <=> the version in effect at t has t in its validity and no revocation by t."""
    status = status_of(_agent(), [record])
    history = record.history()
    assert history is not None
    probes = {T0 + n * H for n in hours}
    probes |= {s for v in record.versions for s in (v.effective_from, v.terms.valid_from)}
    probes |= {v.terms.valid_until for v in record.versions if v.terms.valid_until is not None}
    for at in sorted(probes | {p - US for p in probes}):
        version = history.version_at(at)
        expected = (
            version is not None
            and version.terms.valid_from <= at
            and (version.terms.valid_until is None or at < version.terms.valid_until)
            and (history.revoked_at is None or at < history.revoked_at)
        )
        assert status.in_force(_us(at)) == (("c1",) if expected else ()), at


# --------------------------------------------------------------------------- coverage

AS_OF = T0 + 20 * DAY


def _agreeing_observation(correlation_id: str, received_at: datetime = AS_OF) -> ObservationRow:
    return _seen(correlation_id=correlation_id, received_at=received_at)


@pytest.mark.parametrize(
    ("reports", "observations", "expected"),
    [
        pytest.param([], [], None, id="no_reports"),
        pytest.param([_report(correlation_id="k1")], [], 0, id="nothing_observed"),
        pytest.param(
            [_report(correlation_id="k1")], [_agreeing_observation("k1")], 1000, id="all_covered"
        ),
        pytest.param(
            [_report(correlation_id=f"k{n}") for n in range(4)],
            [_agreeing_observation("k1")],
            250,
            id="one_of_four",
        ),
        pytest.param(
            [_report(correlation_id=f"k{n}") for n in range(3)],
            [_agreeing_observation("k0"), _agreeing_observation("k2")],
            666,
            id="two_of_three_rounded_down",
        ),
        pytest.param(
            [_report(correlation_id="k1")],
            [_agreeing_observation("k1", received_at=AS_OF + US)],
            0,
            id="observation_received_after_as_of",
        ),
        pytest.param(
            [_report(correlation_id="k1", resource="order:2")],
            [_agreeing_observation("k1")],
            0,
            id="observation_disagrees",
        ),
        pytest.param(
            [_report(correlation_id=None), _report(correlation_id="k1")],
            [_agreeing_observation("k1")],
            500,
            id="uncorrelated_report_uncovered",
        ),
        pytest.param(
            [_report(correlation_id="k1", occurred_at=AS_OF - HORIZON)],
            [_agreeing_observation("k1")],
            None,
            id="report_exactly_horizon_old_not_counting",
        ),
        pytest.param(
            [_report(correlation_id="k1", occurred_at=AS_OF - HORIZON + US)],
            [_agreeing_observation("k1")],
            1000,
            id="report_horizon_minus_1us_counting",
        ),
        pytest.param(
            [_report(correlation_id="k1", occurred_at=AS_OF + US)],
            [_agreeing_observation("k1")],
            None,
            id="future_report_not_counting",
        ),
    ],
)
def test_coverage_permille_counts_corroborated_reports_when_assessed(
    reports: list[VerdictRow], observations: list[ObservationRow], expected: int | None
) -> None:
    """Coverage is floor(1000 * corroborated / counting self-reports), None when none count."""
    assert coverage_permille(reports, observations, _us(AS_OF)) == expected


# --------------------------------------------------------------------------- docs/posture-model.md §7

DOC_START = datetime(2026, 1, 1, tzinfo=UTC)
DOC_AS_OF = datetime(2026, 3, 31, 12, tzinfo=UTC)
DOC_TERMS = _terms(valid_from=DOC_START, spend=SpendCeiling(currency="EUR", per_action_minor=5000))
DOC_COMMITTED = _record((DOC_TERMS, DOC_START, DOC_START), cid="refunds")
"""`refunds`: payments.refund on order:*, EUR per_action_minor 5000, from 2026-01-01."""
WEIGHT_MIN = 60_000_000
"""One weight-minute in weight-µs: the docs' unit."""


def _on(instant: str) -> datetime:
    return datetime.fromisoformat(instant).replace(tzinfo=UTC)


def _refunds(instant: str, n: int, severity: int = 0) -> list[VerdictRow]:
    return [_report(occurred_at=_on(instant), correlation_id=None, severity=severity)] * n


def _payout(observer: str, instant: str, correlation_id: str) -> ObservationRow:
    """`observer` sees a forbidden payout (severity 3), received when it occurred."""
    seen = _seen(observer, correlation_id, "order:9", None, _on(instant), _on(instant))
    return replace(seen, action="payments.payout")


EXAMPLE_A = [
    *_refunds("2026-03-16T12:00", 10),
    *_refunds("2026-03-26T12:00", 10),
    *_refunds("2026-03-29T12:00", 1, severity=2),  # the USD refund: currency_mismatch
    *_refunds("2026-03-30T12:00", 10),
]
PAY_9001 = _seen(
    "payhub", "pay-9001", "order:777", _eur(1800), _on("2026-03-28T11:55"), _on("2026-03-28T11:54")
)
C_TWENTY = _refunds("2026-03-31T11:00", 20)
C_UNTRUSTED = [*_refunds("2026-03-30T12:00", 10), *_refunds("2026-03-29T12:00", 2, severity=3)]


def _reported(resource: str) -> VerdictRow:
    """acme's report of pay-9001, received at 11:56 (in time)."""
    return _report(
        _on("2026-03-28T11:56"), "pay-9001", resource=resource, amount=_eur(1800),
        occurred_at=_on("2026-03-28T11:54"),
    )  # fmt: skip


def _pay_1_as(resource: str) -> VerdictRow:
    return _report(
        _on("2026-03-31T11:01"), "pay-1", resource=resource, occurred_at=_on("2026-03-31T11:00")
    )


def _good_sightings(observers: list[str]) -> list[ObservationRow]:
    at = _on("2026-03-31T11:00")
    return [_seen(o, None, "order:5", None, at, at, seq=n) for n, o in enumerate(observers)]


DOC_EXAMPLES = [
    # §7.1 (a) and §7.2 (b)
    pytest.param(EXAMPLE_A, [], [], False, (993_600, 161_280, 860, "watch"), id="a"),
    pytest.param(EXAMPLE_A, [PAY_9001], [], False, (1_071_348, 239_040, 817, "watch"), id="b"),
    pytest.param(
        EXAMPLE_A, [PAY_9001], [], True, (77_748, 77_760, 499, "untrusted"), id="b_third_party"
    ),
    pytest.param(
        [*EXAMPLE_A, _reported("order:777")], [PAY_9001], [_reported("order:777")], False,
        (1_110_222, 161_280, 873, "watch"), id="b_agreeing",
    ),
    pytest.param(
        [*EXAMPLE_A, _reported("order:778")], [PAY_9001], [_reported("order:778")], False,
        (1_110_222, 355_680, 757, "watch"), id="b_disagreeing",
    ),
    # §7.3 (c): a well-evidenced agent and forbidden, unreported payouts
    pytest.param(C_TWENTY, [], [], False, (862_800, 0, 1000, "trusted"), id="c_none"),
    pytest.param(
        C_TWENTY, [_payout("payhub", "2026-03-31T11:00", "pay-1")], [], False,
        (862_800, 301_990, 740, "watch"), id="c_payhub",
    ),
    pytest.param(
        C_TWENTY,
        [_payout("payhub", "2026-03-31T11:00", "pay-1"),
         _payout("globex", "2026-03-31T11:10", "glx-1")], [], False,
        (862_800, 604_050, 588, "untrusted"), id="c_payhub_globex",
    ),
    pytest.param(
        C_TWENTY,
        [_payout("payhub", "2026-03-31T11:00", "pay-1"),
         _payout("payhub", "2026-03-31T11:10", "pay-2")], [], False,
        (862_800, 302_060, 740, "watch"), id="c_payhub_twice",
    ),
    pytest.param(
        C_TWENTY,
        [_payout("payhub", "2026-03-31T11:00", "pay-1"),
         _payout("globex", "2026-03-31T11:10", "glx-1"),
         _payout("initech", "2026-03-31T11:20", "ini-1")], [], False,
        (862_800, 906_180, 487, "untrusted"), id="c_three_orgs",
    ),
    pytest.param(
        [*C_TWENTY, _pay_1_as("order:10")], [_payout("payhub", "2026-03-31T11:00", "pay-1")],
        [_pay_1_as("order:10")], False, (905_940, 215_725, 807, "watch"), id="c_contradicted",
    ),
    # §7.3 (c): an untrusted agent and a loud gateway
    pytest.param(C_UNTRUSTED, [], [], False, (417_600, 806_400, 341, "untrusted"), id="c_untrusted"),
    *[
        pytest.param(
            C_UNTRUSTED, _good_sightings(["payhub"] * n), [], False,
            (good, 806_400, score, "untrusted"), id=f"c_payhub_{n}_good",
        )
        for n, good, score in [
            (1, 503_880, 384), (3, 590_160, 422), (7, 676_440, 456),
            (15, 762_720, 486), (3000, 762_720, 486),
        ]
    ],
    pytest.param(
        C_UNTRUSTED, _good_sightings([f"org{n}" for n in range(15)]), [], False,
        (1_711_800, 806_400, 679, "watch"), id="c_fifteen_orgs_good",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("verdicts", "observations", "reports", "third_party_only", "expected"), DOC_EXAMPLES
)
def test_worked_examples_of_the_docs_when_recomputed_from_rows(
    verdicts: list[VerdictRow],
    observations: list[ObservationRow],
    reports: list[VerdictRow],
    third_party_only: bool,
    expected: tuple[int, int, int, str],
) -> None:
    """docs/posture-model.md §7 (good and bad in weight-minutes, score, band) is what the code says."""
    evidence = Evidence(_agent(), [DOC_COMMITTED], verdicts, observations, reports)
    items = evidence.items(third_party_only)
    a = assess(items, status_of(evidence.agent, evidence.commitments), to_micros(DOC_AS_OF))
    assert (a.good % WEIGHT_MIN, a.bad % WEIGHT_MIN) == (0, 0)
    assert (a.good // WEIGHT_MIN, a.bad // WEIGHT_MIN, a.score, a.band) == expected


@pytest.mark.parametrize(
    ("verdicts", "observations", "expected"),
    [
        pytest.param(
            EXAMPLE_A, [], ("2026-04-28T02:46:09.230770", "band watch -> trusted"), id="a"
        ),
        pytest.param(
            EXAMPLE_A, [PAY_9001], ("2026-04-28T02:46:09.230770", "band watch -> trusted"), id="b"
        ),
        pytest.param(
            C_TWENTY,
            [_payout("payhub", "2026-03-31T11:00", "pay-1")],
            ("2026-04-30T10:58:25.263158", "band watch -> untrusted"),
            id="c_payhub",
        ),
    ],
)
def test_next_change_of_the_docs_when_recomputed_from_rows(
    verdicts: list[VerdictRow], observations: list[ObservationRow], expected: tuple[str, str]
) -> None:
    """The next changes docs/posture-model.md §8.1 and §7.3 name are what the code says."""
    evidence = Evidence(_agent(), [DOC_COMMITTED], verdicts, observations, [])
    a = assess(evidence.items(), status_of(evidence.agent, [DOC_COMMITTED]), to_micros(DOC_AS_OF))
    assert a.next_change_at_us == to_micros(_on(expected[0]))
    assert a.next_change == expected[1]
