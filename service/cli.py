"""`trustledger`: thin commands over the use cases; errors map to exit codes here only.

Exit codes: 0 success, 1 a check failed (e.g. a broken chain), 2 usage or
configuration error, 3 a server could not be reached or started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import msgspec

from service import logs
from service.adapters.embedded import EmbeddedServerError
from service.adapters.keyfile import load_key, save_key
from service.config import Settings, load_settings, parse_log_level
from service.domain.events import (
    Event,
    EventDecodeError,
    decode_event,
)
from service.domain.signing import SigningKey
from service.errors import (
    AdmissionError,
    BrokerError,
    ConfigError,
    MigrationError,
    NotFoundError,
    StorageError,
    TrustLedgerError,
)

if TYPE_CHECKING:
    from service.adapters.nats_auth import NatsUsers

log = logging.getLogger("trustledger")

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Progress:
    """A one-line counter on stderr when it is a terminal; silent otherwise."""

    def __init__(self, label: str, rate: bool = False) -> None:
        self.label = label
        self.count = 0
        self._tty = sys.stderr.isatty()
        self._rate = rate
        self._started = time.monotonic()

    def __call__(self, n: int) -> None:
        self.count += n
        if self._tty and self.count % 1000 == 0:
            print(f"\r{self._text()}", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty:
            print(f"\r{self._text()}", file=sys.stderr)

    def _text(self) -> str:
        text = f"{self.label}: {self.count:,}"
        if self._rate:
            elapsed = time.monotonic() - self._started
            text += f" ({self.count / elapsed if elapsed > 0 else 0:,.0f}/s)"
        return text


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _settings(args: argparse.Namespace, discover: bool = True) -> Settings:
    from service.roles import discover as discover_servers

    settings = load_settings(
        data_dir=Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else None,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
    )
    return discover_servers(settings) if discover else settings


# ---- commands -----------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from service.roles import run_up

    settings = _settings(args, discover=False)
    log.info("data in %s; serving http://%s:%d", settings.data_dir, settings.host, settings.port)
    run_up(settings)
    return EXIT_OK


def cmd_role(args: argparse.Namespace) -> int:
    from service.roles import Roles, run_role

    roles = Roles(
        api=args.command == "api",
        ingest=args.command == "ingest",
        scheduler=args.command == "scheduler",
    )
    run_role(_settings(args), roles)
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.adapters.migrations import migrate

    dsn = _settings(args).require_database()
    applied = _run(migrate(dsn))
    print(f"applied {len(applied)} migration(s)" if applied else "database is up to date")
    return EXIT_OK


def _store_call(settings: Settings, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    from service.adapters.postgres import LedgerStore

    dsn = settings.require_database()

    async def go() -> T:
        store = await LedgerStore.connect(dsn, max_size=2)
        try:
            return await fn(store)
        finally:
            await store.close()

    return _run(go())


def register_new_key(settings: Settings, org: str, label: str) -> tuple[SigningKey, int]:
    """Generate a key pair for `org` and chain its registration as the operator."""
    from service.app.keys import register_new_key as register

    return _store_call(settings, lambda store: register(store, org, label))


def cmd_keys_create(args: argparse.Namespace) -> int:
    out = Path(args.out or f"{args.org}.key.json")
    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a private key")
    key, seq = register_new_key(_settings(args), args.org, args.label)
    save_key(key, out)
    print(
        f"registered key {key.key_id} for org {args.org} at {args.org}#{seq}; private key in {out}"
    )
    return EXIT_OK


def _read_events(sources: Sequence[str], org: str) -> list[Event]:
    """Events from JSON files (an object, an array, or one object per line); `-` is stdin."""
    events: list[Event] = []
    for source in sources or ["-"]:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        stripped = text.strip()
        if stripped.startswith("["):
            items = [json.dumps(x) for x in json.loads(stripped)]
        elif stripped.startswith("{") and "\n{" not in stripped:
            items = [stripped]
        else:
            items = [line for line in stripped.splitlines() if line.strip()]
        for n, item in enumerate(items, start=1):
            obj = json.loads(item)
            if isinstance(obj, dict):
                obj.setdefault("id", str(uuid.uuid4()))
                obj.setdefault("org", org)
                obj.setdefault("occurred_at", datetime.now(UTC).isoformat().replace("+00:00", "Z"))
            try:
                events.append(decode_event(json.dumps(obj).encode()))
            except EventDecodeError as e:
                raise ConfigError(f"{source} event {n}: {e.reason}: {e.detail}") from e
    return events


def cmd_publish(args: argparse.Namespace) -> int:
    from service.adapters.publisher import Publisher

    settings = _settings(args)
    nats_url = settings.require_nats()
    key = load_key(Path(args.key))
    events = _read_events(args.files, key.org)
    seed_file = Path(args.nats_seed) if args.nats_seed else settings.nats_seed_file

    async def go() -> None:
        connecting = Publisher.connect(nats_url, key, settings.subject_prefix, seed_file)
        async with await connecting as publisher:
            for event in events:
                ack = await publisher.publish(event)
                print(f"{event.id}: stream seq {ack.seq}{' (duplicate)' if ack.duplicate else ''}")

    _run(go())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from service.adapters.publisher import Publisher
    from service.app.demo import AGENT_ORG, GATEWAY_ORG, story
    from service.roles import running_api_url

    settings = _settings(args)
    nats_url = settings.require_nats()
    key_dir = settings.data_dir / "demo-keys"
    key_dir.mkdir(parents=True, exist_ok=True)
    keys: dict[str, SigningKey] = {}
    for org in (AGENT_ORG, GATEWAY_ORG):
        path = key_dir / f"{org}.key.json"
        if path.exists():
            keys[org] = load_key(path)
        else:
            keys[org], _ = register_new_key(settings, org, "demo")
            save_key(keys[org], path)
    seeds = _demo_nats_seeds(settings, key_dir, (AGENT_ORG, GATEWAY_ORG))
    # The story spaces actions 1-20 s apart; start it early enough to end about now.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=args.actions * 3 * 11)
    events = list(story(start, args.actions, seed=args.seed))
    progress = Progress("events published")

    async def go() -> None:
        publishers = {
            org: await Publisher.connect(nats_url, key, settings.subject_prefix, seeds[org])
            for org, key in keys.items()
        }
        try:
            for event in events:
                await publishers[event.org].publish(event)
                progress(1)
        finally:
            for publisher in publishers.values():
                await publisher.close()

    _run(go())
    progress.done()
    api = args.api or running_api_url(settings) or "http://127.0.0.1:8000"
    print(f"published {len(events)} signed events for {AGENT_ORG} and {GATEWAY_ORG}; now try:")
    auth = f'-H "Authorization: Bearer $(cat {settings.data_dir / "operator.key"})"'
    for agent in ("billing-bot", "ops-agent", "scraper"):
        print(f"  curl -s {auth} {api}/v1/agents/{AGENT_ORG}/{agent}/posture")
    print(f"  curl -s {auth} {api}/v1/agents/{AGENT_ORG}/ops-agent/timeline")
    print(f"  curl -s {auth} '{api}/v1/postures?band=untrusted'   # after the next tick")
    return EXIT_OK


def _demo_nats_seeds(
    settings: Settings, key_dir: Path, orgs: Sequence[str]
) -> dict[str, Path | None]:
    """Each demo org publishes as its own NATS user, as a real one would. On the machine
    of a `trustledger up` the demo issues them itself (kept beside its keys); elsewhere
    it publishes with the configured credentials (TRUSTLEDGER_NATS_SEED_FILE)."""
    from service.adapters.access_store import AccessStore
    from service.adapters.nats_auth import NatsUsers, read_seed_file, write_seed_file
    from service.app.access import create_org
    from service.app.nats_credentials import issue_org_credentials

    users = NatsUsers(settings.nats_users_path)
    if not users.exists():
        return dict.fromkeys(orgs, settings.nats_seed_file)
    active = {u.public_key for u in users.users() if u.active}
    seeds: dict[str, Path | None] = {}
    for org in orgs:
        path = key_dir / f"{org}.nk"
        if path.exists() and read_seed_file(path) in active:
            seeds[org] = path
            continue
        path.unlink(missing_ok=True)

        async def issue(store: Any, org: str = org) -> Any:
            access = AccessStore.of(store)
            now = datetime.now(UTC)
            if await access.org(org) is None:
                await create_org(access, org, "demo", now)
            return await issue_org_credentials(
                access, users, org, settings.subject_prefix, "demo", now
            )

        write_seed_file(path, _store_call(settings, issue).seed)
        seeds[org] = path
    users.reload_server()
    return seeds


def cmd_schemas(args: argparse.Namespace) -> int:
    from service.app.schemas import stale_schemas, write_schemas

    directory = Path(args.dir)
    if args.action == "write":
        written = write_schemas(directory)
        print(f"wrote {len(written)} file(s) to {directory}" if written else "schemas are current")
        return EXIT_OK
    stale = stale_schemas(directory)
    for name in stale:
        print(f"stale: {name}")
    return EXIT_FAILED if stale else EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from service.app.rebuild import rebuild_projections

    progress = Progress("entries replayed")
    count = _store_call(_settings(args), lambda store: rebuild_projections(store, progress))
    progress.done()
    print(f"rebuilt projections from {count:,} entries")
    return EXIT_OK


def cmd_ledger_verify(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from service.app.verify import verify_all
    from service.domain.audit import parallel_verifier

    progress = Progress("entries verified")
    with ThreadPoolExecutor(2) as pool:
        findings = _store_call(
            _settings(args),
            lambda store: verify_all(
                store, args.org, parallel_verifier(pool), progress, args.from_checkpoint
            ),
        )
    progress.done()
    for finding in findings:
        print(f"BROKEN {finding}")
    if not findings:
        print(f"ok: {progress.count:,} entries verified, every link, signature and checkpoint")
    return EXIT_FAILED if findings else EXIT_OK


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from service.app.checkpoints import make_checkpoint, make_due_checkpoints
    from service.roles import load_ledger_signer

    settings = _settings(args)

    async def go(store: Any) -> list[Any]:
        signer = await load_ledger_signer(store, settings)
        if args.org:
            return [await make_checkpoint(store, signer, args.org)]
        return list(await make_due_checkpoints(store, signer))

    for made in _store_call(settings, go):
        print(made.note, end="")
    return EXIT_OK


def cmd_ledger_rotate_key(args: argparse.Namespace) -> int:
    from service.app.ledger_key import LedgerSigner, ensure_registered, ledger_keys
    from service.domain.audit import LEDGER_CHAIN

    settings = _settings(args)
    path = settings.ledger_key_path
    if not path.exists():
        raise ConfigError(
            f"no ledger key at {path}: start the service once (it creates one), or point "
            "TRUSTLEDGER_LEDGER_KEY_FILE at the current key"
        )
    current = load_key(path)
    source = Path(args.new_key_file) if args.new_key_file else None
    new = SigningKey(
        org=LEDGER_CHAIN,
        seed=load_key(source).seed if source else SigningKey.generate(LEDGER_CHAIN).seed,
    )
    if new.key_id == current.key_id:
        raise ConfigError(f"{source} holds the current ledger key {current.key_id}")
    retired = path.with_name(f"{path.stem}.{current.key_id}.retired{path.suffix}")
    pending = path.with_name(f"{path.stem}.{new.key_id}.new{path.suffix}")
    if retired.exists():
        raise ConfigError(f"{retired} exists; refusing to overwrite a retired key")
    old_signer = LedgerSigner(settings.ledger_name, current)
    new_signer = LedgerSigner(settings.ledger_name, new)

    async def register(store: Any) -> int:
        keys = await ledger_keys(store)
        if current.key_id not in keys.active:
            raise ConfigError(
                f"the ledger key in {path} ({current.key_id}) is not an active key of "
                f"{LEDGER_CHAIN}: only a registered key can endorse its successor"
            )
        # The new private key is on disk before its registration is chained:
        # a registered key never exists without its file.
        if source is None or source.resolve() != pending.resolve():
            save_key(new, pending)
        try:
            return await ensure_registered(store, new_signer, endorser=old_signer)
        except StorageError as e:
            raise StorageError(
                f"{e}; the new key is kept in {pending}: run again with --new-key-file {pending}"
            ) from e

    seq = _store_call(settings, register)
    try:
        os.link(path, retired)  # exclusive: never replaces a file
    except FileExistsError as e:
        raise ConfigError(
            f"{retired} appeared meanwhile; the new key is registered and kept in {pending}: "
            f"move it to {path} yourself"
        ) from e
    except OSError:  # a file system without hard links
        save_key(current, retired)
    os.replace(pending, path)
    print(
        f"registered ledger key {new.key_id} at {LEDGER_CHAIN}#{seq}, endorsed by "
        f"{current.key_id}; {path} now holds the new key, the old one is in {retired}"
    )
    print("restart the api and scheduler processes to sign new checkpoints with the new key")
    return EXIT_OK


def cmd_orgs_create(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore
    from service.app.access import create_org

    org = _store_call(
        _settings(args),
        lambda store: create_org(AccessStore.of(store), args.org, args.name, datetime.now(UTC)),
    )
    print(f"created org {org.org}")
    return EXIT_OK


def cmd_orgs_list(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore

    orgs = _store_call(_settings(args), lambda store: AccessStore.of(store).orgs())
    for org in orgs:
        print(f"{org.org}\t{org.created_at.isoformat()}\t{org.display_name}")
    return EXIT_OK


def _nats_users(settings: Settings) -> NatsUsers:
    from service.adapters.nats_auth import NatsUsers

    users = NatsUsers(settings.nats_users_path)
    if not users.exists():
        raise ConfigError(
            f"no NATS users in {users.directory}: run `trustledger up` on this data folder "
            "(its NATS makes them), or, for an external NATS, `trustledger nats-init` with "
            "TRUSTLEDGER_NATS_USERS_DIR set (docs/operations.md §8)"
        )
    return users


def _reload_hint(users: NatsUsers, reloaded: bool) -> str:
    if reloaded:
        return "the embedded NATS reloaded its users: it applies now"
    return (
        f"no NATS server of {users.directory} runs here: it applies at the server's next start, "
        "or reload an external server now (nats-server --signal reload, "
        "docker compose kill -s HUP nats)"
    )


def cmd_orgs_nats_creds(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore
    from service.adapters.nats_auth import write_seed_file
    from service.app.nats_credentials import issue_org_credentials
    from service.domain.bus_access import org_inbox_prefix

    settings = _settings(args)
    users = _nats_users(settings)
    out = None if args.out == "-" else Path(args.out or f"{args.org}.nk")
    if out is not None and out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a credentials file")
    now = datetime.now(UTC)
    issued = _store_call(
        settings,
        lambda store: issue_org_credentials(
            AccessStore.of(store), users, args.org, settings.subject_prefix, args.label, now
        ),
    )
    user = issued.user
    if out is not None:
        try:
            write_seed_file(out, issued.seed)
        except BaseException:
            users.revoke(user.public_key, now)  # no user without its only copy of the seed
            raise
    hint = _reload_hint(users, users.reload_server())
    where = "below (stdout)" if out is None else f"in {out} (mode 0600)"
    print(
        f"NATS user {user.public_key} for org {args.org}: may publish on "
        f"{', '.join(user.publish)} only, with inbox prefix "
        f"{org_inbox_prefix(settings.subject_prefix, args.org)}. Its seed is shown once, "
        f"{where}; only the public key is kept. {hint[:1].upper()}{hint[1:]}.",
        file=sys.stderr,
    )
    if out is None:
        # Alone on stdout, so that SEED=$(trustledger orgs nats-creds acme -o -) works.
        print(issued.seed)
    return EXIT_OK


def cmd_orgs_nats_users(args: argparse.Namespace) -> int:
    users = _nats_users(_settings(args))
    for user in users.users():
        if args.org is not None and user.org != args.org:
            continue
        state = "active" if user.revoked_at is None else f"revoked {user.revoked_at.isoformat()}"
        print(
            f"{user.public_key}\t{user.org or '(service)'}\t{user.created_at.isoformat()}\t"
            f"{state}\t{','.join(user.publish)}\t{user.label}"
        )
    return EXIT_OK


def cmd_orgs_nats_revoke(args: argparse.Namespace) -> int:
    users = _nats_users(_settings(args))
    revoked = users.revoke(args.public_key, datetime.now(UTC))
    reloaded = users.reload_server()
    print(
        f"revoked NATS user {revoked.public_key} of org {revoked.org}; "
        f"{_reload_hint(users, reloaded)}"
    )
    return EXIT_OK


def cmd_nats_init(args: argparse.Namespace) -> int:
    from service.adapters.nats_auth import NatsUsers

    users = NatsUsers(_settings(args, discover=False).nats_users_path)
    made = users.ensure_service_user()
    print(
        f"{'created' if made else 'kept'} the service's NATS user (seed in "
        f"{users.service_seed_path}, mode 0600: TRUSTLEDGER_NATS_SEED_FILE for every role); "
        f"nats-server reads the users from {users.config_path}"
    )
    return EXIT_OK


def cmd_apikeys_create(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore
    from service.app.access import create_api_key

    issued = _store_call(
        _settings(args),
        lambda store: create_api_key(
            AccessStore.of(store),
            args.role,
            args.org,
            datetime.now(UTC),
            label=args.label,
            days=args.days,
        ),
    )
    r = issued.record
    print(
        f"API key {r.key_id}: role {r.role}, org {r.org or '-'}, expires "
        f"{r.expires_at.isoformat()}. It is shown once (only its hash is kept):",
        file=sys.stderr,
    )
    # Alone on stdout, so that KEY=$(trustledger apikeys create ...) works.
    print(issued.token)
    return EXIT_OK


def cmd_apikeys_list(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore

    keys = _store_call(_settings(args), lambda store: AccessStore.of(store).api_keys(args.org))
    now = datetime.now(UTC)
    print("key_id\torg\trole\tstate\texpires_at\tlast_used_at\tlabel")
    for k in keys:
        used = k.last_used_at.isoformat() if k.last_used_at else "-"
        print(
            f"{k.key_id}\t{k.org or '-'}\t{k.role}\t{k.state(now)}\t"
            f"{k.expires_at.isoformat()}\t{used}\t{k.label}"
        )
    return EXIT_OK


def cmd_apikeys_revoke(args: argparse.Namespace) -> int:
    from service.adapters.access_store import AccessStore
    from service.app.access import revoke_api_key
    from service.domain.access import parse_api_key

    # A whole key names its id too; the id alone is what `apikeys list` shows.
    key_id = parse_api_key(args.key_id) or args.key_id
    revoked = _store_call(
        _settings(args),
        lambda store: revoke_api_key(AccessStore.of(store), key_id, datetime.now(UTC)),
    )
    assert revoked.revoked_at is not None
    print(f"revoked API key {revoked.key_id} at {revoked.revoked_at.isoformat()}")
    return EXIT_OK


def _instant(text: str | None, option: str) -> datetime | None:
    """An RFC 3339 instant from the command line; one without an offset is UTC."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as e:
        raise ConfigError(f"{option}: not an RFC 3339 time: {text!r}") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def cmd_export(args: argparse.Namespace) -> int:
    from service.app.export import export_chain
    from service.domain.export_format import Header, decode_line
    from service.roles import load_ledger_signer

    settings = _settings(args)
    since, until = _instant(args.since, "--since"), _instant(args.until, "--until")
    progress = Progress("entries exported")
    headers: list[Header] = []

    def write_to(sink: BinaryIO) -> None:
        async def go(store: Any) -> None:
            signer = await load_ledger_signer(store, settings)
            lines = export_chain(
                store, signer, args.org, args.from_seq, args.to_seq, since, until,
                progress=progress,
            )  # fmt: skip
            async for line in lines:
                if not headers:
                    header = decode_line(line)
                    assert isinstance(header, Header)
                    headers.append(header)
                sink.write(line)

        _store_call(settings, go)
        sink.flush()

    if args.output == "-":
        write_to(sys.stdout.buffer)
    else:
        # Written beside the target and renamed: the file is whole or absent.
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as sink:
                write_to(sink)
                os.fsync(sink.fileno())
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    progress.done()
    h = headers[0]
    print(
        f"exported {h.chain}#{h.from_seq}..{h.to_seq} ({h.to_seq - h.from_seq + 1:,} entries) "
        f"to {'stdout' if args.output == '-' else args.output}",
        file=sys.stderr if args.output == "-" else sys.stdout,
    )
    return EXIT_OK


