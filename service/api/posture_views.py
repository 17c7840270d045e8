"""From posture reports (use case results) to HTTP bodies."""

from __future__ import annotations

from service.api.bodies import (
    BudgetView,
    CommitmentInForceView,
    CountsView,
    EvidenceView,
    LedgerRef,
    PostureView,
)
from service.app.posture import MODEL, PostureReport
from service.domain.chain import from_micros
from service.domain.posture import Item, WindowCounts


def evidence_view(item: Item) -> EvidenceView:
    return EvidenceView(
        at=from_micros(item.at_us),
        source=item.source,
        kind=item.kind,
        severity=item.severity,
        violations=list(item.violations),
        ref=LedgerRef(*item.ref),
        event_id=item.event_id,
        detail=item.detail,
    )


def _windows(counts: tuple[WindowCounts, ...]) -> dict[str, dict[str, CountsView]]:
    out: dict[str, dict[str, CountsView]] = {}
    for c in counts:
        out.setdefault(c.window, {})[c.source] = CountsView(
            c.actions, c.within, c.violations, c.findings
        )
    return out


def posture_view(report: PostureReport) -> PostureView:
    a = report.assessment
    return PostureView(
        org=report.org,
        agent=report.agent,
        model=MODEL,
        as_of=report.as_of,
        known_at=report.known_at,
        evidence="third_party" if report.third_party_only else "all",
        band=a.band,
        score=a.score,
        confidence=a.confidence,
        good=a.good,
        bad=a.bad,
        mass=a.mass,
        registered=report.registered,
        retired=report.retired,
        next_change_at=(
            from_micros(a.next_change_at_us) if a.next_change_at_us is not None else None
        ),
        next_change=a.next_change,
        windows=_windows(a.counts),
        coverage_permille=report.coverage_permille,
        observed_by=report.observed_by,
        recent_violations=[evidence_view(i) for i in report.recent],
        commitments_in_force=[
            CommitmentInForceView(
                commitment_id=c.commitment_id,
                version=c.version,
                ref=LedgerRef(*c.ref),
                per_action_minor=c.per_action_minor,
                currency=c.currency,
                budgets=[
                    BudgetView(b.kind, b.window_s, b.limit, b.used, b.currency) for b in c.budgets
                ],
            )
            for c in report.commitments
        ],
        positions=[LedgerRef(chain, seq) for chain, seq in report.positions.items()],
    )
