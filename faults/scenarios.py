"""The fault scenarios: each breaks one thing on purpose, then the checker judges.

Every scenario publishes a numbered workload (faults/workload.py), runs the
service roles as real processes (`trustledger ingest`, `scheduler`, `up`),
injects its fault at random points (seeded), waits for ingest to drain and
runs every check of faults/checker.py. A scenario returns one `Result`; it
never raises for a failed check, only for a broken suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from faults import poison as poisons
from faults.checker import Findings, check_ledger, wait_drained
from faults.lab import REPO, Lab, PositionWatch, Proc, clean_env, wait_for
from faults.proxy import TcpProxy
from faults.rawnats import RawPublishError, raw_publish
from faults.servers import RestartableNats, RestartablePostgres, _pids_with_cwd
from faults.workload import (
    GATEWAY,
    ORGS,
    T0,
    Workload,
    connect_publisher,
    publish_acked,
    to_message,
)
from service.adapters.embedded import free_tcp_port
from service.adapters.postgres import LedgerStore
from service.app.keys import register_new_key
from service.config import Settings
from service.errors import StorageError

log = logging.getLogger(__name__)

LAB_ATTEMPTS = 3
PROGRESS_TIMEOUT_S = 90.0
"""The longest a scenario waits for ingest to reach its next fault point."""
POISON_NEXT_S = 10.0
"""The good event published right after a hostile one must be chained within this."""
POSTURE_READ_LIMIT_S = 1.0
UP_READY_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Options:
    full: bool = False
    events: int | None = None
    seed: int = 1
    keep: bool = False
    service_tree: Path | None = None
    """Run the roles from this checkout instead (to measure a tree before a fix)."""


@dataclass(slots=True)
class Context:
    """What every scenario is given: options, the shared servers, a folder of its own."""

    options: Options
    database_url: str
    nats_url: str
    root: Path
    rng: random.Random = field(default_factory=random.Random)

    def size(self, quick: int, full: int) -> int:
        if self.options.events is not None:
            return self.options.events
        return full if self.options.full else quick

    def points(self, quick: int, full: int) -> int:
        return full if self.options.full else quick

    @contextlib.asynccontextmanager
    async def lab(
        self,
        name: str,
        server_url: str | None = None,
        nats_url: str | None = None,
        orgs: tuple[str, ...] = (*ORGS, GATEWAY),
    ) -> AsyncIterator[Lab]:
        for attempt in range(1, LAB_ATTEMPTS + 1):
            try:
                lab = await Lab.open(
                    name,
                    self.root / name,
                    server_url or self.database_url,
                    nats_url or self.nats_url,
                    orgs,
                    self.options.service_tree,
                )
                break
            except (OSError, StorageError, asyncpg.PostgresError) as e:
                # A shared server is shared: another client's DROP ... WITH (FORCE)
                # or restart can break a setup connection. The scenario has not begun.
                if attempt == LAB_ATTEMPTS:
                    raise
                log.warning("setting up %s failed (%s); retrying", name, e)
                await asyncio.sleep(1.0)
        try:
            yield lab
        finally:
            await lab.close(keep=self.options.keep)


@dataclass(slots=True)
class Result:
    """One scenario's outcome: the line it prints, and its JSON for the docs."""

    name: str
    fault: str
    faults: int = 0
    findings: Findings | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.findings is not None and self.findings.ok and not self.notes

    def line(self) -> str:
        f = self.findings or Findings()
        verdict = "ok" if self.ok else "FAIL"
        checked = self.findings is not None
        text = (
            f"{verdict:4} {self.name:28} events={f.acked:<6} faults={self.faults:<3}"
            f" lost={f.lost:<5} duplicated={f.duplicated:<3} out_of_order={f.out_of_order:<4}"
            f" gaps={f.gaps:<3} quarantine+={f.unexpected_quarantine:<3}"
            f" verify={('ok' if f.verify_ok else 'FAIL') if checked else '--':4}"
            f" rebuild={('equal' if f.projections_equal else 'DIFF') if checked else '--':5}"
            f" {self.seconds:6.1f}s"
        )
        notes = [*self.notes, *(f.notes if self.findings else []), *f.verify_findings]
        if f.lost_examples:
            notes.append(f"lost e.g. {', '.join(f.lost_examples[:3])}")
        return text + ("".join(f"\n       - {n}" for n in notes) if notes else "")

    def as_dict(self) -> dict[str, Any]:
        f = self.findings or Findings()
        return {
            "name": self.name,
            "fault": self.fault,
            "ok": self.ok,
            "faults_injected": self.faults,
            "events_acked": f.acked,
            "events_unacked": f.unacked,
            "chained": f.chained,
            "lost": f.lost,
            "duplicated": f.duplicated,
            "out_of_order": f.out_of_order,
            "gaps": f.gaps,
            "unexpected_quarantine": f.unexpected_quarantine,
            "verify_ok": f.verify_ok,
            "projections_equal_rebuild": f.projections_equal,
            "seconds": round(self.seconds, 1),
            "notes": [*self.notes, *f.notes, *f.verify_findings],
            **self.extra,
        }


