"""The posture score: evidence items in, score / band / confidence / next change out.

Pure and deterministic: integers only (instants in microseconds since the Unix
epoch), no clock, no I/O. `assess(items, status, as_of_us)` is the whole model;
`docs/posture-model.md` defines it in prose with worked examples, and the
constants below are the model's parameters.

Evidence
--------
An `Item` is one piece of evidence about an agent at instant `at_us`: an
action (self-reported, or observed by a gateway) with the highest severity of
its violations (0 when within bounds), or an under-reporting finding. It counts
from `at_us` on and fades linearly to nothing over `HORIZON_US`:

    age    = as_of - at                      (0 <= age < HORIZON; other items do not count)
    weight = (HORIZON - age) * WEIGHT[source][severity] * counted
    good   = sum of weight over items with severity 0
    bad    = sum of weight over items with severity > 0
    mass   = sum of (HORIZON - age) * counted
    score  = floor(1000 * good / (good + bad))              (None when good + bad = 0)

`counted` is 1 for every ``self`` item (the agent's org: its self-reports and its
own gateways, one source whose volume is its record). A ``third_party`` item
belongs to its observer org (the chain of its `ref`) and severity: within that
group, newest first, only the items at `COUNTED_RANKS` (the 1st, 3rd, 7th and
15th) count, so n items of one org count as floor(log2(n + 1)) items, at most
four. Items of one group have the same weight per microsecond, so "newest
first" is also "heaviest first" at every instant: the ranks, hence the sums,
change only when an item enters or leaves, and stay linear in time in between.

Band, first rule that applies:

1. ``revoked``   the agent is retired, or it has commitments and every one is revoked
2. ``unknown``   no adverse item counts and the evidence mass is below
                 ``MIN_EVIDENCE`` whole fresh items
3. ``trusted``   score >= 900 and no severity-3 item is younger than ``RECENT_SEVERE_US``
4. ``watch``     score >= 600
5. ``untrusted`` otherwise

Time moves the answer without events: items age (linear in time between
breakpoints), leave the horizon, high-severity items stop capping the band
after a day, commitments start, expire and are revoked. `assess` finds the
next instant at which the band or the set of commitments in force changes
(`next_change_at_us`) by sweeping breakpoints and solving the linear
inequalities exactly in integers.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Source = Literal["self", "third_party"]
Band = Literal["trusted", "watch", "untrusted", "revoked", "unknown"]
ItemKind = Literal["action", "unreported", "contradicted"]

US_PER_S: Final = 1_000_000
HOUR_US: Final = 3600 * US_PER_S
DAY_US: Final = 24 * HOUR_US

HORIZON_US: Final = 30 * DAY_US
"""Evidence older than this counts no more; its weight falls linearly to 0 over it."""

WEIGHT: Final[dict[Source, tuple[int, int, int, int]]] = {
    "self": (1, 1, 4, 10),
    "third_party": (2, 1, 2, 5),
}
"""Weight per microsecond of remaining life, by source and severity (0 within bounds, 1-3).
A self-reported violation of severity 3 cancels ten good self-reports. Another org's
gateway vouching for an action weighs two self-reports (it corroborates), its adverse
item half the agent's own admission (rounded up): it is one org's word against the
agent's, and independent orgs saying the same add up."""

COUNTED_RANKS: Final = (1, 3, 7, 15)
"""Of one observer org's items of one severity, newest first, the ranks that count."""

TRUSTED_MIN: Final = 900
WATCH_MIN: Final = 600
MIN_EVIDENCE: Final = 3
"""Below this many fresh-item equivalents, and with nothing adverse, the band is `unknown`."""
FULL_CONFIDENCE: Final = 50
"""Fresh-item equivalents at which confidence reaches 1000."""
RECENT_SEVERE_US: Final = DAY_US
"""A severity-3 item younger than this keeps the band at `watch` or below."""

WINDOWS: Final[tuple[tuple[str, int], ...]] = (
    ("1h", HOUR_US),
    ("24h", DAY_US),
    ("7d", 7 * DAY_US),
    ("30d", 30 * DAY_US),
)


