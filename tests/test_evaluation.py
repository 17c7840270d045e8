"""The full evaluation model: versioned commitments, severities, spend, rate, rolling windows."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.evaluation import (
    SEVERITY,
    ActionFacts,
    CommitmentHistory,
    CommitmentVersion,
    Evaluation,
    RollingWindow,
    evaluate,
    from_micros,
    record,
    to_micros,
)
from service.domain.events import AuditContext, CommitmentTerms, Money, RateLimit, SpendCeiling

T0 = datetime(2026, 11, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
S = timedelta(seconds=1)
H = timedelta(hours=1)
DAY = timedelta(days=1)


def _terms(
    actions: tuple[str, ...] = ("payments.refund",),
    resources: tuple[str, ...] = ("order:*",),
    valid_from: datetime = T0,
    valid_until: datetime | None = None,
    spend: SpendCeiling | None = None,
    rate: RateLimit | None = None,
    data_classes: tuple[str, ...] = (),
) -> CommitmentTerms:
    return CommitmentTerms(
        principal="alice",
        purpose="refunds",
        allowed_actions=list(actions),
        resource_bounds=list(resources),
        valid_from=valid_from,
        valid_until=valid_until,
        spend=spend,
        rate=rate,
        data_classes=list(data_classes),
        audit=AuditContext(policy_version="v1"),
    )


def _history(
    cid: str,
    *versions: tuple[CommitmentTerms, datetime],
    revoked_at: datetime | None = None,
) -> CommitmentHistory:
    return CommitmentHistory(
        cid,
        [
            CommitmentVersion(cid, n, terms, eff, ("acme", n * 10))
            for n, (terms, eff) in enumerate(versions, start=1)
        ],
        revoked_at,
        ("acme", 99) if revoked_at is not None else None,
    )


def _one(terms: CommitmentTerms, cid: str = "c1") -> list[CommitmentHistory]:
    return [_history(cid, (terms, T0 - DAY))]


def _facts(
    at: datetime = T0 + H,
    action: str = "payments.refund",
    resource: str = "order:1",
    amount: Money | None = None,
    data_classes: tuple[str, ...] = (),
) -> ActionFacts:
    return ActionFacts(at, action, resource, amount, data_classes)


def _eur(minor: int) -> Money:
    return Money(minor, "EUR")


def _kinds(evaluation: Evaluation) -> list[str]:
    return [v.kind for v in evaluation.violations]


def _usage(
    cid: str, *entries: tuple[datetime, int], horizon_s: int = 7 * 86400
) -> dict[str, RollingWindow]:
    window = RollingWindow(horizon_s, grace_s=86400)
    for at, amount in entries:
        window.add(at, amount)
    return {cid: window}


AT = T0 + 10 * H
PER_ACTION = SpendCeiling(currency="EUR", per_action_minor=1000)
PER_WINDOW = SpendCeiling(currency="EUR", per_window_minor=1000, window_s=3600)
RATE = RateLimit(max_count=3, window_s=60)


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        pytest.param(_eur(1000), [], id="exactly_at_ceiling"),
        pytest.param(_eur(1001), ["spend_per_action"], id="one_minor_above"),
        pytest.param(_eur(0), [], id="zero"),
        pytest.param(None, [], id="no_amount"),
    ],
)
def test_spend_per_action_flagged_when_amount_exceeds_ceiling(
    amount: Money | None, expected: list[str]
) -> None:
    """An amount equal to per_action_minor is allowed; one minor unit more is not."""
    result = evaluate(_facts(amount=amount), _one(_terms(spend=PER_ACTION)), {}, retired=False)
    assert _kinds(result) == expected
    assert result.within is (not expected)


@pytest.mark.parametrize(
    ("earlier", "amount", "expected"),
    [
        pytest.param([(AT - 10 * S, 600)], 400, [], id="cumulative_exactly_at_ceiling"),
        pytest.param([(AT - 10 * S, 600)], 401, ["spend_window"], id="cumulative_one_above"),
        pytest.param([(AT - 3600 * S, 600)], 401, [], id="earlier_exactly_window_ago_is_out"),
        pytest.param(
            [(AT - 3600 * S + US, 600)], 401, ["spend_window"], id="earlier_one_us_less_is_in"
        ),
        pytest.param([(AT, 1000)], 1, ["spend_window"], id="same_instant_is_in"),
        pytest.param([(AT + US, 1000)], 1, [], id="later_entry_is_out"),
        pytest.param([(AT - 10 * S, 1000)], 0, [], id="zero_amount_exactly_at_ceiling"),
        pytest.param([], 1001, ["spend_window"], id="single_action_above"),
    ],
)
def test_spend_window_flagged_when_cumulative_spend_exceeds_ceiling(
    earlier: list[tuple[datetime, int]], amount: int, expected: list[str]
) -> None:
    """Window spend including this action over per_window_minor is a violation; the window is (at - w, at]."""
    usage = _usage("c1", *earlier)
    result = evaluate(
        _facts(at=AT, amount=_eur(amount)), _one(_terms(spend=PER_WINDOW)), usage, retired=False
    )
    assert _kinds(result) == expected


@pytest.mark.parametrize(
    ("earlier", "expected"),
    [
        pytest.param([AT - 10 * S] * 2, [], id="exactly_max_count"),
        pytest.param([AT - 10 * S] * 3, ["rate_limit"], id="max_count_plus_one"),
        pytest.param([AT - 60 * S] * 3, [], id="earlier_exactly_window_ago_is_out"),
        pytest.param([AT - 60 * S + US] * 3, ["rate_limit"], id="earlier_one_us_less_is_in"),
        pytest.param([], [], id="first_action"),
    ],
)
def test_rate_limit_flagged_when_count_in_window_exceeds_max(
    earlier: list[datetime], expected: list[str]
) -> None:
    """The count of actions in (at - window_s, at] including this one may equal max_count, not exceed it."""
    usage = _usage("c1", *[(t, 0) for t in earlier])
    result = evaluate(_facts(at=AT), _one(_terms(rate=RATE)), usage, retired=False)
    assert _kinds(result) == expected
    assert all(v.severity == 2 for v in result.violations)


def test_rate_limit_flagged_when_max_count_is_zero() -> None:
    """A rate limit of zero forbids every action."""
    terms = _terms(rate=RateLimit(max_count=0, window_s=60))
    assert _kinds(evaluate(_facts(), _one(terms), {}, retired=False)) == ["rate_limit"]


VALID_FROM = T0 + DAY
VALID_UNTIL = T0 + 2 * DAY


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(VALID_FROM, [], id="at_valid_from_is_in"),
        pytest.param(VALID_FROM - US, ["outside_validity"], id="one_us_before_valid_from"),
        pytest.param(VALID_UNTIL, ["outside_validity"], id="at_valid_until_is_out"),
        pytest.param(VALID_UNTIL - US, [], id="one_us_before_valid_until_is_in"),
        pytest.param(VALID_UNTIL + DAY, ["outside_validity"], id="long_after"),
    ],
)
def test_outside_validity_flagged_when_action_outside_valid_interval(
    at: datetime, expected: list[str]
) -> None:
    """Validity is [valid_from, valid_until): from inclusive, until exclusive."""
    terms = _terms(valid_from=VALID_FROM, valid_until=VALID_UNTIL)
    result = evaluate(_facts(at=at), [_history("c1", (terms, T0))], {}, retired=False)
    assert _kinds(result) == expected
    assert [v.severity for v in result.violations] == [2] * len(expected)


@pytest.mark.parametrize(
    ("action", "resource", "expected"),
    [
        pytest.param("payments.refund", "order:1", [], id="allowed_in_bounds"),
        pytest.param("payments.charge", "order:1", ["action_not_allowed"], id="action_not_allowed"),
        pytest.param(
            "payments.refund", "invoice:1", ["resource_out_of_bounds"], id="resource_out_of_bounds"
        ),
        pytest.param(
            "payments.charge",
            "invoice:1",
            ["action_not_allowed", "resource_out_of_bounds"],
            id="both_in_fixed_order",
        ),
    ],
)
def test_scope_violations_flagged_when_action_or_resource_unmatched(
    action: str, resource: str, expected: list[str]
) -> None:
    """Action and resource patterns are checked in that order, each reported."""
    result = evaluate(_facts(action=action, resource=resource), _one(_terms()), {}, retired=False)
    assert _kinds(result) == expected


@pytest.mark.parametrize(
    ("resources", "resource", "expected"),
    [
        pytest.param(
            ("arn:aws:s3:::*/*/*/*.json",) * 64,
            "arn:aws:s3:::" + "/" * 1011,
            ["resource_out_of_bounds"],
            id="s3_bound_vs_slashes",
        ),
        pytest.param(
            ("*a*a*a*a*a*b",) * 64, "a" * 1024, ["resource_out_of_bounds"], id="stars_vs_a_run"
        ),
        pytest.param(("*a*a*a*a*a*b",), "a" * 1023 + "b", [], id="stars_match_at_the_end"),
    ],
)
def test_scope_judged_in_bounded_time_when_patterns_would_make_a_regex_backtrack(
    resources: tuple[str, ...], resource: str, expected: list[str]
) -> None:
    """A hostile resource against bounds at their limits is judged in well under a second
    (a backtracking matcher took seconds to hours and blocked the event loop)."""
    started = time.perf_counter()
    result = evaluate(
        _facts(resource=resource), _one(_terms(resources=resources)), {}, retired=False
    )
    assert time.perf_counter() - started < 0.5
    assert _kinds(result) == expected


@pytest.mark.parametrize(
    ("committed", "used", "expected"),
    [
        pytest.param(("pii", "financial"), ("pii",), [], id="strict_subset"),
        pytest.param(("pii", "financial"), ("financial", "pii"), [], id="equal_sets"),
        pytest.param((), (), [], id="none_used"),
        pytest.param(("pii",), ("pii", "health"), ["data_class"], id="not_subset"),
        pytest.param((), ("pii",), ["data_class"], id="nothing_committed"),
    ],
)
def test_data_class_flagged_when_action_classes_not_subset(
    committed: tuple[str, ...], used: tuple[str, ...], expected: list[str]
) -> None:
    """Every data class of the action must be among the commitment's data classes."""
    result = evaluate(
        _facts(data_classes=used), _one(_terms(data_classes=committed)), {}, retired=False
    )
    assert _kinds(result) == expected


