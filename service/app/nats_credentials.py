"""An org's NATS credentials: issue, list, revoke (docs/operations.md §8, docs/api.md).

The registry of NATS users is a folder the NATS server reads
(`service.adapters.nats_auth.NatsUsers`); the org must be a known org
(`trustledger orgs create`), as for its API keys. The CLI (`trustledger orgs
nats-creds`) and the HTTP API (`/v1/orgs/{org}/nats-credentials`) both issue
through `issue_org_credentials`, so both keep the same bounds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from service.app.access import MAX_LABEL_CHARS
from service.domain.access import Org
from service.domain.bus_access import IssuedUser, NatsUser
from service.errors import ConfigError, NotFoundError

MAX_ACTIVE_USERS_PER_ORG = 20
"""Active NATS users one org may hold at once (a user per publishing process or
gateway, plus overlap while rotating); issuing beyond is a conflict."""


class Orgs(Protocol):
    async def org(self, org: str) -> Org | None: ...


class NatsUserRegistry(Protocol):
    def issue(
        self,
        org: str,
        subject_prefix: str,
        label: str,
        now: datetime,
        max_active: int | None = None,
    ) -> IssuedUser: ...
    def users(self) -> list[NatsUser]: ...
    def revoke(self, public_key: str, now: datetime) -> NatsUser: ...
    def reload_server(self) -> bool: ...


def label_problem(label: str) -> str | None:
    """Why `label` is refused, or None: at most MAX_LABEL_CHARS printable characters."""
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        return f"at most {MAX_LABEL_CHARS} printable characters"
    return None


async def issue_org_credentials(
    orgs: Orgs,
    users: NatsUserRegistry,
    org: str,
    subject_prefix: str,
    label: str,
    now: datetime,
) -> IssuedUser:
    """A new NATS user for a known org, allowed to publish on its own subjects only.

    ConflictError when the org already holds MAX_ACTIVE_USERS_PER_ORG active users."""
    problem = label_problem(label)
    if problem is not None:
        raise ConfigError(f"label: {problem}")
    if await orgs.org(org) is None:
        raise NotFoundError(f"no org {org!r}: create it first (trustledger orgs create {org})")
    return users.issue(org, subject_prefix, label, now, max_active=MAX_ACTIVE_USERS_PER_ORG)


def active_org_users(users: NatsUserRegistry, org: str) -> list[NatsUser]:
    """The org's active NATS users, oldest first (at most MAX_ACTIVE_USERS_PER_ORG)."""
    return [u for u in users.users() if u.org == org and u.active]


def revoke_org_user(users: NatsUserRegistry, org: str, public_key: str, now: datetime) -> NatsUser:
    """Revoke one of `org`'s users (again: a no-op). A key of another org, or of the
    service, is NotFoundError with the same words as an unknown key: the answer never
    tells whether a key exists outside the caller's org."""
    if not any(u.public_key == public_key and u.org == org for u in users.users()):
        raise NotFoundError(f"org {org} has no NATS user {public_key}")
    return users.revoke(public_key, now)
