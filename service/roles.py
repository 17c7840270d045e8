"""The composition root: wires adapters, use cases and the API into process roles.

`trustledger up` runs every role in one process (and, without DATABASE_URL /
NATS_URL, the embedded servers as children); `api`, `ingest` and `scheduler`
run one role each, for deployments where they scale apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service import metrics
from service.adapters import broker
from service.adapters.access_store import AccessStore
from service.adapters.data_dir_lock import DataDirLock
from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres
from service.adapters.keyfile import load_or_create_key
from service.adapters.migrations import migrate
from service.adapters.nats_auth import NatsUsers
from service.adapters.postgres import LedgerStore, StreamPosition
from service.adapters.supervision import Supervisor
from service.api.app import HealthCheck, create_app
from service.api.nats_credentials import NatsCredentialsSetup
from service.api.server import server_options
from service.app.access import OPERATOR_KEY_FILE, bootstrap_operator_key
from service.app.checkpoints import make_due_checkpoints
from service.app.consumer import IngestWorker
from service.app.ledger_key import LedgerSigner, ensure_registered, ledger_keys
from service.app.posture import bands_count, reassess_due
from service.app.rebuild import rebuild_projections
from service.app.verify import IncrementalVerifier
from service.config import Settings
from service.domain.audit import LEDGER_CHAIN
from service.domain.bus_access import service_inbox_prefix
from service.errors import BrokerError, ConfigError, StorageUnavailableError

log = logging.getLogger(__name__)

RUNTIME_FILE = "runtime.json"


@dataclass(frozen=True, slots=True)
class Roles:
    api: bool = True
    ingest: bool = True
    scheduler: bool = True

    @property
    def names(self) -> list[str]:
        return [n for n in ("api", "ingest", "scheduler") if getattr(self, n)]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _check_port_free(host: str, port: int) -> None:
    """Fail early and clearly when the HTTP port is taken (uvicorn would exit from a task)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose --port") from e


async def run_roles(
    settings: Settings, roles: Roles, stop: asyncio.Event, bootstrap_operator: bool = False
) -> None:
    """Run the given roles until `stop` is set, then shut them down in order.

    `bootstrap_operator` (`up` on one machine): on a new data folder, issue an
    operator API key, write it to the data folder (0600) and print it once."""
    dsn, nats_url = settings.require_servers()
    _check_port_free(settings.host, settings.port)
    await migrate(dsn)
    store = await LedgerStore.connect(dsn)
    if bootstrap_operator:
        try:
            await _announce_operator_key(store, settings.data_dir)
        except BaseException:
            await store.close()
            raise
    try:
        nc = await broker.connect(
            nats_url,
            name=f"trustledger-{'-'.join(roles.names)}",
            seed_file=settings.nats_seed_file,
            inbox_prefix=service_inbox_prefix(settings.subject_prefix),
        )
    except BaseException:
        await store.close()
        raise
    tasks: list[asyncio.Task[None]] = []
    scheduler: AsyncIOScheduler | None = None
    server: _Server | None = None
    signer: LedgerSigner | None = None
    try:
        js = nc.jetstream()
        stream_created = await broker.ensure_stream(js, settings)

        async def nats_ready() -> None:
            if not nc.is_connected:
                raise ConnectionError("not connected to NATS")

        checks: dict[str, HealthCheck] = {"postgres": store.ping, "nats": nats_ready}

        if roles.ingest:
            await _catch_up_projections(store)
            fresh = StreamPosition(settings.consumer, settings.stream, stream_created, 0)

            async def bind(after_seq: int) -> broker.EventConsumer:
                return await broker.EventConsumer.bind(js, settings, after_seq)

            worker = IngestWorker(
                store,
                bind,
                fresh,
                settings.subject_prefix,
                settings.batch_max,
                settings.fetch_wait_s,
                stall_s=settings.ingest_stall_s,
            )
            tasks.append(asyncio.create_task(worker.run(stop), name="ingest"))
            checks["ingest"] = worker.check_progress

        if roles.scheduler or roles.api:
            signer = await load_ledger_signer(store, settings)
        if roles.scheduler:
            assert signer is not None
            verifier = IncrementalVerifier(store)
            scheduler = _scheduler(store, signer, verifier, settings)
            scheduler.start()

            async def ledger_verified() -> None:
                if verifier.broken:
                    raise RuntimeError("; ".join(str(f) for f in verifier.broken.values()))

            checks["ledger"] = ledger_verified

        # Every process serves health and metrics; only the api role serves /v1.
        app = create_app(
            store,
            checks,
            query_api=roles.api,
            signer=signer if roles.api else None,
            nats_credentials=NatsCredentialsSetup(
                NatsUsers(settings.nats_users_path), settings.subject_prefix
            ),
        )
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            **server_options(),  # type: ignore[arg-type]  # uvicorn.Config's keywords, bounded
        )
        server = _Server(config)
        tasks.append(asyncio.create_task(server.serve(), name="http"))

        log.info("running %s", ", ".join(roles.names))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        if server is not None:
            server.should_exit = True
        if tasks:
            # The ingest loop finishes its batch in flight; the API drains connections.
            await asyncio.wait(tasks, timeout=15)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        # Not drain(): it waits for the pull subscription's open fetch request
        # to expire. Acks were already published; flush sends them, then close.
        # NATS may be gone by now: nothing here may keep the pool from closing.
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await nc.close()
        await store.close()
        log.info("stopped")


