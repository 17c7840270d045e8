"""The evidence projection: events folded into agents, commitment histories, windows and rows."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.chain import to_micros
from service.domain.evaluation import LATE_GRACE_S, Charge, RollingWindow
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
    Money,
    PublisherKeyRegistered,
    PublisherKeyRevoked,
    RateLimit,
    SpendCeiling,
    agent_of,
)
from service.domain.projection import (
    AgentKey,
    AgentRecord,
    CommitmentKey,
    CommitmentRecord,
    Projector,
    VerdictRow,
    VersionRow,
)

T0 = datetime(2026, 11, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
S = timedelta(seconds=1)
H = timedelta(hours=1)
DAY = timedelta(days=1)
RECEIVED0 = T0 + 30 * DAY
"""Entries are received at RECEIVED0 + seq seconds (the ledger's clock)."""

ORG = "acme"
BOT: AgentKey = (ORG, "bot")

_ids = itertools.count()


def _id() -> str:
    return f"e{next(_ids)}"


def _terms(
    resources: tuple[str, ...] = ("order:*",),
    spend: SpendCeiling | None = None,
    rate: RateLimit | None = None,
    valid_from: datetime = T0 - 60 * DAY,
) -> CommitmentTerms:
    return CommitmentTerms(
        principal="alice",
        purpose="refunds",
        allowed_actions=["payments.*"],
        resource_bounds=list(resources),
        valid_from=valid_from,
        spend=spend,
        rate=rate,
        audit=AuditContext(policy_version="v1"),
    )


def _registered(agent: str = "bot", name: str = "Bot", at: datetime = T0 - 60 * DAY) -> Event:
    return AgentRegistered(
        id=_id(), org=ORG, occurred_at=at, agent=agent, display_name=name, principal="alice"
    )


def _retired(at: datetime = T0, agent: str = "bot") -> Event:
    return AgentRetired(id=_id(), org=ORG, occurred_at=at, agent=agent)


def _declared(
    cid: str = "c1",
    terms: CommitmentTerms | None = None,
    at: datetime = T0 - 60 * DAY,
    agent: str = "bot",
) -> Event:
    return CommitmentDeclared(
        id=_id(),
        org=ORG,
        occurred_at=at,
        agent=agent,
        commitment_id=cid,
        terms=terms or _terms(),
    )


def _amended(
    version: int,
    cid: str = "c1",
    terms: CommitmentTerms | None = None,
    at: datetime = T0 - 30 * DAY,
    agent: str = "bot",
) -> Event:
    return CommitmentAmended(
        id=_id(),
        org=ORG,
        occurred_at=at,
        agent=agent,
        commitment_id=cid,
        version=version,
        terms=terms or _terms(),
    )


def _revoked(cid: str = "c1", at: datetime = T0 - DAY, agent: str = "bot") -> Event:
    return CommitmentRevoked(id=_id(), org=ORG, occurred_at=at, agent=agent, commitment_id=cid)


def _performed(
    at: datetime = T0,
    resource: str = "order:1",
    amount: Money | None = None,
    agent: str = "bot",
    correlation_id: str | None = None,
) -> Event:
    return ActionPerformed(
        id=_id(),
        org=ORG,
        occurred_at=at,
        agent=agent,
        action="payments.refund",
        resource=resource,
        amount=amount,
        correlation_id=correlation_id,
    )


def _observed(observer: str = "payhub", agent_org: str = ORG, agent: str = "bot") -> Event:
    return ActionObserved(
        id=_id(),
        org=observer,
        occurred_at=T0,
        agent_org=agent_org,
        agent=agent,
        gateway="gw-eu",
        action="payments.refund",
        resource="order:1",
        amount=Money(5, "EUR"),
        data_classes=["pii"],
        correlation_id="corr-1",
    )


def _key_event() -> Event:
    return PublisherKeyRegistered(
        id=_id(), org=ORG, occurred_at=T0, key_id="0123456789abcdef", public_key="A" * 43
    )


def _received(seq: int) -> datetime:
    return RECEIVED0 + seq * S


def _feed(events: Sequence[Event], projector: Projector | None = None, first: int = 1) -> Projector:
    """Apply events of chain `acme` (observations: of their own org's chain) from seq `first`."""
    projector = projector or Projector()
    for seq, event in enumerate(events, start=first):
        projector.apply(event, event.org, seq, _received(seq))
    return projector


def _eur(minor: int) -> Money:
    return Money(minor, "EUR")


# --------------------------------------------------------------------------- agents


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [_registered()],
            AgentRecord(ORG, "bot", "Bot", "alice", 1, _received(1)),
            id="registered",
        ),
        pytest.param(
            [_registered(), _registered(name="Other")],
            AgentRecord(ORG, "bot", "Bot", "alice", 1, _received(1)),
            id="repeat_registration_ignored",
        ),
        pytest.param([_retired()], None, id="retirement_of_unregistered_ignored"),
        pytest.param(
            [_registered(), _retired(T0), _retired(T0 + DAY)],
            AgentRecord(ORG, "bot", "Bot", "alice", 1, _received(1), 2, T0, _received(2)),
            id="retired_first_retirement_kept",
        ),
        pytest.param(
            [_registered(), _retired(T0), _registered(name="Again")],
            AgentRecord(ORG, "bot", "Bot", "alice", 1, _received(1), 2, T0, _received(2)),
            id="registration_after_retirement_ignored",
        ),
    ],
)
def test_agent_record_follows_chain_when_registered_or_retired(
    events: list[Event], expected: AgentRecord | None
) -> None:
    """A registration is recorded once; the first retirement of a registered agent sticks."""
    assert _feed(events).agents.get(BOT) == expected


