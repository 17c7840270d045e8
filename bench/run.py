"""The benchmark harness: `python -m bench [--events N] [--write docs/benchmarks.md]`.

Everything runs on this machine against embedded PostgreSQL and NATS started
for the run, and every figure is printed beside a ceiling measured in the same
run on the same machine (the machines are shared and noisy, so ratios travel
better than absolute numbers):

* signing / verifying Ed25519 (PyNaCl, 1 and 2 threads) and BLAKE3 entry
  hashing: the CPU cost floor of ingest and of verification;
* raw JetStream publish of pre-signed messages: the broker's intake;
* raw PostgreSQL COPY of ledger-shaped rows: the database's intake.

Then the real paths: publish N signed events through NATS while ingest is
stopped, start ingest and time the backlog drain (end to end: admit, chain,
project, commit, ack); export the largest chain; verify the export offline in
a separate process (`trustledger verify`), reporting entries/s and the peak
RSS, at two sizes so that constant memory shows as equal RSS. Posture: the
latency of one answer for each busy demo agent beside the time PostgreSQL
takes only to return that agent's verdict rows (lower is better there, so the
ratio reads "times the bare fetch"), and a full projections rebuild beside
the ingest drain of the same events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import blake3

from service.adapters import broker
from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres, free_tcp_port
from service.adapters.migrations import migrate
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import signed_message, subject_for
from service.app.demo import story
from service.app.keys import register_key
from service.app.posture import assess_agent, reassess_due, recent_assessment
from service.app.rebuild import rebuild_projections
from service.config import Settings
from service.domain.chain import EntryFields, entry_hash
from service.domain.events import Event
from service.domain.signing import SigningKey, verify_signature
from service.roles import Roles, load_ledger_signer, run_roles

REPEATS = 3


@dataclass
class Row:
    name: str
    value: float
    unit: str
    ceiling_name: str = ""
    ceiling: float | None = None
    samples: list[float] = field(default_factory=list)

    def markdown(self) -> str:
        ratio = f"{self.value / self.ceiling:.2f}" if self.ceiling else ""
        ceiling = f"{_num(self.ceiling)} {self.unit} ({self.ceiling_name})" if self.ceiling else ""
        return f"| {self.name} | {_num(self.value)} {self.unit} | {ceiling} | {ratio} |"


def _num(value: float) -> str:
    """Thousands separated; one decimal below 100 (milliseconds of a fast read)."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def median_rate(
    count: int, run: Callable[[], float], repeats: int = REPEATS
) -> tuple[float, list[float]]:
    """Median of `count / seconds` over `repeats` runs of `run` (which returns seconds)."""
    rates = [count / run() for _ in range(repeats)]
    return statistics.median(rates), rates


# ---- ceilings -------------------------------------------------------------------------------


def ed25519_ceilings(messages: list[bytes], key: SigningKey) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    signatures = [key.sign(m) for m in messages]
    public = key.public_key

    def verify_slice(part: range) -> None:
        for i in part:
            verify_signature(public, messages[i], signatures[i])

    def one_thread() -> float:
        t = time.perf_counter()
        verify_slice(range(len(messages)))
        return time.perf_counter() - t

    def two_threads() -> float:
        half = len(messages) // 2
        with ThreadPoolExecutor(2) as pool:
            t = time.perf_counter()
            list(pool.map(verify_slice, [range(half), range(half, len(messages))]))
            return time.perf_counter() - t

    def sign() -> float:
        t = time.perf_counter()
        for m in messages:
            key.sign(m)
        return time.perf_counter() - t

    def hashing() -> float:
        t = time.perf_counter()
        prev = bytes(32)
        for i, m in enumerate(messages, start=1):
            prev = entry_hash(
                prev,
                EntryFields("acme", i, 1_700_000_000_000_000, key.key_id, signatures[i - 1], m),
            )
        return time.perf_counter() - t

    n = len(messages)
    return {
        "verify_1": median_rate(n, one_thread)[0],
        "verify_2": median_rate(n, two_threads)[0],
        "sign_1": median_rate(n, sign)[0],
        "blake3_entry": median_rate(n, hashing)[0],
        "blake3_raw_mb_s": len(b"".join(messages))
        / 1e6
        / min(_timed(lambda: blake3.blake3(b"".join(messages)).digest()) for _ in range(REPEATS)),
    }


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