async def _announce_operator_key(store: LedgerStore, data_dir: Path) -> None:
    token = await bootstrap_operator_key(AccessStore.of(store), data_dir)
    if token is not None:
        # Standard output, not the log: the one time this secret is shown.
        print(
            f"operator API key (shown once, kept in {data_dir / OPERATOR_KEY_FILE}, mode 0600):"
            f"\n{token}",
            flush=True,
        )


async def _catch_up_projections(store: LedgerStore) -> None:
    """Rebuild the projections when they lag the log (a migration emptied them, or
    they were restored from an older backup): ingest only ever applies new entries."""
    behind = await store.projections_behind()
    if behind:
        log.warning(
            "projections are behind the log on %d chain(s) (%s); rebuilding them",
            len(behind), ", ".join(behind[:5]),
        )  # fmt: skip
        replayed = await rebuild_projections(store)
        log.info("projections rebuilt from %d entries", replayed)


def _scheduler(
    store: LedgerStore, signer: LedgerSigner, verifier: IncrementalVerifier, settings: Settings
) -> AsyncIOScheduler:
    """Jobs that run without events: signed checkpoints, incremental verification,
    posture re-assessment."""
    scheduler = AsyncIOScheduler(timezone="UTC")

    async def checkpoint_moved_chains() -> None:
        for made in await make_due_checkpoints(store, signer):
            log.info("checkpoint %s at size %d", made.chain, made.size)

    async def verify_new_entries() -> None:
        broken = await verifier.run()
        for chain, auditor in verifier.auditors.items():
            metrics.CHAIN_VERIFIED_SEQ.labels(chain).set(auditor.last_seq)
            metrics.CHAIN_BROKEN.labels(chain).set(1 if chain in broken else 0)
        for finding in broken.values():
            log.error("ledger verification failed: %s", finding)

    async def reassess_postures() -> None:
        # The tick is the scheduler's instant, read once and passed down: the
        # posture model itself never reads a clock.
        tick = datetime.now(UTC)
        assessed = await reassess_due(store, tick)
        metrics.POSTURES_ASSESSED.inc(len(assessed))
        for band, count in (await bands_count(store)).items():
            metrics.AGENTS_BY_BAND.labels(band).set(count)

    for job, seconds, name in (
        (checkpoint_moved_chains, settings.checkpoint_interval_s, "checkpoints"),
        (verify_new_entries, settings.verify_interval_s, "verify-chains"),
        (reassess_postures, settings.posture_interval_s, "postures"),
    ):
        scheduler.add_job(
            _outage_tolerant(name, job), "interval", seconds=seconds, id=name,
            max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
        )  # fmt: skip
    return scheduler


def _outage_tolerant(
    name: str, job: Callable[[], Awaitable[None]]
) -> Callable[[], Awaitable[None]]:
    """A scheduler job that reports an outage (database or broker down) as one warning
    line and tries again at its next tick, instead of a traceback per tick."""

    async def run() -> None:
        try:
            await job()
        except (StorageUnavailableError, BrokerError) as e:
            log.warning("%s job skipped, will try again at its next tick: %s", name, e)

    return run


async def load_ledger_signer(store: LedgerStore, settings: Settings) -> LedgerSigner:
    """The ledger key from its file (created on first start), registered in `_ledger`."""
    path = settings.ledger_key_path
    if not path.exists():
        registered = await ledger_keys(store)
        if registered.registered:
            raise ConfigError(
                f"no ledger key at {path}, but the ledger already has keys "
                f"({', '.join(sorted(registered.registered))}): restore the key file, or set "
                "TRUSTLEDGER_LEDGER_KEY_FILE to it"
            )
    key, created = load_or_create_key(path, LEDGER_CHAIN)
    if created:
        log.info("created the ledger signing key %s in %s", key.key_id, settings.ledger_key_path)
    signer = LedgerSigner(settings.ledger_name, key)
    await ensure_registered(store, signer)
    return signer