# --------------------------------------------------------------------------- commitments


def _shape(record: CommitmentRecord | None) -> tuple[list[tuple[int, int]], int | None] | None:
    """(version, seq) of each version, and the revocation's seq."""
    if record is None:
        return None
    return [(v.version, v.seq) for v in record.versions], record.revoked_seq


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([_declared()], ([(1, 1)], None), id="declared"),
        pytest.param([_declared(), _declared()], ([(1, 1)], None), id="repeat_declare_ignored"),
        pytest.param(
            [_declared(), _amended(2)], ([(1, 1), (2, 2)], None), id="amended_to_version_2"
        ),
        pytest.param(
            [_declared(), _amended(2), _amended(5)],
            ([(1, 1), (2, 2), (5, 3)], None),
            id="versions_may_skip",
        ),
        pytest.param(
            [_declared(), _amended(3), _amended(2)],
            ([(1, 1), (3, 2)], None),
            id="lower_version_ignored",
        ),
        pytest.param(
            [_declared(), _amended(2), _amended(2)],
            ([(1, 1), (2, 2)], None),
            id="same_version_ignored",
        ),
        pytest.param([_amended(2)], None, id="amendment_of_unknown_ignored"),
        pytest.param([_declared(), _revoked()], ([(1, 1)], 2), id="revoked"),
        pytest.param(
            [_declared(), _revoked(), _amended(2)], ([(1, 1)], 2), id="amend_after_revoke_ignored"
        ),
        pytest.param(
            [_declared(), _revoked(), _declared()],
            ([(1, 1)], 2),
            id="redeclare_after_revoke_ignored",
        ),
        pytest.param(
            [_declared(), _revoked(), _revoked()], ([(1, 1)], 2), id="second_revocation_ignored"
        ),
        pytest.param([_revoked()], None, id="revocation_of_unknown_ignored"),
    ],
)
def test_commitment_history_follows_chain_when_declared_amended_revoked(
    events: list[Event], expected: tuple[list[tuple[int, int]], int | None] | None
) -> None:
    """Versions are appended in chain order when greater than the latest; revocation is final."""
    projector = _feed(events)
    assert _shape(projector.commitments.get(BOT, {}).get("c1")) == expected