Scenario = Callable[[Context], Awaitable[Result]]


# ---- shared steps ----------------------------------------------------------------------------


class Ingests:
    """The ingest processes of a scenario: which ones the suite killed, which died alone."""

    def __init__(self, lab: Lab, database_url: str | None = None, nats_url: str | None = None):
        self.lab = lab
        self.database_url = database_url
        self.nats_url = nats_url
        self.procs: list[Proc] = []
        self.killed: set[int] = set()

    def start(self) -> Proc:
        proc = self.lab.start("ingest", self.database_url, self.nats_url)
        self.procs.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        self.killed.add(proc.pid)
        proc.kill()

    @property
    def live(self) -> list[Proc]:
        return [p for p in self.procs if p.alive]

    def any_alive(self) -> bool:
        return bool(self.live)

    def died_alone(self) -> list[str]:
        """Processes that exited without being killed or asked to stop."""
        return [
            f"{p.label} exited by itself with code {p.returncode}: {_last_error(p)}"
            for p in self.procs
            if not p.alive and p.pid not in self.killed
        ]

    async def stop_all(self) -> list[str]:
        """SIGTERM every live one; notes for an unclean exit."""
        notes = self.died_alone()
        for proc in self.live:
            code = await proc.terminate(10)
            if code != 0:
                notes.append(f"{proc.label} exited with {code} on SIGTERM: {_last_error(proc)}")
        return notes


def _last_error(proc: Proc) -> str:
    lines = [
        line
        for line in proc.tail(60).splitlines()
        if any(w in line for w in ("Error", "ERROR", "Traceback", "error"))
    ]
    return lines[-1].strip()[:200] if lines else "(no error line in its log)"


async def wait_progress(
    lab: Lab, target: int, ingests: Ingests | None = None, timeout_s: float = PROGRESS_TIMEOUT_S
) -> bool:
    """Wait until the org chains hold at least `target` entries (False: stuck or all dead)."""

    async def reached() -> bool:
        if ingests is not None and not ingests.any_alive():
            return True
        return await lab.chained() >= target

    ok = await wait_for(reached, timeout_s, 0.02)
    return ok and (ingests is None or ingests.any_alive())


def fault_points(rng: random.Random, count: int, total: int, low: float = 0.05) -> list[int]:
    """`count` distinct random entry counts in (low, 0.95) of `total`, ascending."""
    return sorted(int(rng.uniform(low, 0.95) * total) for _ in range(count))


async def finish(
    name: str,
    fault: str,
    lab: Lab,
    workload: Workload,
    ingests: Ingests,
    started: float,
    faults: int,
    notes: list[str],
    allowed_quarantine: set[int] | None = None,
    watch: PositionWatch | None = None,
    stall_s: float | None = None,
) -> Result:
    """Drain, stop the processes, run the checker: the scenario's `Result`."""
    drain = await wait_drained(
        lab, workload, ingests.any_alive, **({"stall_s": stall_s} if stall_s else {})
    )
    if not drain.complete:
        notes.append(f"ingest did not drain: {drain.reason}")
    notes += await ingests.stop_all()
    if watch is not None:
        await watch.stop()
        if watch.backwards:
            notes.append(f"the committed position moved backwards {watch.backwards} time(s)")
    findings = await check_ledger(lab, workload, allowed_quarantine)
    return Result(
        name, fault, faults, findings, time.monotonic() - started, notes,
        {"drain_s": round(drain.seconds, 1), "publish_s": round(workload.publish_s, 1)},
    )  # fmt: skip