def _install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _serve_until_signal(settings: Settings, roles: Roles) -> None:
    stop = asyncio.Event()
    _install_stop_signals(stop)
    await run_roles(settings, roles, stop)


def run_role(settings: Settings, roles: Roles) -> None:
    """Run roles against the configured servers until SIGINT/SIGTERM."""
    settings.require_servers()
    asyncio.run(_serve_until_signal(settings, roles))


def run_up(settings: Settings) -> None:
    """Everything on one machine: embedded servers unless URLs are given, then every role.

    The data folder is locked first, so a second `up` on it is refused before it
    touches anything. A supervisor restarts an embedded server that dies; when it
    cannot, the roles stop and its EmbeddedServerError is raised."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with DataDirLock.acquire(data_dir, f"http://{settings.host}:{settings.port}"):
        _up_locked(settings)


def _up_locked(settings: Settings) -> None:
    data_dir = settings.data_dir
    _check_port_free(settings.host, settings.port)  # before minutes of first-run initdb
    postgres = nats = None
    supervisor: Supervisor | None = None
    # SIGTERM during the embedded servers' start must still stop them: turn it
    # into KeyboardInterrupt until the event loop installs its own handlers.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        database_url, nats_url = settings.database_url, settings.nats_url
        if database_url is None:
            postgres = EmbeddedPostgres(data_dir / "postgres")
            database_url = postgres.start()
            log.info("embedded PostgreSQL at %s", database_url)
        if nats_url is None:
            # With authentication: only the service's own NATS user and the org users
            # issued by `trustledger orgs nats-creds` may connect (docs/operations.md §8).
            nats = EmbeddedNats(data_dir / "nats", sync_always=settings.nats_sync_always, auth=True)
            nats_url = nats.start()
            log.info("embedded NATS at %s", nats_url)
            assert nats.users is not None
            settings = replace(settings, nats_seed_file=nats.users.service_seed_path)
        settings = settings.with_servers(database_url, nats_url)
        _write_runtime(settings)
        supervisor = Supervisor([server for server in (postgres, nats) if server is not None])
        signal.signal(signal.SIGTERM, previous)
        asyncio.run(_serve_supervised(settings, supervisor))
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if supervisor is not None:
            # Only now: the roles have stopped, and the servers it restarted get
            # their stop signal when its thread ends (see supervision.py).
            supervisor.close()
        (data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        if nats is not None:
            nats.stop()
        if postgres is not None:
            postgres.stop()
    if supervisor is not None and supervisor.failure is not None:
        raise supervisor.failure


async def _serve_supervised(settings: Settings, supervisor: Supervisor) -> None:
    """Every role until SIGINT/SIGTERM, or until an embedded server is lost for good."""
    stop = asyncio.Event()
    _install_stop_signals(stop)
    loop = asyncio.get_running_loop()

    def give_up() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to stop
            loop.call_soon_threadsafe(stop.set)

    supervisor.start(give_up)
    await run_roles(settings, Roles(), stop, bootstrap_operator=True)


def _write_runtime(settings: Settings) -> None:
    """Tell other `trustledger` commands on this machine where the servers are."""
    path = settings.data_dir / RUNTIME_FILE
    path.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "database_url": settings.database_url,
                "nats_url": settings.nats_url,
                "api_url": f"http://{settings.host}:{settings.port}",
                "subject_prefix": settings.subject_prefix,
                # The service's NATS identity (a path, not the seed; the file is 0600):
                # commands of the data folder's owner on this machine connect with it.
                "nats_seed_file": (
                    None if settings.nats_seed_file is None else str(settings.nats_seed_file)
                ),
            },
            indent=2,
        )
    )


def running_api_url(settings: Settings) -> str | None:
    """Where a running `trustledger up` on this data dir serves HTTP, if one runs."""
    try:
        runtime = json.loads((settings.data_dir / RUNTIME_FILE).read_text())
        os.kill(int(runtime["pid"]), 0)
        return str(runtime["api_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def discover(settings: Settings) -> Settings:
    """Fill missing server URLs from a running `trustledger up` on the same data dir,
    and, when its NATS is the one used, the service's NATS identity."""
    if settings.database_url and settings.nats_url:
        return settings
    path: Path = settings.data_dir / RUNTIME_FILE
    try:
        runtime = json.loads(path.read_text())
        os.kill(int(runtime["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return settings
    seed_file = settings.nats_seed_file
    if settings.nats_url is None and seed_file is None and runtime.get("nats_seed_file"):
        seed_file = Path(runtime["nats_seed_file"])
    return replace(
        settings.with_servers(
            settings.database_url or runtime["database_url"],
            settings.nats_url or runtime["nats_url"],
        ),
        nats_seed_file=seed_file,
    )