def test_commitment_record_keeps_event_times_when_amended_and_revoked() -> None:
    """A version's effective_from is its occurred_at; a revocation keeps occurred_at and received_at."""
    projector = _feed([_declared(at=T0 - DAY), _amended(2, at=T0 + H), _revoked(at=T0 + 2 * H)])
    record = projector.commitments[BOT]["c1"]
    assert [v.effective_from for v in record.versions] == [T0 - DAY, T0 + H]
    assert [v.received_at for v in record.versions] == [_received(1), _received(2)]
    assert (record.revoked_at, record.revoked_seq, record.revoked_received_at) == (
        T0 + 2 * H,
        3,
        _received(3),
    )
    assert projector.new_versions == record.versions
    assert projector.dirty_commitments == {(ORG, "bot", "c1")}


@pytest.mark.parametrize(
    ("event", "agents", "commitments", "windows", "versions"),
    [
        pytest.param(_registered("new"), {(ORG, "new")}, set(), set(), 0, id="registration"),
        pytest.param(_retired(), {BOT}, set(), set(), 0, id="retirement"),
        pytest.param(_declared("c2"), set(), {(ORG, "bot", "c2")}, set(), 1, id="declaration"),
        pytest.param(_amended(2), set(), {(ORG, "bot", "c1")}, set(), 1, id="amendment"),
        pytest.param(_revoked(), set(), {(ORG, "bot", "c1")}, set(), 0, id="revocation"),
        pytest.param(_performed(), set(), set(), {(ORG, "bot", "c1")}, 0, id="charged_action"),
        pytest.param(_performed(resource="crm:1"), set(), set(), set(), 0, id="uncharged_action"),
    ],
)
def test_dirty_sets_name_changed_rows_when_event_applies(
    event: Event,
    agents: set[AgentKey],
    commitments: set[CommitmentKey],
    windows: set[CommitmentKey],
    versions: int,
) -> None:
    """Each effective event marks exactly the state rows it changed for the adapter to write."""
    loaded = _feed([_registered(), _declared()])
    projector = Projector(agents=loaded.agents, commitments=loaded.commitments)
    projector.apply(event, ORG, 10, _received(10))
    assert projector.dirty_agents == agents
    assert projector.dirty_commitments == commitments
    assert projector.dirty_windows == windows
    assert len(projector.new_versions) == versions


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(_registered(name="Again"), id="repeat_registration"),
        pytest.param(_declared(), id="repeat_declaration"),
        pytest.param(_amended(1), id="amendment_not_newer"),
        pytest.param(_revoked("unknown"), id="unknown_revocation"),
        pytest.param(_key_event(), id="publisher_key"),
    ],
)
def test_no_row_changes_when_event_ignored(event: Event) -> None:
    """An ignored event leaves state, dirty sets and new rows untouched."""
    loaded = _feed([_registered(), _declared()])
    projector = Projector(agents=loaded.agents, commitments=loaded.commitments)
    before = (dict(projector.agents), projector.commitments[BOT]["c1"].versions[:])
    projector.apply(event, ORG, 10, _received(10))
    assert (dict(projector.agents), projector.commitments[BOT]["c1"].versions) == before
    assert (projector.dirty_agents, projector.dirty_commitments, projector.dirty_windows) == (
        set(),
        set(),
        set(),
    )
    assert (projector.new_versions, projector.new_verdicts, projector.new_observations) == (
        [],
        [],
        [],
    )


# --------------------------------------------------------------------------- verdicts