# ---- 1. ingest SIGKILLed ------------------------------------------------------------------


async def ingest_killed(ctx: Context) -> Result:
    """SIGKILL the ingest process at random points while it drains a backlog (and
    while more is published); a new one starts each time."""
    name, fault = "ingest-sigkill", "SIGKILL of `trustledger ingest` while draining"
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        workload = Workload.build(
            lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
        )
        await workload.publish(lab.nats_url, up_to=0.6)
        publishing = asyncio.create_task(workload.publish(lab.nats_url, up_to=1.0))
        ingests, watch, notes, kills = Ingests(lab), PositionWatch(lab).start(), [], 0
        current = ingests.start()
        for point in fault_points(ctx.rng, ctx.points(3, 24), workload.total):
            target = max(point, await lab.chained() + 1)
            if not await wait_progress(lab, target, ingests):
                notes.append(f"ingest did not reach {target} entries before kill {kills + 1}")
                break
            await asyncio.sleep(ctx.rng.uniform(0, 0.03))
            ingests.kill(current)
            kills += 1
            current = ingests.start()
        await publishing
        return await finish(name, fault, lab, workload, ingests, started, kills, notes, watch=watch)


# ---- 2. PostgreSQL killed and restarted ----------------------------------------------------


async def postgres_restarted(ctx: Context) -> Result:
    """SIGKILL the PostgreSQL postmaster mid-stream, start it again on the same port."""
    name = "postgres-sigkill-restart"
    server = RestartablePostgres(ctx.root / f"{name}-pg")
    fault = "SIGKILL of the PostgreSQL postmaster, restart on the same port"
    return await _server_restarted(ctx, name, fault, server, lambda: (server.url, None))


# ---- 3. NATS killed and restarted --------------------------------------------------------


async def nats_restarted(ctx: Context) -> Result:
    """SIGKILL the NATS server mid-stream, start it again on the same port and store."""
    name = "nats-sigkill-restart"
    server = RestartableNats(ctx.root / f"{name}-nats")
    fault = "SIGKILL of nats-server, restart on the same port and file store"
    return await _server_restarted(ctx, name, fault, server, lambda: (None, server.url))


async def _server_restarted(
    ctx: Context,
    name: str,
    fault: str,
    server: RestartablePostgres | RestartableNats,
    lab_servers: Callable[[], tuple[str | None, str | None]],
) -> Result:
    """The workload against a private server that is SIGKILLed at random points and
    started again on its port after 0.5-2 s."""
    started = time.monotonic()
    server.prepare()
    server.start()
    try:
        server_url, nats_url = lab_servers()  # (database, NATS): None = the shared one
        async with ctx.lab(name, server_url=server_url, nats_url=nats_url) as lab:
            workload = Workload.build(
                lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
            )
            publishing = asyncio.create_task(workload.publish(lab.nats_url))
            ingests, notes = Ingests(lab), []
            ingests.start()
            for point in fault_points(ctx.rng, ctx.points(1, 5), workload.total, low=0.15):
                if not await wait_progress(lab, max(point, await lab.chained() + 1), ingests):
                    notes.append("ingest made no progress before the next kill")
                    break
                server.kill()
                await asyncio.sleep(ctx.rng.uniform(0.5, 2.0))
                server.start()
            await publishing
            return await finish(name, fault, lab, workload, ingests, started, server.kills, notes)
    finally:
        server.stop()


# ---- 4. ingest <-> NATS connection cut ---------------------------------------------------


