"""Query API under `/v1`: posture, commitments, chains, quarantine, ledger keys, checkpoints."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import (
    ServiceUnavailableException,
    ValidationException,
)
from litestar.params import Parameter, QueryParameter
from litestar.response import Stream

from service.adapters.postgres import ChainHead, LedgerStore, StoredCheckpoint
from service.api.access import caller
from service.api.bodies import (
    ChainHeadView,
    CheckpointView,
    CommitmentsPage,
    CommitmentView,
    EntriesPage,
    EntryView,
    LedgerKeysView,
    LedgerKeyView,
    LedgerRef,
    PosturesPage,
    PostureSummaryView,
    PostureView,
    QuarantinePage,
    QuarantineView,
    TimelinePointView,
    TimelineView,
    VersionView,
)
from service.api.posture_views import evidence_view, posture_view
from service.app.checkpoints import make_checkpoint
from service.app.export import export_chain
from service.app.ledger_key import LedgerSigner
from service.app.posture import (
    MODEL,
    assess_agent,
    commitments_of,
    list_postures,
    recent_assessment,
    timeline,
)
from service.app.verify import verify_ledger_keys
from service.domain.access import Principal, visible_org
from service.domain.audit import LEDGER_CHAIN, Finding, verify_sequentially
from service.domain.chain import to_micros
from service.domain.checkpoint import verifier_key
from service.domain.events import (
    EARLIEST_TIME,
    LATEST_TIME,
    MAX_SAFE_INTEGER,
    SLUG_PATTERN,
    load_json_strict,
)
from service.domain.export_format import MEDIA_TYPE as EXPORT_MEDIA_TYPE
from service.domain.posture import Band
from service.domain.signing import b64url, from_b64url
from service.errors import ConfigError, IntegrityError, NotFoundError

SlugParam = Annotated[str, Parameter(pattern=SLUG_PATTERN)]
MAX_TIMELINE = timedelta(days=92)
"""A timeline reads evidence from 30 days before `from` to `to`: bounded, like a page."""
EvidenceParam = Annotated[
    Literal["all", "third_party"], QueryParameter(description="whose evidence counts")
]
Limit = Annotated[int, Parameter(ge=1, le=1000)]
Seq = Annotated[int, Parameter(ge=0, le=MAX_SAFE_INTEGER)]
"""Sequence numbers, sizes and ids: JSON-safe integers (below 2^53), like every count."""
TIMELINE_LIMIT = 500
"""Band changes in one timeline page; `next_from` asks for the next."""
POINT_EVIDENCE_LIMIT = 10
"""Evidence listed per timeline change; `evidence_total` counts them all."""
COMMITMENTS_LIMIT = 100
VERSIONS_SHOWN = 20
"""Versions listed per commitment (the newest); `versions_total` counts them all."""
AnyRequest = Request[object, object, State]


def _now(state: State) -> datetime:
    """The request's instant: the only clock read on the posture path."""
    clock = state.get("clock")
    return clock() if clock is not None else datetime.now(UTC)


def _bad_query(name: str, message: str) -> ValidationException:
    return ValidationException(
        f"Validation failed: {message}",
        extra=[{"key": name, "message": message, "source": "query"}],
    )