def test_verdict_agent_retired_when_action_chained_after_retirement() -> None:
    """Chain order decides: an action chained after the retirement is agent_retired, even if earlier."""
    projector = _feed(
        [_registered(), _declared(), _performed(T0), _retired(T0 + DAY), _performed(T0 - DAY)]
    )
    before, after = projector.new_verdicts
    assert (before.within, before.covering, before.severity) == (True, "c1", 0)
    assert [v.kind for v in after.violations] == ["agent_retired"]
    assert (after.within, after.severity, after.charge, after.ref) == (False, 3, None, None)
    assert projector.windows[BOT]["c1"].entries() == [(T0, 0)]


def test_verdict_row_records_action_and_charge_when_within() -> None:
    """A within-bounds action's row carries its facts, covering commitment, ref and charge."""
    terms = _terms(spend=SpendCeiling(currency="EUR", per_window_minor=1000, window_s=3600))
    event = _performed(T0, amount=_eur(300), correlation_id="corr-9")
    projector = _feed([_registered(), _declared(terms=terms), event])
    (row,) = projector.new_verdicts
    assert row == VerdictRow(
        org=ORG,
        agent="bot",
        seq=3,
        event_id=event.id,
        occurred_at=T0,
        received_at=_received(3),
        action="payments.refund",
        resource="order:1",
        amount=_eur(300),
        data_classes=(),
        correlation_id="corr-9",
        within=True,
        severity=0,
        violations=(),
        covering="c1",
        ref=(ORG, 2),
        charge=Charge("c1", T0, 300, 3600),
    )
    assert projector.dirty_windows == {(ORG, "bot", "c1")}


@pytest.mark.parametrize(
    ("events", "kinds"),
    [
        pytest.param([_performed()], ["uncommitted"], id="unregistered_uncommitted"),
        pytest.param([_declared(), _performed()], [], id="unregistered_still_judged"),
        pytest.param(
            [_declared(), _revoked(at=T0), _performed(T0 - US)], [], id="action_before_revocation"
        ),
        pytest.param(
            [_declared(), _revoked(at=T0), _performed(T0)], ["revoked"], id="action_at_revocation"
        ),
        pytest.param(
            [_declared(), _amended(2, terms=_terms(("invoice:*",)), at=T0), _performed(T0 - US)],
            [],
            id="earlier_action_judged_by_v1",
        ),
        pytest.param(
            [_declared(), _amended(2, terms=_terms(("invoice:*",)), at=T0), _performed(T0)],
            ["resource_out_of_bounds"],
            id="action_at_amendment_judged_by_v2",
        ),
    ],
)
def test_verdict_judged_against_versions_at_occurred_at_when_performed(
    events: list[Event], kinds: list[str]
) -> None:
    """Actions are judged against the chained versions in effect at their occurred_at."""
    verdict = _feed(events).new_verdicts[-1]
    assert [v.kind for v in verdict.violations] == kinds


# --------------------------------------------------------------------------- observations, touched


def test_observation_row_attributed_to_observer_chain_when_observed() -> None:
    """An observation becomes a row of the gateway org's chain about the observed agent."""
    projector = Projector()
    event = _observed(observer="payhub")
    projector.apply(event, "payhub", 42, _received(42))
    (row,) = projector.new_observations
    assert (row.observer, row.seq, row.event_id, row.received_at) == (
        "payhub",
        42,
        event.id,
        _received(42),
    )
    assert (row.org, row.agent, row.gateway, row.occurred_at) == (ORG, "bot", "gw-eu", T0)
    assert (row.action, row.resource, row.amount) == ("payments.refund", "order:1", _eur(5))
    assert (row.data_classes, row.correlation_id) == (("pii",), "corr-1")
    assert projector.touched == {BOT}
    assert (projector.agents, projector.new_verdicts, projector.dirty_agents) == ({}, [], set())