async def nats_connection_cut(ctx: Context) -> Result:
    """Cut ingest's NATS connection (RST, both sides) repeatedly while it fetches."""
    name, fault = "ingest-nats-cut", "ingest<->NATS TCP connection cut (RST) mid-fetch, via a proxy"
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        proxy = TcpProxy("127.0.0.1", _port(lab.nats_url))
        await proxy.start()
        try:
            workload = Workload.build(
                lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
            )
            await workload.publish(lab.nats_url, up_to=0.5)
            publishing = asyncio.create_task(workload.publish(lab.nats_url))
            ingests, watch, notes = (
                Ingests(lab, nats_url=proxy.route(lab.nats_url)),
                PositionWatch(lab).start(),
                [],
            )
            ingests.start()
            for point in fault_points(ctx.rng, ctx.points(3, 20), workload.total):
                if not await wait_progress(lab, max(point, await lab.chained() + 1), ingests):
                    notes.append("ingest made no progress before the next cut")
                    break
                # Part-way through the messages of a fetch, as the server sends them.
                proxy.arm_cut(ctx.rng.randint(500, 60_000), upstream=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proxy.armed_fired.wait(), 30)
                proxy.disarm()
            await publishing
            return await finish(
                name, fault, lab, workload, ingests, started, proxy.cuts, notes, watch=watch
            )
        finally:
            await proxy.close()


# ---- 5. ingest <-> PostgreSQL connection cut ---------------------------------------------


async def postgres_connection_cut(ctx: Context) -> Result:
    """Cut ingest's PostgreSQL connections part-way through a batch transaction."""
    name, fault = (
        "ingest-postgres-cut",
        "ingest<->PostgreSQL TCP connections cut (RST) mid-transaction, via a proxy",
    )
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        proxy = TcpProxy("127.0.0.1", _port(lab.database_url))
        await proxy.start()
        try:
            workload = Workload.build(
                lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
            )
            await workload.publish(lab.nats_url, up_to=0.5)
            publishing = asyncio.create_task(workload.publish(lab.nats_url))
            ingests = Ingests(lab, database_url=proxy.route(lab.database_url))
            watch, notes = PositionWatch(lab).start(), []
            ingests.start()
            for point in fault_points(ctx.rng, ctx.points(3, 20), workload.total):
                if not await wait_progress(lab, max(point, await lab.chained() + 1), ingests):
                    notes.append("ingest made no progress before the next cut")
                    break
                # Somewhere inside the next batch: its COPY of entries, the
                # projection writes, the position, or the COMMIT itself.
                proxy.arm_cut(ctx.rng.randint(200, 40_000))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proxy.armed_fired.wait(), 30)
                proxy.disarm()
            await publishing
            return await finish(
                name, fault, lab, workload, ingests, started, proxy.cuts, notes, watch=watch
            )
        finally:
            await proxy.close()


async def network_stalled(ctx: Context) -> Result:
    """Stall ingest's NATS or PostgreSQL traffic (nothing closed, nothing forwarded)
    for 0.5-3 s at random points, then let it flow again."""
    name, fault = (
        "ingest-network-stall",
        "ingest's NATS or PostgreSQL traffic paused 0.5-3 s, via proxies",
    )
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        to_nats = TcpProxy("127.0.0.1", _port(lab.nats_url))
        to_pg = TcpProxy("127.0.0.1", _port(lab.database_url))
        await to_nats.start()
        await to_pg.start()
        try:
            workload = Workload.build(
                lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
            )
            publishing = asyncio.create_task(workload.publish(lab.nats_url))
            ingests = Ingests(
                lab,
                database_url=to_pg.route(lab.database_url),
                nats_url=to_nats.route(lab.nats_url),
            )
            watch, notes, stalls = PositionWatch(lab).start(), [], 0
            ingests.start()
            for point in fault_points(ctx.rng, ctx.points(2, 10), workload.total):
                if not await wait_progress(lab, max(point, await lab.chained() + 1), ingests):
                    notes.append("ingest made no progress before the next stall")
                    break
                proxy = ctx.rng.choice([to_nats, to_pg])
                proxy.pause()
                await asyncio.sleep(ctx.rng.uniform(0.5, 3.0))
                proxy.resume()
                stalls += 1
            await publishing
            return await finish(
                name, fault, lab, workload, ingests, started, stalls, notes, watch=watch
            )
        finally:
            await to_nats.close()
            await to_pg.close()


def _port(url: str) -> int:
    from urllib.parse import urlsplit

    port = urlsplit(url).port
    assert port is not None, url
    return port


# ---- 6. two ingest processes on one consumer ----------------------------------------------