def parse_ledger_key(text: str) -> bytes:
    """A ledger public key as GET /v1/ledger/keys shows it: the C2SP verifier key
    (`name+keyid+base64(0x01 || key)`) or the bare base64url public key."""
    import base64
    import binascii

    from service.domain.signing import PUBLIC_KEY_SIZE, from_b64url

    try:
        if "+" in text:
            # name+keyid+base64(0x01 || key); the base64 part may itself hold '+'.
            parts = text.split("+", 2)
            if len(parts) != 3:
                raise ValueError("a verifier key is name+keyid+base64")
            raw = base64.b64decode(parts[2], validate=True)
            if len(raw) != PUBLIC_KEY_SIZE + 1 or raw[0] != 1:
                raise ValueError("not an Ed25519 verifier key")
            return raw[1:]
        key = from_b64url(text)
    except (ValueError, binascii.Error) as e:
        raise ConfigError(f"--ledger-key {text!r}: {e}") from e
    if len(key) != PUBLIC_KEY_SIZE:
        raise ConfigError(f"--ledger-key {text!r}: not a 32-byte Ed25519 public key")
    return key


def cmd_verify(args: argparse.Namespace) -> int:
    from service.app.offline_verify import read_note, verify_export

    trusted = [read_note(p) for p in args.checkpoint]
    pinned = [parse_ledger_key(k) for k in args.ledger_key]
    progress = Progress("entries verified", rate=True)
    source = sys.stdin.buffer if args.file == "-" else Path(args.file)
    report = verify_export(source, progress, trusted, pinned_ledger_keys=pinned)
    progress.done()
    if report.finding is not None:
        print(f"FAILED at {report.finding}")
        if report.line is not None:
            print(f"  (line {report.line} of {args.file})")
        return EXIT_FAILED
    print(
        f"ok: {report.entries:,} entries, {report.checkpoints:,} checkpoint"
        f"{'' if report.checkpoints == 1 else 's'}, "
        f"{report.signatures:,} signatures verified ({report.rate:,.0f} entries/s)"
    )
    return EXIT_OK