@pytest.mark.parametrize(
    ("spend", "amount", "expected"),
    [
        pytest.param(PER_ACTION, Money(5, "USD"), ["currency_mismatch"], id="other_currency"),
        pytest.param(PER_ACTION, Money(5000, "USD"), ["currency_mismatch"], id="no_spend_check"),
        pytest.param(PER_ACTION, _eur(5), [], id="same_currency"),
        pytest.param(None, Money(5, "USD"), [], id="no_ceiling"),
    ],
)
def test_currency_mismatch_flagged_when_amount_currency_differs(
    spend: SpendCeiling | None, amount: Money, expected: list[str]
) -> None:
    """An amount in another currency than the ceiling's is a mismatch and is not compared."""
    result = evaluate(_facts(amount=amount), _one(_terms(spend=spend)), {}, retired=False)
    assert _kinds(result) == expected


@pytest.mark.parametrize(
    ("histories", "at", "retired", "expected"),
    [
        pytest.param(_one(_terms()), T0 + H, True, ["agent_retired"], id="retired_with_commitment"),
        pytest.param([], T0 + H, True, ["agent_retired"], id="retired_without_commitment"),
        pytest.param([], T0 + H, False, ["uncommitted"], id="no_commitment"),
        pytest.param(
            [_history("c1", (_terms(valid_from=T0 - DAY), T0))],
            T0 - US,
            False,
            ["uncommitted"],
            id="before_declaration",
        ),
        pytest.param(
            [_history("c1", (_terms(valid_from=T0 - DAY), T0))],
            T0,
            False,
            [],
            id="at_declaration",
        ),
    ],
)
def test_agent_level_violation_when_retired_or_uncommitted(
    histories: list[CommitmentHistory], at: datetime, retired: bool, expected: list[str]
) -> None:
    """A retired agent or an action with no commitment version in effect gets one agent-level violation."""
    result = evaluate(_facts(at=at), histories, {}, retired=retired)
    assert _kinds(result) == expected
    assert all(v.commitment_id is None and v.severity == 3 for v in result.violations)
    assert result.charge is None or result.within


