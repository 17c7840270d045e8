"""Query API under `/v1`: posture, commitments, chains, quarantine."""

from __future__ import annotations

import base64
from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import Parameter

from service.adapters.postgres import LedgerStore
from service.api.bodies import (
    ChainHeadView,
    CommitmentsPage,
    CommitmentView,
    EntriesPage,
    EntryView,
    LedgerRef,
    PostureView,
    QuarantinePage,
    QuarantineView,
)
from service.domain.chain import to_micros
from service.domain.events import SLUG_PATTERN
from service.domain.posture import band_of
from service.errors import NotFoundError

SlugParam = Annotated[str, Parameter(pattern=SLUG_PATTERN)]
Limit = Annotated[int, Parameter(ge=1, le=1000)]


def _store(state: State) -> LedgerStore:
    store = state["store"]
    assert isinstance(store, LedgerStore)
    return store


class AgentController(Controller):
    path = "/v1/agents/{org:str}/{agent:str}"
    tags = ["agents"]

    @get("/posture", summary="An agent's posture versus its commitments")
    async def posture(self, state: State, org: SlugParam, agent: SlugParam) -> PostureView:
        store = _store(state)
        record = await store.agent(org, agent)
        counts = await store.posture(org, agent)
        observed = await store.observations(org, agent)
        if (
            record is None
            and counts is None
            and not observed
            and not await store.commitments(org, agent)
        ):
            raise NotFoundError(f"no events about agent {org}/{agent} are in the ledger")
        retired = record is not None and record.retired_seq is not None
        band, score = band_of(counts, retired)
        position = await store.projection_position(org)
        violation_ref = None
        if counts is not None and counts.last_violation_chain is not None:
            assert counts.last_violation_seq is not None
            violation_ref = LedgerRef(counts.last_violation_chain, counts.last_violation_seq)
        return PostureView(
            org=org,
            agent=agent,
            band=band,
            score=score,
            registered=record is not None,
            retired=retired,
            actions_total=counts.actions_total if counts else 0,
            actions_within=counts.actions_within if counts else 0,
            actions_outside=counts.actions_outside if counts else 0,
            observed_total=sum(o.observed_total for o in observed),
            observed_by={o.observer: o.observed_total for o in observed},
            last_action_at=counts.last_action_at if counts else None,
            last_violation=counts.last_violation if counts else None,
            last_violation_ref=violation_ref,
            position=LedgerRef(org, position),
        )

    @get("/commitments", summary="The commitments an agent has declared")
    async def commitments(self, state: State, org: SlugParam, agent: SlugParam) -> CommitmentsPage:
        found = await _store(state).commitments(org, agent)
        return CommitmentsPage(
            org=org,
            agent=agent,
            commitments=[
                CommitmentView(
                    commitment_id=c.commitment_id,
                    version=c.version,
                    status="revoked" if c.revoked_at is not None else "declared",
                    terms=c.terms,
                    revoked_at=c.revoked_at,
                    declared=LedgerRef(c.org, c.declared_seq),
                    updated=LedgerRef(c.org, c.updated_seq),
                )
                for c in found
            ],
        )


class ChainController(Controller):
    path = "/v1/chains"
    tags = ["ledger"]

    @get("/", summary="Every chain's head")
    async def heads(self, state: State) -> list[ChainHeadView]:
        return [
            ChainHeadView(h.chain, h.seq, h.hash.hex()) for h in await _store(state).chain_heads()
        ]

    @get("/{org:str}", summary="One chain's head")
    async def head(self, state: State, org: SlugParam) -> ChainHeadView:
        head = await _store(state).chain_head(org)
        if head is None:
            raise NotFoundError(f"no chain for org {org!r}")
        return ChainHeadView(head.chain, head.seq, head.hash.hex())

    @get("/{org:str}/entries", summary="Entries of a chain, in order, a page at a time")
    async def entries(
        self,
        state: State,
        org: SlugParam,
        after_seq: Annotated[int, Parameter(ge=0)] = 0,
        limit: Limit = 100,
    ) -> EntriesPage:
        store = _store(state)
        if await store.chain_head(org) is None:
            raise NotFoundError(f"no chain for org {org!r}")
        rows = await store.entries(org, from_seq=after_seq + 1, limit=limit)
        return EntriesPage(
            chain=org,
            entries=[
                EntryView(
                    chain=e.chain,
                    seq=e.seq,
                    event_id=e.event_id,
                    kind=e.kind,
                    occurred_at=e.occurred_at,
                    received_at=e.received_at,
                    received_at_us=to_micros(e.received_at),
                    key_id=e.key_id,
                    signature=e.signature.hex(),
                    # Admission only chains valid UTF-8 JSON, so this decode is exact.
                    event=e.event_bytes.decode("utf-8"),
                    prev_hash=e.prev_hash.hex(),
                    entry_hash=e.entry_hash.hex(),
                )
                for e in rows
            ],
            next_after_seq=rows[-1].seq if len(rows) == limit else None,
        )


class QuarantineController(Controller):
    path = "/v1/quarantine"
    tags = ["ledger"]

    @get("/", summary="Refused messages with their raw bytes and reason")
    async def list_quarantine(
        self,
        state: State,
        org: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        after_id: Annotated[int, Parameter(ge=0)] = 0,
        limit: Limit = 100,
    ) -> QuarantinePage:
        rows = await _store(state).quarantined(org, after_id, limit)
        return QuarantinePage(
            items=[
                QuarantineView(
                    id=r["id"],
                    stream_seq=r["stream_seq"],
                    subject=r["subject"],
                    claimed_org=r["claimed_org"],
                    key_id=r["key_id"],
                    reason=r["reason"],
                    detail=r["detail"],
                    raw_base64=base64.b64encode(r["raw"]).decode(),
                    received_at=r["received_at"],
                )
                for r in rows
            ],
            next_after_id=rows[-1]["id"] if len(rows) == limit else None,
        )