def test_touched_lists_agents_events_are_about_when_batch_applied() -> None:
    """Every agent an event is about is touched (observations: the observed agent); keys touch none."""
    events = [
        _registered(),
        _declared(agent="bot2"),
        _performed(agent="bot3"),
        _observed(observer="payhub", agent_org="globex", agent="g1"),
        _revoked(agent="bot4"),
        _retired(agent="bot5"),
        _key_event(),
        PublisherKeyRevoked(id=_id(), org=ORG, occurred_at=T0, key_id="0123456789abcdef"),
    ]
    projector = _feed(events)
    assert projector.touched == {agent_of(e) for e in events if agent_of(e) is not None}
    assert projector.touched == {
        (ORG, "bot"),
        (ORG, "bot2"),
        (ORG, "bot3"),
        ("globex", "g1"),
        (ORG, "bot4"),
        (ORG, "bot5"),
    }


def test_mark_all_dirty_marks_every_state_row_when_rebuilding() -> None:
    """mark_all_dirty makes every agent, commitment and window count as changed."""
    loaded = _feed([_registered(), _declared(), _declared("c2"), _performed()])
    projector = Projector(loaded.agents, loaded.commitments, loaded.windows)
    projector.mark_all_dirty()
    assert projector.dirty_agents == {BOT}
    assert projector.dirty_commitments == {(ORG, "bot", "c1"), (ORG, "bot", "c2")}
    assert projector.dirty_windows == {(ORG, "bot", "c1")}


# --------------------------------------------------------------------------- batches and restore


@dataclasses.dataclass
class _Db:
    """What the adapter stores between batches, and how it loads a projector back."""

    agents: dict[AgentKey, AgentRecord] = dataclasses.field(default_factory=dict)
    revocations: dict[CommitmentKey, tuple[datetime | None, int | None, datetime | None]] = (
        dataclasses.field(default_factory=dict)
    )
    versions: list[VersionRow] = dataclasses.field(default_factory=list)
    verdicts: list[VerdictRow] = dataclasses.field(default_factory=list)
    cutoffs: dict[CommitmentKey, int | None] = dataclasses.field(default_factory=dict)

    def save(self, p: Projector) -> None:
        for key in p.dirty_agents:
            self.agents[key] = dataclasses.replace(p.agents[key])
        for org, agent, cid in p.dirty_commitments:
            c = p.commitments[(org, agent)][cid]
            self.revocations[(org, agent, cid)] = (
                c.revoked_at,
                c.revoked_seq,
                c.revoked_received_at,
            )
        self.versions += p.new_versions
        self.verdicts += p.new_verdicts
        for org, agent, cid in p.dirty_windows:
            self.cutoffs[(org, agent, cid)] = p.windows[(org, agent)][cid].cutoff_us

    def load(self) -> Projector:
        p = Projector(agents={k: dataclasses.replace(a) for k, a in self.agents.items()})
        for (org, agent, cid), revoked in self.revocations.items():
            versions = sorted(
                (
                    v
                    for v in self.versions
                    if (v.org, v.agent, v.commitment_id) == (org, agent, cid)
                ),
                key=lambda v: v.seq,
            )
            p.commitments.setdefault((org, agent), {})[cid] = CommitmentRecord(
                org, agent, cid, versions, *revoked
            )
        for (org, agent, cid), cutoff in self.cutoffs.items():
            history = p.commitments[(org, agent)][cid].history()
            charges = [
                (to_micros(v.charge.at), v.charge.amount_minor)
                for v in self.verdicts
                if (v.org, v.agent) == (org, agent)
                and v.charge is not None
                and v.charge.commitment_id == cid
                and (cutoff is None or to_micros(v.charge.at) > cutoff)
            ]
            horizon_s = history.horizon_s() if history is not None else 0
            p.windows.setdefault((org, agent), {})[cid] = RollingWindow.restore(
                horizon_s, LATE_GRACE_S, cutoff, charges
            )
        return p


def _window_state(
    p: Projector,
) -> dict[CommitmentKey, tuple[int | None, list[tuple[datetime, int]]]]:
    return {
        (org, agent, cid): (w.cutoff_us, sorted(w.entries()))
        for (org, agent), by_id in p.windows.items()
        for cid, w in by_id.items()
    }


