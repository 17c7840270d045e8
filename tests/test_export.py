"""Exports and the offline verifier against a real ledger: round trips, isolation, tampering."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from conftest import (
    OrgKeyFactory,
    PublisherFactory,
    RunningService,
    chain_entries,
    key_registered,
    key_revoked,
    performed,
    registered,
    wait_for_chain,
)

from service.adapters.postgres import ENTRY_COLUMNS, EntryRow, LedgerStore
from service.app.checkpoints import checkpoint_at_size, make_checkpoint
from service.app.export import export_chain
from service.app.ledger_key import LedgerSigner
from service.app.offline_verify import Report, verify_export
from service.domain.chain import EntryFields, entry_hash, to_micros
from service.domain.events import encode_event, event_kind
from service.domain.export_format import (
    MEDIA_TYPE,
    CheckpointLine,
    EndLine,
    EntryLine,
    ExportLine,
    Header,
    PublisherKeyLine,
    decode_line,
    encode_line,
)
from service.domain.signing import SigningKey, b64url, from_b64url
from service.errors import ConfigError, IntegrityError, NotFoundError
from service.roles import load_ledger_signer

REPO = Path(__file__).resolve().parent.parent

# ---- a ledger with traffic ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ledger:
    """Two orgs' chains built through NATS, and what a test needs to look at them."""

    service: RunningService
    signer: LedgerSigner
    acme: SigningKey
    acme_second: SigningKey
    beta: SigningKey
    phase_two_from: int
    """acme's first seq published after its first phase was chained."""

    @property
    def store(self) -> LedgerStore:
        return self.service.store


ACME_SIZE = 15
BETA_SIZE = 6
ROTATED_AT = 10
"""acme's seq that revokes its first key; from here on only the second key signs."""


