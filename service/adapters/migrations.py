"""Numbered SQL migrations: applied in order, each in its own transaction, recorded.

`migrations/NNNN_name.sql` files are the truth. A database is accepted only
when the migrations it has applied are exactly a prefix of the files, with the
same checksums; anything else (an edited file, a file removed, a database
migrated by a newer version) is refused with the difference named.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from service.errors import MigrationError, StorageError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# Serialises concurrent `migrate` runs (several processes starting at once).
_LOCK_KEY = 0x7472757374  # "trust"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """`service/_bundled/migrations` in a wheel, the repository's `migrations/` otherwise."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_bundled" / "migrations", here.parent / "migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError(f"no migrations directory found near {here}")


def load_migrations(directory: Path) -> list[Migration]:
    """Read and order the migration files; refuse gaps and stray names."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(
                f"migration {expected:04d} is missing (found {migration.version:04d})"
            )
    return found


def plan(files: list[Migration], applied: list[tuple[int, str, str]]) -> list[Migration]:
    """The migrations still to apply, or MigrationError if the database has diverged."""
    by_version = {m.version: m for m in files}
    for version, name, checksum in applied:
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has migration {version:04d}_{name} which is not among the files: "
                "it was migrated by a newer trustledger"
            )
        if migration.checksum != checksum or migration.name != name:
            raise MigrationError(
                f"migration {version:04d}_{migration.name} differs from the one applied "
                f"({version:04d}_{name}, sha256 {checksum[:12]}…): migrations must never be edited"
            )
    done = {version for version, _, _ in applied}
    latest = max(done, default=0)
    for migration in files:
        if migration.version < latest and migration.version not in done:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} was never applied but "
                f"{latest:04d} was: applied migrations must be a prefix of the files"
            )
    return [m for m in files if m.version not in done]


async def migrate(dsn: str, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations; returns those applied (empty when up to date)."""
    files = load_migrations(directory or migrations_dir())
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise StorageError(f"cannot connect to PostgreSQL: {e}") from e
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
        pending = plan(files, [(r["version"], r["name"], r["checksum"]) for r in rows])
        for migration in pending:
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as e:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {e}"
                ) from e
            log.info("applied migration %04d_%s", migration.version, migration.name)
        return pending
    except asyncpg.PostgresError as e:
        raise MigrationError(f"migrating: {e}") from e
    finally:
        await conn.close()
