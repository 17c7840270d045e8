"""The posture score model: decaying evidence items in, score / band / confidence / next change out.

Every expected number below is worked out by hand in a comment from the model in
`service/domain/posture.py` (module docstring). H is HORIZON_US (30 days), DAY and
HOUR are in microseconds; instants are integer microseconds since the Unix epoch.

The property tests use an oracle written independently from the docstring (not
from the implementation) and the fact that, between two consecutive breakpoints
(an item entering, leaving the horizon or leaving the recent-severe cap, a
commitment span starting, ending or being revoked, a retirement), good and bad
weights are linear in time, so the score's ratio g / (g + b) is monotone there and
the band changes at most monotonically. Checking the state at both ends of every
such segment therefore checks every instant in between.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.posture import (
    COUNTED_RANKS,
    DAY_US,
    FULL_CONFIDENCE,
    HORIZON_US,
    HOUR_US,
    MIN_EVIDENCE,
    RECENT_SEVERE_US,
    TRUSTED_MIN,
    WATCH_MIN,
    WEIGHT,
    Item,
    ItemKind,
    Source,
    Span,
    Status,
    WindowCounts,
    assess,
    band_changes,
    next_change,
    score_of,
    window_counts,
)

H = HORIZON_US
DAY = DAY_US
HOUR = HOUR_US
T = 1_800_000_000_000_000
"""The assessment instant of the hand-worked examples (2027-01-15T08:00:00Z)."""


def _item(
    at: int,
    severity: int = 0,
    source: Source = "self",
    kind: ItemKind = "action",
    observer: str = "",
) -> Item:
    """An item; a third-party one is in the chain of `observer` (default payhub)."""
    chain = observer or ("acme" if source == "self" else "payhub")
    return Item(
        at_us=at,
        source=source,
        kind=kind,
        severity=severity,
        violations=("v",) if severity else (),
        ref=(chain, 1),
        event_id="e1",
    )


def _goods(n: int, at: int = T, source: Source = "self", observer: str = "") -> list[Item]:
    return [_item(at, 0, source, observer=observer) for _ in range(n)]


# --------------------------------------------------------------------------- constants


def test_model_constants_fixed_when_imported() -> None:
    """The model's parameters have their documented values."""
    assert HORIZON_US == 30 * 24 * 3600 * 1_000_000 == 2_592_000_000_000
    assert WEIGHT == {"self": (1, 1, 4, 10), "third_party": (2, 1, 2, 5)}
    assert COUNTED_RANKS == (1, 3, 7, 15)
    assert (TRUSTED_MIN, WATCH_MIN, MIN_EVIDENCE, FULL_CONFIDENCE) == (900, 600, 3, 50)
    assert RECENT_SEVERE_US == DAY == 24 * 3600 * 1_000_000


@pytest.mark.parametrize("severity", [pytest.param(-1, id="negative"), pytest.param(4, id="four")])
def test_item_refused_when_severity_out_of_range(severity: int) -> None:
    """An item's severity is 0 (within bounds) to 3."""
    with pytest.raises(ValueError, match="severity must be 0-3"):
        _item(T, severity)


@pytest.mark.parametrize(
    ("good", "bad", "expected"),
    [
        pytest.param(0, 0, None, id="no_weight_is_none"),
        pytest.param(5, 0, 1000, id="only_good"),
        pytest.param(0, 5, 0, id="only_bad"),
        pytest.param(2, 1, 666, id="two_thirds_rounded_down"),
        pytest.param(9, 1, 900, id="exactly_900"),
        pytest.param(8999, 1001, 899, id="just_below_900"),
    ],
)
def test_score_of_floors_per_mille_when_weights_given(
    good: int, bad: int, expected: int | None
) -> None:
    """score_of is floor(1000 * good / (good + bad)), None without weight."""
    assert score_of(good, bad) == expected


# --------------------------------------------------------------------------- worked examples


def test_worked_example_when_twenty_fresh_good_and_one_fresh_severe() -> None:
    """20 fresh self-reported good actions and one fresh severity-3 violation score 666 (watch)."""
    # Every item is at as_of (age 0), so each weighs (H - 0) * WEIGHT["self"][0] = H.
    #   good  = 20 * H                          = 51_840_000_000_000
    #   bad   = 1 * H * WEIGHT["self"][3] = 10 H = 25_920_000_000_000
    #   score = floor(1000 * 20H / 30H) = floor(666.67) = 666   -> watch (600 <= 666 < 900)
    #   mass  = 21 H (unweighted)  -> confidence = floor(1000 * 21H / 50H) = 420
    items = [*_goods(20), _item(T, 3)]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.mass) == (20 * H, 10 * H, 21 * H)
    assert (a.good, a.bad) == (51_840_000_000_000, 25_920_000_000_000)
    assert (a.score, a.band, a.confidence) == (666, "watch", 420)