def test_severities_fixed_when_looked_up() -> None:
    """Each violation kind has the documented fixed severity."""
    assert SEVERITY == {
        "agent_retired": 3,
        "uncommitted": 3,
        "revoked": 3,
        "outside_validity": 2,
        "action_not_allowed": 3,
        "resource_out_of_bounds": 3,
        "data_class": 3,
        "currency_mismatch": 2,
        "spend_per_action": 3,
        "spend_window": 3,
        "rate_limit": 2,
    }


def test_all_violations_listed_in_fixed_order_when_many_bounds_broken() -> None:
    """A candidate's violations come in the documented check order."""
    terms = _terms(
        valid_from=T0 + DAY,
        spend=SpendCeiling(currency="EUR", per_action_minor=1, per_window_minor=1, window_s=60),
        rate=RateLimit(max_count=0, window_s=60),
    )
    history = _history("c1", (terms, T0 - DAY), revoked_at=T0)
    facts = _facts(at=T0 + H, action="x", resource="y", amount=_eur(5), data_classes=("pii",))
    result = evaluate(facts, [history], {}, retired=False)
    assert _kinds(result) == [
        "revoked",
        "outside_validity",
        "action_not_allowed",
        "resource_out_of_bounds",
        "data_class",
        "spend_per_action",
        "spend_window",
        "rate_limit",
    ]
    assert result.charge is None


