"""Judging one action against an agent's versioned commitments (successor of `posture.judge`).

Pure and deterministic: no I/O, no clock, no randomness, no floats. Every
instant is converted to integer microseconds since the Unix epoch before any
arithmetic, so two machines always reach the same verdict.

Commitment history
------------------

A commitment is a list of `CommitmentVersion`s. Version 1 comes from
`commitment.declared`, later ones from `commitment.amended`; each takes effect
at its event's `occurred_at` (`effective_from`). An action is judged by the
version in effect at the action's own `occurred_at` (`CommitmentHistory.version_at`),
so an action that happened before an amendment is judged by the previous
version even when it is processed after the amendment. An action earlier than
version 1's `effective_from` is not covered by that commitment at all.

Violation kinds and severities (1 low, 2 medium, 3 high)
--------------------------------------------------------

=========================  ========  ==================================================
kind                       severity  when
=========================  ========  ==================================================
``agent_retired``          3         the agent is retired (nothing else is checked)
``uncommitted``            3         no commitment has a version in effect at the action
``revoked``                3         the commitment was revoked at or before the action
``outside_validity``       2         before ``valid_from`` or at/after ``valid_until``
``action_not_allowed``     3         no ``allowed_actions`` pattern matches the action
``resource_out_of_bounds`` 3         no ``resource_bounds`` pattern matches the resource
``data_class``             3         an action data class not in the commitment's list
``currency_mismatch``      2         the amount's currency is not the spend ceiling's
``spend_per_action``       3         ``amount_minor > per_action_minor``
``spend_window``           3         window spend including this action ``> per_window_minor``
``rate_limit``             2         window count including this action ``> max_count``
=========================  ========  ==================================================

`evaluate` (see its docstring) checks every candidate commitment in the order
of the table above (from ``revoked`` on) and either finds one that covers the
action or reports the closest match's violations.

Spend and rate are checked only against the version in effect: a spend check
needs an amount in the ceiling's currency (with another currency the result is
``currency_mismatch`` and the spend checks are skipped; an action without an
amount spends nothing and cannot breach a spend ceiling). A ``per_window_minor``
without a ``window_s`` is not enforced (it names no window).

Rolling windows
---------------

`RollingWindow` holds the actions charged to one commitment as
``(instant, amount_minor)`` entries. The window ending at ``at`` of length
``w`` seconds is the half-open interval ``(at - w, at]``: an entry exactly
``w`` seconds before ``at`` is OUT of the window, one a microsecond later is in,
and an entry at ``at`` itself is in. Entries later than ``at`` are never in it.

Who is charged (`record`): an action within bounds is charged to the covering
commitment. An action outside bounds is charged to its closest commitment only
when that commitment is *in scope* for it: not revoked, inside its validity,
the action allowed and the resource in bounds (so only budget violations:
data class, currency, spend, rate). Such an action really happened inside the
commitment's scope, so it uses up the budget. Actions of a retired agent, and
uncommitted or out-of-scope actions, are charged to nobody. The amount counts
as spend only when the version in effect has a spend ceiling in the same
currency; otherwise the entry spends 0 but still counts for the rate.

Verdicts are never revised: an action arriving late is judged against
everything recorded so far inside its own window; actions judged before it
keep their verdicts.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Final, Literal

from service.domain.chain import from_micros, to_micros
from service.domain.events import ActionObserved, ActionPerformed, CommitmentTerms, Money
from service.domain.patterns import matches_any

ViolationKind = Literal[
    "agent_retired",
    "uncommitted",
    "revoked",
    "outside_validity",
    "action_not_allowed",
    "resource_out_of_bounds",
    "data_class",
    "currency_mismatch",
    "spend_per_action",
    "spend_window",
    "rate_limit",
]

AGENT_RETIRED: Final = "agent_retired"
UNCOMMITTED: Final = "uncommitted"
REVOKED: Final = "revoked"
OUTSIDE_VALIDITY: Final = "outside_validity"
ACTION_NOT_ALLOWED: Final = "action_not_allowed"
RESOURCE_OUT_OF_BOUNDS: Final = "resource_out_of_bounds"
DATA_CLASS: Final = "data_class"
CURRENCY_MISMATCH: Final = "currency_mismatch"
SPEND_PER_ACTION: Final = "spend_per_action"
SPEND_WINDOW: Final = "spend_window"
RATE_LIMIT: Final = "rate_limit"

SEVERITY: Final[dict[ViolationKind, int]] = {
    AGENT_RETIRED: 3,
    UNCOMMITTED: 3,
    REVOKED: 3,
    OUTSIDE_VALIDITY: 2,
    ACTION_NOT_ALLOWED: 3,
    RESOURCE_OUT_OF_BOUNDS: 3,
    DATA_CLASS: 3,
    CURRENCY_MISMATCH: 2,
    SPEND_PER_ACTION: 3,
    SPEND_WINDOW: 3,
    RATE_LIMIT: 2,
}
"""Fixed severity of each violation kind: 1 low, 2 medium, 3 high."""

SCOPE_KINDS: Final[frozenset[ViolationKind]] = frozenset(
    {REVOKED, OUTSIDE_VALIDITY, ACTION_NOT_ALLOWED, RESOURCE_OUT_OF_BOUNDS}
)
"""Violations that put an action outside a commitment's scope (it is then not charged)."""

