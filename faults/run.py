"""The fault suite: `python -m faults [--quick|--full] [--only NAME ...] [--events N]
[--seed S] [--json FILE]`.

Starts an embedded PostgreSQL and NATS in a temporary folder (or uses those
TRUSTLEDGER_TEST_DATABASE_URL / TRUSTLEDGER_TEST_NATS_URL name), runs every
scenario of faults/scenarios.py against them with the service roles as real
processes, prints one line per scenario and exits non-zero if any check
failed. docs/reliability.md explains each scenario and holds the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from faults.scenarios import SCENARIOS, Context, Options, Result, cleanup, run_scenario
from faults.servers import SharedServers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m faults",
        description="Break ingest on purpose against real servers; check that nothing "
        "acknowledged is lost, duplicated or reordered, and that the ledger verifies.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="few events and fault points (CI)")
    mode.add_argument("--full", action="store_true", help=">= 50k events, >= 20 kill points")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=sorted(SCENARIOS), help="these scenarios"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--events", type=int, help="events per scenario (overrides the mode)")
    parser.add_argument("--seed", type=int, default=1, help="random fault points (default 1)")
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results as JSON ('-': stdout)"
    )
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the table of docs/reliability.md ('-': stdout)",
    )
    parser.add_argument("--keep", action="store_true", help="keep databases, streams and logs")
    parser.add_argument(
        "--service-tree",
        type=Path,
        metavar="DIR",
        help="run the service roles from another checkout (e.g. one before a fix)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:30} {(scenario.__doc__ or '').strip().splitlines()[0]}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The suite's own connections see every fault it injects; that noise is expected.
    for noisy in ("asyncpg.pool", "service.adapters.broker"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    options = Options(
        full=bool(args.full),
        events=args.events,
        seed=args.seed,
        keep=args.keep,
        service_tree=args.service_tree.resolve() if args.service_tree else None,
    )
    names = args.only or list(SCENARIOS)
    root = Path(tempfile.mkdtemp(prefix="tlfaults-"))
    servers = SharedServers(root).start()  # on the main thread: see service/adapters/embedded.py
    started = time.monotonic()
    try:
        results = asyncio.run(_run_all(options, servers, root, names))
    finally:
        servers.stop()
        cleanup(root, options.keep)
    failed = [r for r in results if not r.ok]
    mode = "full" if options.full else "quick"
    print(
        f"{len(results) - len(failed)}/{len(results)} scenarios passed ({mode}, seed {options.seed},"
        f" {time.monotonic() - started:.0f} s)" + (f"; kept {root}" if options.keep else "")
    )
    if args.json:
        document = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": mode,
            "seed": options.seed,
            "machine": f"{platform.machine()}, {platform.system()} {platform.release()}",
            "results": [r.as_dict() for r in results],
        }
        text = json.dumps(document, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.markdown:
        table = markdown_table(results, mode, options.seed)
        if args.markdown == "-":
            print(table)
        else:
            Path(args.markdown).write_text(table)
    return 1 if failed else 0


def markdown_table(results: list[Result], mode: str, seed: int) -> str:
    """The fault table of docs/reliability.md, one row per scenario."""
    rows = [
        "| scenario | fault, and how it is injected | times | events acked | lost | duplicated"
        " | out of order | verifies | projections = rebuild | s | reproduce |",
        "|---|---|--:|--:|--:|--:|--:|---|---|--:|---|",
    ]
    for r in results:
        d = r.as_dict()
        checked = r.findings is not None
        rows.append(
            f"| {'' if r.ok else '**FAIL** '}`{r.name}` | {r.fault} | {d['faults_injected']}"
            f" | {d['events_acked']:,} | {d['lost']:,} | {d['duplicated']}"
            f" | {d['out_of_order']} | {('yes' if d['verify_ok'] else 'NO') if checked else '-'}"
            f" | {('yes' if d['projections_equal_rebuild'] else 'NO') if checked else '-'}"
            f" | {d['seconds']:.0f} | `python -m faults --{mode} --seed {seed} --only {r.name}` |"
        )
    return "\n".join(rows) + "\n"


async def _run_all(
    options: Options, servers: SharedServers, root: Path, names: list[str]
) -> list[Result]:
    results = []
    for i, name in enumerate(names):
        ctx = Context(
            options,
            servers.database_url,
            servers.nats_url,
            root,
            random.Random(f"{options.seed}/{name}"),  # noqa: S311 - reproducible fault points
        )
        result = await run_scenario(ctx, name)
        print(result.line(), flush=True)
        results.append(result)
        del i
    return results


if __name__ == "__main__":
    sys.exit(main())