# --------------------------------------------------------------------------- scenarios


def test_revoked_flagged_when_revocation_falls_between_two_actions() -> None:
    """The action before the revocation is within; the one at or after it is revoked."""
    revoke_at = T0 + 2 * H
    live = _history("c1", (_terms(), T0 - DAY))
    revoked = _history("c1", (_terms(), T0 - DAY), revoked_at=revoke_at)
    usage: dict[str, RollingWindow] = {}
    first = evaluate(_facts(at=T0 + H), [live], usage, retired=False)
    record(usage, first)
    second = evaluate(_facts(at=revoke_at), [revoked], usage, retired=False)
    late_first = evaluate(_facts(at=revoke_at - US), [revoked], usage, retired=False)
    assert first.within
    assert first.covering == "c1"
    assert _kinds(second) == ["revoked"]
    assert "acme#99" in second.violations[0].detail
    assert late_first.within


V1 = _terms(spend=SpendCeiling(currency="EUR", per_action_minor=1000))
V2 = _terms(spend=SpendCeiling(currency="EUR", per_action_minor=300))
AMENDED = _history("c1", (V1, T0 - DAY), (V2, T0 + H))


@pytest.mark.parametrize(
    "order",
    [pytest.param((0, 1), id="in_order"), pytest.param((1, 0), id="out_of_order")],
)
def test_amended_terms_apply_from_occurred_at_when_evaluated_in_any_order(
    order: tuple[int, int],
) -> None:
    """An action before the amendment is judged by v1, one after by v2, whatever the processing order."""
    actions = [
        _facts(at=T0 + 30 * timedelta(minutes=1), amount=_eur(500)),
        _facts(at=T0 + 90 * timedelta(minutes=1), amount=_eur(500)),
    ]
    usage: dict[str, RollingWindow] = {}
    results: dict[int, Evaluation] = {}
    for i in order:
        results[i] = evaluate(actions[i], [AMENDED], usage, retired=False)
        record(usage, results[i])
    assert results[0].within
    assert results[0].ref == ("acme", 10)
    assert _kinds(results[1]) == ["spend_per_action"]
    assert results[1].ref == ("acme", 20)


