"""Orgs and API keys in PostgreSQL (migrations/0006_orgs_and_api_keys.sql).

Shares the ledger store's pool; driver errors become `StorageError`s through
the same `translate_errors` as every other query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from service.adapters.postgres import LedgerStore, translate_errors
from service.domain.access import ApiKeyRecord, Org

_KEY_COLUMNS = (
    "key_id, org, role, label, secret_hash, created_at, expires_at, revoked_at, last_used_at"
)


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(**dict(row))


class AccessStore:
    """The queries behind `service.app.access`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    def of(cls, store: LedgerStore) -> AccessStore:
        return cls(store.pool)

    async def add_org(self, org: Org) -> bool:
        """Store a new org; False when one with that id exists already."""
        async with translate_errors("creating an org"):
            created = await self._pool.fetchval(
                "INSERT INTO orgs (org, display_name, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (org) DO NOTHING RETURNING org",
                org.org,
                org.display_name,
                org.created_at,
            )
        return created is not None

    async def org(self, org: str) -> Org | None:
        async with translate_errors("reading an org"):
            row = await self._pool.fetchrow(
                "SELECT org, display_name, created_at FROM orgs WHERE org = $1", org
            )
        return None if row is None else Org(**dict(row))

    async def orgs(self) -> list[Org]:
        async with translate_errors("listing orgs"):
            rows = await self._pool.fetch(
                "SELECT org, display_name, created_at FROM orgs ORDER BY org"
            )
        return [Org(**dict(r)) for r in rows]

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        async with translate_errors("storing an API key"):
            await self._pool.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                key.key_id,
                key.org,
                key.role,
                key.label,
                key.secret_hash,
                key.created_at,
                key.expires_at,
                key.revoked_at,
                key.last_used_at,
            )

    async def api_key(self, key_id: str) -> ApiKeyRecord | None:
        async with translate_errors("reading an API key"):
            row = await self._pool.fetchrow(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = $1", key_id
            )
        return None if row is None else _key(row)

    async def api_keys(self, org: str | None = None) -> list[ApiKeyRecord]:
        """Every key (of `org`, when given), oldest first."""
        async with translate_errors("listing API keys"):
            rows = await self._pool.fetch(
                f"SELECT {_KEY_COLUMNS} FROM api_keys"
                " WHERE $1::text IS NULL OR org = $1 ORDER BY created_at, key_id",
                org,
            )
        return [_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKeyRecord | None:
        """Revoke a key (a key revoked before keeps its first revocation time)."""
        async with translate_errors("revoking an API key"):
            row = await self._pool.fetchrow(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE key_id = $1"
                f" RETURNING {_KEY_COLUMNS}",
                key_id,
                at,
            )
        return None if row is None else _key(row)

    async def note_use(self, key_id: str, at: datetime) -> None:
        """Record that the key was used at `at` (never moves back)."""
        async with translate_errors("noting an API key's use"):
            await self._pool.execute(
                "UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1"
                " AND (last_used_at IS NULL OR last_used_at < $2)",
                key_id,
                at,
            )

    async def has_live_operator_key(self, now: datetime) -> bool:
        async with translate_errors("looking for operator keys"):
            found = await self._pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM api_keys WHERE role = 'operator'"
                " AND revoked_at IS NULL AND expires_at > $1)",
                now,
            )
        return bool(found)