# ---- argument parsing ----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustledger",
        description="Behavioral trust ledger for AI agents: signed events in, hash-chained "
        "log, posture out. `trustledger up` runs everything on one machine.",
        epilog="Exit codes: 0 ok, 1 a check failed, 2 usage or configuration, "
        "3 a server unreachable or would not start. Docs: docs/operations.md.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_data_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", help="data folder (default: the user's data dir)")
        return p

    up = with_data_dir(sub.add_parser("up", help="run everything on one machine"))
    up.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    up.set_defaults(fn=cmd_up)
    for role in ("api", "ingest", "scheduler"):
        p = with_data_dir(
            sub.add_parser(role, help=f"run the {role} role (needs DATABASE_URL, NATS_URL)")
        )
        p.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
        p.add_argument(
            "--port",
            type=int,
            default=None,
            help="HTTP port (default 8000); ingest and scheduler serve /healthz, /readyz, /metrics",
        )
        p.set_defaults(fn=cmd_role)

    with_data_dir(sub.add_parser("migrate", help="apply pending database migrations")).set_defaults(
        fn=cmd_migrate
    )

    keys = sub.add_parser("keys", help="publisher keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = with_data_dir(keys.add_parser("create", help="create an org key pair and register it"))
    create.add_argument("--org", required=True)
    create.add_argument("--out", help="private key file (default ORG.key.json)")
    create.add_argument("--label", default="", help="a note stored with the key")
    create.set_defaults(fn=cmd_keys_create)

    orgs = sub.add_parser("orgs", help="organisations (who API keys act for)").add_subparsers(
        dest="orgs_command", required=True
    )
    org_create = with_data_dir(orgs.add_parser("create", help="add an org"))
    org_create.add_argument("org", help="org id: 1-63 of a-z 0-9 _ -")
    org_create.add_argument("--name", default="", help="display name")
    org_create.set_defaults(fn=cmd_orgs_create)
    with_data_dir(orgs.add_parser("list", help="every org")).set_defaults(fn=cmd_orgs_list)
    nats_creds = with_data_dir(
        orgs.add_parser(
            "nats-creds",
            help="issue an org's NATS credentials: publish on its own subjects only",
            description=(
                "Make a NATS user (an nkey) for the org, allowed to publish only on "
                "<prefix>.ev.<org>.> and to read only its inbox _INBOX.<prefix>.<org>; write "
                "its seed once (mode 0600; only the public key is kept) and make the embedded "
                "NATS of this data folder reload its users. docs/operations.md §8."
            ),
        )
    )
    nats_creds.add_argument("org", help="a known org (trustledger orgs create)")
    nats_creds.add_argument(
        "-o", "--out", help="the seed file to write (default ORG.nk; - prints it on stdout)"
    )
    nats_creds.add_argument("--label", default="", help="a note shown by `orgs nats-users`")
    nats_creds.set_defaults(fn=cmd_orgs_nats_creds)
    nats_users = with_data_dir(
        orgs.add_parser("nats-users", help="the NATS users (public keys, never seeds)")
    )
    nats_users.add_argument("--org", help="only this org's users")
    nats_users.set_defaults(fn=cmd_orgs_nats_users)
    nats_revoke = with_data_dir(
        orgs.add_parser("nats-revoke", help="revoke an org's NATS user (the server drops it)")
    )
    nats_revoke.add_argument("public_key", help="the U... key `orgs nats-users` shows")
    nats_revoke.set_defaults(fn=cmd_orgs_nats_revoke)

    apikeys = sub.add_parser(
        "apikeys", help="API keys for the HTTP API (docs/api.md)"
    ).add_subparsers(dest="apikeys_command", required=True)
    key_create = with_data_dir(
        apikeys.add_parser(
            "create",
            help="make a key and print it once (stdout); only its hash is stored",
        )
    )
    key_create.add_argument(
        "--role",
        required=True,
        choices=["relying_party", "publisher_admin", "auditor", "operator"],
    )
    key_create.add_argument("--org", help="the org it acts for (every role but operator)")
    key_create.add_argument("--label", default="", help="a note shown by `apikeys list`")
    key_create.add_argument(
        "--days", type=int, default=365, help="valid for this many days (1-3650, default 365)"
    )
    key_create.set_defaults(fn=cmd_apikeys_create)
    key_list = with_data_dir(apikeys.add_parser("list", help="keys (never their secrets)"))
    key_list.add_argument("--org", help="only this org's keys")
    key_list.set_defaults(fn=cmd_apikeys_list)
    key_revoke = with_data_dir(apikeys.add_parser("revoke", help="revoke a key at once"))
    key_revoke.add_argument("key_id", help="the key id `apikeys list` shows (or the whole key)")
    key_revoke.set_defaults(fn=cmd_apikeys_revoke)

    publish = with_data_dir(
        sub.add_parser("publish", help="sign and publish events from JSON files")
    )
    publish.add_argument("--key", required=True, help="key file from `trustledger keys create`")
    publish.add_argument(
        "--nats-seed",
        metavar="FILE",
        help="the org's NATS seed file from `trustledger orgs nats-creds` (default: "
        "TRUSTLEDGER_NATS_SEED_FILE, or the service's own on the machine of a `trustledger up`)",
    )
    publish.add_argument(
        "files", nargs="*", help="JSON files (default: stdin); id/org/occurred_at default"
    )
    publish.set_defaults(fn=cmd_publish)

    demo = with_data_dir(
        sub.add_parser("demo", help="publish realistic signed traffic to a running service")
    )
    demo.add_argument("--actions", type=int, default=50, help="actions per agent (default 50)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--api",
        default=None,
        help="where the API answers, for the hints (default: the running up's, else :8000)",
    )
    demo.set_defaults(fn=cmd_demo)

    with_data_dir(
        sub.add_parser(
            "nats-init",
            help="make the service's NATS user and the users file for an external NATS",
            description=(
                "For an external NATS (`trustledger up` does this for its embedded one): make "
                "the service's NATS user unless there is one, and write the users file the "
                "server reads, in TRUSTLEDGER_NATS_USERS_DIR. docs/operations.md §8."
            ),
        )
    ).set_defaults(fn=cmd_nats_init)

    schemas = sub.add_parser("schemas", help="the JSON Schema files of the wire contract")
    schemas.add_argument("action", choices=["write", "check"])
    schemas.add_argument("--dir", default="schemas")
    schemas.set_defaults(fn=cmd_schemas)

    projections = sub.add_parser("projections", help="projections derived from the log")
    proj_sub = projections.add_subparsers(dest="projections_command", required=True)
    with_data_dir(
        proj_sub.add_parser("rebuild", help="recompute every projection from the log")
    ).set_defaults(fn=cmd_rebuild)

    ledger = sub.add_parser("ledger", help="the hash-chained log")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    verify = with_data_dir(
        ledger_sub.add_parser("verify", help="walk the chains, name the first broken entry")
    )
    verify.add_argument("--org", help="only this org's chain")
    verify.add_argument(
        "--from-checkpoint",
        action="store_true",
        help="check only what follows each chain's latest signed checkpoint (quick; the full "
        "walk, the default, proves the whole history)",
    )
    verify.set_defaults(fn=cmd_ledger_verify)

    rotate = with_data_dir(
        ledger_sub.add_parser(
            "rotate-key",
            help="replace the ledger's checkpoint signing key",
            description=(
                "Generate a new ledger key (or take it from --new-key-file), register it in the "
                "_ledger chain with its registration signed by the current key, then keep the "
                "current key file as ledger-key.<old key id>.retired.json and write the new key "
                "in its place: processes sign with the new key from their next start. "
                "Checkpoints signed with the old key stay verifiable: every ledger key "
                "registered in _ledger and not revoked is accepted, and rotating does not "
                "revoke the old key."
            ),
        )
    )
    rotate.add_argument(
        "--new-key-file",
        metavar="PATH",
        help="use the key in this key file instead of generating one (the file is left as is)",
    )
    rotate.set_defaults(fn=cmd_ledger_rotate_key)

    checkpoint = with_data_dir(
        sub.add_parser(
            "checkpoint", help="sign checkpoints now (of one org, or of every chain that moved)"
        )
    )
    checkpoint.add_argument("--org", help="this org's chain, even if unchanged")
    checkpoint.set_defaults(fn=cmd_checkpoint)

    export = with_data_dir(
        sub.add_parser(
            "export", help="write a chain (or a range of it) as a signed file for offline checks"
        )
    )
    export.add_argument("--org", required=True, help="the org whose chain to export")
    export.add_argument("--from-seq", type=int, default=1, help="first seq (default 1)")
    export.add_argument("--to-seq", type=int, default=None, help="last seq (default: the head)")
    export.add_argument(
        "--since", help="only from the first entry received at or after this RFC 3339 time"
    )
    export.add_argument(
        "--until", help="only up to the last entry received before this RFC 3339 time"
    )
    export.add_argument(
        "-o", "--output", default="-", help="the file to write (default -: standard output)"
    )
    export.set_defaults(fn=cmd_export)

    verify_file = sub.add_parser(
        "verify", help="check an export file offline (no database, no network)"
    )
    verify_file.add_argument("file", help="a file from `trustledger export` (- for stdin)")
    verify_file.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NOTE_FILE",
        help="a checkpoint note kept from earlier; the export must agree with it (repeatable)",
    )
    verify_file.add_argument(
        "--ledger-key",
        action="append",
        default=[],
        metavar="KEY",
        help="pin the ledger's first key (verifier_key or public_key from GET /v1/ledger/keys, "
        "obtained independently); without a pin, the file's own key chain is trusted (repeatable)",
    )
    verify_file.set_defaults(fn=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        level = parse_log_level(args.log_level or os.environ.get("TRUSTLEDGER_LOG_LEVEL") or "INFO")
        log_format = os.environ.get("TRUSTLEDGER_LOG_FORMAT", "text")
        if log_format not in ("text", "json"):
            raise ConfigError(f"TRUSTLEDGER_LOG_FORMAT must be text or json, got {log_format!r}")
    except ConfigError as e:
        print(f"trustledger: {e}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level, log_format)
    try:
        code: int = args.fn(args)
    except (ConfigError, MigrationError, AdmissionError, NotFoundError) as e:
        log.error("%s", e)
        return EXIT_USAGE
    except (EmbeddedServerError, StorageError, BrokerError) as e:
        log.error("%s", e)
        return EXIT_UNAVAILABLE
    except TrustLedgerError as e:
        log.error("%s", e)
        return EXIT_FAILED
    except (json.JSONDecodeError, msgspec.DecodeError, OSError) as e:
        log.error("%s", e)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