async def two_ingests(ctx: Context) -> Result:
    """Two ingest processes on the same consumer at once; one is SIGKILLed midway
    (and, in full mode, again, a replacement keeping two running)."""
    name, fault = (
        "two-ingests-one-killed",
        "two `trustledger ingest` on one consumer, one SIGKILLed",
    )
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        workload = Workload.build(
            lab.keys, lab.settings.subject_prefix, ctx.size(3000, 50_000), ctx.options.seed
        )
        await workload.publish(lab.nats_url, up_to=0.4)
        ingests, watch, notes, kills = Ingests(lab), PositionWatch(lab).start(), [], 0
        ingests.start()
        ingests.start()
        publishing = asyncio.create_task(workload.publish(lab.nats_url))
        for point in fault_points(ctx.rng, ctx.points(1, 4), workload.total, low=0.3):
            if not await wait_progress(lab, max(point, await lab.chained() + 1), ingests):
                notes.append("ingest made no progress before the next kill")
                break
            live = ingests.live
            ingests.kill(ctx.rng.choice(live))
            kills += 1
            if ctx.options.full:
                ingests.start()
        await publishing
        return await finish(name, fault, lab, workload, ingests, started, kills, notes, watch=watch)


# ---- 7. scheduler killed mid-checkpoint ---------------------------------------------------


SCHEDULER_ENV = {
    "TRUSTLEDGER_CHECKPOINT_INTERVAL_S": "1",
    "TRUSTLEDGER_VERIFY_INTERVAL_S": "1",
    "TRUSTLEDGER_POSTURE_INTERVAL_S": "1",
}


async def scheduler_killed(ctx: Context) -> Result:
    """SIGKILL `trustledger scheduler` right as it signs checkpoints (a new checkpoint
    row appears: it is part-way through the chains); its successors sign on."""
    name, fault = (
        "scheduler-sigkill-checkpoint",
        "SIGKILL of `trustledger scheduler` as checkpoints are signed",
    )
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        workload = Workload.build(
            lab.keys, lab.settings.subject_prefix, ctx.size(2000, 20_000), ctx.options.seed
        )
        ingests, notes, kills = Ingests(lab), [], 0
        ingests.start()
        scheduler = lab.start("scheduler", extra=SCHEDULER_ENV)
        slices = ctx.points(2, 10) * 2

        async def publish_in_slices() -> None:
            for i in range(1, slices + 1):
                await workload.publish(lab.nats_url, up_to=i / slices)
                await asyncio.sleep(1.1)  # each slice grows the chains past a checkpoint tick

        publishing = asyncio.create_task(publish_in_slices())

        async def checkpoints() -> int:
            with contextlib.suppress(Exception):
                return int(await lab.store.pool.fetchval("SELECT count(*) FROM checkpoints"))
            return -1

        for _ in range(ctx.points(2, 10)):
            seen = await checkpoints()
            if not await wait_for(functools.partial(_more, checkpoints, seen), 30, 0.005):
                notes.append(f"no new checkpoint within 30 s (scheduler: {_last_error(scheduler)})")
                break
            scheduler.kill()
            kills += 1
            scheduler = lab.start("scheduler", extra=SCHEDULER_ENV)
        await publishing
        drain = await wait_drained(lab, workload, ingests.any_alive)

        # The last scheduler must sign every chain at its final head, over the
        # checkpoints its killed predecessors left.
        async def all_heads_signed() -> bool:
            unsigned = await lab.store.pool.fetchval(
                "SELECT count(*) FROM chains c WHERE c.head_seq > 0 AND NOT EXISTS"
                " (SELECT 1 FROM checkpoints k WHERE k.chain = c.chain AND k.size = c.head_seq)"
            )
            return bool(unsigned == 0)

        if not await wait_for(all_heads_signed, 30, 0.2):
            notes.append(f"the last scheduler did not sign every head ({_last_error(scheduler)})")
        code = await scheduler.terminate()
        if code != 0:
            notes.append(f"scheduler exited {code} on SIGTERM: {_last_error(scheduler)}")
        result = await finish(name, fault, lab, workload, ingests, started, kills, notes)
        result.extra["checkpoints"] = await checkpoints()
        result.extra["drain_s"] = round(drain.seconds, 1)
        return result