_US_PER_S: Final = 1_000_000

Ref = tuple[str, int]
"""(chain, seq) of a ledger entry."""


# --------------------------------------------------------------------------- history


@dataclass(frozen=True, slots=True)
class CommitmentVersion:
    """One version of a commitment's terms, in effect from `effective_from`."""

    commitment_id: str
    version: int
    terms: CommitmentTerms
    effective_from: datetime
    ref: Ref
    """(chain, seq) of the `commitment.declared` / `commitment.amended` entry."""


@dataclass(frozen=True, slots=True)
class CommitmentHistory:
    """Every version of one commitment (ordered by version) and its revocation, if any."""

    commitment_id: str
    versions: list[CommitmentVersion]
    revoked_at: datetime | None = None
    revoked_ref: Ref | None = None

    def __post_init__(self) -> None:
        for v in self.versions:
            if v.commitment_id != self.commitment_id:
                raise ValueError(f"version of {v.commitment_id} in history of {self.commitment_id}")
        numbers = [v.version for v in self.versions]
        if any(a >= b for a, b in pairwise(numbers)):
            raise ValueError(f"versions of {self.commitment_id} not strictly increasing: {numbers}")

    def version_at(self, at: datetime) -> CommitmentVersion | None:
        """The version in effect at `at`: the latest whose `effective_from <= at`.

        "Latest" is by `(effective_from, version)`, so an amendment whose
        `occurred_at` is earlier than its predecessor's (publisher clocks
        disagree) still has a well-defined, deterministic answer."""
        best: CommitmentVersion | None = None
        for v in self.versions:
            if v.effective_from <= at and (
                best is None or (v.effective_from, v.version) > (best.effective_from, best.version)
            ):
                best = v
        return best

    def horizon_s(self) -> int:
        """The longest spend or rate window of any version, in seconds (0 when none)."""
        return max((_windows_of(v.terms) for v in self.versions), default=0)


def _windows_of(terms: CommitmentTerms) -> int:
    windows = [0]
    if terms.spend is not None and terms.spend.window_s is not None:
        windows.append(terms.spend.window_s)
    if terms.rate is not None:
        windows.append(terms.rate.window_s)
    return max(windows)


# --------------------------------------------------------------------------- windows