async def _ledger(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> Ledger:
    """acme: a key rotation inside 15 entries in two ingest phases; beta: 6 entries."""
    acme, beta = await org_key("acme"), await org_key("beta")
    second = SigningKey.generate("acme")
    by_first, by_second, by_beta = (
        await publisher(acme),
        await publisher(second),
        await publisher(beta),
    )
    phase_one = [
        (by_first, registered("acme", "billing-bot", t=0)),
        (by_first, key_registered("acme", second, t=1)),
        *[(by_second, performed("acme", "billing-bot", "invoices.read", f"inv/{i}", t=2 + i)) for i in range(4)],
    ]  # fmt: skip
    for pub, event in phase_one:
        await pub.publish(event)
    await wait_for_chain(service.store, "acme", 1 + len(phase_one))
    phase_two = [
        *[(by_second, performed("acme", "billing-bot", "invoices.read", f"inv/{i}", t=10 + i)) for i in range(2)],
        (by_second, key_revoked("acme", acme, t=20)),
        *[(by_second, performed("acme", "billing-bot", "payments.refund", f"ch/{i}", t=30 + i)) for i in range(5)],
    ]  # fmt: skip
    for pub, event in phase_two:
        await pub.publish(event)
    beta_events = [registered("beta", "writer", t=0)]
    beta_events += [
        performed("beta", "writer", "docs.write", f"doc/{i}", t=1 + i) for i in range(4)
    ]
    for event in beta_events:
        await by_beta.publish(event)
    await wait_for_chain(service.store, "acme", ACME_SIZE)
    await wait_for_chain(service.store, "beta", BETA_SIZE)
    signer = await load_ledger_signer(service.store, service.settings)
    return Ledger(service, signer, acme, second, beta, 2 + len(phase_one))


async def _export(ledger: Ledger, org: str = "acme", **kwargs: Any) -> bytes:
    return b"".join(
        [line async for line in export_chain(ledger.store, ledger.signer, org, **kwargs)]
    )


def _verify(data: bytes, trusted: tuple[str, ...] = ()) -> Report:
    return verify_export(io.BytesIO(data), trusted_checkpoints=trusted)


def _parsed(data: bytes) -> list[ExportLine]:
    return [decode_line(line) for line in data.splitlines(keepends=True)]


def _finding(report: Report) -> tuple[str, int | None, str] | None:
    f = report.finding
    return None if f is None else (f.chain, f.seq, f.problem)


# ---- round trips ----------------------------------------------------------------------------

RangeCase = Callable[[list[EntryRow], int], tuple[dict[str, Any], tuple[int, int]]]


def _whole(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    return {}, (1, ACME_SIZE)


def _after_rotation(
    entries: list[EntryRow], phase_two: int
) -> tuple[dict[str, Any], tuple[int, int]]:
    return {"from_seq": ROTATED_AT + 1}, (ROTATED_AT + 1, ACME_SIZE)


def _to_middle(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    return {"to_seq": 5}, (1, 5)


def _middle(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    return {"from_seq": 4, "to_seq": 11}, (4, 11)


def _since(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    since = entries[phase_two - 1].received_at
    return {"since": since}, (min(e.seq for e in entries if e.received_at >= since), ACME_SIZE)


def _until(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    until = entries[phase_two - 1].received_at
    return {"until": until}, (1, max(e.seq for e in entries if e.received_at < until))


def _window(entries: list[EntryRow], phase_two: int) -> tuple[dict[str, Any], tuple[int, int]]:
    since, until = entries[1].received_at, entries[phase_two - 1].received_at
    inside = [e.seq for e in entries if since <= e.received_at < until]
    return {"since": since, "until": until}, (min(inside), max(inside))


def _window_and_seqs(
    entries: list[EntryRow], phase_two: int
) -> tuple[dict[str, Any], tuple[int, int]]:
    since = entries[1].received_at
    first = max(3, min(e.seq for e in entries if e.received_at >= since))
    return {"since": since, "from_seq": 3, "to_seq": 12}, (first, 12)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(_whole, id="whole-chain"),
        pytest.param(_after_rotation, id="from-after-key-rotation"),
        pytest.param(_to_middle, id="to-before-head"),
        pytest.param(_middle, id="middle"),
        pytest.param(_since, id="since"),
        pytest.param(_until, id="until"),
        pytest.param(_window, id="since-and-until"),
        pytest.param(_window_and_seqs, id="window-within-seqs"),
    ],
)
async def test_export_verifies_offline_when_range_is_chosen(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, case: RangeCase
) -> None:
    """Every range of a chain built through NATS exports to a file the verifier accepts."""
    ledger = await _ledger(service, org_key, publisher)
    entries = await chain_entries(ledger.store, "acme")
    kwargs, (first, last) = case(entries, ledger.phase_two_from)
    assert 1 <= first <= last <= ACME_SIZE

    data = await _export(ledger, **kwargs)
    report = _verify(data)

    assert _finding(report) is None
    assert (report.chain, report.entries) == ("acme", last - first + 1)
    lines = _parsed(data)
    header, end = lines[0], lines[-1]
    assert isinstance(header, Header)
    assert isinstance(end, EndLine)
    assert (header.from_seq, header.to_seq, header.chain_size) == (first, last, ACME_SIZE)
    assert header.ledger_name == ledger.signer.name
    assert end.entries == last - first + 1
    assert [(e.chain, e.seq) for e in lines if isinstance(e, EntryLine) and e.chain == "acme"] == [
        ("acme", seq) for seq in range(first, last + 1)
    ]
    # The key state before the range, as the chain left it (§5.3).
    expected_keys = {ledger.acme.key_id: first - 1 < ROTATED_AT} if first > 1 else {}
    if first - 1 >= 3:
        expected_keys[ledger.acme_second.key_id] = True
    assert {k.key_id: k.active for k in lines if isinstance(k, PublisherKeyLine)} == expected_keys
    # A checkpoint covers the last entry; one made for the export is stored like any other.
    sizes = [_note_size(c.note) for c in lines if isinstance(c, CheckpointLine)]
    assert last in sizes
    assert sizes == sorted(sizes)
    assert await ledger.store.checkpoint_at("acme", last) is not None
    assert report.signatures == report.entries + len(sizes) + _ledger_entries(lines) + 1


def _note_size(note: str) -> int:
    return int(note.split("\n")[1])


def _ledger_entries(lines: list[ExportLine]) -> int:
    return sum(isinstance(e, EntryLine) and e.chain == "_ledger" for e in lines)


# ---- the commands -----------------------------------------------------------------------------

# Runs `trustledger` with every network connection refused, then names any database or
# broker client module that was imported.
OFFLINE_CLI = """
import socket, sys

def refuse(*args, **kwargs):
    raise AssertionError("the offline verifier opened a network connection")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
from service.cli import main

code = main(sys.argv[1:])
clients = ("asyncpg", "nats", "litestar", "uvicorn", "httpx")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in clients or m == "service.adapters.postgres")
print("loaded:", ",".join(loaded))
sys.exit(code)
"""


async def _cli(args: list[str], env: dict[str, str], offline: bool = False) -> tuple[int, str]:
    """Run `trustledger ARGS` in a child process; its exit code and standard output."""
    command = ["-c", OFFLINE_CLI] if offline else ["-m", "service.cli"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *command, *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, out.decode()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    return {**env, "TRUSTLEDGER_LOG_LEVEL": "WARNING", **extra}


async def test_cli_export_verifies_offline_when_run_as_commands(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, tmp_path: Path
) -> None:
    """`trustledger export` writes a file `trustledger verify` accepts with no server, no network."""
    ledger = await _ledger(service, org_key, publisher)
    settings = service.settings
    assert settings.database_url is not None
    with_db = _env(DATABASE_URL=settings.database_url, TRUSTLEDGER_DATA_DIR=str(settings.data_dir))
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    path = out_dir / "acme.jsonl"

    code, out = await _cli(["export", "--org", "acme", "-o", str(path)], with_db)
    assert code == 0
    assert out == f"exported acme#1..{ACME_SIZE} ({ACME_SIZE} entries) to {path}\n"
    assert [p.name for p in out_dir.iterdir()] == ["acme.jsonl"]  # the temp file was renamed

    code, out = await _cli(["verify", str(path)], _env(), offline=True)
    ok, loaded = out.splitlines()
    assert code == 0
    assert ok.startswith(f"ok: {ACME_SIZE} entries, 1 checkpoint, ")
    assert ok.endswith(" entries/s)")
    assert loaded == "loaded: "

    # A kept checkpoint is given with --checkpoint; a changed byte fails the check.
    kept = tmp_path / "kept.note"
    kept.write_text((await make_checkpoint(ledger.store, ledger.signer, "acme")).note)
    code, out = await _cli(["verify", str(path), "--checkpoint", str(kept)], _env(), offline=True)
    assert (code, out.splitlines()[0][:3]) == (0, "ok:")
    lines = path.read_bytes().splitlines(keepends=True)
    index = _entry_index(lines, 5)
    lines[index] = lines[index].replace(b"billing-bot", b"billing-boT", 1)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join(lines))
    code, out = await _cli(["verify", str(tampered)], _env(), offline=True)
    assert code == 1
    assert out.startswith("FAILED at acme#5: entry hash does not match its fields (expected ")
    assert f"(line {index + 1} of {tampered})" in out

    # `-o -` writes the same kind of file to standard output.
    code, out = await _cli(["export", "--org", "acme", "--from-seq", "3", "-o", "-"], with_db)
    assert code == 0
    report = _verify(out.encode())
    assert (_finding(report), report.entries) == (None, ACME_SIZE - 2)


# Calls `verify_export` directly, sockets refused; prints the outcome and the client modules.
OFFLINE_API = """
import socket, sys

def refuse(*args, **kwargs):
    raise AssertionError("the offline verifier opened a network connection")

socket.socket.connect = refuse
socket.create_connection = refuse
from service.app.offline_verify import verify_export

report = verify_export(sys.argv[1])
clients = ("asyncpg", "nats", "litestar", "uvicorn", "httpx", "apscheduler")
print(report.ok, report.entries, sorted(m for m in sys.modules if m.split(".")[0] in clients))
"""


async def test_verifier_loads_no_database_or_broker_client_when_run_in_a_fresh_process(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, tmp_path: Path
) -> None:
    """`verify_export` needs neither database nor broker: their clients are never imported."""
    ledger = await _ledger(service, org_key, publisher)
    path = tmp_path / "acme.jsonl"
    path.write_bytes(await _export(ledger))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OFFLINE_API, str(path), cwd=REPO, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == f"True {ACME_SIZE} []\n"


def _entry_index(lines: list[bytes], seq: int, chain: str = "acme") -> int:
    """The index of a chain's entry line in an export's lines."""
    for i, raw in enumerate(lines):
        line = decode_line(raw)
        if isinstance(line, EntryLine) and (line.chain, line.seq) == (chain, seq):
            return i
    raise AssertionError(f"no entry {chain}#{seq} in the export")


def _checkpoint_index(lines: list[bytes], size: int) -> int:
    for i, raw in enumerate(lines):
        line = decode_line(raw)
        if isinstance(line, CheckpointLine) and _note_size(line.note) == size:
            return i
    raise AssertionError(f"no checkpoint at size {size} in the export")


# ---- refusals -----------------------------------------------------------------------------------

FAR_FUTURE = datetime.fromisoformat("2999-01-01T00:00:00+00:00")


@pytest.mark.parametrize(
    ("org", "kwargs", "error", "message"),
    [
        pytest.param("ghost", {}, NotFoundError, "no chain for org 'ghost'", id="unknown-org"),
        pytest.param("_ledger", {}, ConfigError, "'_ledger' is not an org id", id="ledger-chain"),
        pytest.param("acme", {"from_seq": 0}, ConfigError, "from_seq must be at least 1", id="seq-zero"),
        pytest.param("acme", {"from_seq": 5, "to_seq": 4}, ConfigError, "to_seq 4 is before from_seq 5", id="to-before-from"),
        pytest.param("acme", {"to_seq": ACME_SIZE + 1}, ConfigError, "beyond its head", id="to-beyond-head"),
        pytest.param("acme", {"from_seq": ACME_SIZE + 1}, NotFoundError, "there is none from seq", id="from-beyond-head"),
        pytest.param("acme", {"since": FAR_FUTURE}, NotFoundError, "was received in", id="window-after-last-entry"),
        pytest.param("acme", {"since": FAR_FUTURE, "until": FAR_FUTURE}, ConfigError, "must be before until", id="empty-window"),
        pytest.param("acme", {"until": FAR_FUTURE.replace(tzinfo=None)}, ConfigError, "must carry a UTC offset", id="naive-time"),
    ],
)  # fmt: skip
async def test_export_refuses_before_any_line_when_range_is_bad(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    org: str,
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """A bad range is a ConfigError, an empty one a NotFoundError, raised before the first line."""
    ledger = await _ledger(service, org_key, publisher)
    lines = export_chain(ledger.store, ledger.signer, org, **kwargs)
    with pytest.raises(error, match=message):
        await anext(lines)


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        pytest.param("/v1/chains/ghost/export", 404, "not-found", id="unknown-org"),
        pytest.param("/v1/chains/ACME/export", 400, "invalid-request", id="not-an-org-id"),
        pytest.param("/v1/chains/acme/export?from_seq=0", 400, "invalid-request", id="seq-zero"),
        pytest.param("/v1/chains/acme/export?from_seq=5&to_seq=4", 400, "invalid-request", id="to-before-from"),
        pytest.param(f"/v1/chains/acme/export?to_seq={ACME_SIZE + 1}", 400, "invalid-request", id="to-beyond-head"),
        pytest.param(f"/v1/chains/acme/export?from_seq={ACME_SIZE + 1}", 404, "not-found", id="from-beyond-head"),
        pytest.param("/v1/chains/acme/export?since=2999-01-01T00:00:00Z", 404, "not-found", id="window-after-last-entry"),
        pytest.param("/v1/chains/acme/export?until=2999-01-01T00:00:00", 400, "invalid-request", id="naive-time"),
    ],
)  # fmt: skip
async def test_http_export_answers_a_problem_when_range_is_bad(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    path: str,
    status: int,
    kind: str,
) -> None:
    """Refusals come back as problem details with the right status, not as a cut-off stream."""
    await _ledger(service, org_key, publisher)
    response = await service.http.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == f"https://trustledger.dev/problems/{kind}"


async def test_export_refuses_when_entries_before_the_range_do_not_verify(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """The key state before the range is read from a verified walk; a tampered prefix stops it."""
    ledger = await _ledger(service, org_key, publisher)
    await _tamper_db(ledger, _db_event_byte)
    with pytest.raises(
        IntegrityError, match=r"entries before it do not verify: acme#5: entry hash"
    ):
        await _export(ledger, from_seq=ROTATED_AT + 1)


async def test_checkpoint_is_refused_when_chain_is_shorter_than_an_earlier_checkpoint(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """The ledger does not sign a head below one it signed before, but still signs inside it."""
    ledger = await _ledger(service, org_key, publisher)
    await make_checkpoint(ledger.store, ledger.signer, "acme")
    await _tamper_db(ledger, _db_newest_deleted)
    with pytest.raises(IntegrityError, match=f"a checkpoint at size {ACME_SIZE} was signed before"):
        await make_checkpoint(ledger.store, ledger.signer, "acme")
    inside = await checkpoint_at_size(ledger.store, ledger.signer, "acme", 10)
    assert (inside.size, inside.head_hash) == (10, await ledger.store.entry_hash_at("acme", 10))


# ---- isolation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("org", "other"),
    [pytest.param("acme", "beta", id="acme"), pytest.param("beta", "acme", id="beta")],
)
async def test_export_holds_no_byte_of_another_org_when_orgs_share_the_ledger(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    org: str,
    other: str,
) -> None:
    """An org's export holds its own entries and the ledger's keys, nothing of another org."""
    ledger = await _ledger(service, org_key, publisher)
    data = await _export(ledger, org)
    assert _finding(_verify(data)) is None
    assert {(e.chain) for e in _parsed(data) if isinstance(e, EntryLine)} == {"_ledger", org}
    for e in await chain_entries(ledger.store, other):
        as_json_text = msgspec.json.encode(e.event_bytes.decode())[1:-1]
        for needle in (
            e.event_bytes, as_json_text, e.event_id.encode(), e.key_id.encode(),
            e.signature.hex().encode(), e.entry_hash.hex().encode(),
        ):  # fmt: skip
            assert needle not in data
    assert other.encode() not in data


# ---- tampering in the database ---------------------------------------------------------------

DbTamper = Callable[[asyncpg.Connection, Ledger], Awaitable[None]]

HASH_MISMATCH = "entry hash does not match its fields"
GAP = "sequence gap or reordering"
BROKEN_LINK = "prev_hash does not link to the previous entry"
TRUNCATED_TO = 12


async def _tamper_db(ledger: Ledger, tamper: DbTamper) -> None:
    """Change the ledger as its database owner can: as superuser, triggers bypassed."""
    assert ledger.service.settings.database_url is not None
    conn = await asyncpg.connect(ledger.service.settings.database_url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await tamper(conn, ledger)
    finally:
        await conn.close()


async def _db_event_byte(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET event_bytes = set_byte(event_bytes, length(event_bytes) / 2,"
        " get_byte(event_bytes, length(event_bytes) / 2) # 1) WHERE chain = 'acme' AND seq = 5"
    )


async def _db_entry_hash(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET entry_hash = set_byte(entry_hash, 0, get_byte(entry_hash, 0) # 1)"
        " WHERE chain = 'acme' AND seq = 6"
    )


async def _db_received_at(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await conn.execute(
        "UPDATE ledger_entries SET received_at = received_at + interval '1 microsecond'"
        " WHERE chain = 'acme' AND seq = 4"
    )


async def _db_middle_deleted(conn: asyncpg.Connection, ledger: Ledger) -> None:
    await conn.execute("DELETE FROM ledger_entries WHERE chain = 'acme' AND seq = 7")


async def _db_swapped(conn: asyncpg.Connection, ledger: Ledger) -> None:
    for old, new in ((7, 1_000_007), (8, 7), (1_000_007, 8)):
        await conn.execute(
            "UPDATE ledger_entries SET seq = $2 WHERE chain = 'acme' AND seq = $1", old, new
        )


async def _db_inserted(conn: asyncpg.Connection, ledger: Ledger) -> None:
    """A genuinely signed event slipped in at seq 7, linked and hashed right; the rest moved up."""
    for shift in (1_000_000, -999_999):
        await conn.execute(
            "UPDATE ledger_entries SET seq = seq + $1 WHERE chain = 'acme' AND seq >= $2",
            shift, 7 if shift > 0 else 1_000_007,
        )  # fmt: skip
    prev = bytes(
        await conn.fetchval(
            "SELECT entry_hash FROM ledger_entries WHERE chain = 'acme' AND seq = 6"
        )
    )
    event = performed("acme", "billing-bot", "payments.refund", "ch/slipped-in", t=99)
    data = encode_event(event)
    key = ledger.acme_second
    received = datetime.now(UTC)
    fields = EntryFields("acme", 7, to_micros(received), key.key_id, key.sign(data), data)
    row = EntryRow(
        chain="acme", seq=7, event_id=event.id, kind=event_kind(event), agent_org="acme",
        agent="billing-bot", occurred_at=event.occurred_at, received_at=received,
        key_id=key.key_id, signature=fields.signature, event_bytes=data, prev_hash=prev,
        entry_hash=entry_hash(prev, fields), stream_seq=None,
    )  # fmt: skip
    await conn.copy_records_to_table(
        "ledger_entries", records=[row.as_record()], columns=ENTRY_COLUMNS
    )


async def _db_newest_deleted(conn: asyncpg.Connection, ledger: Ledger) -> None:
    """The newest entries removed and the head row set back to match."""
    await conn.execute("DELETE FROM ledger_entries WHERE chain = 'acme' AND seq > $1", TRUNCATED_TO)
    await conn.execute(
        "UPDATE chains SET head_seq = $1, head_hash = (SELECT entry_hash FROM ledger_entries"
        " WHERE chain = 'acme' AND seq = $1) WHERE chain = 'acme'",
        TRUNCATED_TO,
    )


async def _db_checkpoint_signature(conn: asyncpg.Connection, ledger: Ledger) -> None:
    note = await conn.fetchval(
        "SELECT note FROM checkpoints WHERE chain = 'acme' AND size = $1", ACME_SIZE
    )
    await conn.execute(
        "UPDATE checkpoints SET note = $2 WHERE chain = 'acme' AND size = $1",
        ACME_SIZE, _bad_signature(note),
    )  # fmt: skip


async def _db_newest_deleted_with_checkpoints(conn: asyncpg.Connection, ledger: Ledger) -> None:
    """Truncation with the ledger's own evidence of it removed too."""
    await _db_newest_deleted(conn, ledger)
    await conn.execute("DELETE FROM checkpoints WHERE chain = 'acme'")


async def _db_suffix_rewritten(conn: asyncpg.Connection, ledger: Ledger) -> None:
    """Entries from seq 11 re-timed and re-hashed (publisher signatures still hold), the head
    row updated and the checkpoints removed: the chain is valid, but not the one signed."""
    prev = bytes(
        await conn.fetchval(
            "SELECT entry_hash FROM ledger_entries WHERE chain = 'acme' AND seq = 10"
        )
    )
    rows = await conn.fetch(
        "SELECT * FROM ledger_entries WHERE chain = 'acme' AND seq > 10 ORDER BY seq"
    )
    for r in rows:
        received = r["received_at"] + timedelta(seconds=1)
        fields = EntryFields(
            "acme", r["seq"], to_micros(received), r["key_id"], bytes(r["signature"]),
            bytes(r["event_bytes"]),
        )  # fmt: skip
        new_hash = entry_hash(prev, fields)
        await conn.execute(
            "UPDATE ledger_entries SET received_at = $2, prev_hash = $3, entry_hash = $4"
            " WHERE chain = 'acme' AND seq = $1",
            r["seq"], received, prev, new_hash,
        )  # fmt: skip
        prev = new_hash
    await conn.execute("UPDATE chains SET head_hash = $1 WHERE chain = 'acme'", prev)
    await conn.execute("DELETE FROM checkpoints WHERE chain = 'acme'")


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(_db_event_byte, ("acme", 5, HASH_MISMATCH), id="event-byte-changed"),
        pytest.param(_db_entry_hash, ("acme", 6, HASH_MISMATCH), id="entry-hash-changed"),
        pytest.param(_db_received_at, ("acme", 4, HASH_MISMATCH), id="received-at-changed"),
        pytest.param(_db_middle_deleted, ("acme", 8, GAP), id="middle-entry-deleted"),
        pytest.param(_db_swapped, ("acme", 7, BROKEN_LINK), id="two-entries-swapped"),
        pytest.param(_db_inserted, ("acme", 8, BROKEN_LINK), id="entry-inserted"),
        pytest.param(
            _db_newest_deleted,
            ("acme", TRUNCATED_TO + 1,
             f"a signed checkpoint covers {ACME_SIZE} entries but the ledger says the chain has {TRUNCATED_TO}"),
            id="newest-entries-deleted-after-checkpoint",
        ),
        pytest.param(
            _db_checkpoint_signature, ("acme", ACME_SIZE, "checkpoint signature does not verify"),
            id="checkpoint-signature-changed",
        ),
    ],
)  # fmt: skip
async def test_verify_names_the_change_when_database_is_tampered_before_export(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    tamper: DbTamper,
    expected: tuple[str, int, str],
) -> None:
    """What the database owner changed after a checkpoint is named in the export's verification."""
    ledger = await _ledger(service, org_key, publisher)
    await make_checkpoint(ledger.store, ledger.signer, "acme")
    assert _finding(_verify(await _export(ledger))) is None

    await _tamper_db(ledger, tamper)
    report = _verify(await _export(ledger))

    assert _finding(report) == expected
    assert report.line is not None


# ---- tampering in the file ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exports:
    """Untouched exports of both orgs, as lines."""

    acme: list[bytes]
    beta: list[bytes]


FileTamper = Callable[[Exports], tuple[list[bytes], tuple[str, int | None, str]]]


def _edited(raw: bytes, **changes: Any) -> bytes:
    return encode_line(msgspec.structs.replace(decode_line(raw), **changes))


def _flip_hex(text: str) -> str:
    return ("1" if text[0] == "0" else "0") + text[1:]


def _bad_signature(note: str) -> str:
    """The note with the last byte of its signature changed."""
    text, _, sig_line = note.rstrip("\n").rpartition("\n")
    prefix, _, blob = sig_line.rpartition(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    return f"{text}\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


def _f_event_byte(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, 5)
    lines[i] = lines[i].replace(b"billing-bot", b"billing-boT", 1)
    return lines, ("acme", 5, HASH_MISMATCH)


def _f_entry_hash(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, 6)
    entry = decode_line(lines[i])
    assert isinstance(entry, EntryLine)
    lines[i] = _edited(lines[i], entry_hash=_flip_hex(entry.entry_hash))
    return lines, ("acme", 6, HASH_MISMATCH)


def _f_middle_deleted(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    del lines[_entry_index(x.acme, 7)]
    return lines, ("acme", 8, GAP)


def _f_swapped(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, 7)
    lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return lines, ("acme", 8, GAP)


def _f_inserted(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, 7)
    lines.insert(i + 1, lines[i])
    return lines, ("acme", 7, GAP)


def _f_newest_deleted(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, ACME_SIZE - 1)
    del lines[i : i + 2]
    return lines, (
        "acme", ACME_SIZE - 1,
        f"a signed checkpoint covers {ACME_SIZE} entries but the chain ends at {ACME_SIZE - 2}",
    )  # fmt: skip


def _f_checkpoint_signature(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _checkpoint_index(x.acme, ACME_SIZE)
    checkpoint = decode_line(lines[i])
    assert isinstance(checkpoint, CheckpointLine)
    lines[i] = _edited(lines[i], note=_bad_signature(checkpoint.note))
    return lines, ("acme", ACME_SIZE, "checkpoint signature does not verify")


def _f_beta_checkpoint(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    lines[_checkpoint_index(x.acme, ACME_SIZE)] = x.beta[_checkpoint_index(x.beta, BETA_SIZE)]
    return lines, ("acme", BETA_SIZE, "checkpoint of another log")


def _f_beta_entry(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    lines[_entry_index(x.acme, 4)] = x.beta[_entry_index(x.beta, 4, "beta")]
    return lines, ("acme", 4, "entry of another chain")


def _f_cut_mid_line(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    i = _entry_index(x.acme, 9)
    cut = x.acme[i][: len(x.acme[i]) // 2]
    return [*x.acme[:i], cut], ("acme", 9, f"line {i + 1} is cut off")


def _f_no_trailer(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    return x.acme[:-1], ("acme", None, "the export ends without its trailer")


def _f_digest(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    end = decode_line(x.acme[-1])
    assert isinstance(end, EndLine)
    lines = [*x.acme[:-1], _edited(x.acme[-1], digest=_flip_hex(end.digest))]
    return lines, ("acme", None, "the trailer's digest does not match the file")


def _f_header_time(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    header = decode_line(x.acme[0])
    assert isinstance(header, Header)
    lines = [_edited(x.acme[0], exported_at=header.exported_at + timedelta(seconds=1)), *x.acme[1:]]
    return lines, ("acme", None, "the trailer's digest does not match the file")


def _f_trailer_signature(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    end = decode_line(x.acme[-1])
    assert isinstance(end, EndLine)
    signature = bytearray(from_b64url(end.signature))
    signature[0] ^= 1
    lines = [*x.acme[:-1], _edited(x.acme[-1], signature=b64url(bytes(signature)))]
    return lines, ("acme", None, "the trailer's signature does not verify")


def _f_second_header(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    lines.insert(2, lines[0])
    return lines, ("acme", None, "line 3 is a second header")


def _f_prev_after_checkpoint(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _checkpoint_index(x.acme, ACME_SIZE)
    lines[i - 1], lines[i] = lines[i], lines[i - 1]
    return lines, ("acme", None, f"line {i} is out of order")


def _f_unknown_type(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    lines.insert(1, b'{"type":"comment","text":"hello"}\n')
    return lines, ("acme", None, "line 2 is not an export line")


def _f_not_json(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines = list(x.acme)
    lines.insert(1, b"hello\n")
    return lines, ("acme", None, "line 2 is not an export line")


def _f_unknown_member(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    lines, i = list(x.acme), _entry_index(x.acme, 5)
    lines[i] = lines[i][:-2] + b',"note":"x"}\n'
    return lines, ("acme", 5, f"line {i + 1} is not an export line")


def _f_after_trailer(x: Exports) -> tuple[list[bytes], tuple[str, int | None, str]]:
    return [*x.acme, x.acme[1]], ("acme", None, f"line {len(x.acme) + 1} follows the trailer")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_f_event_byte, id="event-byte-changed"),
        pytest.param(_f_entry_hash, id="entry-hash-changed"),
        pytest.param(_f_middle_deleted, id="middle-entry-deleted"),
        pytest.param(_f_swapped, id="two-entries-swapped"),
        pytest.param(_f_inserted, id="entry-inserted"),
        pytest.param(_f_newest_deleted, id="newest-entries-deleted"),
        pytest.param(_f_checkpoint_signature, id="checkpoint-signature-changed"),
        pytest.param(_f_beta_checkpoint, id="beta-checkpoint-spliced-in"),
        pytest.param(_f_beta_entry, id="beta-entry-spliced-in"),
        pytest.param(_f_cut_mid_line, id="truncated-mid-line"),
        pytest.param(_f_no_trailer, id="trailer-missing"),
        pytest.param(_f_digest, id="trailer-digest-changed"),
        pytest.param(_f_header_time, id="header-changed"),
        pytest.param(_f_trailer_signature, id="trailer-signature-changed"),
        pytest.param(_f_second_header, id="second-header"),
        pytest.param(_f_prev_after_checkpoint, id="lines-out-of-order"),
        pytest.param(_f_unknown_type, id="unknown-line-type"),
        pytest.param(_f_not_json, id="not-json"),
        pytest.param(_f_unknown_member, id="unknown-member"),
        pytest.param(_f_after_trailer, id="line-after-trailer"),
    ],
)
async def test_verify_names_the_change_when_export_file_is_tampered(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, tamper: FileTamper
) -> None:
    """A changed, removed, added, moved or foreign line is named by chain, seq and problem."""
    ledger = await _ledger(service, org_key, publisher)
    acme, beta = await _export(ledger, "acme"), await _export(ledger, "beta")
    assert _finding(_verify(acme)) is None
    lines, expected = tamper(
        Exports(acme.splitlines(keepends=True), beta.splitlines(keepends=True))
    )

    report = _verify(b"".join(lines))

    assert _finding(report) == expected


# ---- checkpoints kept by the auditor ----------------------------------------------------------


async def _no_change(conn: asyncpg.Connection, ledger: Ledger) -> None:
    return None


KEPT_SIZES = (8, 12, ACME_SIZE)


@pytest.mark.parametrize(
    ("tamper", "kwargs", "kept", "expected"),
    [
        pytest.param(_no_change, {}, KEPT_SIZES, None, id="agrees"),
        pytest.param(_no_change, {"from_seq": 11}, KEPT_SIZES, None, id="agrees-one-before-range"),
        pytest.param(_no_change, {"to_seq": 10}, KEPT_SIZES, None, id="agrees-one-after-range"),
        pytest.param(
            _db_newest_deleted_with_checkpoints, {}, (ACME_SIZE,),
            ("acme", TRUNCATED_TO + 1,
             f"a signed checkpoint covers {ACME_SIZE} entries but the ledger says the chain has {TRUNCATED_TO}"),
            id="truncated-and-checkpoints-removed",
        ),
        pytest.param(
            _db_suffix_rewritten, {}, (12,),
            ("acme", 12, "head at size 12 differs from the signed checkpoint"),
            id="suffix-rewritten",
        ),
        pytest.param(
            _db_suffix_rewritten, {}, (ACME_SIZE,),
            ("acme", ACME_SIZE, f"two signed checkpoints disagree about the head at size {ACME_SIZE}"),
            id="suffix-rewritten-and-signed-again",
        ),
    ],
)  # fmt: skip
async def test_verify_checks_the_export_against_kept_checkpoints_when_given_them(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    tamper: DbTamper,
    kwargs: dict[str, Any],
    kept: tuple[int, ...],
    expected: tuple[str, int, str] | None,
) -> None:
    """Checkpoints kept from earlier catch a rewrite that left the export self-consistent."""
    ledger = await _ledger(service, org_key, publisher)
    notes = [(await checkpoint_at_size(ledger.store, ledger.signer, "acme", s)).note for s in kept]
    await _tamper_db(ledger, tamper)
    data = await _export(ledger, **kwargs)

    assert _finding(_verify(data)) is None  # the export alone cannot tell
    report = _verify(data, tuple(notes))
    assert _finding(report) == expected
    if expected is None:
        assert report.checkpoints >= len(kept)


async def test_verify_refuses_a_kept_checkpoint_when_its_signature_is_bad(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """A kept note must be signed by a ledger key registered in the export's `_ledger`."""
    ledger = await _ledger(service, org_key, publisher)
    note = (await make_checkpoint(ledger.store, ledger.signer, "acme")).note
    report = _verify(await _export(ledger), (_bad_signature(note),))
    assert _finding(report) == ("acme", ACME_SIZE, "trusted checkpoint signature does not verify")


# ---- over HTTP ---------------------------------------------------------------------------------


def _comparable(data: bytes) -> list[ExportLine]:
    """The lines, with what differs between two exports of the same range blanked."""
    lines = _parsed(data)
    header, end = lines[0], lines[-1]
    assert isinstance(header, Header)
    assert isinstance(end, EndLine)
    return [
        msgspec.structs.replace(header, exported_at=datetime(2000, 1, 1, tzinfo=UTC)),
        *lines[1:-1],
        msgspec.structs.replace(end, digest="", signature=""),
    ]


@pytest.mark.parametrize(
    ("query", "kwargs"),
    [
        pytest.param("", {}, id="whole-chain"),
        pytest.param("?from_seq=4&to_seq=12", {"from_seq": 4, "to_seq": 12}, id="range"),
        pytest.param(
            "?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
            {"since": datetime(2000, 1, 1, tzinfo=UTC), "until": FAR_FUTURE},
            id="window",
        ),
    ],
)
async def test_http_export_streams_the_use_case_lines_when_asked_for_a_chain(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    query: str,
    kwargs: dict[str, Any],
) -> None:
    """GET /v1/chains/{org}/export streams what the use case writes, and it verifies."""
    ledger = await _ledger(service, org_key, publisher)
    direct = await _export(ledger, **kwargs)

    response = await service.http.get(f"/v1/chains/acme/export{query}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(MEDIA_TYPE)
    assert response.headers["content-disposition"] == 'attachment; filename="acme.export.jsonl"'
    report = _verify(response.content)
    assert _finding(report) is None
    assert _comparable(response.content) == _comparable(direct)


# ---- long chains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "threads", [pytest.param(1, id="one-thread"), pytest.param(4, id="four-threads")]
)
async def test_export_verifies_when_chain_spans_several_batches(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory, threads: int
) -> None:
    """Entries past one read chunk and one signature batch are exported and verified in full."""
    actions = 2100
    key = await org_key("acme")
    pub = await publisher(key)
    await pub.publish(registered("acme", "bot"))
    for i in range(actions):
        await pub.publish(performed("acme", "bot", "x.read", f"r/{i}", t=1 + i))
    size = 2 + actions
    await wait_for_chain(service.store, "acme", size, timeout_s=60)
    signer = await load_ledger_signer(service.store, service.settings)
    exported: list[int] = []
    verified: list[int] = []

    for first in (1, 2050):
        lines = export_chain(service.store, signer, "acme", first, progress=exported.append)
        data = b"".join([line async for line in lines])
        report = verify_export(io.BytesIO(data), verified.append, threads=threads)
        assert _finding(report) is None
        assert report.entries == size - first + 1
        assert report.rate > 0
    assert sum(exported) == sum(verified) == size + size - 2049
    assert max(verified) == 2000


@pytest.mark.parametrize(
    ("pin", "finding"),
    [
        pytest.param("signer", None, id="the-real-ledger-key"),
        pytest.param(
            "stranger",
            ("_ledger", 1, "the ledger's first key is not the pinned ledger key"),
            id="another-key",
        ),
    ],
)
async def test_pinned_ledger_key_decides_when_the_export_brings_its_own_key_chain(
    service: RunningService,
    org_key: OrgKeyFactory,
    publisher: PublisherFactory,
    pin: str,
    finding: tuple[str, int, str] | None,
) -> None:
    """With --ledger-key, an export verifies only if its key chain starts with the pinned key."""
    ledger = await _ledger(service, org_key, publisher)
    data = await _export(ledger)
    key = ledger.signer.key if pin == "signer" else SigningKey.generate("_ledger")
    report = verify_export(io.BytesIO(data), pinned_ledger_keys=[key.public_key])
    assert _finding(report) == finding


@pytest.mark.parametrize(
    "form",
    [pytest.param("verifier_key", id="c2sp-verifier-key"), pytest.param("public_key", id="b64url")],
)
def test_ledger_key_option_reads_both_forms_when_copied_from_the_keys_endpoint(form: str) -> None:
    """--ledger-key takes the C2SP verifier key or the bare base64url public key."""
    from service.cli import parse_ledger_key
    from service.domain.checkpoint import verifier_key
    from service.domain.signing import b64url

    key = SigningKey.generate("_ledger")
    text = (
        verifier_key("ledger.example", key.public_key)
        if form == "verifier_key"
        else b64url(key.public_key)
    )
    assert parse_ledger_key(text) == key.public_key


async def test_pinned_ledger_key_refuses_when_a_later_ledger_key_registered_itself(
    service: RunningService, org_key: OrgKeyFactory, publisher: PublisherFactory
) -> None:
    """With a pin, a self-signed `_ledger` registration after entry 1 is refused; unpinned, it passes."""
    from service.app.ingest import chain_entry
    from service.domain.admission import Admitted, Incoming
    from service.domain.audit import LEDGER_CHAIN
    from service.domain.events import PublisherKeyRegistered

    ledger = await _ledger(service, org_key, publisher)
    # Whoever writes the database adds a ledger key of their own, self-signed.
    rogue = SigningKey.generate(LEDGER_CHAIN)
    event = PublisherKeyRegistered(
        id="rogue", org=LEDGER_CHAIN, occurred_at=datetime.now(UTC), key_id=rogue.key_id,
        public_key=b64url(rogue.public_key), label=ledger.signer.name,
    )  # fmt: skip
    data = encode_event(event)
    signature = rogue.sign(data)
    message = Incoming(LEDGER_CHAIN, data, rogue.key_id, b64url(signature), 0)
    async with ledger.store.transaction() as tx:
        head = (await tx.lock_chains([LEDGER_CHAIN]))[LEDGER_CHAIN]
        entry = chain_entry(
            head, Admitted(message, event, rogue.key_id, signature), datetime.now(UTC)
        )
        await tx.append_entries([entry])
        await tx.save_heads([head])

    data = await _export(ledger)
    assert _finding(verify_export(io.BytesIO(data))) is None
    pinned = verify_export(io.BytesIO(data), pinned_ledger_keys=[ledger.signer.key.public_key])
    assert _finding(pinned) == (
        LEDGER_CHAIN,
        entry.seq,
        "a ledger key registered itself instead of being endorsed",
    )