async def _more(count: Callable[[], Awaitable[int]], seen: int) -> bool:
    return await count() > seen


# ---- 8. `up` killed during its first start ------------------------------------------------


UP_KILL_POINTS: tuple[tuple[str, Callable[[Path], bool]], ...] = (
    ("initdb (PG_VERSION written)", lambda d: _initdb_started(d)),
    ("embedded NATS starting", lambda d: (d / "nats").exists()),
    ("migrations (runtime.json written)", lambda d: (d / "runtime.json").exists()),
)


async def up_killed_first_start(ctx: Context) -> Result:
    """SIGKILL `trustledger up` (and what it spawned) during its first start on a new
    folder; a second `up` on the same folder must start, ingest and verify."""
    name, fault = (
        "up-killed-first-start",
        "SIGKILL of `trustledger up` (process group) during first start",
    )
    started = time.monotonic()
    points = UP_KILL_POINTS[: ctx.points(1, len(UP_KILL_POINTS))]
    notes: list[str] = []
    findings: list[Findings] = []
    kills = 0
    for i, (label, reached) in enumerate(points, start=1):
        folder = ctx.root / name / f"data-{i}"
        folder.mkdir(parents=True)
        port = free_tcp_port()
        first = _start_up(ctx, folder, port, f"up-{i}-first")
        if not await wait_for(
            functools.partial(_reached_or_dead, reached, folder, first), 120, 0.002
        ):
            notes.append(f"{label}: never reached")
        if first.alive:
            first.kill_group()
            kills += 1
        else:
            notes.append(f"{label}: `up` exited before the kill ({first.returncode})")
        await _wait_no_servers(folder)
        second = _start_up(ctx, folder, port, f"up-{i}-second")
        try:
            ready = await _wait_ready(second, port)
            if not ready:
                notes.append(
                    f"after a kill at {label}: `up` on the same folder did not become ready ({_last_error(second)})"
                )
                continue
            findings.append(await _publish_and_check(ctx, folder, f"{name}-{i}", notes, label))
        finally:
            code = await second.terminate(30)
            if second.returncode is not None and code not in (0, None) and not notes:
                notes.append(f"after a kill at {label}: `up` exited {code} on SIGTERM")
            if second.alive:
                second.kill_group()
            await _wait_no_servers(folder)
    merged = _merge(findings)
    return Result(name, fault, kills, merged, time.monotonic() - started, notes)


def _initdb_started(folder: Path) -> bool:
    """initdb writes PG_VERSION first, in whichever folder `up` has it build the cluster."""
    with contextlib.suppress(OSError):
        return any((d / "PG_VERSION").exists() for d in folder.iterdir() if d.is_dir())
    return False


def _start_up(ctx: Context, folder: Path, port: int, label: str) -> Proc:
    env = clean_env()
    env |= {"TRUSTLEDGER_POSTURE_INTERVAL_S": "1", "TRUSTLEDGER_LOG_LEVEL": "INFO"}
    return Proc(
        label,
        ["up", "--data-dir", str(folder), "--port", str(port)],
        env,
        folder.parent / f"{label}.log",
        cwd=ctx.options.service_tree,
    )


async def _wait_ready(proc: Proc, port: int) -> bool:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:

        async def ready() -> bool:
            if not proc.alive:
                return True
            with contextlib.suppress(httpx.HTTPError):
                return (await http.get("/readyz")).status_code == 200
            return False

        return await wait_for(ready, UP_READY_TIMEOUT_S, 0.2) and proc.alive


async def _wait_no_servers(folder: Path) -> None:
    """The embedded servers of a killed `up` follow it (parent-death signal); wait."""
    for sub in ("postgres", "nats"):
        await wait_for(functools.partial(_no_process_in, folder / sub), 30, 0.1)


def _no_process_in(directory: Path) -> bool:
    return not _pids_with_cwd(directory)


def _reached_or_dead(reached: Callable[[Path], bool], folder: Path, proc: Proc) -> bool:
    return reached(folder) or not proc.alive