def _run_batched(events: Sequence[Event], cuts: set[int]) -> tuple[_Db, Projector]:
    """Apply `events`, saving and reloading the state after every index in `cuts`."""
    db = _Db()
    projector = db.load()
    observations = []
    for seq, event in enumerate(events, start=1):
        projector.apply(event, event.org, seq, _received(seq))
        if seq in cuts or seq == len(events):
            db.save(projector)
            observations += projector.new_observations
            projector = db.load()
    assert len(observations) == sum(isinstance(e, ActionObserved) for e in events)
    return db, projector


def _assert_same_as_single(events: Sequence[Event], cuts: set[int]) -> None:
    single = _feed(events)
    db, reloaded = _run_batched(events, cuts)
    assert db.verdicts == single.new_verdicts
    assert db.versions == single.new_versions
    assert reloaded.agents == single.agents
    assert reloaded.commitments == single.commitments
    assert _window_state(reloaded) == _window_state(single)


def _widening_scenario() -> list[Event]:
    """One action per rate window allowed; the window is widened from 1 h to 3 days mid-stream.

    Cutoff after each charge: max(previous, newest - horizon - 1 day of grace)."""
    hourly = _terms(rate=RateLimit(max_count=1, window_s=3600))
    three_days = _terms(rate=RateLimit(max_count=1, window_s=3 * 86400))
    return [
        _registered(),
        _declared(terms=hourly),
        _performed(T0),  # within; cutoff T0 - 1 h - 1 d
        _performed(T0 + 2 * DAY),  # within; cutoff T0 + 2 d - 1 h - 1 d = T0 + 23 h: T0 pruned
        _performed(T0 + DAY + 30 * 60 * S),  # late but after the cutoff: within, retained
        _amended(2, terms=three_days, at=T0 - DAY),
        # 3-day window: T0 + 1 d 30 min, T0 + 2 d and itself: 3 > 1. Horizon widened to 3 d,
        # cutoff stays max(T0 + 23 h, T0 + 2 d + 1 s - 3 d - 1 d) = T0 + 23 h.
        _performed(T0 + 2 * DAY + S),
        # 3-day window before it: only the pruned T0 (gone): 1 action, within; retained
        _performed(T0 + 23 * H + US),
        # exactly at the cutoff: judged within (nothing retained before it), charge dropped
        _performed(T0 + 23 * H),
        # T0 + 23 h + 1 us and T0 + 1 d 30 min are in its window: 3 > 1
        _performed(T0 + DAY + 30 * 60 * S + S),
    ]


def test_widening_scenario_verdicts_when_window_widened_after_pruning() -> None:
    """Entries pruned under the narrow window stay gone after widening; verdicts follow that."""
    projector = _feed(_widening_scenario())
    assert [[v.kind for v in r.violations] for r in projector.new_verdicts] == [
        [],
        [],
        [],
        ["rate_limit"],
        [],
        [],
        ["rate_limit"],
    ]
    window = projector.windows[BOT]["c1"]
    assert window.cutoff_us == to_micros(T0 + 23 * H)
    assert [at for at, _ in window.entries()] == [
        T0 + 23 * H + US,
        T0 + DAY + 30 * 60 * S,
        T0 + DAY + 30 * 60 * S + S,
        T0 + 2 * DAY,
        T0 + 2 * DAY + S,
    ]


@pytest.mark.parametrize("cut", range(1, len(_widening_scenario())))
def test_batched_projection_equals_single_when_split_after_any_event(cut: int) -> None:
    """Saving and restoring the windows after any one event changes no verdict."""
    _assert_same_as_single(_widening_scenario(), {cut})


def test_batched_projection_equals_single_when_split_after_every_event() -> None:
    """Saving and restoring after every event changes no verdict."""
    events = _widening_scenario()
    _assert_same_as_single(events, set(range(1, len(events) + 1)))