@dataclass(frozen=True, slots=True)
class Item:
    """One piece of evidence; `ref` is the ledger entry (chain, seq) it comes from."""

    at_us: int
    source: Source
    kind: ItemKind
    severity: int
    violations: tuple[str, ...]
    ref: tuple[str, int]
    event_id: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.severity not in (0, 1, 2, 3):
            raise ValueError(f"severity must be 0-3, got {self.severity}")


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of a commitment's time in force: `[start_us, end_us)` (None: open),
    cut short by `revoked_at_us`. A commitment whose versions change its validity
    has one span per version."""

    commitment_id: str
    start_us: int
    end_us: int | None
    revoked_at_us: int | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """What decides `revoked` and the commitments in force, apart from evidence."""

    retired_at_us: int | None = None
    spans: tuple[Span, ...] = ()

    def revoked_at(self, t: int) -> bool:
        if self.retired_at_us is not None and self.retired_at_us <= t:
            return True
        return bool(self.spans) and all(
            s.revoked_at_us is not None and s.revoked_at_us <= t for s in self.spans
        )

    def in_force(self, t: int) -> tuple[str, ...]:
        return tuple(
            sorted(
                {
                    s.commitment_id
                    for s in self.spans
                    if s.start_us <= t
                    and (s.end_us is None or t < s.end_us)
                    and (s.revoked_at_us is None or t < s.revoked_at_us)
                }
            )
        )

    def breakpoints(self) -> list[int]:
        points = [s.start_us for s in self.spans]
        points += [s.end_us for s in self.spans if s.end_us is not None]
        points += [s.revoked_at_us for s in self.spans if s.revoked_at_us is not None]
        if self.retired_at_us is not None:
            points.append(self.retired_at_us)
        return points


@dataclass(slots=True)
class _Sums:
    """Running sums over the counting items: each weighted sum is `A - t * S` at instant t."""

    a_good: int = 0
    s_good: int = 0
    a_bad: int = 0
    s_bad: int = 0
    a_mass: int = 0
    n: int = 0
    adverse: int = 0
    severe: dict[int, int] = field(default_factory=dict)
    """at_us -> count of severity-3 items (to know when the recent-severe cap ends)."""
    newest_severe: int | None = None
    """The greatest key of `severe`: the cap holds while it is younger than a day."""
    groups: dict[tuple[str, int], deque[int]] = field(default_factory=dict)
    """(observer org, severity) -> the `at_us` of its counting third-party items, newest first."""

    def add(self, item: Item, sign: int) -> None:
        """Count `item` (sign 1) or stop counting it (-1). A third-party item must be the
        newest of its group when it enters and the oldest when it leaves, as in a sweep;
        `_sums` adds the items of an instant oldest last."""
        if item.severity:
            self.adverse += sign
            if item.severity == 3:
                self._severe(item.at_us, sign)
        if item.source == "self":
            self._count(item.severity, WEIGHT["self"][item.severity], item.at_us, sign)
            return
        key = (item.ref[0], item.severity)
        group = self.groups.setdefault(key, deque())
        self._group(key, group, -1)
        if sign > 0:
            if not group or item.at_us >= group[0]:
                group.appendleft(item.at_us)
            elif item.at_us <= group[-1]:
                group.append(item.at_us)
            else:  # not in a sweep's order: keep the group sorted anyway
                group.insert(next(n for n, at in enumerate(group) if at < item.at_us), item.at_us)
        elif group and group[-1] == item.at_us:
            group.pop()
        else:
            group.remove(item.at_us)
        self._group(key, group, 1)
        if not group:
            del self.groups[key]

    def _group(self, key: tuple[str, int], group: deque[int], sign: int) -> None:
        """Add (1) or take away (-1) what a group's counted ranks contribute."""
        weight = WEIGHT["third_party"][key[1]]
        for rank in COUNTED_RANKS:
            if rank > len(group):
                break
            self._count(key[1], weight, group[rank - 1], sign)

    def _count(self, severity: int, weight: int, at_us: int, sign: int) -> None:
        """One counted item: (HORIZON + at - t) * weight to good or bad, HORIZON + at - t to mass."""
        base = HORIZON_US + at_us
        if severity == 0:
            self.a_good += sign * base * weight
            self.s_good += sign * weight
        else:
            self.a_bad += sign * base * weight
            self.s_bad += sign * weight
        self.a_mass += sign * base
        self.n += sign

    def good(self, t: int) -> int:
        return self.a_good - t * self.s_good

    def bad(self, t: int) -> int:
        return self.a_bad - t * self.s_bad

    def mass(self, t: int) -> int:
        return self.a_mass - t * self.n

    def _severe(self, at_us: int, sign: int) -> None:
        self.severe[at_us] = self.severe.get(at_us, 0) + sign
        if self.severe[at_us] == 0:
            del self.severe[at_us]
            if at_us == self.newest_severe:
                # Items leave in the order of their instants, so the newest leaves
                # last and this rescan is rare.
                self.newest_severe = max(self.severe, default=None)
        elif sign > 0 and (self.newest_severe is None or at_us > self.newest_severe):
            self.newest_severe = at_us

    def recent_severe(self, t: int) -> bool:
        """A counting severity-3 item is younger than `RECENT_SEVERE_US` at `t` (every
        counting item has `at <= t`, so the newest one decides)."""
        return self.newest_severe is not None and t - self.newest_severe < RECENT_SEVERE_US