async def _publish_and_check(
    ctx: Context, folder: Path, name: str, notes: list[str], label: str
) -> Findings:
    runtime = json.loads((folder / "runtime.json").read_text())
    seed = runtime.get("nats_seed_file")  # up's NATS admits its own users only
    settings = Settings(
        database_url=runtime["database_url"], nats_url=runtime["nats_url"], data_dir=folder,
        subject_prefix=runtime.get("subject_prefix", "tl"),
        nats_seed_file=None if seed is None else Path(seed),
    )  # fmt: skip
    store = await LedgerStore.connect(runtime["database_url"], max_size=4)
    lab = await Lab.attach(name, ctx.root / name, settings, store, ORGS)
    try:
        for org in (*ORGS, GATEWAY):
            lab.keys[org], _ = await register_new_key(store, org, "fault suite")
        workload = Workload.build(lab.keys, settings.subject_prefix, 300, ctx.options.seed)
        await workload.publish(settings.nats_url or "", seed_file=settings.nats_seed_file)
        drain = await wait_drained(lab, workload, stall_s=15)
        if not drain.complete:
            notes.append(f"after a kill at {label}: {drain.reason}")
        return await check_ledger(lab, workload)
    finally:
        await lab.close(keep=True)


def _merge(all_findings: list[Findings]) -> Findings | None:
    if not all_findings:
        return None
    merged = Findings(verify_ok=True, projections_equal=True)
    for f in all_findings:
        for attr in (
            "acked",
            "unacked",
            "chained",
            "lost",
            "duplicated",
            "out_of_order",
            "gaps",
            "unexpected_quarantine",
        ):
            setattr(merged, attr, getattr(merged, attr) + getattr(f, attr))
        merged.verify_ok &= f.verify_ok
        merged.projections_equal &= f.projections_equal
        merged.notes += f.notes
        merged.verify_findings += f.verify_findings
        merged.lost_examples += f.lost_examples
    return merged


# ---- 9. poison messages ------------------------------------------------------------------


def poison_scenario(p: poisons.Poison) -> Scenario:
    async def run(ctx: Context) -> Result:
        return await _poison(ctx, p)

    run.__name__ = f"poison_{p.name}"
    run.__doc__ = f"Poison: {p.description}."
    return run


async def _poison(ctx: Context, p: poisons.Poison) -> Result:
    name, fault = f"poison-{p.name}", f"published to a running ingest: {p.description}"
    started = time.monotonic()
    async with ctx.lab(name) as lab:
        prefix = lab.settings.subject_prefix
        workload = Workload.build(lab.keys, prefix, ctx.size(150, 1500), ctx.options.seed)
        ingests, notes = Ingests(lab), []
        ingests.start()
        await workload.publish(lab.nats_url, up_to=0.5)
        # The hostile message comes alone: what it stalls is only what follows it.
        if not await wait_progress(lab, lab.base_entries + len(workload.acked), ingests, 60):
            notes.append("ingest did not chain the good events before the hostile one")
        nc = await connect_publisher(lab.nats_url)
        try:
            for event in p.setup():
                m = to_message(event, lab.keys[event.org], prefix)
                if await publish_acked(nc.jetstream(), m.subject, m.data, m.headers) is None:
                    notes.append(f"setup event {event.id} was not acked")
        finally:
            await nc.close()
        raw = p.build(prefix, lab.keys)
        try:
            poison_seq: int | None = await raw_publish(
                lab.nats_url, raw.subject, raw.payload, raw.headers
            )
        except RawPublishError as e:
            poison_seq = None
            notes.append(f"NATS did not take the message ({e}); nothing reached ingest")
        # The next good event must land within seconds, whatever the poison did.
        next_unit = next(iter(workload.units))
        t_next = time.monotonic()
        await workload.publish_next(lab.nats_url, next_unit)
        key = workload.last_published(next_unit)

        async def next_chained() -> bool:
            return bool(await lab.store.pool.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE chain = $1 AND event_id = $2", *key
            ))  # fmt: skip

        next_ok = await wait_for(next_chained, POISON_NEXT_S, 0.05)
        next_s = time.monotonic() - t_next
        if not next_ok:
            notes.append(f"the good event after it was not chained within {POISON_NEXT_S:.0f} s")
        await workload.publish(lab.nats_url)
        outcome = await _poison_outcome(lab, poison_seq)
        if poison_seq is not None:
            if outcome is None:
                notes.append("the hostile message is neither quarantined nor chained")
            elif p.expect == "quarantine" and not outcome.startswith("quarantined"):
                notes.append(f"expected quarantine, got: {outcome}")
        extra: dict[str, Any] = {"outcome": outcome, "next_good_chained_s": round(next_s, 2)}
        if p.posture_read:
            read_s = await _time_posture_read(lab)
            extra["posture_read_s"] = round(read_s, 3)
            if read_s > POSTURE_READ_LIMIT_S:
                notes.append(f"a posture read of {poisons.ORG}/{poisons.AGENT} took {read_s:.1f} s")
        if ingests.died_alone():
            notes.append("ingest exited (it must never exit on a message)")
        result = await finish(
            name, fault, lab, workload, ingests, started, 1 if poison_seq else 0, notes,
            allowed_quarantine={poison_seq} if poison_seq else None,
            stall_s=3.0 if not next_ok else None,
        )  # fmt: skip
        result.extra |= extra
        return result