class RollingWindow:
    """The `(instant, amount_minor)` entries charged to one commitment, sorted by instant.

    * `total_in(w, at)` / `count_in(w, at)`: the sum of amounts / number of
      entries in the half-open window `(at - w, at]` (an entry exactly `w`
      seconds before `at` is out). O(log n): two bisections and a difference
      of prefix sums. All arithmetic is in integer microseconds.
    * `add(at, amount)`: appends in O(1) amortized when `at` is not earlier than
      the newest entry. An out-of-order entry is inserted at its sorted place
      (after entries with the same instant), which costs O(k) where k is the
      number of retained entries later than it (list shift and prefix-sum
      update); the answers are the same as if it had arrived in order.
    * Pruning: after each `add`, the cutoff becomes
      `max(cutoff, newest - horizon_s - grace_s)` and entries at or before it
      are dropped (a moving head index; the lists are compacted when more than
      half is dead, so pruning is O(1) amortized per action). An entry added
      at or before the cutoff is not retained at all. For every query with
      `w <= horizon_s` and `at >= newest - grace_s` the answer is exactly what
      it would be without pruning; later than that, out-of-order actions see
      only the retained entries.
    * The retained entries are exactly the entries ever added whose instant is
      after `cutoff_us` (the cutoff never moves back), so a window rebuilt by
      `restore(cutoff_us, entries)` from stored charges answers exactly like
      the one kept in memory: this is what makes incremental projection and a
      full rebuild agree.
    """

    __slots__ = ("_cum", "_cutoff_us", "_grace_us", "_head", "_horizon_us", "_times")

    def __init__(self, horizon_s: int, grace_s: int = 0) -> None:
        if horizon_s < 0 or grace_s < 0:
            raise ValueError("horizon_s and grace_s must not be negative")
        self._horizon_us = horizon_s * _US_PER_S
        self._grace_us = grace_s * _US_PER_S
        self._times: list[int] = []
        self._cum: list[int] = []  # _cum[i] = sum of amounts of _times[0..i], inclusive
        self._head = 0  # entries before _head are pruned
        self._cutoff_us: int | None = None  # entries at or before it are pruned

    @classmethod
    def restore(
        cls,
        horizon_s: int,
        grace_s: int,
        cutoff_us: int | None,
        entries: list[tuple[int, int]],
    ) -> RollingWindow:
        """The window whose cutoff is `cutoff_us` and whose charges are `entries`
        (`(instant_us, amount_minor)`, any order); entries at or before the cutoff are ignored."""
        window = cls(horizon_s, grace_s)
        window._cutoff_us = cutoff_us
        kept = sorted(e for e in entries if cutoff_us is None or e[0] > cutoff_us)
        total = 0
        for t, amount in kept:
            total += amount
            window._times.append(t)
            window._cum.append(total)
        return window

    @property
    def cutoff_us(self) -> int | None:
        """Entries at or before this instant are pruned (None: nothing pruned yet)."""
        return self._cutoff_us

    @property
    def horizon_s(self) -> int:
        """The longest window answered exactly."""
        return self._horizon_us // _US_PER_S

    @property
    def grace_s(self) -> int:
        """How far before the newest entry a query may be and still be exact."""
        return self._grace_us // _US_PER_S

    def widen(self, horizon_s: int) -> None:
        """Raise the horizon to `horizon_s` (never lowers it).

        Entries pruned under the smaller horizon are gone, so windows longer
        than the old horizon are exact only once they no longer reach back
        before the widening."""
        self._horizon_us = max(self._horizon_us, horizon_s * _US_PER_S)

    def __len__(self) -> int:
        """The number of retained (unpruned) entries."""
        return len(self._times) - self._head

    def entries(self) -> list[tuple[datetime, int]]:
        """The retained entries, oldest first."""
        amounts = self._amounts()
        return [
            (from_micros(t), a) for t, a in zip(self._times[self._head :], amounts, strict=True)
        ]

    def _amounts(self) -> list[int]:
        out: list[int] = []
        previous = self._cum[self._head - 1] if self._head > 0 else 0
        for c in self._cum[self._head :]:
            out.append(c - previous)
            previous = c
        return out

    def _before(self, index: int) -> int:
        """Sum of the amounts of entries `[0, index)`."""
        return self._cum[index - 1] if index > 0 else 0

    def _range(self, window_s: int, at: datetime) -> tuple[int, int]:
        if window_s < 0:
            raise ValueError("window_s must not be negative")
        end = to_micros(at)
        start = end - window_s * _US_PER_S  # exclusive
        lo = bisect_right(self._times, start, self._head)
        hi = bisect_right(self._times, end, lo)
        return lo, hi

    def total_in(self, window_s: int, at: datetime) -> int:
        """Sum of amounts of entries with `at - window_s < instant <= at`."""
        lo, hi = self._range(window_s, at)
        return self._before(hi) - self._before(lo)

    def count_in(self, window_s: int, at: datetime) -> int:
        """Number of entries with `at - window_s < instant <= at`."""
        lo, hi = self._range(window_s, at)
        return hi - lo

    def add(self, at: datetime, amount_minor: int) -> None:
        """Record one entry (in any order), then prune."""
        if amount_minor < 0:
            raise ValueError("amount_minor must not be negative")
        t = to_micros(at)
        if self._cutoff_us is not None and t <= self._cutoff_us:
            return  # already outside every window this one answers exactly
        if not self._times or t >= self._times[-1]:
            self._times.append(t)
            self._cum.append(self._before(len(self._cum)) + amount_minor)
        else:
            index = bisect_right(self._times, t, self._head)
            self._times.insert(index, t)
            self._cum.insert(index, self._before(index) + amount_minor)
            for i in range(index + 1, len(self._cum)):
                self._cum[i] += amount_minor
        self._prune()

    def _prune(self) -> None:
        cutoff = self._times[-1] - self._horizon_us - self._grace_us
        if self._cutoff_us is not None:
            cutoff = max(cutoff, self._cutoff_us)
        self._cutoff_us = cutoff
        self._head = bisect_right(self._times, cutoff, self._head)
        if self._head and self._head * 2 > len(self._times):
            base = self._cum[self._head - 1]
            self._times = self._times[self._head :]
            self._cum = [c - base for c in self._cum[self._head :]]
            self._head = 0


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class ActionFacts:
    """What is judged about one action (from `action.performed` or `action.observed`)."""

    at: datetime
    action: str
    resource: str
    amount: Money | None = None
    data_classes: tuple[str, ...] = ()

    @classmethod
    def of(cls, event: ActionPerformed | ActionObserved) -> ActionFacts:
        """The facts of an action event, at its `occurred_at`."""
        return cls(
            event.occurred_at,
            event.action,
            event.resource,
            event.amount,
            tuple(event.data_classes),
        )


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken bound, attributed to a commitment (None for retired / uncommitted)."""

    kind: ViolationKind
    severity: int
    commitment_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Charge:
    """What `record` adds to `usage[commitment_id]`."""

    commitment_id: str
    at: datetime
    amount_minor: int
    horizon_s: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The verdict on one action.

    `covering` is the commitment that covers a within-bounds action; `ref` is
    the (chain, seq) of the version that covered it or, outside bounds, of the
    closest match's version (None for retired / uncommitted). `charge` says
    which window `record` updates (None: nobody is charged)."""

    within: bool
    covering: str | None
    violations: list[Violation]
    ref: Ref | None = None
    charge: Charge | None = None

    @property
    def max_severity(self) -> int:
        """The highest severity among the violations (0 when within bounds)."""
        return max((v.severity for v in self.violations), default=0)