def test_window_spans_versions_when_amended_mid_window() -> None:
    """Spend charged under v1 counts against v2's window ceiling after an amendment mid-window."""
    v1 = _terms(spend=SpendCeiling(currency="EUR", per_window_minor=1000, window_s=7200))
    v2 = _terms(spend=SpendCeiling(currency="EUR", per_window_minor=500, window_s=7200))
    history = _history("c1", (v1, T0 - DAY), (v2, T0 + H))
    usage: dict[str, RollingWindow] = {}
    a = evaluate(_facts(at=T0 + 10 * 60 * S, amount=_eur(400)), [history], usage, retired=False)
    record(usage, a)
    b = evaluate(_facts(at=T0 + 70 * 60 * S, amount=_eur(200)), [history], usage, retired=False)
    c = evaluate(_facts(at=T0 + 50 * 60 * S, amount=_eur(200)), [history], usage, retired=False)
    assert a.within
    assert _kinds(b) == ["spend_window"]
    assert b.ref == ("acme", 20)
    assert c.within
    assert c.ref == ("acme", 10)


def test_second_commitment_covers_when_first_does_not() -> None:
    """Any candidate without violations covers the action; the first in id order wins."""
    orders = _history("c1", (_terms(resources=("order:*",)), T0 - DAY))
    invoices = _history("c2", (_terms(resources=("invoice:*",)), T0 - DAY))
    anything = _history("c3", (_terms(resources=("*",)), T0 - DAY))
    on_invoice = evaluate(_facts(resource="invoice:7"), [invoices, orders], {}, retired=False)
    on_order = evaluate(_facts(resource="order:7"), [anything, invoices, orders], {}, retired=False)
    assert on_invoice.within
    assert on_invoice.covering == "c2"
    assert on_invoice.ref == ("acme", 10)
    assert on_order.covering == "c1"


@pytest.mark.parametrize(
    ("c1_terms", "c2_terms", "closest", "expected"),
    [
        pytest.param(
            _terms(actions=("x",), resources=("y",)),
            _terms(rate=RateLimit(max_count=0, window_s=60)),
            "c2",
            ["rate_limit"],
            id="lower_max_severity_wins",
        ),
        pytest.param(
            _terms(actions=("x",), resources=("y",)),
            _terms(actions=("x",)),
            "c2",
            ["action_not_allowed"],
            id="fewer_violations_wins",
        ),
        pytest.param(
            _terms(resources=("y",)),
            _terms(actions=("x",)),
            "c1",
            ["resource_out_of_bounds"],
            id="tie_broken_by_id",
        ),
    ],
)
def test_closest_match_reported_when_no_candidate_covers(
    c1_terms: CommitmentTerms, c2_terms: CommitmentTerms, closest: str, expected: list[str]
) -> None:
    """The smallest (max severity, count, commitment_id) candidate's violations are reported."""
    histories = [_history("c2", (c2_terms, T0 - DAY)), _history("c1", (c1_terms, T0 - DAY))]
    result = evaluate(_facts(), histories, {}, retired=False)
    assert not result.within
    assert result.covering is None
    assert _kinds(result) == expected
    assert {v.commitment_id for v in result.violations} == {closest}


