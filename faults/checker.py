"""What must hold after every fault, and the counts when it does not.

After a scenario (once ingest has drained), from the ledger itself:

* every event whose publish JetStream acked is chained, once (by org and id);
* along each chain, every unit's `n` strictly increases (per-agent order);
* each chain's seqs run 1..head without a gap;
* nothing but the scenario's own hostile messages sits in the quarantine;
* the whole ledger verifies (`verify_all`: links, hashes, signatures, checkpoints);
* the projections equal a rebuild of them from the log.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors

from faults.lab import Lab
from faults.workload import Workload, split_id
from service.app.rebuild import rebuild_projections
from service.app.verify import verify_all
from service.domain.audit import LEDGER_CHAIN

DRAIN_STALL_S = 20.0
"""No new entry for this long, with messages never delivered: ingest is stuck."""
REDELIVERY_WAIT_S = 75.0
"""No new entry for this long, with messages delivered but unacked: the broker
redelivers them after the consumer's ack_wait (60 s, service/adapters/broker.py),
so "lost" is only decided once a redelivery had its chance."""
DRAIN_SETTLE_S = 2.0
"""Nothing pending and no new entry for this long: ingest is done (whatever it lost)."""


@dataclass(slots=True)
class Drain:
    complete: bool
    """Every acked event is in the ledger."""
    reason: str
    seconds: float


async def wait_drained(
    lab: Lab,
    workload: Workload,
    alive: Callable[[], bool] | None = None,
    timeout_s: float = 300.0,
    stall_s: float = DRAIN_STALL_S,
) -> Drain:
    """Wait until every acked event is chained, or ingest is idle short of that, or stuck,
    or (`alive` false) no ingest process is left."""
    started = time.monotonic()
    expected = set(workload.acked)
    last_count, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic()
        count = await lab.chained()
        if count != last_count:
            last_count, last_change = count, now
        if count >= lab.base_entries + len(expected) and expected <= await _chained_ids(lab):
            return Drain(True, "drained", now - started)
        idle_s = now - last_change
        if alive is not None and not alive():
            return Drain(False, "no ingest process left running", now - started)
        pending = await lab.consumer_pending()
        if pending == (0, 0) and idle_s >= DRAIN_SETTLE_S:
            return Drain(False, "ingest idle, nothing pending, acked events missing", now - started)
        limit_s = REDELIVERY_WAIT_S if pending is not None and pending[0] == 0 else stall_s
        if idle_s >= limit_s:
            undelivered, unacked = pending or (-1, -1)
            return Drain(
                False,
                f"no progress for {limit_s:.0f} s ({undelivered} undelivered,"
                f" {unacked} delivered but unacked)",
                now - started,
            )
        if now - started > timeout_s:
            return Drain(False, f"not drained within {timeout_s:.0f} s", now - started)
        await asyncio.sleep(0.2)


async def _chained_ids(lab: Lab) -> set[tuple[str, str]]:
    rows = await lab.store.pool.fetch(
        "SELECT chain, event_id FROM ledger_entries WHERE chain <> $1", LEDGER_CHAIN
    )
    return {(r["chain"], r["event_id"]) for r in rows}


@dataclass(slots=True)
class Findings:
    """The checks of one scenario, as counts."""

    acked: int = 0
    unacked: int = 0
    chained: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    gaps: int = 0
    unexpected_quarantine: int = 0
    verify_ok: bool = False
    verify_findings: list[str] = field(default_factory=list)
    projections_equal: bool = False
    notes: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.out_of_order == 0
            and self.gaps == 0
            and self.unexpected_quarantine == 0
            and self.verify_ok
            and self.projections_equal
            and not self.notes
        )


async def check_ledger(
    lab: Lab, workload: Workload, allowed_quarantine_seqs: set[int] | None = None
) -> Findings:
    """Every check of the module docstring; `allowed_quarantine_seqs` are the stream
    seqs of the scenario's hostile messages (their quarantine rows are expected)."""
    f = Findings(acked=len(workload.acked), unacked=len(workload.unacked))
    pool = lab.store.pool
    rows = await pool.fetch(
        "SELECT chain, seq, event_id FROM ledger_entries WHERE chain <> $1 ORDER BY chain, seq",
        LEDGER_CHAIN,
    )
    heads = {
        r["chain"]: int(r["head_seq"])
        for r in await pool.fetch(
            "SELECT chain, head_seq FROM chains WHERE chain <> $1", LEDGER_CHAIN
        )
    }
    f.chained = len(rows)

    # Gaps: each chain holds exactly seqs 1..head.
    seqs_by_chain: dict[str, list[int]] = {}
    for r in rows:
        seqs_by_chain.setdefault(r["chain"], []).append(int(r["seq"]))
    for chain in set(heads) | set(seqs_by_chain):
        seqs = seqs_by_chain.get(chain, [])
        head = heads.get(chain, 0)
        f.gaps += len(set(range(1, max([head, *seqs]) + 1)) - set(seqs))

    # Exactly once, by (org, event id).
    counts = Counter((r["chain"], r["event_id"]) for r in rows)
    f.duplicated = sum(n - 1 for n in counts.values() if n > 1)
    missing = sorted(set(workload.acked) - set(counts))
    f.lost = len(missing)
    f.lost_examples = [f"{org}/{eid}" for org, eid in missing[:5]]
    if missing:
        gone = await missing_from_stream(lab, workload, missing)
        if gone:
            f.notes.append(f"{gone} of the lost events are no longer in the stream either")

    # Per-unit order along each chain: n strictly increasing.
    last_n: dict[tuple[str, str], int] = {}
    for r in rows:
        split = split_id(r["event_id"])
        if split is None:
            continue
        unit = (r["chain"], split[0])
        if unit in last_n and split[1] <= last_n[unit]:
            f.out_of_order += 1
        last_n[unit] = max(split[1], last_n.get(unit, -1))

    allowed = allowed_quarantine_seqs or set()
    quarantined = await pool.fetch("SELECT stream_seq, reason FROM quarantine")
    f.unexpected_quarantine = sum(1 for q in quarantined if q["stream_seq"] not in allowed)

    findings = await verify_all(lab.store)
    f.verify_ok = not findings
    f.verify_findings = [str(x) for x in findings[:3]]

    incremental = await lab.store.dump_projections()
    await rebuild_projections(lab.store)
    f.projections_equal = await lab.store.dump_projections() == incremental
    return f


async def missing_from_stream(lab: Lab, workload: Workload, lost: list[tuple[str, str]]) -> int:
    """How many of the `lost` events are no longer in the stream at the seq their ack
    named: those the broker lost, not ingest."""
    js = lab.nc.jetstream()
    gone = 0
    for key in lost:
        seq = workload.acked_seq.get(key)
        if seq is None:
            continue
        try:
            await js.get_msg(lab.settings.stream, seq)
        except (nats.errors.Error, TimeoutError):
            gone += 1
    return gone