async def nats_publish_ceiling(
    nats_url: str, messages: list[tuple[str, bytes, dict[str, str]]]
) -> float:
    """Raw JetStream publish rate of pre-signed messages into a scratch stream."""
    nc = await broker.connect(nats_url, "bench-ceiling")
    js = nc.jetstream()
    await js.add_stream(name="CEILING", subjects=["ceiling.>"])
    try:
        t = time.perf_counter()
        for start in range(0, len(messages), 500):
            chunk = messages[start : start + 500]
            await asyncio.gather(
                *(js.publish("ceiling." + s, d, headers={**h, "Nats-Msg-Id": f"c{start + i}"})
                  for i, (s, d, h) in enumerate(chunk))
            )  # fmt: skip
        return len(messages) / (time.perf_counter() - t)
    finally:
        await js.delete_stream("CEILING")
        await nc.close()


async def postgres_copy_ceiling(dsn: str, rows: int, event_bytes: bytes) -> float:
    """Raw COPY rate of ledger-shaped rows into an unlogged-free scratch table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE copy_ceiling (LIKE ledger_entries INCLUDING ALL)")
        now = datetime.now(UTC)
        records = [
            ("acme", i, f"e{i}", "action.performed", "acme", "bot", now, now, "k" * 16,
             bytes(64), event_bytes, bytes(32), bytes(32), i)
            for i in range(1, rows + 1)
        ]  # fmt: skip
        t = time.perf_counter()
        for start in range(0, rows, 500):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "copy_ceiling", records=records[start : start + 500]
                )
        return rows / (time.perf_counter() - t)
    finally:
        await conn.execute("DROP TABLE IF EXISTS copy_ceiling")
        await conn.close()


# ---- the real paths -------------------------------------------------------------------------


async def publish_all(nats_url: str, signed: list[tuple[str, bytes, dict[str, str]]]) -> float:
    nc = await broker.connect(nats_url, "bench-publisher")
    js = nc.jetstream()
    try:
        t = time.perf_counter()
        for start in range(0, len(signed), 500):
            await asyncio.gather(
                *(js.publish(s, d, headers=h) for s, d, h in signed[start : start + 500])
            )
        return len(signed) / (time.perf_counter() - t)
    finally:
        await nc.close()


async def drain_rate(settings: Settings, store: LedgerStore, expected: int) -> float:
    """Start ingest on the backlog and time until every event is chained or quarantined."""
    stop = asyncio.Event()
    t = time.perf_counter()
    task = asyncio.create_task(
        run_roles(settings, Roles(api=False, ingest=True, scheduler=False), stop)
    )
    try:
        while True:
            done = sum(h.seq for h in await store.chain_heads() if not h.chain.startswith("_"))
            if done >= expected:
                return done / (time.perf_counter() - t)
            if task.done():
                task.result()
                raise RuntimeError("ingest stopped early")
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run([sys.executable, "-m", "service.cli", "verify", sys.argv[1]], capture_output=True, text=True)
elapsed = time.perf_counter() - t
if r.returncode:
    sys.exit("verify failed: " + r.stdout + r.stderr)
print(elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def verify_in_subprocess(path: Path) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one `trustledger verify FILE` process.

    A fresh wrapper process per run, so the children's peak RSS is this run's."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), int(out[1])


async def bench(events: int, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    key = SigningKey(org="acme", seed=bytes(range(32)))
    gateway = SigningKey(org="payhub", seed=bytes(range(1, 33)))
    keys = {"acme": key, "payhub": gateway}
    actions_per_agent = max(1, events // 3)
    start = datetime.now(UTC) - timedelta(days=2)
    evs: list[Event] = list(story(start, actions_per_agent, seed=11))
    signed = []
    for e in evs:
        data, headers = signed_message(e, keys[e.org])
        signed.append((subject_for(e, "bench"), data, headers))
    payloads = [d for _, d, _ in signed[:20_000]]

    print(f"ceilings on {len(payloads):,} realistic events ...", file=sys.stderr)
    c = ed25519_ceilings(payloads, key)

    pg = EmbeddedPostgres(workdir / "pg")
    nats_server = EmbeddedNats(workdir / "nats")
    dsn = pg.start()
    nats_url = nats_server.start()
    try:
        await migrate(dsn)
        store = await LedgerStore.connect(dsn)
        try:
            c["nats_publish"] = await nats_publish_ceiling(nats_url, signed[:20_000])
            c["pg_copy"] = await postgres_copy_ceiling(dsn, 20_000, payloads[0])
            settings = Settings(
                database_url=dsn, nats_url=nats_url, data_dir=workdir, port=free_tcp_port(),
                subject_prefix="bench", stream="BENCH", consumer="bench-ingest",
            )  # fmt: skip
            for org in ("acme", "payhub"):
                await register_key(store, keys[org], "bench")
            nc = await broker.connect(nats_url, "bench-setup")
            await broker.ensure_stream(nc.jetstream(), settings)
            await nc.close()

            print(f"publishing {len(signed):,} signed events ...", file=sys.stderr)
            publish = await publish_all(nats_url, signed)
            rows.append(Row("publish signed events to JetStream", publish, "events/s",
                            "raw JetStream publish", c["nats_publish"]))  # fmt: skip
            print("ingesting the backlog ...", file=sys.stderr)
            drain = await drain_rate(settings, store, len(signed) + 2)
            rows.append(Row("ingest: admit + chain + project + commit", drain, "events/s",
                            "Ed25519 verify, 2 threads", c["verify_2"]))  # fmt: skip
            rows.append(Row("ingest vs PostgreSQL COPY of the same rows", drain, "events/s",
                            "raw COPY", c["pg_copy"]))  # fmt: skip

            rows += await posture_rows(store, evs)
            print("rebuilding the projections from the log ...", file=sys.stderr)
            t = time.perf_counter()
            replayed = await rebuild_projections(store)
            rebuild = replayed / (time.perf_counter() - t)
            rows.append(Row(f"projections rebuild ({replayed:,} entries)", rebuild, "entries/s",
                            "ingest drain, same events", drain))  # fmt: skip

            signer = await load_ledger_signer(store, settings)
            small = workdir / "acme-small.jsonl"
            large = workdir / "acme.jsonl"
            head = await store.chain_head("acme")
            assert head is not None
            export_s = await _export(store, signer, large, None)
            rows.append(Row(f"export acme ({head.seq:,} entries)", head.seq / export_s, "entries/s",
                            "BLAKE3 entry hashing, 1 thread", c["blake3_entry"]))  # fmt: skip
            await _export(store, signer, small, head.seq // 10)
        finally:
            await store.close()
    finally:
        nats_server.stop()
        pg.stop()

    print("verifying exports offline ...", file=sys.stderr)
    _, small_rss = verify_in_subprocess(small)
    times = [verify_in_subprocess(large) for _ in range(REPEATS)]
    large_s = statistics.median(t for t, _ in times)
    large_rss = max(r for _, r in times)
    rows.append(Row(f"offline verify ({head.seq:,} entries)", head.seq / large_s, "entries/s",
                    "Ed25519 verify, 2 threads", c["verify_2"]))  # fmt: skip
    rows.append(Row(f"verify peak RSS, {head.seq // 10:,} entries", small_rss / 1024, "MiB"))
    rows.append(Row(f"verify peak RSS, {head.seq:,} entries", large_rss / 1024, "MiB"))
    ceilings = [
        Row("ceiling: Ed25519 verify, 1 thread", c["verify_1"], "sig/s"),
        Row("ceiling: Ed25519 verify, 2 threads", c["verify_2"], "sig/s"),
        Row("ceiling: Ed25519 sign, 1 thread", c["sign_1"], "sig/s"),
        Row("ceiling: BLAKE3 entry hash, 1 thread", c["blake3_entry"], "entries/s"),
        Row("ceiling: BLAKE3 bulk", c["blake3_raw_mb_s"], "MB/s"),
        Row("ceiling: raw JetStream publish", c["nats_publish"], "msg/s"),
        Row("ceiling: PostgreSQL COPY (500-row transactions)", c["pg_copy"], "rows/s"),
    ]
    return rows + ceilings


async def posture_rows(store: LedgerStore, evs: list[Event]) -> list[Row]:
    """Median latency of one posture answer per demo agent, beside the time the
    database takes just to hand over that agent's 30 days of verdict rows."""
    as_of = max(e.occurred_at for e in evs)
    rows: list[Row] = []
    for agent in ("billing-bot", "ops-agent"):
        n = await store.pool.fetchval(
            "SELECT count(*) FROM action_verdicts WHERE org = 'acme' AND agent = $1", agent
        )
        seen = await store.pool.fetchval(
            "SELECT count(*) FROM observations WHERE org = 'acme' AND agent = $1", agent
        )
        answer: list[float] = []
        fetch: list[float] = []
        for _ in range(5):
            t = time.perf_counter()
            await assess_agent(store, "acme", agent, as_of)
            answer.append(time.perf_counter() - t)
            t = time.perf_counter()
            await store.pool.fetch(
                "SELECT * FROM action_verdicts WHERE org = 'acme' AND agent = $1"
                " AND occurred_at > $2 AND occurred_at <= $3",
                agent,
                as_of - timedelta(days=30),
                as_of,
            )
            fetch.append(time.perf_counter() - t)
        rows.append(
            Row(
                f"posture answer, {agent} ({n:,} actions, {seen:,} sightings in 30 d)",
                statistics.median(answer) * 1000,
                "ms",
                "fetching its verdict rows alone",
                statistics.median(fetch) * 1000,
            )
        )
    # The scheduler's tick assesses each queued agent once; `?max_age_s=` then serves it.
    t = time.perf_counter()
    ticked = await reassess_due(store, as_of)
    tick_s = time.perf_counter() - t
    round_trips: list[float] = []
    for _ in range(20):
        t = time.perf_counter()
        await store.pool.fetchval("SELECT 1")
        round_trips.append(time.perf_counter() - t)
    for agent in ("billing-bot", "ops-agent"):
        served: list[float] = []
        for _ in range(20):
            t = time.perf_counter()
            report = await recent_assessment(store, "acme", agent, as_of, timedelta(seconds=60))
            served.append(time.perf_counter() - t)
            assert report is not None
        rows.append(
            Row(
                f"posture answer with max_age_s, {agent} (the scheduler's assessment)",
                statistics.median(served) * 1000,
                "ms",
                "PostgreSQL round trip, SELECT 1",
                statistics.median(round_trips) * 1000,
            )
        )
    rows.append(
        Row(f"scheduler tick assessing {len(ticked)} queued demo agents", tick_s * 1000, "ms")
    )
    return rows


async def _export(store: LedgerStore, signer: object, path: Path, to_seq: int | None) -> float:
    from service.app.export import export_chain

    t = time.perf_counter()
    with path.open("wb") as f:
        async for line in export_chain(store, signer, "acme", to_seq=to_seq):  # type: ignore[arg-type]
            f.write(line)
    return time.perf_counter() - t


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=100_000, help="events to publish (default 100k)"
    )
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        rows = asyncio.run(bench(args.events, Path(tmp)))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} on {machine()}; `python -m bench --events {args.events}`.",
        "",
        "| measurement | median | ceiling (same run) | ratio |",
        "|---|---|---|---|",
        *(r.markdown() for r in rows),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        _write_section(args.write, table)
    return 0


def _write_section(path: Path, table: str) -> None:
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")
