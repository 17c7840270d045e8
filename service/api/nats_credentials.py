"""`/v1/orgs/{org}/nats-credentials`: an org's publisher_admin manages its NATS users.

Issuing goes through the same use case as `trustledger orgs nats-creds`
(`service.app.nats_credentials`), so the API and the CLI keep the same bounds.
Who may call these routes is the access matrix's business (publisher_admin of
`{org}`, or an operator), not this module's.

The registry is a folder of files (`service.adapters.nats_auth.NatsUsers`):
its reads and writes run in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.params import JSONBody, Parameter

from service.adapters.access_store import AccessStore
from service.adapters.nats_auth import NatsUsers
from service.adapters.postgres import LedgerStore
from service.api.bodies import (
    IssuedNatsCredentials,
    NatsCredentialsRequest,
    NatsUsersPage,
    NatsUserView,
    RevokedNatsCredentials,
)
from service.app.nats_credentials import (
    active_org_users,
    issue_org_credentials,
    label_problem,
    revoke_org_user,
)
from service.domain.bus_access import PUBLIC_NKEY_PATTERN, NatsUser, org_inbox_prefix
from service.domain.events import SLUG_PATTERN
from service.errors import ConflictError

OrgParam = Annotated[str, Parameter(pattern=SLUG_PATTERN)]
PublicKeyParam = Annotated[
    str, Parameter(pattern=PUBLIC_NKEY_PATTERN, description="the user's public nkey (U...)")
]
_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, slots=True)
class NatsCredentialsSetup:
    """Where this deployment lists its NATS users, and its subject prefix."""

    users: NatsUsers
    subject_prefix: str


def _users(state: State) -> NatsCredentialsSetup:
    """The NATS users folder, or a 409 naming what to configure."""
    setup = state.get("nats_credentials")
    assert setup is None or isinstance(setup, NatsCredentialsSetup)
    if setup is None or not setup.users.exists():
        where = "" if setup is None else f" (none in {setup.users.directory.name}/)"
        raise ConflictError(
            "this service does not manage NATS users" + where + ": with an external NATS, "
            "set TRUSTLEDGER_NATS_USERS_DIR to the folder `trustledger nats-init` made and "
            "that the server includes (docs/operations.md §8)"
        )
    return setup


def _view(user: NatsUser) -> NatsUserView:
    assert user.org is not None, "the service's own user is never shown here"
    return NatsUserView(
        public_key=user.public_key,
        org=user.org,
        label=user.label,
        created_at=user.created_at,
        publish=list(user.publish),
        subscribe=list(user.subscribe),
        revoked_at=user.revoked_at,
    )


class NatsCredentialsController(Controller):
    path = "/v1/orgs/{org:str}/nats-credentials"
    tags = ["nats credentials"]  # noqa: RUF012 - Litestar reads it as a plain class attribute

    @post(
        "/",
        summary="Issue a NATS user for the org; its seed is in this answer only",
        status_code=201,
    )
    async def issue(
        self, state: State, org: OrgParam, data: JSONBody[NatsCredentialsRequest | None] = None
    ) -> Response[IssuedNatsCredentials]:
        label = "" if data is None else data.label
        problem = label_problem(label)
        if problem is not None:
            raise ValidationException(
                f"Validation failed: {problem}",
                extra=[{"key": "label", "message": problem, "source": "body"}],
            )
        setup = _users(state)
        store = state["store"]
        assert isinstance(store, LedgerStore)
        issued = await issue_org_credentials(
            AccessStore.of(store),
            setup.users,
            org,
            setup.subject_prefix,
            label,
            datetime.now(UTC),
        )
        applied = await asyncio.to_thread(setup.users.reload_server)
        return Response(
            IssuedNatsCredentials(
                user=_view(issued.user),
                seed=issued.seed,
                inbox_prefix=org_inbox_prefix(setup.subject_prefix, org),
                applied=applied,
            ),
            status_code=201,
            headers={**_NO_STORE, "Location": f"/v1/orgs/{org}/nats-credentials"},
        )

    @get("/", summary="The org's active NATS users (public keys, never seeds)")
    async def list_users(self, state: State, org: OrgParam) -> NatsUsersPage:
        setup = _users(state)
        found = await asyncio.to_thread(active_org_users, setup.users, org)
        return NatsUsersPage([_view(u) for u in found])

    @delete(
        "/{public_key:str}",
        summary="Revoke one of the org's NATS users (again: no change)",
        status_code=200,
    )
    async def revoke(
        self, state: State, org: OrgParam, public_key: PublicKeyParam
    ) -> RevokedNatsCredentials:
        setup = _users(state)
        revoked = await asyncio.to_thread(
            revoke_org_user, setup.users, org, public_key, datetime.now(UTC)
        )
        applied = await asyncio.to_thread(setup.users.reload_server)
        return RevokedNatsCredentials(_view(revoked), applied)