def _violation(kind: ViolationKind, commitment_id: str | None, detail: str) -> Violation:
    return Violation(kind, SEVERITY[kind], commitment_id, detail)


def _iso(at: datetime) -> str:
    return at.isoformat()


def _check(
    facts: ActionFacts,
    history: CommitmentHistory,
    version: CommitmentVersion,
    usage: dict[str, RollingWindow],
    windows: bool = True,
) -> list[Violation]:
    cid = history.commitment_id
    terms = version.terms
    at = facts.at
    found: list[Violation] = []
    if history.revoked_at is not None and history.revoked_at <= at:
        where = (
            f" (entry {history.revoked_ref[0]}#{history.revoked_ref[1]})"
            if history.revoked_ref
            else ""
        )
        found.append(_violation(REVOKED, cid, f"revoked at {_iso(history.revoked_at)}{where}"))
    if at < terms.valid_from:
        found.append(
            _violation(
                OUTSIDE_VALIDITY, cid, f"{_iso(at)} is before valid_from {_iso(terms.valid_from)}"
            )
        )
    elif terms.valid_until is not None and at >= terms.valid_until:
        found.append(
            _violation(
                OUTSIDE_VALIDITY,
                cid,
                f"{_iso(at)} is at or after valid_until {_iso(terms.valid_until)}",
            )
        )
    if not matches_any(terms.allowed_actions, facts.action):
        found.append(_violation(ACTION_NOT_ALLOWED, cid, f"action {facts.action!r} not allowed"))
    if not matches_any(terms.resource_bounds, facts.resource):
        found.append(
            _violation(RESOURCE_OUT_OF_BOUNDS, cid, f"resource {facts.resource!r} out of bounds")
        )
    extra = sorted(set(facts.data_classes) - set(terms.data_classes))
    if extra:
        found.append(_violation(DATA_CLASS, cid, f"data classes not committed: {', '.join(extra)}"))
    window = usage.get(cid)
    spend = terms.spend
    amount = facts.amount
    if spend is not None and amount is not None:
        if amount.currency != spend.currency:
            found.append(
                _violation(
                    CURRENCY_MISMATCH,
                    cid,
                    f"amount in {amount.currency}, ceiling in {spend.currency}",
                )
            )
        else:
            if spend.per_action_minor is not None and amount.amount_minor > spend.per_action_minor:
                found.append(
                    _violation(
                        SPEND_PER_ACTION,
                        cid,
                        f"{amount.amount_minor} > per_action_minor {spend.per_action_minor} {spend.currency}",
                    )
                )
            if windows and spend.per_window_minor is not None and spend.window_s is not None:
                before = window.total_in(spend.window_s, at) if window is not None else 0
                total = before + amount.amount_minor
                if total > spend.per_window_minor:
                    found.append(
                        _violation(
                            SPEND_WINDOW,
                            cid,
                            f"{total} in {spend.window_s}s > per_window_minor {spend.per_window_minor} {spend.currency}",
                        )
                    )
    rate = terms.rate
    if windows and rate is not None:
        count = (window.count_in(rate.window_s, at) if window is not None else 0) + 1
        if count > rate.max_count:
            found.append(
                _violation(
                    RATE_LIMIT,
                    cid,
                    f"{count} actions in {rate.window_s}s > max_count {rate.max_count}",
                )
            )
    return found