def _instant(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise _bad_query(name, f"{value.isoformat()} needs a UTC offset (RFC 3339)")
    # Window and horizon arithmetic on the instant must stay inside `datetime`.
    if not EARLIEST_TIME <= value < LATEST_TIME:
        raise _bad_query(
            name,
            f"{value.isoformat()} is outside [{EARLIEST_TIME.isoformat()},"
            f" {LATEST_TIME.isoformat()})",
        )
    return value.astimezone(UTC)


def _optional_instant(value: datetime | None, name: str) -> datetime | None:
    return None if value is None else _instant(value, name)


def _principal(request: AnyRequest) -> Principal:
    """The caller of a route that needs a key (the guard refused anyone else)."""
    who = caller(request)
    assert who is not None, "the access guard lets no anonymous caller reach this route"
    return who


def _store(state: State) -> LedgerStore:
    store = state["store"]
    assert isinstance(store, LedgerStore)
    return store


class AgentController(Controller):
    path = "/v1/agents/{org:str}/{agent:str}"
    tags = ["agents"]

    @get(
        "/posture",
        summary="An agent's posture versus its commitments",
        description=(
            "As of now, or as of `at`. With `known_at`, only entries the ledger had"
            " received by then count: `?at=T&known_at=T` is what the ledger answered at T."
            " `evidence=third_party` uses only other orgs' gateways. With `max_age_s`, the"
            " scheduler's latest assessment is served (one row read) when it is at most that"
            " old and no evidence about the agent arrived since; `as_of` says when it was made."
        ),
    )
    async def posture(
        self,
        state: State,
        org: SlugParam,
        agent: SlugParam,
        at: Annotated[datetime | None, QueryParameter(description="RFC 3339, 1970 to 9000")] = None,
        known_at: Annotated[datetime | None, QueryParameter(description="RFC 3339")] = None,
        evidence: EvidenceParam = "all",
        max_age_s: Annotated[int | None, QueryParameter(ge=0, le=86_400)] = None,
    ) -> PostureView:
        now = _now(state)
        if max_age_s is not None:
            if at is not None or known_at is not None or evidence != "all":
                raise _bad_query(
                    "max_age_s", "applies to the current posture with all evidence only"
                )
            recent = await recent_assessment(
                _store(state), org, agent, now, timedelta(seconds=max_age_s)
            )
            if recent is not None:
                return posture_view(recent)
        report = await assess_agent(
            _store(state),
            org,
            agent,
            _instant(at, "at") if at is not None else now,
            known_at=_instant(known_at, "known_at") if known_at is not None else None,
            third_party_only=evidence == "third_party",
        )
        return posture_view(report)

    @get("/timeline", summary="Band changes of an agent over a period, with their evidence")
    async def timeline(
        self,
        state: State,
        org: SlugParam,
        agent: SlugParam,
        start: Annotated[datetime | None, QueryParameter(name="from")] = None,
        end: Annotated[datetime | None, QueryParameter(name="to")] = None,
        evidence: EvidenceParam = "all",
        limit: Annotated[int, Parameter(ge=2, le=TIMELINE_LIMIT)] = 100,
    ) -> TimelineView:
        end_at = _instant(end, "to") if end is not None else _now(state)
        start_at = _instant(start, "from") if start is not None else end_at - timedelta(days=30)
        if start_at >= end_at:
            raise _bad_query("from", "`from` must be before `to`")
        if end_at - start_at > MAX_TIMELINE:
            raise _bad_query(
                "from", f"a timeline spans at most {MAX_TIMELINE.days} days; ask for several"
            )
        # One change more than asked: a page must not end between two changes of
        # one instant, or `next_from` (exclusive) would skip the second.
        found = await timeline(
            _store(state), org, agent, start_at, end_at, evidence == "third_party", limit + 1
        )
        points, truncated = found.points[:limit], len(found.points) > limit
        if truncated:
            following = found.points[limit].at
            whole = [p for p in points if p.at != following]
            points = whole or points  # limit >= 2 and at most 2 changes per instant
        return TimelineView(
            org=org,
            agent=agent,
            model=MODEL,
            start=start_at,
            end=end_at,
            start_band=found.start.band,
            start_score=found.start.score,
            changes=[
                TimelinePointView(
                    p.at,
                    p.before,
                    p.after,
                    [evidence_view(i) for i in p.evidence[:POINT_EVIDENCE_LIMIT]],
                    len(p.evidence),
                )
                for p in points
            ],
            truncated=truncated,
            next_from=points[-1].at if truncated else None,
        )

    @get(
        "/commitments",
        summary="The commitments an agent has declared, with their versions",
        description="By commitment id; page with `after` (a commitment id).",
    )
    async def commitments(
        self,
        state: State,
        org: SlugParam,
        agent: SlugParam,
        after: Annotated[str | None, Parameter(max_length=128)] = None,
        limit: Annotated[int, Parameter(ge=1, le=COMMITMENTS_LIMIT)] = COMMITMENTS_LIMIT,
    ) -> CommitmentsPage:
        every = sorted(
            await commitments_of(_store(state), org, agent), key=lambda c: c.commitment_id
        )
        found = [c for c in every if after is None or c.commitment_id > after][:limit]
        more = len(found) == limit and found[-1].commitment_id != every[-1].commitment_id
        return CommitmentsPage(
            org=org,
            agent=agent,
            next_after=found[-1].commitment_id if more else None,
            commitments=[
                CommitmentView(
                    commitment_id=c.commitment_id,
                    version=c.latest.version,
                    status="revoked" if c.revoked_at is not None else "declared",
                    terms=c.latest.terms,
                    revoked_at=c.revoked_at,
                    declared=LedgerRef(c.org, c.versions[0].seq),
                    updated=LedgerRef(c.org, max(c.latest.seq, c.revoked_seq or 0)),
                    versions=[
                        VersionView(v.version, v.effective_from, LedgerRef(v.org, v.seq))
                        for v in c.versions[-VERSIONS_SHOWN:]
                    ],
                    versions_total=len(c.versions),
                )
                for c in found
            ],
        )


class PostureListController(Controller):
    path = "/v1/postures"
    tags = ["agents"]

    @get(
        "/",
        summary="Every agent's posture as of the scheduler's last assessment",
        description=(
            "Filter by `band` and `org`; page with `after` (`org/agent`). Keys other than"
            " operators' see their own org's agents only."
        ),
    )
    async def postures(
        self,
        request: AnyRequest,
        state: State,
        band: Annotated[Band | None, QueryParameter(description="only agents in this band")] = None,
        org: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        after: Annotated[
            str | None, Parameter(pattern="^[a-z0-9_-]{1,63}/[a-z0-9_-]{1,63}$")
        ] = None,
        limit: Limit = 100,
    ) -> PosturesPage:
        only = org if org is not None else visible_org(_principal(request))
        key = (after.split("/", 1)[0], after.split("/", 1)[1]) if after else ("", "")
        if only is not None:
            key = max(key, (only, ""))
        rows = await list_postures(_store(state), band, key, limit)
        full_page = len(rows) == limit
        if only is not None:
            kept = [r for r in rows if r.org == only]
            # A row of the next org means this org's agents ended within the page.
            full_page = full_page and len(kept) == len(rows)
            rows = kept
        return PosturesPage(
            items=[
                PostureSummaryView(
                    r.org, r.agent, r.as_of, r.band, r.score, r.confidence, r.next_change_at
                )
                for r in rows
            ],
            next_after=f"{rows[-1].org}/{rows[-1].agent}" if full_page and rows else None,
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
        after_seq: Seq = 0,
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

    @get(
        "/{org:str}/export",
        summary="A chain (or a range of it) as a signed trustledger-export/v1 file",
        description=(
            "Ends at the largest signed checkpoint in the asked range (the header's"
            " `to_seq`): a GET signs nothing. 404 when no checkpoint lies in the range yet."
        ),
        media_type=EXPORT_MEDIA_TYPE,
    )
    async def export(
        self,
        state: State,
        org: SlugParam,
        from_seq: Annotated[int, Parameter(ge=1, le=MAX_SAFE_INTEGER)] = 1,
        to_seq: Annotated[int | None, Parameter(ge=1, le=MAX_SAFE_INTEGER)] = None,
        since: Annotated[
            datetime | None, Parameter(description="first entry received at or after (RFC 3339)")
        ] = None,
        until: Annotated[
            datetime | None, Parameter(description="last entry received before (RFC 3339)")
        ] = None,
    ) -> Stream:
        signer = _signer(state)
        if signer is None:
            raise ServiceUnavailableException("this process holds no ledger key: ask the api role")
        lines = export_chain(
            _store(state),
            signer,
            org,
            from_seq,
            to_seq,
            _optional_instant(since, "since"),
            _optional_instant(until, "until"),
            sign_missing_checkpoint=False,
        )
        # Everything that can refuse does so before the first line: pull it here,
        # so errors become problem responses instead of a cut-off stream.
        try:
            first = await anext(lines)
        except ConfigError as e:
            raise ValidationException(detail=str(e)) from e

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for line in lines:
                yield line

        return Stream(
            body(),
            media_type=EXPORT_MEDIA_TYPE,
            headers={"content-disposition": f'attachment; filename="{org}.export.jsonl"'},
        )


class QuarantineController(Controller):
    path = "/v1/quarantine"
    tags = ["ledger"]

    @get(
        "/",
        summary="Refused messages with their raw bytes and reason",
        description=(
            "A message is shown to keys of the org its subject names (`claimed_org`) and"
            " to operators; `org` filters (operators), or must be the caller's own org."
        ),
    )
    async def list_quarantine(
        self,
        request: AnyRequest,
        state: State,
        org: Annotated[str | None, Parameter(pattern=SLUG_PATTERN)] = None,
        after_id: Seq = 0,
        limit: Limit = 100,
    ) -> QuarantinePage:
        only = org if org is not None else visible_org(_principal(request))
        rows = await _store(state).quarantined(only, after_id, limit)
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


ChainParam = Annotated[
    str, Parameter(pattern=f"^(?:{LEDGER_CHAIN}|[a-z0-9][a-z0-9_-]{{0,62}})(?!\n)$")
]
"""An org's chain, or the ledger's own key chain `_ledger`."""


class LedgerController(Controller):
    """The ledger's own keys and the signed checkpoints of every chain."""

    path = "/v1"
    tags = ["ledger"]

    @get("/ledger/keys", summary="Every ledger key, from the verified `_ledger` chain")
    async def ledger_keys(self, state: State) -> LedgerKeysView:
        store = _store(state)
        keys = await verify_ledger_keys(store, verify_sequentially)
        if isinstance(keys, Finding):
            raise IntegrityError(f"the ledger's key chain does not verify: {keys}")
        # The chain verified, so each key's first registration entry is well-formed.
        registrations: dict[str, tuple[int, bytes]] = {}
        async for entry in store.iter_entries(LEDGER_CHAIN):
            event = load_json_strict(entry.event_bytes)
            if isinstance(event, dict) and event.get("kind") == "publisher_key.registered":
                key_id, public_b64 = str(event.get("key_id")), str(event.get("public_key"))
                registrations.setdefault(key_id, (entry.seq, from_b64url(public_b64)))
        signer = _signer(state)
        signing = signer.key.key_id if signer is not None else None
        views = []
        for key_id in sorted(keys.registered, key=lambda k: registrations[k][0]):
            name = keys.labels.get(key_id, "")
            registered_seq, public_key = registrations[key_id]
            views.append(
                LedgerKeyView(
                    key_id=key_id,
                    name=name,
                    public_key=b64url(public_key),
                    verifier_key=verifier_key(name, public_key),
                    registered_seq=registered_seq,
                    active=key_id in keys.active,
                    signing=key_id == signing,
                )
            )
        return LedgerKeysView(chain=LEDGER_CHAIN, keys=views, signing_key_id=signing)

    @get(
        "/chains/{org:str}/checkpoint",
        summary="The latest signed checkpoint of a chain, as its C2SP signed note",
        media_type=MediaType.TEXT,
    )
    async def latest_checkpoint(self, state: State, org: ChainParam) -> Response[str]:
        store = _store(state)
        await _require_chain(store, org)
        stored = await store.latest_checkpoint(org)
        if stored is None:
            raise NotFoundError(f"no checkpoint of chain {org!r} yet")
        return Response(stored.note, media_type=MediaType.TEXT)

    @get(
        "/chains/{org:str}/checkpoints/{size:int}",
        summary="The signed checkpoint of a chain at one size, as its C2SP signed note",
        media_type=MediaType.TEXT,
    )
    async def checkpoint_at(self, state: State, org: ChainParam, size: Seq) -> Response[str]:
        store = _store(state)
        await _require_chain(store, org)
        stored = await store.checkpoint_at(org, size)
        if stored is None:
            raise NotFoundError(f"no checkpoint of chain {org!r} at size {size}")
        return Response(stored.note, media_type=MediaType.TEXT)

    @get("/chains/{org:str}/checkpoints", summary="Signed checkpoints of a chain, by size")
    async def checkpoints(
        self,
        state: State,
        org: ChainParam,
        after_size: Annotated[int | None, Parameter(ge=0, le=MAX_SAFE_INTEGER)] = None,
        limit: Limit = 100,
    ) -> list[CheckpointView]:
        store = _store(state)
        await _require_chain(store, org)
        found = await store.checkpoints(
            org, 0 if after_size is None else after_size + 1, limit=limit
        )
        return [_checkpoint_view(c) for c in found]

    # Operators only (the access matrix): it makes the ledger sign and store.
    @post(
        "/chains/{org:str}/checkpoints",
        summary="Sign the chain's current head now (or return the checkpoint already there)",
        status_code=201,
    )
    async def sign_now(self, state: State, org: ChainParam) -> Response[CheckpointView]:
        signer = _signer(state)
        if signer is None:
            raise ServiceUnavailableException("this process holds no ledger key: ask the api role")
        store = _store(state)
        head = await _require_chain(store, org)
        existed = await store.checkpoint_at(org, head.seq) is not None
        made = await make_checkpoint(store, signer, org)
        created = not (existed and made.size == head.seq)
        return Response(
            _checkpoint_view(made),
            status_code=201 if created else 200,
            headers={"Location": f"/v1/chains/{org}/checkpoints/{made.size}"},
        )


def _signer(state: State) -> LedgerSigner | None:
    signer = state.get("signer")
    assert signer is None or isinstance(signer, LedgerSigner)
    return signer


async def _require_chain(store: LedgerStore, chain: str) -> ChainHead:
    head = await store.chain_head(chain)
    if head is None:
        raise NotFoundError(f"no chain for org {chain!r}")
    return head


def _checkpoint_view(c: StoredCheckpoint) -> CheckpointView:
    return CheckpointView(
        chain=c.chain,
        size=c.size,
        head_hash=c.head_hash.hex(),
        signed_at=c.signed_at,
        key_name=c.key_name,
        key_id=c.key_id,
        note=c.note,
    )
