"""The fault suite in its quick mode (`python -m faults --quick`), one test per scenario,
against the session's real PostgreSQL and NATS; and the suite's own instruments (the
proxy, the checker), shown to see what they are there to see.

A scenario fails with its result line: how many acked events were lost, duplicated
or reordered, whether the ledger verified and the projections equalled a rebuild,
and why (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from conftest import Servers

from faults.checker import check_ledger
from faults.lab import Lab
from faults.proxy import TcpProxy
from faults.scenarios import SCENARIOS, Context, Options, run_scenario
from faults.workload import ORGS, Workload
from service.app.ingest import ingest_batch
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming

SEED = 1


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_no_acked_event_is_lost_duplicated_or_reordered_when_the_fault_is_injected(
    servers: Servers, tmp_path: Path, name: str
) -> None:
    """Each scenario, quick: every acked event chained once in order, the ledger verifies."""
    ctx = Context(
        Options(full=False, seed=SEED),
        servers.database_url,
        servers.nats_url,
        tmp_path,
        random.Random(f"{SEED}/{name}"),  # noqa: S311 - reproducible fault points
    )
    result = await run_scenario(ctx, name)
    assert result.ok, result.line()


# ---- the instruments ----------------------------------------------------------------------


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_proxy_forwards_pauses_and_resets_both_sides_when_cut() -> None:
    """Bytes pass; a pause holds them; a cut (armed or not) resets the client's connection."""
    server, port = await _echo_server()
    proxy = TcpProxy("127.0.0.1", port)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"

        proxy.pause()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.resume()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"

        proxy.arm_cut(3)
        writer.write(b"abcdef")
        await asyncio.wait_for(proxy.armed_fired.wait(), 5)
        assert (proxy.cuts, proxy.connections_cut) == (1, 1)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(6), 5)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"again")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"again"
        assert proxy.cut() == 1
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
    finally:
        await proxy.close()
        server.close()


async def test_checker_counts_lost_and_reordered_events_when_the_ledger_misses_or_swaps_them(
    servers: Servers, tmp_path: Path
) -> None:
    """One acked event never chained and two swapped: lost 1, out of order 1, nothing else."""
    lab = await Lab.open("checker", tmp_path, servers.database_url, servers.nats_url, ORGS)
    try:
        prefix = lab.settings.subject_prefix
        workload = Workload.build(lab.keys, prefix, 120, SEED, gateway=False)
        unit = workload.units[next(iter(workload.units))]
        for m in unit:
            workload.acked[(m.org, m.event_id)] = m  # as if JetStream had acked them all
        chained = [unit[0], unit[1], unit[3], unit[2], *unit[5:]]  # 4 missing, 2 and 3 swapped
        messages = [
            Incoming(m.subject, m.data, m.headers[KEY_ID_HEADER], m.headers[SIGNATURE_HEADER], i)
            for i, m in enumerate(chained, start=1)
        ]
        await ingest_batch(lab.store, messages, prefix)

        findings = await check_ledger(lab, workload)

        assert (findings.lost, findings.out_of_order) == (1, 1), findings
        assert (findings.duplicated, findings.gaps, findings.unexpected_quarantine) == (0, 0, 0)
        assert findings.verify_ok
        assert findings.projections_equal
        assert not findings.ok
    finally:
        await lab.close()