# One org chain, two agents; everything clustered within a few days so that rolling
# windows (1 min .. 3 days), the 1-day late grace and pruning all interact.

AGENTS = ("bot", "bot2")
WINDOWS_S = (60, 3600, 2 * 86400, 3 * 86400)


INSTANTS = st.builds(
    lambda day, minute, extra: T0 + day * DAY + minute * 60 * S + extra,
    st.integers(0, 4),
    st.integers(0, 180),
    st.sampled_from([timedelta(0), timedelta(0), US, S, -US]),
)
WINDOW_TERMS = {
    wide: st.builds(
        lambda rate, spend: (rate, spend),
        st.one_of(
            st.none(),
            st.builds(RateLimit, max_count=st.integers(0, 3), window_s=st.sampled_from(choices)),
        ),
        st.one_of(
            st.none(),
            st.builds(
                SpendCeiling,
                currency=st.just("EUR"),
                per_action_minor=st.one_of(st.none(), st.integers(100, 500)),
                per_window_minor=st.integers(0, 1500),
                window_s=st.sampled_from(choices),
            ),
        ),
    )
    for wide, choices in ((False, WINDOWS_S[:2]), (True, WINDOWS_S[2:]))
}
"""(rate, spend) with narrow (declarations) or wide (some amendments) windows."""
AMOUNTS = st.one_of(
    st.none(), st.builds(Money, st.integers(0, 600), st.sampled_from(["EUR", "EUR", "USD"]))
)
RESOURCES = st.sampled_from(["order:1", "order:2", "invoice:1", "crm:1"])
OPS = st.sampled_from(["act"] * 10 + ["amend", "amend", "revoke", "retire", "seen"])
BUMPS = st.sampled_from([0, 1, 1, 2])
BOUNDS = {"c1": ("order:*",), "c2": ("order:1*", "invoice:*")}


def _window_terms(draw: st.DrawFn, cid: str, wide: bool) -> CommitmentTerms:
    rate, spend = draw(WINDOW_TERMS[wide])
    return _terms(BOUNDS[cid], spend=spend, rate=rate)


@st.composite
def _streams(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    versions: dict[tuple[str, str], int] = {}
    for agent in AGENTS[: draw(st.integers(1, 2))]:
        events.append(_registered(agent))
        for cid in ("c1", "c2"):
            if cid == "c1" or draw(st.booleans()):
                events.append(_declared(cid, _window_terms(draw, cid, False), agent=agent))
                versions[(agent, cid)] = 1
    agents = sorted({a for a, _ in versions})
    for _ in range(draw(st.integers(1, 40))):
        agent = draw(st.sampled_from(agents))
        op = draw(OPS)
        cid = draw(st.sampled_from(sorted(c for a, c in versions if a == agent)))
        if op == "act":
            events.append(_performed(draw(INSTANTS), draw(RESOURCES), draw(AMOUNTS), agent))
        elif op == "amend":
            # not always newer: a repeated version number is ignored by the projector
            version = max(2, versions[(agent, cid)] + draw(BUMPS))
            versions[(agent, cid)] = max(versions[(agent, cid)], version)
            terms = _window_terms(draw, cid, draw(st.booleans()))
            events.append(_amended(version, cid, terms, draw(INSTANTS), agent))
        elif op == "revoke":
            events.append(_revoked(cid, draw(INSTANTS) + 3 * DAY, agent))
        elif op == "retire":
            events.append(_retired(draw(INSTANTS) + 3 * DAY, agent))
        else:
            events.append(_observed(agent=agent))
    return events


@settings(max_examples=300, deadline=None)
@given(events=_streams(), data=st.data())
def test_batched_projection_equals_single_when_batches_random(
    events: list[Event], data: st.DataObject
) -> None:
    """Batches with the windows saved and restored in between give exactly the single-pass rows."""
    cuts = data.draw(st.sets(st.integers(1, len(events))), label="cuts")
    _assert_same_as_single(events, cuts)
