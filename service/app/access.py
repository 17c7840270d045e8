"""Orgs and API keys: create, list, revoke, authenticate (docs/api.md).

A key is shown once, when it is made, and only its hash is stored; the rules
(key format, roles, who may call which route) are in `service.domain.access`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from service.domain.access import (
    ROLES,
    ApiKeyRecord,
    Org,
    Principal,
    Role,
    key_matches,
    new_api_key,
    parse_api_key,
)
from service.domain.audit import LEDGER_CHAIN
from service.domain.events import SLUG_PATTERN
from service.errors import ConfigError, NotFoundError

log = logging.getLogger(__name__)

DEFAULT_KEY_DAYS = 365
MAX_KEY_DAYS = 3650
MAX_LABEL_CHARS = 200
LAST_USE_INTERVAL_S = 60.0
"""A key's `last_used_at` is written at most this often per key and process."""
OPERATOR_KEY_FILE = "operator.key"

_SLUG = re.compile(SLUG_PATTERN)


class AccessStore(Protocol):
    async def add_org(self, org: Org) -> bool: ...
    async def org(self, org: str) -> Org | None: ...
    async def orgs(self) -> list[Org]: ...
    async def add_api_key(self, key: ApiKeyRecord) -> None: ...
    async def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    async def api_keys(self, org: str | None = None) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None: ...
    async def note_use(self, key_id: str, at: datetime) -> None: ...
    async def has_live_operator_key(self, now: datetime) -> bool: ...


def _label(text: str, what: str) -> str:
    if len(text) > MAX_LABEL_CHARS or not text.isprintable():
        raise ConfigError(f"{what}: at most {MAX_LABEL_CHARS} printable characters")
    return text


async def create_org(store: AccessStore, org: str, display_name: str, now: datetime) -> Org:
    if org == LEDGER_CHAIN or not _SLUG.match(org):
        raise ConfigError(
            f"{org!r} is not an org id: 1-63 of a-z 0-9 _ -, starting with a letter or digit"
        )
    record = Org(org, _label(display_name, "display name"), now)
    if not await store.add_org(record):
        raise ConfigError(f"org {org!r} exists already")
    return record


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: ApiKeyRecord
    token: str
    """The key to hand over: shown once, stored nowhere."""


def _issue(role: Role, org: str | None, label: str, days: int, now: datetime) -> IssuedKey:
    fresh = new_api_key()
    record = ApiKeyRecord(
        key_id=fresh.key_id,
        org=org,
        role=role,
        label=label,
        secret_hash=fresh.secret_hash,
        created_at=now,
        expires_at=now + timedelta(days=days),
        revoked_at=None,
        last_used_at=None,
    )
    return IssuedKey(record, fresh.token)


async def create_api_key(
    store: AccessStore,
    role: str,
    org: str | None,
    now: datetime,
    *,
    label: str = "",
    days: int = DEFAULT_KEY_DAYS,
) -> IssuedKey:
    """A new key for `org` (None for an operator key) with `role`, valid `days` days."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    checked: Role = role
    if checked == "operator" and org is not None:
        raise ConfigError("operator keys belong to no org: leave out the org")
    if checked != "operator" and org is None:
        raise ConfigError(f"a {role} key acts for an org: name it")
    if org is not None and await store.org(org) is None:
        raise NotFoundError(f"no org {org!r}: create it first (trustledger orgs create)")
    if not 1 <= days <= MAX_KEY_DAYS:
        raise ConfigError(f"a key is valid 1 to {MAX_KEY_DAYS} days; got {days}")
    issued = _issue(checked, org, _label(label, "label"), days, now)
    await store.add_api_key(issued.record)
    log.info("API key %s created: role %s, org %s", issued.record.key_id, role, org or "-")
    return issued


async def revoke_api_key(store: AccessStore, key_id: str, now: datetime) -> ApiKeyRecord:
    revoked = await store.revoke_api_key(key_id, now)
    if revoked is None:
        raise NotFoundError(f"no API key {key_id!r}")
    log.info("API key %s revoked", key_id)
    return revoked


@dataclass(frozen=True, slots=True)
class AuthFailure:
    reason: str
    """Safe to show the caller: never says whether a key id exists."""


class Authenticator:
    """Bearer token -> `Principal`, and a cheap record of each key's last use."""

    def __init__(
        self, store: AccessStore, last_use_interval_s: float = LAST_USE_INTERVAL_S
    ) -> None:
        self._store = store
        self._interval_s = last_use_interval_s
        self._noted: dict[str, float] = {}  # key id -> monotonic instant of the last write

    async def authenticate(self, token: str, now: datetime) -> Principal | AuthFailure:
        key_id = parse_api_key(token)
        record = await self._store.api_key(key_id) if key_id is not None else None
        if record is None or not key_matches(token, record.secret_hash):
            return AuthFailure("not a valid API key")
        # Only the key's holder learns why it no longer works.
        state = record.state(now)
        if state != "active":
            return AuthFailure(f"API key {record.key_id} is {state}")
        await self._note_use(record.key_id, now)
        return Principal(record.key_id, record.org, record.role)

    async def _note_use(self, key_id: str, now: datetime) -> None:
        tick = time.monotonic()
        last = self._noted.get(key_id)
        if last is not None and tick - last < self._interval_s:
            return
        self._noted[key_id] = tick
        await self._store.note_use(key_id, now)


def write_secret_file(path: Path, text: str) -> None:
    """Create `path` readable and writable by its owner only (0600); never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


async def bootstrap_operator_key(store: AccessStore, data_dir: Path) -> str | None:
    """On a new data folder: an operator key, written to `<data_dir>/operator.key`
    (mode 0600) and returned. None when that file exists, or when the database
    already holds a live operator key (whoever made it holds it)."""
    path = data_dir / OPERATOR_KEY_FILE
    now = datetime.now(UTC)
    if path.exists() or await store.has_live_operator_key(now):
        return None
    issued = _issue("operator", None, "bootstrap (trustledger up)", DEFAULT_KEY_DAYS, now)
    # The file first: a key is never live in the database without its only copy.
    write_secret_file(path, issued.token + "\n")
    try:
        await store.add_api_key(issued.record)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    log.info("operator API key %s written to %s", issued.record.key_id, path)
    return issued.token
