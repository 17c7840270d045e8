"""Numbered SQL migrations against a real PostgreSQL, and the pure `plan()` that guards them."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg
import pytest

from service.adapters.migrations import (
    Migration,
    load_migrations,
    migrate,
    migrations_dir,
    plan,
)
from service.errors import MigrationError


async def _applied(dsn: str) -> list[tuple[int, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        )
    finally:
        await conn.close()
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _files() -> list[Migration]:
    return load_migrations(migrations_dir())


async def test_migrate_applies_every_file_then_nothing_when_run_twice(blank_database: str) -> None:
    """A first run applies and records every file in order; a second run applies nothing."""
    files = _files()
    assert [m.version for m in files] == list(range(1, len(files) + 1))

    first = await migrate(blank_database)
    assert [m.version for m in first] == [m.version for m in files]
    second = await migrate(blank_database)
    assert second == []
    assert await _applied(blank_database) == [(m.version, m.name, m.checksum) for m in files]


async def test_migrate_applies_only_the_new_file_when_one_is_added(
    database: str, tmp_path: Path
) -> None:
    """A file added after the others is the only one applied on the next run."""
    directory = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), directory)
    version = len(_files()) + 1
    (directory / f"{version:04d}_added_later.sql").write_text("CREATE TABLE added_later (x int);")

    applied = await migrate(database, directory)
    assert [(m.version, m.name) for m in applied] == [(version, "added_later")]
    assert (await _applied(database))[-1][:2] == (version, "added_later")


async def test_migrate_rolls_back_and_names_the_file_when_its_sql_fails(
    database: str, tmp_path: Path
) -> None:
    """A failing migration is named in the error, leaves nothing behind and is not recorded."""
    directory = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), directory)
    version = len(_files()) + 1
    (directory / f"{version:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (x int); SELECT no_such_function();"
    )
    before = await _applied(database)

    with pytest.raises(MigrationError, match=rf"{version:04d}_broken"):
        await migrate(database, directory)
    assert await _applied(database) == before
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        pytest.param(
            "UPDATE schema_migrations SET checksum = 'x' WHERE version = 1",
            r"migration 0001_\w+ differs from the one applied",
            id="edited-checksum",
        ),
        pytest.param(
            "UPDATE schema_migrations SET name = 'renamed' WHERE version = 2",
            r"migration 0002_\w+ differs from the one applied \(0002_renamed",
            id="renamed",
        ),
        pytest.param(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (99, 'future', 'abc')",
            r"migration 0099_future which is not among the files",
            id="unknown-extra-version",
        ),
        pytest.param(
            "DELETE FROM schema_migrations WHERE version = 1",
            r"0001_\w+",
            id="gap-in-applied",
        ),
    ],
)
async def test_migrate_refuses_database_when_recorded_migrations_differ_from_files(
    database: str, tamper: str, message: str
) -> None:
    """A database whose recorded migrations are not exactly a prefix of the files is refused."""
    await _execute(database, tamper)
    before = await _applied(database)
    with pytest.raises(MigrationError, match=message):
        await migrate(database)
    assert await _applied(database) == before


# ---- plan() --------------------------------------------------------------------------------------

ONE = Migration(1, "ledger", "CREATE TABLE a (x int);")
TWO = Migration(2, "projections", "CREATE TABLE b (x int);")
THREE = Migration(3, "more", "CREATE TABLE c (x int);")
FILES = [ONE, TWO, THREE]


def _rec(
    m: Migration, name: str | None = None, checksum: str | None = None
) -> tuple[int, str, str]:
    return (m.version, name or m.name, checksum or m.checksum)


@pytest.mark.parametrize(
    ("applied", "pending"),
    [
        pytest.param([], [ONE, TWO, THREE], id="fresh-database"),
        pytest.param([_rec(ONE)], [TWO, THREE], id="first-applied"),
        pytest.param([_rec(ONE), _rec(TWO)], [THREE], id="prefix-applied"),
        pytest.param([_rec(ONE), _rec(TWO), _rec(THREE)], [], id="up-to-date"),
    ],
)
def test_plan_returns_the_missing_suffix_when_applied_is_a_prefix(
    applied: list[tuple[int, str, str]], pending: list[Migration]
) -> None:
    """With a matching prefix applied, plan() returns the remaining files in order."""
    assert plan(FILES, applied) == pending


@pytest.mark.parametrize(
    ("applied", "message"),
    [
        pytest.param([_rec(ONE, checksum="0" * 64)], r"0001_ledger differs", id="edited"),
        pytest.param(
            [_rec(ONE), _rec(TWO, name="renamed")],
            r"0002_projections differs .*0002_renamed",
            id="renamed",
        ),
        pytest.param(
            [_rec(ONE), (4, "future", "f" * 64)],
            r"0004_future which is not among the files",
            id="newer-version",
        ),
        pytest.param([_rec(TWO)], r"0001_ledger", id="gap-before-applied"),
        pytest.param([_rec(ONE), _rec(THREE)], r"0002_projections", id="gap-between-applied"),
    ],
)
def test_plan_refuses_when_applied_migrations_diverge_from_files(
    applied: list[tuple[int, str, str]], message: str
) -> None:
    """An edited, renamed, unknown or skipped migration raises MigrationError naming it."""
    with pytest.raises(MigrationError, match=message):
        plan(FILES, applied)


def test_checksum_is_sha256_of_the_sql_when_computed() -> None:
    """A migration's checksum is the hex SHA-256 of its SQL text."""
    import hashlib

    assert ONE.checksum == hashlib.sha256(ONE.sql.encode()).hexdigest()
    assert ONE.checksum != TWO.checksum


async def test_cached_postures_are_queued_for_reassessment_when_the_model_changes(
    blank_database: str, tmp_path: Path
) -> None:
    """Migration 0007 (posture model v2) queues every agent whose assessment is cached, so
    no v1 assessment is served from the cache after the upgrade."""
    before = tmp_path / "migrations"
    before.mkdir()
    for path in sorted(migrations_dir().glob("000[1-6]_*.sql")):
        shutil.copy(path, before)
    await migrate(blank_database, before)
    conn = await asyncpg.connect(blank_database)
    try:
        await conn.execute(
            "INSERT INTO agent_posture (org, agent, as_of, band, score, confidence, report_json)"
            " VALUES ('acme', 'bot', now(), 'trusted', 950, 50, '{}'),"
            " ('acme', 'other', now(), 'watch', 700, 50, '{}')"
        )
        await conn.execute("INSERT INTO posture_due (org, agent) VALUES ('acme', 'bot')")
        await migrate(blank_database)
        queued = await conn.fetch("SELECT org, agent FROM posture_due ORDER BY agent")
    finally:
        await conn.close()
    assert [(r["org"], r["agent"]) for r in queued] == [("acme", "bot"), ("acme", "other")]