def test_worked_example_when_items_have_different_ages() -> None:
    """Weights fall linearly with age: halfway through the horizon an item weighs half."""
    # 10 good at age 0:           10 * (H - 0)          = 10 H
    # 10 good at age H/2 (15 d):  10 * (H - H/2)        =  5 H
    # 1 severity-2 at age 3H/4 (22 d 12 h): (H - 3H/4) * 4 = H
    #   good  = 15 H, bad = H
    #   score = floor(1000 * 15/16) = floor(937.5) = 937 -> trusted (>= 900, no severity 3)
    #   mass  = 10 H + 5 H + H/4 = 15.25 H -> confidence = floor(1000 * 15.25 / 50) = 305
    assert H // 2 == 15 * DAY
    assert 3 * H // 4 == 22 * DAY + 12 * HOUR
    items = [*_goods(10), *_goods(10, at=T - H // 2), _item(T - 3 * H // 4, 2)]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.mass) == (15 * H, H, 15 * H + H // 4)
    assert (a.score, a.band, a.confidence) == (937, "trusted", 305)


def test_worked_example_when_third_party_items_counted_by_rank() -> None:
    """Another org's good sighting weighs 2, its adverse one half a self-report; ranks 1, 3, 7, 15."""
    # H = 720 HOUR.
    # 5 good by payhub at age 0: ranks 1-5, ranks 1 and 3 count:  2 * H * 2   = 4 H = 2880 HOUR
    # 2 good by globex at age 0: rank 1 counts:                   1 * H * 2   = 2 H = 1440 HOUR
    # 3 self good at age H/3 (10 d):                              3 * (2H/3)  = 2 H = 1440 HOUR
    # 1 severity-1 by payhub, 1 h old (its own group, rank 1):  (H - HOUR) * 1   =  719 HOUR
    #   good  = 5760 HOUR, bad = 719 HOUR
    #   score = floor(1000 * 5760 / 6479) = floor(889.02) = 889 -> watch
    #   mass  = 3 H (counted sightings) + 2 H + (H - HOUR) = 4319 HOUR
    #   confidence = floor(1000 * 4319 / (50 * 720)) = floor(119.97) = 119
    items = [*_goods(5, source="third_party"), *_goods(2, source="third_party", observer="globex")]
    items += [*_goods(3, at=T - H // 3), _item(T - HOUR, 1, "third_party")]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.mass) == (5760 * HOUR, 719 * HOUR, 4319 * HOUR)
    assert (a.score, a.band, a.confidence) == (889, "watch", 119)


def test_worked_example_when_severe_violation_caps_a_high_score() -> None:
    """A severity-3 item younger than a day keeps a score of 909 at watch."""
    # 100 self good at age 0:          100 * H            = 72_000 HOUR
    # 1 self severity-3, 2 h old:      (H - 2 HOUR) * 10  =  7_180 HOUR
    #   score = floor(1000 * 72000 / 79180) = floor(909.32) = 909 >= 900,
    #   but the severity-3 item is 2 h < 1 day old -> watch
    #   mass = 100 H + H - 2 HOUR = 72_718 HOUR -> confidence min(1000, ...) = 1000
    items = [*_goods(100), _item(T - 2 * HOUR, 3)]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.mass) == (72_000 * HOUR, 7_180 * HOUR, 72_718 * HOUR)
    assert (a.score, a.band, a.confidence) == (909, "watch", 1000)


def test_worked_example_when_third_party_sees_a_severe_violation() -> None:
    """One fresh severity-3 seen by a third party weighs five fresh good self-reports."""
    # good = 20 * H, bad = H * 5 = 5 H -> score = floor(1000 * 20/25) = 800 -> watch
    # (v1 weighed it 2 * 10 = 20 H: score 500, untrusted)
    items = [*_goods(20), _item(T, 3, "third_party", "contradicted")]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.score, a.band) == (20 * H, 5 * H, 800, "watch")


# --------------------------------------------------------------------------- one org cannot game

# 20 good self-reports an hour old: each weighs H - HOUR = 719 HOUR, good = 14_380 HOUR.
# Trusted (nothing adverse, mass 20 (H - HOUR) >= 3 H).
WELL_EVIDENCED = _goods(20, at=T - HOUR)


def _sighting(observer: str, severity: int, finding: ItemKind, finding_severity: int) -> list[Item]:
    """One gateway observation by `observer` an hour ago and its finding at T (the deadline)."""
    action = _item(T - HOUR, severity, "third_party", observer=observer)
    return [action, _item(T, finding_severity, "third_party", finding, observer=observer)]


ONE_SIGHTING = [
    # A forbidden action, unreported. The action (3, third party): 5 (H - HOUR) = 3_595 HOUR;
    # the finding (2, third party, fresh): 2 H = 1_440 HOUR. bad = 5_035 HOUR.
    # score = floor(1000 * 14_380 / 19_415) = 740 -> watch (a fresh severity 3 caps anyway).
    # (v1: bad = 20 * 719 + 8 * 720 = 20_140 HOUR -> score 416, untrusted.)
    pytest.param(_sighting("payhub", 3, "unreported", 2), 740, "watch", id="forbidden_unreported"),
    # An allowed action contradicted by the agent's report: good += 2 * 719 = 1_438 HOUR,
    # bad = 5 * 720 = 3_600 HOUR; score = floor(1000 * 15_818 / 19_418) = 814 -> watch.
    # (v1: bad = 20 * 720 = 14_400 HOUR -> score 523, untrusted.)
    pytest.param(_sighting("payhub", 0, "contradicted", 3), 814, "watch", id="contradicted"),
    # A forbidden action and a contradicting report: both severity 3, one group of payhub's,
    # so only the newer (the finding) counts: bad = 5 * 720 = 3_600 HOUR -> 799, watch.
    # (v1: bad = 20 * 719 + 20 * 720 = 28_780 HOUR -> score 333, untrusted.)
    pytest.param(
        _sighting("payhub", 3, "contradicted", 3), 799, "watch", id="forbidden_contradicted"
    ),
    # An allowed action, unreported: good 15_818 HOUR, bad 2 * 720 = 1_440 HOUR -> 916, trusted.
    pytest.param(_sighting("payhub", 0, "unreported", 2), 916, "trusted", id="unreported"),
]


@pytest.mark.parametrize(("sighting", "score", "band"), ONE_SIGHTING)
def test_one_adverse_observation_does_not_make_untrusted_when_agent_well_evidenced(
    sighting: list[Item], score: int, band: str
) -> None:
    """One other org's single adverse sighting cannot take 20 good self-reports to untrusted."""
    assert assess(WELL_EVIDENCED, Status(), T).band == "trusted"
    a = assess([*WELL_EVIDENCED, *sighting], Status(), T)
    assert (a.score, a.band) == (score, band)


@pytest.mark.parametrize(
    ("observers", "score", "band"),
    [
        # Two orgs: bad = 2 * 5_035 = 10_070 HOUR; floor(1000 * 14_380 / 24_450) = 588.
        pytest.param(("payhub", "globex"), 588, "untrusted", id="two_orgs"),
        # One org twice: of its two severity-3 actions (and of its two findings) only the
        # newest counts (ranks 1, 3, 7, 15): bad = 5_035 HOUR as for one sighting -> 740.
        pytest.param(("payhub", "payhub"), 740, "watch", id="one_org_twice"),
        # Three orgs: bad = 15_105 HOUR; floor(1000 * 14_380 / 29_485) = 487.
        pytest.param(("payhub", "globex", "initech"), 487, "untrusted", id="three_orgs"),
    ],
)
def test_independent_adverse_observations_add_up_when_orgs_differ(
    observers: tuple[str, ...], score: int, band: str
) -> None:
    """Forbidden unreported sightings by two orgs make the agent untrusted; one org twice does not."""
    sightings = [i for o in observers for i in _sighting(o, 3, "unreported", 2)]
    a = assess([*WELL_EVIDENCED, *sightings], Status(), T)
    assert (a.score, a.band) == (score, band)


# An untrusted agent: 10 good self-reports a day old (10 * 696 HOUR = 6_960 HOUR) and two
# severity-3 self-reported violations two days old (2 * 10 * 672 HOUR = 13_440 HOUR):
# score = floor(1000 * 6_960 / 20_400) = 341.
UNTRUSTED = [*_goods(10, at=T - DAY), _item(T - 2 * DAY, 3), _item(T - 2 * DAY, 3)]


@pytest.mark.parametrize(
    ("volume", "score"),
    [
        # One sighting: good += 2 * 719 = 1_438 HOUR -> floor(1000 * 8_398 / 21_838) = 384.
        pytest.param(1, 384, id="one"),
        # Ranks 1 and 3 count: good += 2_876 HOUR -> floor(1000 * 9_836 / 23_276) = 422.
        pytest.param(3, 422, id="three"),
        # Ranks 1, 3, 7 and 15 count, no more: good += 5_752 HOUR -> 12_712 / 26_152 = 486.
        pytest.param(15, 486, id="fifteen"),
        pytest.param(3000, 486, id="three_thousand"),
    ],
)
def test_volume_from_one_gateway_cannot_whitewash_when_agent_untrusted(
    volume: int, score: int
) -> None:
    """3,000 good sightings by one org count as four: an untrusted agent stays untrusted."""
    assert assess(UNTRUSTED, Status(), T).score == 341
    a = assess([*UNTRUSTED, *_goods(volume, at=T - HOUR, source="third_party")], Status(), T)
    assert (a.score, a.band) == (score, "untrusted")


def test_ranks_1_3_7_15_count_when_one_org_sights_at_sixteen_instants() -> None:
    """Of 16 sightings by one org an hour apart, the newest, 3rd, 7th and 15th newest count."""
    # Ages 0 h .. 15 h. Counted: ages 0, 2, 6 and 14 h, each 2 * (720 - age) HOUR:
    #   good = 2 * (720 + 718 + 714 + 706) HOUR = 5_716 HOUR; mass = 2_858 HOUR.
    items = [_item(T - n * HOUR, 0, "third_party") for n in range(16)]
    a = assess(items, Status(), T)
    assert (a.good, a.bad, a.mass) == (5_716 * HOUR, 0, 2_858 * HOUR)
    # One hour later a 17th sighting is the newest: ages 0, 2, 6, 14 h again are counted.
    later = assess([*items, _item(T + HOUR, 0, "third_party")], Status(), T + HOUR)
    assert (later.good, later.mass) == (5_716 * HOUR, 2_858 * HOUR)


def test_independent_observers_count_more_when_as_many_sightings() -> None:
    """k sightings by k orgs weigh more than k sightings by one org (k >= 2)."""
    for k in range(2, 20):
        one = _goods(k, at=T - HOUR, source="third_party")
        many = [_item(T - HOUR, 0, "third_party", observer=f"org{n}") for n in range(k)]
        assert assess(many, Status(), T).good > assess(one, Status(), T).good


# --------------------------------------------------------------------------- bands


def _spans(*revoked: int | None) -> Status:
    return Status(spans=tuple(Span(f"c{n}", T - DAY, None, r) for n, r in enumerate(revoked)))


BAND_CASES = [
    # 9 good + 1 severity-1, all fresh: 1000 * 9H / 10H = 900
    pytest.param([*_goods(9), _item(T, 1)], Status(), "trusted", 900, id="score_exactly_900"),
    # one good 1 us older: 1000 (9H - 1) // (10H - 1) = 899
    pytest.param([*_goods(8), _item(T - 1), _item(T, 1)], Status(), "watch", 899, id="score_899"),
    # 6 good + 4 severity-1: 1000 * 6H / 10H = 600
    pytest.param([*_goods(6), *[_item(T, 1)] * 4], Status(), "watch", 600, id="score_exactly_600"),
    # 1000 (6H - 1) // (10H - 1) = 599
    pytest.param(
        [*_goods(5), _item(T - 1), *[_item(T, 1)] * 4],
        Status(),
        "untrusted",
        599,
        id="score_599",
    ),
    # mass = 3 H exactly: enough evidence
    pytest.param(_goods(3), Status(), "trusted", 1000, id="mass_exactly_min_evidence"),
    # mass = 3 H - 1: too little, nothing adverse -> unknown (the score is still reported)
    pytest.param([*_goods(2), _item(T - 1)], Status(), "unknown", 1000, id="mass_one_us_below_min"),
    pytest.param([], Status(), "unknown", None, id="no_evidence"),
    # thin evidence, but adverse: mass H < 3 H does not make it unknown
    pytest.param([_item(T, 1)], Status(), "untrusted", 0, id="adverse_with_thin_evidence"),
    # 1000 * H / 2H = 500
    pytest.param([_item(T), _item(T, 1)], Status(), "untrusted", 500, id="adverse_and_one_good"),
    # 100 good fresh, severity-3 1 day - 1 us old: bad = 10 (H - DAY + 1) = 290 DAY + 10,
    # good = 3000 DAY: score = floor(1000 * 3000 DAY / (3290 DAY + 10)) = 911, capped
    pytest.param([*_goods(100), _item(T - DAY + 1, 3)], Status(), "watch", 911, id="severe_cap_on"),
    # exactly 1 day old: 1000 * 3000 / 3290 = 911.85 -> 911, no longer capped
    pytest.param([*_goods(100), _item(T - DAY, 3)], Status(), "trusted", 911, id="severe_cap_off"),
    # severity 2 never caps: bad = 4 H, score = floor(1000 * 100/104) = 961
    pytest.param([*_goods(100), _item(T, 2)], Status(), "trusted", 961, id="severity_2_no_cap"),
    pytest.param(_goods(3), Status(retired_at_us=T), "revoked", 1000, id="retired_at_as_of"),
    pytest.param(_goods(3), Status(retired_at_us=T + 1), "trusted", 1000, id="retired_1us_later"),
    pytest.param(
        [_item(T, 3)], Status(retired_at_us=T - DAY), "revoked", 0, id="revoked_before_adverse"
    ),
    pytest.param(_goods(3), _spans(T, T - 5), "revoked", 1000, id="all_commitments_revoked"),
    pytest.param(_goods(3), _spans(T, None), "trusted", 1000, id="one_commitment_open"),
    pytest.param(_goods(3), _spans(T, T + 1), "trusted", 1000, id="one_revoked_1us_later"),
    pytest.param(_goods(3), _spans(), "trusted", 1000, id="no_commitments_not_revoked"),
    # an item exactly H old weighs 0 and no longer counts at all (not even as adverse)
    pytest.param([_item(T - H, 1)], Status(), "unknown", None, id="item_exactly_horizon_old"),
    # 2 fresh good (mass 2 H): an adverse item exactly H old does not lift "unknown"
    pytest.param(
        [*_goods(2), _item(T - H, 1)], Status(), "unknown", 1000, id="old_adverse_not_adverse"
    ),
    # H - 1 us old: weight 1, adverse -> untrusted, score 0
    pytest.param([_item(T - H + 1, 1)], Status(), "untrusted", 0, id="item_horizon_minus_1us"),
    pytest.param([_item(T + 1, 1)], Status(), "unknown", None, id="future_item_not_counted"),
    pytest.param([_item(T, 1)], Status(), "untrusted", 0, id="item_at_as_of_counted"),
]


@pytest.mark.parametrize(("items", "status", "band", "score"), BAND_CASES)
def test_band_follows_first_matching_rule_when_on_a_boundary(
    items: list[Item], status: Status, band: str, score: int | None
) -> None:
    """revoked, unknown, trusted, watch, untrusted: first rule that applies, exact at boundaries."""
    a = assess(items, status, T)
    assert (a.band, a.score) == (band, score)


@pytest.mark.parametrize(
    ("span", "at", "expected"),
    [
        pytest.param(Span("a", T, T + 10), T - 1, (), id="before_start"),
        pytest.param(Span("a", T, T + 10), T, ("a",), id="at_start_in"),
        pytest.param(Span("a", T, T + 10), T + 9, ("a",), id="before_end_in"),
        pytest.param(Span("a", T, T + 10), T + 10, (), id="at_end_out"),
        pytest.param(Span("a", T, None), T + 100 * H, ("a",), id="open_ended"),
        pytest.param(Span("a", T, None, T + 5), T + 4, ("a",), id="before_revocation"),
        pytest.param(Span("a", T, None, T + 5), T + 5, (), id="at_revocation_out"),
    ],
)
def test_in_force_half_open_when_span_boundaries_hit(
    span: Span, at: int, expected: tuple[str, ...]
) -> None:
    """A span is in force on [start, end) and before its revocation."""
    assert Status(spans=(span,)).in_force(at) == expected


def test_in_force_lists_each_commitment_once_sorted_when_spans_overlap() -> None:
    """Several spans of one commitment give its id once; ids are sorted."""
    status = Status(spans=(Span("b", T, T + 5), Span("b", T + 5, None), Span("a", T, None)))
    assert status.in_force(T + 5) == ("a", "b")


# --------------------------------------------------------------------------- window counts


def _counts(items: list[Item], window: str, source: Source = "self") -> WindowCounts:
    (found,) = [c for c in window_counts(items, T) if c.window == window and c.source == source]
    return found


@pytest.mark.parametrize(
    ("window", "length"),
    [
        pytest.param("1h", HOUR, id="1h"),
        pytest.param("24h", DAY, id="24h"),
        pytest.param("7d", 7 * DAY, id="7d"),
        pytest.param("30d", 30 * DAY, id="30d"),
    ],
)
@pytest.mark.parametrize(
    ("offset", "inside"),
    [
        pytest.param(0, False, id="exactly_window_old_out"),
        pytest.param(1, True, id="window_minus_1us_in"),
    ],
)
def test_window_counts_half_open_when_item_on_window_edge(
    window: str, length: int, offset: int, inside: bool
) -> None:
    """A window is (as_of - length, as_of]: an item exactly `length` old is out, 1 us younger in."""
    items = [_item(T - length + offset)]
    assert _counts(items, window).actions == int(inside)


def test_window_counts_split_by_kind_and_source_when_mixed() -> None:
    """Counts separate actions within / in violation from findings, per source, in fixed order."""
    items = [
        _item(T),
        _item(T - HOUR + 1, 2),
        _item(T - HOUR, 3),  # out of 1h, in 24h
        _item(T - 2 * HOUR, 2, "self", "unreported"),
        _item(T, 0, "third_party"),
        _item(T - 3 * DAY, 3, "third_party", "contradicted"),
        _item(T + 1),  # future: in no window
    ]
    counts = window_counts(items, T)
    assert [(c.window, c.source) for c in counts] == [
        (w, s) for w in ("1h", "24h", "7d", "30d") for s in ("self", "third_party")
    ]
    got = {(c.window, c.source): (c.actions, c.within, c.violations, c.findings) for c in counts}
    assert got == {
        ("1h", "self"): (2, 1, 1, 0),
        ("1h", "third_party"): (1, 1, 0, 0),
        ("24h", "self"): (3, 1, 2, 1),
        ("24h", "third_party"): (1, 1, 0, 0),
        ("7d", "self"): (3, 1, 2, 1),
        ("7d", "third_party"): (1, 1, 0, 1),
        ("30d", "self"): (3, 1, 2, 1),
        ("30d", "third_party"): (1, 1, 0, 1),
    }
    assert assess(items, Status(), T).counts == counts


# --------------------------------------------------------------------------- next change, by hand


def test_next_change_when_severe_cap_expires() -> None:
    """The cap of a severity-3 item 2 h old ends 22 h later, exactly a day after the item."""
    # As in the worked example: 100 good at T, severity-3 at T - 2 h, score 909 (watch).
    # With u hours after T: g = 100 (720 - u), b = 10 (718 - u); the ratio's derivative has
    # the sign of A D - S C = 72000 * 10 - 100 * 7180 = 2000 > 0, so the score only rises
    # and no threshold is crossed before the cap ends at (T - 2 h) + 1 day = T + 22 h:
    # there g = 69_800 HOUR, b = 6_960 HOUR, score = floor(1000 * 69800 / 76760) = 909.
    items = [*_goods(100), _item(T - 2 * HOUR, 3)]
    at = T - 2 * HOUR + DAY
    assert next_change(items, Status(), T) == (at, "band watch -> trusted")
    a = assess(items, Status(), T)
    assert (a.next_change_at_us, a.next_change) == (at, "band watch -> trusted")
    assert assess(items, Status(), at - 1).band == "watch"
    assert assess(items, Status(), at).score == 909
    assert assess(items, Status(), at).band == "trusted"


def test_band_changes_list_cap_expiry_then_horizon_when_severe_among_good() -> None:
    """All items of one age: the score stays 909; the cap ends after a day, all leave after H."""
    # g = 100 (H - u), b = 10 (H - u): score = floor(1000 * 100 / 110) = 909 at every u < H.
    # The mass falls below 3 H long before H, but an adverse item counts, so not unknown.
    items = [*_goods(100), _item(T, 3)]
    assert band_changes(items, Status(), T, None) == [
        (T + DAY, "band watch", "band trusted"),
        (T + H, "band trusted", "band unknown"),
    ]


def test_next_change_when_last_adverse_item_ages_out() -> None:
    """A lone violation 5 us from the horizon leaves it 5 us later: untrusted becomes unknown."""
    items = [_item(T - H + 5, 1)]
    assert assess(items, Status(), T).band == "untrusted"
    assert next_change(items, Status(), T) == (T + 5, "band untrusted -> unknown")


def test_next_change_when_mass_falls_below_min_evidence() -> None:
    """Mass exactly 3 H at T falls by 4 per us: unknown from T + 1."""
    # 2 good at age H/2 and 2 at age 0: mass = 2 H/2 + 2 H = 3 H, then 3 H - 4 u.
    items = [*_goods(2, at=T - H // 2), *_goods(2)]
    assert assess(items, Status(), T).band == "trusted"
    assert next_change(items, Status(), T) == (T + 1, "band trusted -> unknown")


def test_next_change_when_commitment_valid_until_passes() -> None:
    """A commitment span ending changes what is in force, not the band."""
    status = Status(spans=(Span("c1", T - DAY, T + HOUR),))
    items = _goods(4)  # mass 4 (H - u) stays >= 3 H for u <= H/4
    assert assess(items, status, T).in_force == ("c1",)
    assert next_change(items, status, T) == (T + HOUR, "in force: c1 -> (none)")
    after = assess(items, status, T + HOUR)
    assert (after.band, after.in_force) == ("trusted", ())


def test_next_change_when_commitment_starts_later() -> None:
    """A span starting after T brings the commitment into force at its start."""
    status = Status(spans=(Span("c1", T + 7, None),))
    assert next_change([], status, T) == (T + 7, "in force: (none) -> c1")


def test_band_changes_report_band_and_in_force_when_only_commitment_revoked() -> None:
    """Revoking the only commitment changes band and in-force at once; next_change names the band."""
    status = Status(spans=(Span("c1", T - DAY, None, T + 7),))
    items = _goods(4)
    assert band_changes(items, status, T, T + DAY) == [
        (T + 7, "band trusted", "band revoked"),
        (T + 7, "in force: c1", "in force: (none)"),
    ]
    assert next_change(items, status, T) == (T + 7, "band trusted -> revoked")


def test_next_change_when_future_item_enters() -> None:
    """Evidence dated after T enters at its instant, as if known in advance."""
    # At T + 5: good = 4 (H - 5), bad = 10 H -> score = floor(1000 * 4/14) ~ 285 -> untrusted
    items = [*_goods(4), _item(T + 5, 3)]
    assert assess(items, Status(), T).band == "trusted"
    assert next_change(items, Status(), T) == (T + 5, "band trusted -> untrusted")


def test_next_change_none_when_nothing_ever_changes() -> None:
    """Without evidence or status breakpoints, nothing changes."""
    assert next_change([], Status(), T) is None
    assert next_change([], Status(spans=(Span("c1", T - DAY, None),)), T) is None
    assert assess([], Status(), T).next_change_at_us is None


# 20 good at T - H/2 and one severity-1 at T. With u = t - T (0 <= u < H/2):
#   g = 20 (H/2 - u),  b = H - u;  at u = 0: score = floor(1000 * 10H / 11H) = 909 (trusted)
#   score >= 900  <=>  100 g >= 900 b  <=>  1000 H - 2000 u >= 900 H - 900 u  <=>  u <= H / 11
#   score >= 600  <=>  400 g >= 600 b  <=>  4000 H - 8000 u >= 600 H - 600 u  <=>  u <= 17 H / 37
# so trusted until T + floor(H/11), watch from T + floor(H/11) + 1, untrusted from
# T + floor(17 H / 37) + 1 (17/37 < 1/2: before the good items leave at T + H/2);
# the violation leaves at T + H: unknown.
LINEAR = [*_goods(20, at=T - H // 2), _item(T, 1)]
TO_WATCH = T + H // 11 + 1
TO_UNTRUSTED = T + 17 * H // 37 + 1


def test_linear_crossings_solved_exactly_when_score_decays() -> None:
    """The instants where a decaying score crosses 900 and 600 are exact to the microsecond."""
    assert (TO_WATCH - T, TO_UNTRUSTED - T) == (235_636_363_637, 1_190_918_918_919)
    assert assess(LINEAR, Status(), T).band == "trusted"
    assert next_change(LINEAR, Status(), T) == (TO_WATCH, "band trusted -> watch")
    assert assess(LINEAR, Status(), TO_WATCH - 1).band == "trusted"
    assert assess(LINEAR, Status(), TO_WATCH).band == "watch"
    assert assess(LINEAR, Status(), TO_UNTRUSTED - 1).band == "watch"
    assert assess(LINEAR, Status(), TO_UNTRUSTED).band == "untrusted"
    assert band_changes(LINEAR, Status(), T, None) == [
        (TO_WATCH, "band trusted", "band watch"),
        (TO_UNTRUSTED, "band watch", "band untrusted"),
        (T + H, "band untrusted", "band unknown"),
    ]


def test_rising_crossing_solved_exactly_when_old_violation_fades() -> None:
    """A score rising through 900 turns trusted at the first microsecond where it is >= 900."""
    # 5 good at T and one severity-2 at T - H/2. With u = t - T (0 <= u < H/2):
    #   g = 5 (H - u), b = 4 (H/2 - u);  at u = 0: score = floor(1000 * 5H / 7H) = 714 (watch)
    #   score >= 900  <=>  100 g >= 900 b  <=>  500 H - 500 u >= 1800 H - 3600 u
    #                 <=>  3100 u >= 1300 H  <=>  u >= 13 H / 31   (first u: ceil(13 H / 31))
    # At T + H/2 the violation leaves: nothing adverse and mass 5 H/2 < 3 H -> unknown.
    items = [*_goods(5), _item(T - H // 2, 2)]
    rise = T - (-13 * H // 31)
    assert rise - T == 1_086_967_741_936
    assert assess(items, Status(), rise - 1).band == "watch"
    assert assess(items, Status(), rise).band == "trusted"
    assert band_changes(items, Status(), T, None) == [
        (rise, "band watch", "band trusted"),
        (T + H // 2, "band trusted", "band unknown"),
    ]


@pytest.mark.parametrize(
    ("to_us", "limit", "expected"),
    [
        pytest.param(TO_WATCH - 1, None, [], id="to_just_before_change"),
        pytest.param(TO_WATCH, None, [TO_WATCH], id="to_exactly_at_change_inclusive"),
        pytest.param(T + H - 1, None, [TO_WATCH, TO_UNTRUSTED], id="to_before_horizon"),
        pytest.param(None, 2, [TO_WATCH, TO_UNTRUSTED], id="limit_two"),
        pytest.param(None, 1, [TO_WATCH], id="limit_one"),
    ],
)
def test_band_changes_bounded_when_to_or_limit_given(
    to_us: int | None, limit: int | None, expected: list[int]
) -> None:
    """band_changes lists changes in (from, to] and stops after `limit`."""
    found = band_changes(LINEAR, Status(), T, to_us, limit=limit)
    assert [at for at, _, _ in found] == expected


def test_band_changes_empty_when_from_after_change() -> None:
    """A change at or before from_us is not listed."""
    assert [c[0] for c in band_changes(LINEAR, Status(), TO_WATCH, TO_UNTRUSTED)] == [TO_UNTRUSTED]


# --------------------------------------------------------------------------- oracle


def _oracle_band(items: list[Item], status: Status, t: int) -> str:
    """The band at t, straight from the module docstring."""
    if (status.retired_at_us is not None and status.retired_at_us <= t) or (
        status.spans
        and all(s.revoked_at_us is not None and s.revoked_at_us <= t for s in status.spans)
    ):
        return "revoked"
    counting = [i for i in items if 0 <= t - i.at_us < H]
    good, bad, mass = _oracle_sums(counting, t)
    adverse = any(i.severity > 0 for i in counting)
    if not adverse and mass < MIN_EVIDENCE * H:
        return "unknown"
    if good + bad == 0:
        return "unknown"
    score = Fraction(1000 * good, good + bad)
    severe = any(i.severity == 3 and t - i.at_us < DAY for i in counting)
    if score >= TRUSTED_MIN and not severe:
        return "trusted"
    if score >= WATCH_MIN:
        return "watch"
    return "untrusted"


def _oracle_sums(counting: list[Item], t: int) -> tuple[int, int, int]:
    """good, bad and mass at t of the items counting at t, straight from the module docstring."""
    # A third-party item's rank among its observer's items of its severity, heaviest first;
    # rank r counts when r + 1 is a power of two, up to 15: n items count floor(log2(n + 1)).
    ranked: dict[tuple[str, int], list[int]] = {}
    for i in counting:
        if i.source == "third_party":
            ranked.setdefault((i.ref[0], i.severity), []).append(H - (t - i.at_us))
    good = bad = mass = 0
    lefts: list[tuple[int, int, Source]] = [
        (H - (t - i.at_us), i.severity, "self") for i in counting if i.source == "self"
    ]
    for (_, severity), group in ranked.items():
        group.sort(reverse=True)
        lefts += [
            (left, severity, "third_party")
            for r, left in enumerate(group, start=1)
            if r <= 15 and r & (r + 1) == 0
        ]
    per_us = {"self": [1, 1, 4, 10], "third_party": [2, 1, 2, 5]}
    for left, severity, source in lefts:
        mass += left
        if severity == 0:
            good += left * per_us[source][0]
        else:
            bad += left * per_us[source][severity]
    return good, bad, mass


def _oracle_in_force(status: Status, t: int) -> str:
    ids = sorted(
        {
            s.commitment_id
            for s in status.spans
            if s.start_us <= t
            and (s.end_us is None or t < s.end_us)
            and (s.revoked_at_us is None or t < s.revoked_at_us)
        }
    )
    return ", ".join(ids) or "(none)"


def _state(items: list[Item], status: Status, t: int) -> tuple[str, str]:
    return f"band {_oracle_band(items, status, t)}", f"in force: {_oracle_in_force(status, t)}"


def _breakpoints(items: list[Item], status: Status) -> list[int]:
    """Every instant at which the sums, the cap or the status may jump."""
    points = {i.at_us for i in items} | {i.at_us + H for i in items}
    points |= {i.at_us + DAY for i in items if i.severity == 3}
    for s in status.spans:
        points.add(s.start_us)
        points |= {p for p in (s.end_us, s.revoked_at_us) if p is not None}
    if status.retired_at_us is not None:
        points.add(status.retired_at_us)
    return sorted(points)


def _oracle_changes(
    items: list[Item], status: Status, from_us: int, to_us: int
) -> list[tuple[int, str, str]]:
    """Brute force: every instant in (from_us, to_us] where the state differs from 1 us before.

    Inside a segment between breakpoints the state is monotone, so bisection between
    two instants with equal states may stop, and finds every change otherwise."""

    def split(lo: int, hi: int, s_lo: tuple[str, str], s_hi: tuple[str, str]) -> list[int]:
        if s_lo == s_hi:
            return []
        if hi == lo + 1:
            return [hi]
        mid = (lo + hi) // 2
        s_mid = _state(items, status, mid)
        return split(lo, mid, s_lo, s_mid) + split(mid, hi, s_mid, s_hi)

    cuts = [b for b in _breakpoints(items, status) if from_us < b <= to_us]
    starts = [from_us, *cuts]
    ends = [c - 1 for c in cuts] + [to_us]
    instants: list[int] = []
    for n, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        if n > 0:
            instants += split(lo - 1, lo, _state(items, status, lo - 1), _state(items, status, lo))
        if hi > lo:
            instants += split(lo, hi, _state(items, status, lo), _state(items, status, hi))
    out: list[tuple[int, str, str]] = []
    for t in instants:
        before, after = _state(items, status, t - 1), _state(items, status, t)
        out += [(t, b, a) for b, a in zip(before, after, strict=True) if b != a]
    return out


# --------------------------------------------------------------------------- properties

OFFSETS = [0, 1, -1, 5, -DAY, -DAY + 1, -H, -H + 1, -H // 2, -H // 3, DAY, -3 * DAY, HOUR]


def _offset() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(OFFSETS), st.integers(-H - 2 * DAY, 2 * DAY))


@st.composite
def _items(draw: st.DrawFn) -> Item:
    severity = draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2, 3]))
    kind: ItemKind = "action"
    if severity:
        kind = draw(st.sampled_from(["action", "action", "unreported", "contradicted"]))
    source: Source = draw(st.sampled_from(["self", "self", "third_party"]))
    observer = draw(st.sampled_from(["payhub", "globex"]))
    return _item(T + draw(_offset()), severity, source, kind, observer)


@st.composite
def _loud_items(draw: st.DrawFn) -> Item:
    """A sighting by payhub, often of the same instant and severity as others (ties)."""
    severity = draw(st.sampled_from([0, 0, 0, 0, 2, 3]))
    at = T + draw(st.one_of(st.sampled_from([0, -HOUR, -DAY, -H // 2, DAY]), _offset()))
    return _item(at, severity, "third_party", "unreported" if severity else "action", "payhub")


@st.composite
def _item_lists(draw: st.DrawFn) -> list[Item]:
    """Up to 10 items of any source, and up to 40 by one loud observer (ranks up to 15 and past)."""
    return draw(st.lists(_items(), max_size=10)) + draw(st.lists(_loud_items(), max_size=40))


@st.composite
def _statuses(draw: st.DrawFn) -> Status:
    retired = draw(st.one_of(st.none(), st.none(), _offset().map(lambda o: T + o)))
    spans: list[Span] = []
    for _ in range(draw(st.integers(0, 3))):
        start = T + draw(_offset())
        length = draw(st.one_of(st.none(), st.integers(1, 2 * DAY), st.sampled_from([1, HOUR])))
        revoked = draw(st.one_of(st.none(), _offset().map(lambda o: T + o)))
        cid = draw(st.sampled_from(["a", "b", "c"]))
        spans.append(Span(cid, start, None if length is None else start + length, revoked))
    return Status(retired, tuple(spans))


item_lists = _item_lists()
many_goods = st.integers(0, 25)
"""Extra fresh-ish good items, so that high scores and cap effects are common."""


def _with_goods(items: list[Item], n: int, offset: int) -> list[Item]:
    return items + _goods(n, at=T + offset)


@settings(max_examples=200, deadline=None)
@given(items=item_lists, goods=many_goods, offset=_offset(), status=_statuses(), at=_offset())
def test_assess_band_matches_oracle_when_items_random(
    items: list[Item], goods: int, offset: int, status: Status, at: int
) -> None:
    """assess's sums, band and in-force set equal the docstring's rules evaluated directly."""
    items = _with_goods(items, goods, offset)
    a = assess(items, status, T + at)
    counting = [i for i in items if 0 <= at - (i.at_us - T) < H]
    assert (a.good, a.bad, a.mass) == _oracle_sums(counting, T + at)
    assert (f"band {a.band}", f"in force: {', '.join(a.in_force) or '(none)'}") == _state(
        items, status, T + at
    )


@settings(max_examples=200, deadline=None)
@given(items=item_lists, goods=many_goods, offset=_offset(), status=_statuses())
def test_next_change_is_first_state_change_when_items_random(
    items: list[Item], goods: int, offset: int, status: Status
) -> None:
    """The state is T's on all of (T, t) and differs at t; with None it never changes again."""
    items = _with_goods(items, goods, offset)
    start = _state(items, status, T)
    found = next_change(items, status, T)
    points = _breakpoints(items, status)
    if found is None:
        last = max([*points, T]) + 1
        probes = {p for b in points if b > T for p in (b - 1, b)} | {T + 1, last, last + DAY}
        for t in sorted(probes):
            if t > T:
                assert _state(items, status, t) == start, t
        return
    t, what = found
    assert t > T
    # Every segment of (T, t) is probed at both ends: T + 1, each breakpoint and the instant
    # before it, t - 1, and the midpoint for good measure.
    probes = {T + 1, t - 1, (T + t) // 2} | {p for b in points if T < b < t for p in (b - 1, b)}
    for p in sorted(probes):
        if T < p < t:
            assert _state(items, status, p) == start, p
    now = _state(items, status, t)
    assert now != start
    # The band part comes first; "after" is written without its prefix.
    before, after = next((b, a) for b, a in zip(start, now, strict=True) if b != a)
    prefix = "band " if before.startswith("band ") else "in force: "
    assert what == f"{before} -> {after.removeprefix(prefix)}"


@settings(max_examples=200, deadline=None)
@given(
    items=item_lists,
    goods=many_goods,
    offset=_offset(),
    status=_statuses(),
    span=st.one_of(st.integers(0, 3 * DAY), st.just(H + 3 * DAY)),
)
def test_band_changes_match_brute_force_when_items_random(
    items: list[Item], goods: int, offset: int, status: Status, span: int
) -> None:
    """band_changes(T, T2) lists exactly the instants where the brute-force state changes."""
    items = _with_goods(items, goods, offset)
    to_us = T + span
    found = band_changes(items, status, T, to_us)
    assert found == _oracle_changes(items, status, T, to_us)
    for at, before, after in found:
        assert T < at <= to_us
        assert before in _state(items, status, at - 1)
        assert after in _state(items, status, at)


@settings(max_examples=200, deadline=None)
@given(items=item_lists, goods=many_goods, offset=_offset(), status=_statuses(), data=st.data())
def test_assessment_order_independent_and_integer_when_items_shuffled(
    items: list[Item], goods: int, offset: int, status: Status, data: st.DataObject
) -> None:
    """Shuffling the items changes nothing; every number is an exact integer."""
    items = _with_goods(items, goods, offset)
    shuffled = data.draw(st.permutations(items), label="shuffled")
    a = assess(items, status, T)
    assert assess(shuffled, status, T) == a
    assert band_changes(shuffled, status, T, T + H) == band_changes(items, status, T, T + H)
    for value in (a.good, a.bad, a.mass, a.confidence):
        assert type(value) is int
    assert 0 <= a.confidence <= 1000
    if a.score is None:
        assert a.good + a.bad == 0
    else:
        assert type(a.score) is int
        assert a.score == Fraction(1000 * a.good, a.good + a.bad).__floor__()
        assert 0 <= a.score <= 1000