async def _poison_outcome(lab: Lab, seq: int | None) -> str | None:
    """What became of the message at stream `seq`: quarantined (reason) or chained."""
    if seq is None:
        return "not in the stream"

    async def settled() -> str | None:
        row = await lab.store.pool.fetchrow(
            "SELECT reason, detail FROM quarantine WHERE stream_seq = $1", seq
        )
        if row is not None:
            return f"quarantined: {row['reason']}: {str(row['detail'])[:120]}"
        chained = await lab.store.pool.fetchval(
            "SELECT chain || '#' || seq FROM ledger_entries WHERE stream_seq = $1", seq
        )
        return None if chained is None else f"chained at {chained}"

    found: list[str] = []

    async def check() -> bool:
        outcome = await settled()
        if outcome is not None:
            found.append(outcome)
        return outcome is not None

    await wait_for(check, 3.0, 0.1)
    return found[0] if found else None


_POSTURE_READ = """
import asyncio, sys, time
from datetime import datetime
from service.adapters.postgres import LedgerStore
from service.app.posture import assess_agent

async def main():
    store = await LedgerStore.connect(sys.argv[1], max_size=1)
    try:
        t = time.monotonic()
        await assess_agent(store, sys.argv[2], sys.argv[3], datetime.fromisoformat(sys.argv[4]))
        print(time.monotonic() - t)
    finally:
        await store.close()

asyncio.run(main())
"""


async def _time_posture_read(lab: Lab) -> float:
    """One posture read of the agent the pattern poisons target, by the service's own
    code (the tree the roles run from), as of the workload's time so that the
    hostile event is inside the windows it reads."""
    as_of = (T0 + timedelta(hours=1)).isoformat()
    args = [lab.database_url, poisons.ORG, poisons.AGENT, as_of]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _POSTURE_READ, *args,
        cwd=lab.service_tree or REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 120.0
    try:
        return float(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("inf")


# ---- the registry ------------------------------------------------------------------------


SCENARIOS: dict[str, Scenario] = {
    "ingest-sigkill": ingest_killed,
    "postgres-sigkill-restart": postgres_restarted,
    "nats-sigkill-restart": nats_restarted,
    "ingest-nats-cut": nats_connection_cut,
    "ingest-postgres-cut": postgres_connection_cut,
    "ingest-network-stall": network_stalled,
    "two-ingests-one-killed": two_ingests,
    "scheduler-sigkill-checkpoint": scheduler_killed,
    "up-killed-first-start": up_killed_first_start,
    **{f"poison-{p.name}": poison_scenario(p) for p in poisons.POISONS},
}


async def run_scenario(ctx: Context, name: str) -> Result:
    """Run one scenario; a suite error becomes a failed result naming it."""
    started = time.monotonic()
    try:
        return await SCENARIOS[name](ctx)
    except Exception as e:  # the suite itself broke: report it as this scenario's failure
        return Result(
            name, "(suite error)", 0, None, time.monotonic() - started, [f"{type(e).__name__}: {e}"]
        )


def cleanup(root: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