@pytest.mark.parametrize(
    ("terms", "amount", "charged", "spent"),
    [
        pytest.param(_terms(spend=PER_ACTION), _eur(700), True, 700, id="within_charged"),
        pytest.param(
            _terms(spend=PER_ACTION), _eur(1700), True, 1700, id="budget_violation_charged"
        ),
        pytest.param(_terms(spend=PER_ACTION), Money(7, "USD"), True, 0, id="mismatch_spends_zero"),
        pytest.param(_terms(), _eur(700), True, 0, id="no_ceiling_spends_zero"),
        pytest.param(_terms(actions=("x",)), _eur(700), False, 0, id="out_of_scope_not_charged"),
    ],
)
def test_record_charges_window_when_action_in_scope(
    terms: CommitmentTerms, amount: Money, charged: bool, spent: int
) -> None:
    """record adds in-scope actions to their commitment's window, spending only a matching currency."""
    usage: dict[str, RollingWindow] = {}
    result = evaluate(_facts(at=AT, amount=amount), _one(terms), usage, retired=False)
    record(usage, result)
    if charged:
        assert usage["c1"].entries() == [(AT, spent)]
    else:
        assert usage == {}


def test_record_ignores_evaluation_when_agent_retired() -> None:
    """A retired agent's action is charged to nobody."""
    usage: dict[str, RollingWindow] = {}
    record(usage, evaluate(_facts(), _one(_terms()), usage, retired=True))
    assert usage == {}


def test_evaluate_leaves_inputs_unchanged_when_called() -> None:
    """evaluate mutates neither usage nor histories; repeating it gives the same answer."""
    usage = _usage("c1", (AT - S, 900))
    histories = _one(_terms(spend=PER_WINDOW, rate=RATE))
    before = (usage["c1"].entries(), len(usage), list(histories))
    first = evaluate(_facts(at=AT, amount=_eur(200)), histories, usage, retired=False)
    second = evaluate(_facts(at=AT, amount=_eur(200)), histories, usage, retired=False)
    assert (usage["c1"].entries(), len(usage), list(histories)) == before
    assert first == second
    assert _kinds(first) == ["spend_window"]


@pytest.mark.parametrize(
    ("at", "version"),
    [
        pytest.param(T0 - US, None, id="before_v1"),
        pytest.param(T0, 1, id="at_v1"),
        pytest.param(T0 + H - US, 1, id="just_before_v2"),
        pytest.param(T0 + H, 2, id="at_v2"),
        pytest.param(T0 + DAY, 2, id="after_v2"),
    ],
)
def test_version_at_returns_latest_effective_when_queried(
    at: datetime, version: int | None
) -> None:
    """version_at picks the latest version whose effective_from <= at."""
    history = _history("c1", (_terms(), T0), (_terms(), T0 + H))
    found = history.version_at(at)
    assert (found.version if found else None) == version


def test_history_refused_when_versions_not_increasing() -> None:
    """Versions must be strictly increasing."""
    v = CommitmentVersion("c1", 2, _terms(), T0, ("acme", 1))
    with pytest.raises(ValueError, match="strictly increasing"):
        CommitmentHistory("c1", [v, v])


# --------------------------------------------------------------------------- rolling windows

BASE_US = to_micros(T0)
MAX_OFFSET_S = 300


def _offsets(max_s: int) -> st.SearchStrategy[int]:
    """Whole seconds, one microsecond either side of them (window boundaries), or anywhere."""
    return st.one_of(
        st.tuples(st.integers(0, max_s), st.sampled_from([-1, 0, 1])).map(
            lambda p: max(0, p[0] * 1_000_000 + p[1])
        ),
        st.integers(0, max_s * 1_000_000),
    )


entries_st = st.lists(st.tuples(_offsets(MAX_OFFSET_S), st.integers(0, 1000)), max_size=40)
close_entries_st = st.lists(st.tuples(_offsets(40), st.integers(0, 1000)), max_size=40)
"""Entries a few horizons apart at most, so pruning boundaries are hit often."""


def _brute(entries: list[tuple[int, int]], window_s: int, at_us: int) -> tuple[int, int]:
    inside = [a for t, a in entries if at_us - window_s * 1_000_000 < t <= at_us]
    return sum(inside), len(inside)


def _queries(entries: list[tuple[int, int]]) -> list[int]:
    times = {t for t, _ in entries} | {0, MAX_OFFSET_S * 1_000_000}
    return sorted({q + d for q in times for d in (-1, 0, 1)})