def score_of(good: int, bad: int) -> int | None:
    """floor(1000 * good / (good + bad)), or None when there is no weight at all."""
    total = good + bad
    return None if total == 0 else 1000 * good // total


def _band(status: Status, sums: _Sums, t: int) -> Band:
    return _band_of(status.revoked_at(t), sums, t)


def _band_of(revoked: bool, sums: _Sums, t: int) -> Band:
    if revoked:
        return "revoked"
    good, bad = sums.good(t), sums.bad(t)
    if sums.adverse == 0 and sums.mass(t) < MIN_EVIDENCE * HORIZON_US:
        return "unknown"
    score = score_of(good, bad)
    assert score is not None  # something counts: an adverse item, or mass >= MIN_EVIDENCE * H
    if score >= TRUSTED_MIN and not sums.recent_severe(t):
        return "trusted"
    if score >= WATCH_MIN:
        return "watch"
    return "untrusted"


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Evidence whose instant falls in `(as_of - window, as_of]`, per source."""

    window: str
    source: Source
    actions: int
    within: int
    violations: int
    findings: int


@dataclass(frozen=True, slots=True)
class Assessment:
    """The posture as of `as_of_us`."""

    as_of_us: int
    band: Band
    score: int | None
    confidence: int
    """0-1000: evidence mass against `FULL_CONFIDENCE` fresh items."""
    good: int
    bad: int
    mass: int
    counts: tuple[WindowCounts, ...]
    in_force: tuple[str, ...]
    next_change_at_us: int | None
    next_change: str | None
    """What changes then, e.g. ``band watch -> trusted`` or ``in force: c1 -> (none)``."""


def _counting(items: Iterable[Item], t: int) -> list[Item]:
    return [i for i in items if i.at_us <= t < i.at_us + HORIZON_US]


def _sums(items: Iterable[Item]) -> _Sums:
    sums = _Sums()
    # Newest first, so that each third-party item joins the end of its group.
    for item in sorted(items, key=lambda i: i.at_us, reverse=True):
        sums.add(item, 1)
    return sums


def window_counts(items: Sequence[Item], as_of_us: int) -> tuple[WindowCounts, ...]:
    """Per window and source: actions, of which within bounds / in violation, and findings."""
    sources: tuple[Source, ...] = ("self", "third_party")
    # [window][source] -> [actions, within, violations, findings], in one pass
    tally = [[[0, 0, 0, 0] for _ in sources] for _ in WINDOWS]
    for i in items:
        age = as_of_us - i.at_us
        if age < 0:
            continue
        column = 0 if i.kind != "action" else 1 if i.severity == 0 else 2
        s = sources.index(i.source)
        for w, (_, length) in enumerate(WINDOWS):
            if age < length:
                counts = tally[w][s]
                if column:
                    counts[0] += 1
                    counts[column] += 1
                else:
                    counts[3] += 1
    return tuple(
        WindowCounts(name, source, *tally[w][s])
        for w, (name, _) in enumerate(WINDOWS)
        for s, source in enumerate(sources)
    )


def assess(items: Sequence[Item], status: Status, as_of_us: int) -> Assessment:
    """The posture at `as_of_us` from `items` (any order) and `status`."""
    sums = _sums(_counting(items, as_of_us))
    band = _band(status, sums, as_of_us)
    good, bad, mass = sums.good(as_of_us), sums.bad(as_of_us), sums.mass(as_of_us)
    in_force = status.in_force(as_of_us)
    # The sweep continues from these very sums (read above, mutated below).
    change = _first_change(band_changes(items, status, as_of_us, None, 1, sums))
    return Assessment(
        as_of_us=as_of_us,
        band=band,
        score=score_of(good, bad),
        confidence=min(1000, mass * 1000 // (FULL_CONFIDENCE * HORIZON_US)),
        good=good,
        bad=bad,
        mass=mass,
        counts=window_counts(items, as_of_us),
        in_force=in_force,
        next_change_at_us=change[0] if change else None,
        next_change=change[1] if change else None,
    )


# --------------------------------------------------------------------------- time sweep


def _first_flip(a: int, s: int, after: int, before: int | None) -> int | None:
    """The first integer t in (after, before) at which f(t) = a - t * s changes sign
    class (>= 0 versus < 0) from its class at `after`; None when it does not."""
    if a - after * s >= 0:
        if s <= 0:
            return None  # f does not decrease: stays >= 0
        t = a // s + 1  # first t with a - t * s < 0
    else:
        if s >= 0:
            return None  # f does not increase: stays < 0
        t = -(-a // s)  # ceil(a / s): first t with a - t * s >= 0
    if t <= after or (before is not None and t >= before):
        return None
    return t


def _flips(sums: _Sums, after: int, before: int | None) -> list[int]:
    """Instants in (after, before) where a band threshold may be crossed (linear parts)."""
    g_a, g_s = sums.a_good, sums.s_good
    b_a, b_s = sums.a_bad, sums.s_bad
    candidates = [
        # score >= 900  <=>  1000 g >= 900 (g + b)  <=>  100 g - 900 b >= 0
        _first_flip(
            (1000 - TRUSTED_MIN) * g_a - TRUSTED_MIN * b_a,
            (1000 - TRUSTED_MIN) * g_s - TRUSTED_MIN * b_s,
            after,
            before,
        ),
        _first_flip(
            (1000 - WATCH_MIN) * g_a - WATCH_MIN * b_a,
            (1000 - WATCH_MIN) * g_s - WATCH_MIN * b_s,
            after,
            before,
        ),
        # mass >= MIN_EVIDENCE * HORIZON
        _first_flip(sums.a_mass - MIN_EVIDENCE * HORIZON_US, sums.n, after, before),
    ]
    return sorted(c for c in candidates if c is not None)


def next_change(items: Sequence[Item], status: Status, as_of_us: int) -> tuple[int, str] | None:
    """The first instant after `as_of_us` at which, with no new evidence, the band or
    the commitments in force differ from their value at `as_of_us`, and what changes."""
    return _first_change(band_changes(items, status, as_of_us, None, limit=1))


def _first_change(changes: list[tuple[int, str, str]]) -> tuple[int, str] | None:
    for at_us, before, after in changes:
        prefix = "band " if before.startswith("band ") else "in force: "
        return at_us, f"{before} -> {after.removeprefix(prefix)}"
    return None


_STATUS = -1
_CAP = -2


def band_changes(
    items: Sequence[Item],
    status: Status,
    from_us: int,
    to_us: int | None,
    limit: int | None = None,
    sums: _Sums | None = None,
) -> list[tuple[int, str, str]]:
    """Every instant in (from_us, to_us] at which the band or the commitments in force
    change, as `(instant, before, after)` with values like ``band watch`` /
    ``in force: c1``. Stops after `limit` changes. Evidence whose instant is after
    `from_us` enters at its instant, as if it had been known in advance (a timeline
    over what the ledger holds now)."""
    # Events of the sweep: (instant, +1 item enters / -1 item leaves, index)
    enter = [(i.at_us, n) for n, i in enumerate(items) if i.at_us > from_us]
    leave = [
        (i.at_us + HORIZON_US, n) for n, i in enumerate(items) if i.at_us + HORIZON_US > from_us
    ]
    # (instant, sign, index): sign +1 an item enters, -1 it leaves; 0 with index
    # _STATUS a status breakpoint, with _CAP the end of a recent-severe cap.
    heap: list[tuple[int, int, int]] = [(t, 1, n) for t, n in enter]
    heap += [(t, -1, n) for t, n in leave]
    heap += [(t, 0, _STATUS) for t in status.breakpoints() if t > from_us]
    heap += [
        (i.at_us + RECENT_SEVERE_US, 0, _CAP)
        for i in items
        if i.severity == 3 and i.at_us + RECENT_SEVERE_US > from_us
    ]
    heapq.heapify(heap)
    if sums is None:  # else the caller's sums of the items counting at `from_us`
        sums = _sums(_counting(items, from_us))
    # Retirement, revocations and validity change only at status breakpoints: keep
    # them between those instead of recomputing them at every item's breakpoint.
    revoked = status.revoked_at(from_us)
    forced = f"in force: {', '.join(status.in_force(from_us)) or '(none)'}"

    def state(t: int) -> tuple[str, str]:
        return f"band {_band_of(revoked, sums, t)}", forced

    current = state(from_us)
    changes: list[tuple[int, str, str]] = []
    t = from_us

    def record(at: int) -> bool:
        nonlocal current
        new = state(at)
        for old_part, new_part in zip(current, new, strict=True):
            if old_part != new_part:
                changes.append((at, old_part, new_part))
        current = new
        return limit is not None and len(changes) >= limit

    while True:
        nxt = heap[0][0] if heap else None
        for flip in _flips(sums, t, nxt):
            if to_us is not None and flip > to_us:
                return changes
            if record(flip):
                return changes[:limit]
        if nxt is None or (to_us is not None and nxt > to_us):
            return changes
        status_moved = False
        while heap and heap[0][0] == nxt:
            _, sign, n = heapq.heappop(heap)
            if sign:
                sums.add(items[n], sign)
            elif n == _STATUS:
                status_moved = True
        if status_moved:
            revoked = status.revoked_at(nxt)
            forced = f"in force: {', '.join(status.in_force(nxt)) or '(none)'}"
        t = nxt
        if record(t):
            return changes[:limit]