def _charge(facts: ActionFacts, history: CommitmentHistory, version: CommitmentVersion) -> Charge:
    spend = version.terms.spend
    amount = facts.amount
    spent = (
        amount.amount_minor
        if spend is not None and amount is not None and amount.currency == spend.currency
        else 0
    )
    return Charge(history.commitment_id, facts.at, spent, history.horizon_s())


def evaluate(
    action: ActionFacts,
    histories: list[CommitmentHistory],
    usage: dict[str, RollingWindow],
    retired: bool,
    windows: bool = True,
) -> Evaluation:
    """Judge one action. Pure: reads `histories` and `usage`, mutates neither.

    `windows=False` skips the rolling-window checks (`spend_window`,
    `rate_limit`): a gateway sees only the traffic that passes through it, so
    its observations are judged on everything but the agent's budgets.

    1. A retired agent: `[agent_retired]`, nothing else is checked.
    2. Candidates are the commitments with a version in effect at `action.at`
       (`version_at`); with none: `[uncommitted]`.
    3. Each candidate, in `commitment_id` order, gets its list of violations
       (in the order of the module table). The first with none covers the
       action: within bounds.
    4. Otherwise the closest match is the candidate with the smallest
       `(max severity, number of violations, commitment_id)`; its violations
       are the answer, with its version's `ref`.
    """
    if retired:
        return Evaluation(False, None, [_violation(AGENT_RETIRED, None, "the agent is retired")])
    candidates: list[tuple[CommitmentHistory, CommitmentVersion]] = []
    for history in sorted(histories, key=lambda h: h.commitment_id):
        version = history.version_at(action.at)
        if version is not None:
            candidates.append((history, version))
    if not candidates:
        return Evaluation(
            False,
            None,
            [_violation(UNCOMMITTED, None, f"no commitment in effect at {_iso(action.at)}")],
        )
    best: tuple[tuple[int, int, str], CommitmentHistory, CommitmentVersion, list[Violation]] | None
    best = None
    for history, version in candidates:
        found = _check(action, history, version, usage, windows)
        if not found:
            return Evaluation(
                True, history.commitment_id, [], version.ref, _charge(action, history, version)
            )
        key = (max(v.severity for v in found), len(found), history.commitment_id)
        if best is None or key < best[0]:
            best = (key, history, version, found)
    assert best is not None
    _, history, version, found = best
    in_scope = not any(v.kind in SCOPE_KINDS for v in found)
    charge = _charge(action, history, version) if in_scope else None
    return Evaluation(False, None, found, version.ref, charge)


LATE_GRACE_S: Final = 24 * 3600
"""Default lateness (seconds behind a commitment's newest charged action) that windows
created by `record` keep answering exactly for out-of-order actions."""


def record(
    usage: dict[str, RollingWindow], evaluation: Evaluation, grace_s: int = LATE_GRACE_S
) -> None:
    """Add the evaluation's charge (if any) to `usage`, creating or widening the window.

    Call it after `evaluate`, with the same `usage`, in ledger order. A new
    window gets the commitment's `horizon_s` (longest spend/rate window of any
    known version) and `grace_s`; an existing one is widened if an amendment
    brought a longer window. This is the only function that mutates `usage`."""
    charge = evaluation.charge
    if charge is None:
        return
    window = usage.get(charge.commitment_id)
    if window is None:
        window = usage[charge.commitment_id] = RollingWindow(charge.horizon_s, grace_s)
    else:
        window.widen(charge.horizon_s)
    window.add(charge.at, charge.amount_minor)


__all__ = [
    "ACTION_NOT_ALLOWED",
    "AGENT_RETIRED",
    "CURRENCY_MISMATCH",
    "DATA_CLASS",
    "LATE_GRACE_S",
    "OUTSIDE_VALIDITY",
    "RATE_LIMIT",
    "RESOURCE_OUT_OF_BOUNDS",
    "REVOKED",
    "SCOPE_KINDS",
    "SEVERITY",
    "SPEND_PER_ACTION",
    "SPEND_WINDOW",
    "UNCOMMITTED",
    "ActionFacts",
    "Charge",
    "CommitmentHistory",
    "CommitmentVersion",
    "Evaluation",
    "RollingWindow",
    "ViolationKind",
    "evaluate",
    "from_micros",
    "record",
    "to_micros",
]