@settings(max_examples=400, deadline=None)
@given(
    entries=entries_st, windows=st.lists(st.integers(0, MAX_OFFSET_S + 10), min_size=1, max_size=5)
)
def test_total_in_matches_brute_force_when_entries_arrive_in_any_order(
    entries: list[tuple[int, int]], windows: list[int]
) -> None:
    """Without pruning, total_in and count_in equal a brute-force sum over (at - w, at]."""
    window = RollingWindow(horizon_s=10 * MAX_OFFSET_S)
    for t, a in entries:
        window.add(from_micros(BASE_US + t), a)
    for w in windows:
        for q in _queries(entries):
            at = from_micros(BASE_US + q)
            assert (window.total_in(w, at), window.count_in(w, at)) == _brute(entries, w, q)
    assert window.entries() == [
        (from_micros(BASE_US + t), a) for t, a in sorted(entries, key=lambda e: e[0])
    ]


@settings(max_examples=400, deadline=None)
@given(
    entries=close_entries_st,
    horizon_s=st.integers(0, 15),
    grace_s=st.integers(0, 8),
    data=st.data(),
)
def test_pruning_keeps_answers_when_window_within_horizon(
    entries: list[tuple[int, int]], horizon_s: int, grace_s: int, data: st.DataObject
) -> None:
    """After every add, queries with w <= horizon and at >= newest - grace match the unpruned answer."""
    window = RollingWindow(horizon_s, grace_s)
    seen: list[tuple[int, int]] = []
    for t, a in entries:
        window.add(from_micros(BASE_US + t), a)
        seen.append((t, a))
        newest = max(x for x, _ in seen)
        w = data.draw(st.integers(0, horizon_s), label="w")
        lowest = newest - grace_s * 1_000_000
        for q in [lowest, lowest + 1, newest, newest + 1, *(x for x, _ in seen if x >= lowest)]:
            for width in (w, horizon_s):
                at = from_micros(BASE_US + q)
                got = (window.total_in(width, at), window.count_in(width, at))
                assert got == _brute(seen, width, q)
        assert len(window) <= len(seen)


def test_pruning_drops_old_entries_when_far_behind_newest() -> None:
    """Entries at or before newest - horizon - grace are dropped, so memory stays bounded."""
    window = RollingWindow(horizon_s=10, grace_s=5)
    for i in range(1000):
        window.add(T0 + i * S, 1)
    assert len(window) == 15
    assert window.total_in(10, T0 + 999 * S) == 10
    assert window.entries()[0] == (T0 + 985 * S, 1)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(T0 + 10 * S, 0, id="exactly_window_after_is_out"),
        pytest.param(T0 + 10 * S - US, 5, id="one_us_less_is_in"),
        pytest.param(T0, 5, id="same_instant_is_in"),
        pytest.param(T0 - US, 0, id="before_entry_is_out"),
    ],
)
def test_total_in_half_open_when_entry_on_boundary(at: datetime, expected: int) -> None:
    """The window (at - w, at] excludes an entry exactly w seconds before at."""
    window = RollingWindow(horizon_s=10)
    window.add(T0, 5)
    assert window.total_in(10, at) == expected


@pytest.mark.parametrize(
    ("first", "kept"),
    [
        pytest.param(T0 - 15 * S, 0, id="exactly_horizon_plus_grace_before_newest_dropped"),
        pytest.param(T0 - 15 * S + US, 1, id="one_us_later_kept"),
    ],
)
def test_pruning_boundary_exact_when_entry_at_horizon_plus_grace(
    first: datetime, kept: int
) -> None:
    """Pruning drops only entries that no exact query (w <= horizon, at >= newest - grace) can see."""
    window = RollingWindow(horizon_s=10, grace_s=5)
    window.add(first, 1)
    window.add(T0, 1)
    assert len(window) == 1 + kept
    assert window.count_in(10, T0 - 5 * S) == kept
