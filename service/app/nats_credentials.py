"""An org's NATS credentials: issue, list, revoke (docs/operations.md §8).

The registry of NATS users is a folder the NATS server reads
(`service.adapters.nats_auth.NatsUsers`); the org must be a known org
(`trustledger orgs create`), as for its API keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from service.app.access import MAX_LABEL_CHARS
from service.domain.access import Org
from service.domain.bus_access import IssuedUser, NatsUser
from service.errors import ConfigError, NotFoundError


class Orgs(Protocol):
    async def org(self, org: str) -> Org | None: ...


class NatsUserRegistry(Protocol):
    def issue(self, org: str, subject_prefix: str, label: str, now: datetime) -> IssuedUser: ...
    def revoke(self, public_key: str, now: datetime) -> NatsUser: ...
    def reload_server(self) -> bool: ...


async def issue_org_credentials(
    orgs: Orgs,
    users: NatsUserRegistry,
    org: str,
    subject_prefix: str,
    label: str,
    now: datetime,
) -> IssuedUser:
    """A new NATS user for a known org, allowed to publish on its own subjects only."""
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise ConfigError(f"label: at most {MAX_LABEL_CHARS} printable characters")
    if await orgs.org(org) is None:
        raise NotFoundError(f"no org {org!r}: create it first (trustledger orgs create {org})")
    return users.issue(org, subject_prefix, label, now)
