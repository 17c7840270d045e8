"""The bus guarded by NATS's own security: nkey users, each org allowed its own subjects only.

Against a real nats-server started with authentication (`EmbeddedNats(auth=True)`, as
`trustledger up` runs it); the rest of the suite shares a server without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from conftest import OrgKeyFactory, chain_entries, registered, wait_for_chain, wait_until
from nats.aio.client import Client

from service.adapters import broker
from service.adapters.embedded import EmbeddedNats, free_tcp_port
from service.adapters.keyfile import save_key
from service.adapters.nats_auth import (
    NatsUsers,
    new_user_seed,
    public_key_of,
    read_seed_file,
    write_seed_file,
)
from service.adapters.postgres import LedgerStore
from service.adapters.publisher import MSG_ID_HEADER, Publisher, signed_message, subject_for
from service.cli import main
from service.config import Settings
from service.domain.bus_access import (
    BusAccessError,
    org_inbox_prefix,
    org_user,
    render_users_conf,
    service_inbox_prefix,
    service_user,
)
from service.domain.signing import SigningKey, b64url
from service.errors import BrokerError, ConfigError, PublishError
from service.roles import Roles, run_roles

ADMIT_TIMEOUT_S = 10.0
REFUSAL_TIMEOUT_S = 5.0
T = datetime(2026, 1, 1, tzinfo=UTC)


# ---- the domain rules -------------------------------------------------------------------------


def test_org_user_may_publish_its_own_subjects_and_read_its_own_inbox_only() -> None:
    """An org's user: publish `<prefix>.ev.<org>.>`, subscribe `_INBOX.<prefix>.<org>.>`."""
    user = org_user(new_user_seed().public_key, "acme", "tl", "", T)
    assert user.publish == ("tl.ev.acme.>",)
    assert user.subscribe == ("_INBOX.tl.acme.>",)
    assert org_inbox_prefix("tl", "acme") == "_INBOX.tl.acme"
    # Org ids never start with "_": the service's inbox is outside every org's pattern.
    assert not service_inbox_prefix("tl").startswith(f"{org_inbox_prefix('tl', 'acme')}.")


def test_users_conf_lists_active_users_only_when_some_are_revoked() -> None:
    """The server's users block: every active user with its permissions, no revoked one."""
    service = service_user(new_user_seed().public_key, T)
    acme = org_user(new_user_seed().public_key, "acme", "tl", "first", T)
    gone = replace(org_user(new_user_seed().public_key, "beta", "tl", "", T), revoked_at=T)
    text = render_users_conf([service, acme, gone])
    assert f'nkey: "{service.public_key}"' in text
    assert f'nkey: "{acme.public_key}"' in text
    assert 'publish: { allow: ["tl.ev.acme.>"] }' in text
    assert 'subscribe: { allow: ["_INBOX.tl.acme.>"] }' in text
    assert gone.public_key not in text
    assert "first" not in text  # labels are free text: they stay out of the config


@pytest.mark.parametrize(
    ("org", "prefix", "public_key"),
    [
        ('acme"', "tl", None),
        ("Acme", "tl", None),
        ("acme.x", "tl", None),
        ("acme", "t.l", None),
        ("acme", 't"l', None),
        ("acme", "tl", "U" + "1" * 55),
        ("acme", "tl", "S" + "A" * 55),
        ("acme", "tl", 'UA" } ] } authorization { users = [ {'),
    ],
)
def test_user_is_refused_when_a_value_could_change_the_server_config(
    org: str, prefix: str, public_key: str | None
) -> None:
    """An org id, prefix or key outside its pattern never reaches the config file."""
    with pytest.raises(BusAccessError):
        org_user(public_key or new_user_seed().public_key, org, prefix, "", T)


def test_seed_file_is_private_and_never_overwritten_when_written(tmp_path: Path) -> None:
    """A seed file is 0600, holds the seed alone, and is never replaced."""
    fresh = new_user_seed()
    path = tmp_path / "acme.nk"
    write_seed_file(path, fresh.seed)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == fresh.seed + "\n"
    assert read_seed_file(path) == fresh.public_key == public_key_of(fresh.seed)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_seed_file(path, new_user_seed().seed)


@pytest.mark.parametrize(
    "content", [b"", b"not a seed\n", b"\xff\xfe", b"S" * 5000, new_user_seed().public_key.encode()]
)
def test_seed_file_is_refused_when_it_holds_no_user_seed(tmp_path: Path, content: bytes) -> None:
    """A file that is not a user seed is a configuration error, before any connection."""
    path = tmp_path / "bad.nk"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="NATS"):
        read_seed_file(path)


# ---- a server with authentication ---------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """One nats-server with authentication for the module (a sync fixture: main thread)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("authnats") / "nats", auth=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _connect(url: str, seed: Path | None, inbox: str | None = None) -> Client:
    """A plain nats-py connection that records the server's asynchronous errors."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    nc = await nats.connect(
        url,
        nkeys_seed=None if seed is None else str(seed),
        inbox_prefix=inbox or "_INBOX",
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=3,
        error_cb=on_error,
    )
    nc.seen_errors = errors  # type: ignore[attr-defined]
    return nc


def _errors(nc: Client) -> list[str]:
    seen: list[str] = nc.seen_errors  # type: ignore[attr-defined]
    return seen


async def _admitted(url: str, seed: Path) -> bool:
    try:
        nc = await _connect(url, seed)
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


@dataclass
class Bus:
    """The authenticated server, seen from one test: its own prefix and stream."""

    server: EmbeddedNats
    settings: Settings
    """The test's settings pointing at this server, as the service (its seed)."""
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def users(self) -> NatsUsers:
        assert self.server.users is not None
        return self.server.users

    async def seed_for(self, org: str) -> Path:
        """Issue a NATS user for `org` on this test's prefix, as `orgs nats-creds` does."""
        issued = self.users.issue(org, self.settings.subject_prefix, "test", datetime.now(UTC))
        path = self.tmp / f"{org}-{secrets.token_hex(3)}.nk"
        write_seed_file(path, issued.seed)
        assert self.users.reload_server()
        await wait_until(lambda: _admitted(self.url, path), ADMIT_TIMEOUT_S, f"{org} admitted")
        return path

    async def publisher(self, key: SigningKey, seed: Path) -> Publisher:
        return await Publisher.connect(self.url, key, self.settings.subject_prefix, seed)


@pytest.fixture
async def bus(auth_nats: EmbeddedNats, settings: Settings, tmp_path: Path) -> AsyncIterator[Bus]:
    assert auth_nats.users is not None
    mine = replace(
        settings, nats_url=auth_nats.url, nats_seed_file=auth_nats.users.service_seed_path
    )
    nc = await broker.connect(auth_nats.url, "test-setup", seed_file=mine.nats_seed_file)
    try:
        await broker.ensure_stream(nc.jetstream(), mine)
        yield Bus(auth_nats, mine, tmp_path)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(mine.stream)
    finally:
        await nc.close()


async def _stream_messages(bus: Bus) -> int:
    nc = await broker.connect(bus.url, "test-count", seed_file=bus.settings.nats_seed_file)
    try:
        info = await nc.jetstream().stream_info(bus.settings.stream)
        return info.state.messages
    finally:
        await nc.close()


@pytest.mark.parametrize("who", ["nobody", "unknown user", "revoked user"])
async def test_connection_is_refused_when_the_client_is_not_a_current_user(
    bus: Bus, who: str
) -> None:
    """Without credentials, with a seed the server never heard of, or with a revoked one:
    the server refuses the connection, and the error says so."""
    seed: Path | None = None
    if who == "unknown user":
        seed = bus.tmp / "unknown.nk"
        write_seed_file(seed, new_user_seed().seed)
    elif who == "revoked user":
        seed = await bus.seed_for("gone")
        bus.users.revoke(read_seed_file(seed), datetime.now(UTC))
        assert bus.users.reload_server()
        await wait_until(
            lambda: _refused(bus.url, seed), ADMIT_TIMEOUT_S, "the revoked user refused"
        )
    with pytest.raises(BrokerError, match="refused the connection"):
        await broker.connect(bus.url, "test", reconnect_forever=False, seed_file=seed)
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await _connect(bus.url, seed)


async def _refused(url: str, seed: Path | None) -> bool:
    return not await _admitted(url, seed) if seed is not None else True


@pytest.mark.parametrize("subject", ["{p}.ev.a.bot", "{p}.ev.a._", "{p}.ev.c.bot"])
async def test_publish_is_refused_by_the_server_when_an_org_uses_another_orgs_subject(
    bus: Bus, org_key: OrgKeyFactory, subject: str
) -> None:
    """Org b's user cannot publish on org a's (or any other org's) subjects: the server
    refuses it, and nothing reaches the stream; on its own subjects it can."""
    b_key = await org_key("b")
    pub = await bus.publisher(b_key, await bus.seed_for("b"))
    try:
        target = subject.format(p=bus.settings.subject_prefix)
        data, headers = signed_message(registered("b", "bot"), b_key)
        with pytest.raises(PublishError, match="refused"):
            await pub.publish_raw(target, data, headers, attempts=3, timeout_s=1.0)
        assert await _stream_messages(bus) == 0
        ack = await pub.publish(registered("b", "bot"))  # its own subject: allowed
        assert ack.seq == 1
    finally:
        await pub.close()


@pytest.mark.parametrize(
    "subject",
    [
        "{p}.ev.a.>",
        "{p}.ev.*.*",
        ">",
        "_INBOX.>",
        "_INBOX.{p}.a.>",
        "_INBOX.{p}._service.>",
        "$JS.API.>",
        "$JS.ACK.>",
    ],
)
async def test_subscribe_is_refused_when_an_org_listens_outside_its_own_inbox(
    bus: Bus, subject: str
) -> None:
    """Org b may not listen to a's subjects, to the stream's deliveries, to anyone else's
    inbox or to the JetStream API; its own inbox it may."""
    nc = await _connect(bus.url, await bus.seed_for("b"))
    try:
        target = subject.format(p=bus.settings.subject_prefix)
        await nc.subscribe(target)
        await nc.flush()
        await wait_until(
            lambda: any("permissions violation for subscription" in e for e in _errors(nc)),
            REFUSAL_TIMEOUT_S,
            f"the server to refuse a subscription to {target}",
        )
        _errors(nc).clear()
        await nc.subscribe(f"{org_inbox_prefix(bus.settings.subject_prefix, 'b')}.x")
        await nc.flush()
        await asyncio.sleep(0.2)
        assert _errors(nc) == []
    finally:
        await nc.close()


async def test_org_reads_nothing_of_another_org_when_it_asks_the_jetstream_api(
    bus: Bus, org_key: OrgKeyFactory
) -> None:
    """With org a's event in the stream, org b's user cannot read the stream, make a
    consumer or fetch a message: every JetStream API call is refused by the server."""
    a_key = await org_key("a")
    a_pub = await bus.publisher(a_key, await bus.seed_for("a"))
    try:
        await a_pub.publish(registered("a", "bot"))
    finally:
        await a_pub.close()
    nc = await _connect(
        bus.url,
        await bus.seed_for("b"),
        inbox=org_inbox_prefix(bus.settings.subject_prefix, "b"),
    )
    js = nc.jetstream(timeout=1.0)
    stream = bus.settings.stream
    try:
        for call in (
            lambda: js.stream_info(stream),
            lambda: js.get_msg(stream, 1),
            lambda: js.pull_subscribe(f"{bus.settings.subject_prefix}.ev.a.>", stream=stream),
            lambda: js.delete_stream(stream),
        ):
            with pytest.raises((nats.errors.Error, TimeoutError)):
                await call()
        await wait_until(
            lambda: any('publish to "$js.api.' in e for e in _errors(nc)),
            REFUSAL_TIMEOUT_S,
            "the server to refuse the JetStream API",
        )
    finally:
        await nc.close()
    assert await _stream_messages(bus) == 1  # a's event, untouched (not deleted)


async def _run_ingest(settings: Settings) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_roles(settings, Roles(api=False, ingest=True, scheduler=False), stop)
    )
    return stop, task


async def test_real_event_is_chained_when_another_org_published_its_event_id_first(
    bus: Bus, org_key: OrgKeyFactory, store: LedgerStore
) -> None:
    """Org b publishes first, on its own subjects (the only ones it may use), unsigned
    messages carrying every `Nats-Msg-Id` it could guess for org a's next event. a's real
    event is still stored (not a duplicate) and chained; b's junk is quarantined as b's."""
    a_key, b_key = await org_key("a"), await org_key("b")
    a_pub = await bus.publisher(a_key, await bus.seed_for("a"))
    b_pub = await bus.publisher(b_key, await bus.seed_for("b"))
    stop, task = await _run_ingest(bus.settings)
    try:
        event = registered("a", "bot")
        guesses = [f"a/{event.id}", f"a/{event.id}/{b64url(secrets.token_bytes(64))}"]
        for guess in guesses:
            squat = await b_pub.publish_raw(
                f"{bus.settings.subject_prefix}.ev.b._", b"{}", {MSG_ID_HEADER: guess}
            )
            assert not squat.duplicate
        ack = await a_pub.publish(event)
        assert not ack.duplicate
        await wait_for_chain(store, "a", 2)
        assert event.id in [e.event_id for e in await chain_entries(store, "a")]

        async def junk_quarantined() -> bool:
            return len(await store.quarantined("b")) == len(guesses)

        await wait_until(junk_quarantined, message="b's junk in b's quarantine")
        assert await store.quarantined("a") == []
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await a_pub.close()
        await b_pub.close()


async def test_only_the_servers_ack_reaches_another_orgs_subject_when_named_as_a_reply(
    bus: Bus, store: LedgerStore
) -> None:
    """What subject permissions do not stop (docs/operations.md §9): b names a's subject as
    the reply of a publish on its own. The stream's ack of b's message then lands on a's
    subject: unsigned, so quarantined under a, never chained, and naming b's message."""
    nc = await _connect(
        bus.url, await bus.seed_for("b"), org_inbox_prefix(bus.settings.subject_prefix, "b")
    )
    stop, task = await _run_ingest(bus.settings)
    prefix = bus.settings.subject_prefix
    try:
        await nc.publish(f"{prefix}.ev.b._", b"{}", reply=f"{prefix}.ev.a.x")
        await nc.flush()

        async def ack_quarantined() -> bool:
            return len(await store.quarantined("a")) == 1

        await wait_until(ack_quarantined, message="the ack on a's subject quarantined")
        [record] = await store.quarantined("a")
        assert record["reason"] == "missing_signature"
        assert record["subject"] == f"{prefix}.ev.a.x"
        [b_message] = await store.quarantined("b")
        assert json.loads(record["raw"]) == {
            "stream": bus.settings.stream,
            "seq": b_message["stream_seq"],
        }
        assert await store.chain_head("a") is None
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await nc.close()


async def test_event_id_alone_is_taken_when_another_org_publishes_it_first(
    bus: Bus, org_key: OrgKeyFactory
) -> None:
    """Why the signature is in `Nats-Msg-Id`: the duplicate window is stream-wide, so
    subject permissions alone do not stop b from taking the id `a/<event id>` from its
    own subjects; a publish with that id is then dropped as a duplicate."""
    a_key = await org_key("a")
    a_pub = await bus.publisher(a_key, await bus.seed_for("a"))
    b_pub = await bus.publisher(await org_key("b"), await bus.seed_for("b"))
    try:
        event = registered("a", "bot")
        old_style = f"a/{event.id}"
        await b_pub.publish_raw(
            f"{bus.settings.subject_prefix}.ev.b._", b"{}", {MSG_ID_HEADER: old_style}
        )
        data, headers = signed_message(event, a_key)
        dropped = await a_pub.publish_raw(
            subject_for(event, bus.settings.subject_prefix),
            data,
            {**headers, MSG_ID_HEADER: old_style},
        )
        assert dropped.duplicate
        assert headers[MSG_ID_HEADER] != old_style
        assert not (await a_pub.publish(event)).duplicate
    finally:
        await a_pub.close()
        await b_pub.close()


async def test_new_user_is_admitted_without_restart_and_dropped_when_revoked(bus: Bus) -> None:
    """Credentials issued while the server runs work at once (a reload, not a restart);
    revoking them refuses new connections and ends the open one."""
    pid = bus.server.pid
    seed = await bus.seed_for("late")
    assert bus.server.pid == pid
    nc = await _connect(bus.url, seed)
    try:
        bus.users.revoke(read_seed_file(seed), datetime.now(UTC))
        assert bus.users.reload_server()
        await wait_until(lambda: _refused(bus.url, seed), ADMIT_TIMEOUT_S, "late refused")
        await wait_until(lambda: not nc.is_connected, ADMIT_TIMEOUT_S, "the open connection cut")
    finally:
        await nc.close()
    assert bus.server.pid == pid


def test_users_survive_when_the_server_restarts(tmp_path: Path) -> None:
    """The service's identity and the org users are kept in the data folder: after a
    restart the same seeds are admitted, and anonymous clients still are not."""
    server = EmbeddedNats(tmp_path / "nats", auth=True)
    users = server.users
    assert users is not None
    server.start()
    try:
        service_seed = users.service_seed_path.read_text()
        assert stat.S_IMODE(users.service_seed_path.stat().st_mode) == 0o600
        issued = users.issue("acme", "tl", "", datetime.now(UTC))
        org_seed = tmp_path / "acme.nk"
        write_seed_file(org_seed, issued.seed)
    finally:
        server.stop()
    assert not users.reload_server()  # nothing to reload: the server is down
    url = server.start()
    try:
        assert users.service_seed_path.read_text() == service_seed

        async def check() -> None:
            assert await _admitted(url, users.service_seed_path)
            assert await _admitted(url, org_seed)
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await _connect(url, None)

        asyncio.run(check())
    finally:
        server.stop()


def test_service_identity_is_replaced_when_its_seed_file_is_lost(tmp_path: Path) -> None:
    """Deleting service.nk and starting again makes a new service user and retires the old."""
    users = NatsUsers(tmp_path / "auth")
    assert users.ensure_service_user()
    first = read_seed_file(users.service_seed_path)
    assert not users.ensure_service_user()
    users.service_seed_path.unlink()
    assert users.ensure_service_user()
    second = read_seed_file(users.service_seed_path)
    service_users = [u for u in users.users() if u.org is None]
    assert [(u.public_key, u.active) for u in service_users] == [(first, False), (second, True)]
    assert first not in users.config_path.read_text()


# ---- the command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(bus: Bus, database: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The CLI pointed at the test's database and the authenticated server; returns
    the --data-dir arguments."""
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("NATS_URL", bus.url)
    monkeypatch.setenv("TRUSTLEDGER_NATS_USERS_DIR", str(bus.users.directory))
    monkeypatch.setenv("TRUSTLEDGER_SUBJECT_PREFIX", bus.settings.subject_prefix)
    monkeypatch.setenv("TRUSTLEDGER_STREAM", bus.settings.stream)
    monkeypatch.chdir(bus.tmp)
    return ["--data-dir", str(bus.tmp / "data")]


def test_cli_issues_a_private_seed_that_publishes_only_as_its_org_when_asked(
    bus: Bus,
    cli_env: list[str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`orgs nats-creds` writes the seed once (0600, never in the output or the logs); the
    org's events publish with it; another org's events with it are refused by the server."""
    caplog.set_level(logging.DEBUG)
    data = cli_env
    assert main(["orgs", "nats-creds", "acme", *data]) == 2  # no such org yet
    assert main(["orgs", "create", "acme", *data]) == 0
    assert main(["orgs", "create", "beta", *data]) == 0
    assert main(["keys", "create", "--org", "acme", *data]) == 0
    assert main(["keys", "create", "--org", "beta", *data]) == 0
    capsys.readouterr()
    assert main(["orgs", "nats-creds", "acme", "--label", "runtime", *data]) == 0
    issued = capsys.readouterr()
    seed_file = bus.tmp / "acme.nk"
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    seed = seed_file.read_text().strip()
    public = public_key_of(seed)
    assert public in issued.err
    assert main(["orgs", "nats-creds", "acme", *data]) == 2  # acme.nk exists: not overwritten
    assert main(["orgs", "nats-creds", "acme", "-o", "-", *data]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("SU")
    assert printed.out.count("\n") == 1
    second = printed.out.strip()

    event = bus.tmp / "event.json"
    event.write_text(
        '{"kind": "agent.registered", "agent": "bot", "display_name": "Bot", "principal": "o@a"}'
    )
    admitted = lambda: _admitted(bus.url, seed_file)  # noqa: E731
    asyncio.run(wait_until(admitted, ADMIT_TIMEOUT_S, "acme admitted"))
    assert main(["publish", "--key", "acme.key.json", "--nats-seed", "acme.nk", str(event)]) == 0
    assert "stream seq" in capsys.readouterr().out
    refused = ["publish", "--key", "beta.key.json", "--nats-seed", "acme.nk", str(event)]
    assert main(refused) != 0
    logged = capsys.readouterr()
    assert "NATS refused the publish" in logged.err

    assert main(["orgs", "nats-users", "--org", "acme", *data]) == 0
    listed = capsys.readouterr().out
    assert public in listed
    assert "runtime" in listed
    assert main(["orgs", "nats-revoke", public, *data]) == 0
    assert main(["orgs", "nats-users", "--org", "acme", *data]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["orgs", "nats-revoke", "U" + "A" * 55, *data]) == 2

    everything = (
        caplog.text
        + issued.out
        + issued.err
        + logged.out
        + logged.err
        + "".join(capsys.readouterr())
    )
    for secret in (seed, second):
        assert secret not in everything
        assert secret not in (
            bus.users.registry_path.read_text() + bus.users.config_path.read_text()
        )


def test_nats_init_makes_the_service_user_once_when_run_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trustledger nats-init` (external NATS) makes the service's seed and the users file once."""
    monkeypatch.setenv("TRUSTLEDGER_NATS_USERS_DIR", str(tmp_path / "auth"))
    assert main(["nats-init", "--data-dir", str(tmp_path)]) == 0
    assert "created" in capsys.readouterr().out
    seed_path = tmp_path / "auth" / "service.nk"
    seed = seed_path.read_text()
    assert stat.S_IMODE(seed_path.stat().st_mode) == 0o600
    assert main(["nats-init", "--data-dir", str(tmp_path)]) == 0
    assert "kept" in capsys.readouterr().out
    assert seed_path.read_text() == seed
    assert f'nkey: "{public_key_of(seed)}"' in (tmp_path / "auth" / "users.conf").read_text()
    assert os.stat(tmp_path / "auth").st_mode & 0o077 == 0


def test_up_runs_its_nats_with_authentication_when_the_data_folder_is_new(tmp_path: Path) -> None:
    """`trustledger up` makes the service's NATS identity (0600, in the data folder) and
    tells other commands where it is; its NATS refuses anonymous clients."""
    data = tmp_path / "data"
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    with (tmp_path / "up.log").open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "up", "--data-dir", str(data),
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "up not ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        runtime = json.loads((data / "runtime.json").read_text())
        seed_file = data / "nats" / "auth" / "service.nk"
        assert runtime["nats_seed_file"] == str(seed_file)
        assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
        assert seed_file.read_text().strip() not in (tmp_path / "up.log").read_text()

        async def check() -> None:
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await _connect(runtime["nats_url"], None)
            assert await _admitted(runtime["nats_url"], seed_file)

        asyncio.run(check())
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0


def _publisher_example() -> str:
    """The Python program of docs/wire-contract.md §8, as printed there."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "wire-contract.md").read_text()
    section = text[text.index("## 8. A publisher without trustledger's code") :]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


async def test_documented_publisher_is_admitted_and_chained_when_given_its_org_seed(
    bus: Bus, org_key: OrgKeyFactory, store: LedgerStore
) -> None:
    """The wire contract's publisher without trustledger code connects as its org's NATS
    user with the documented inbox prefix, and its four events are chained."""
    key = await org_key("acme")
    key_file = bus.tmp / "acme.key.json"
    save_key(key, key_file)
    seed = await bus.seed_for("acme")
    script = bus.tmp / "publish_example.py"
    script.write_text(_publisher_example())
    stop, task = await _run_ingest(bus.settings)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), str(key_file), bus.url, str(seed),
            bus.settings.subject_prefix,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        assert out.decode().count("stream seq") == 4
        await wait_for_chain(store, "acme", 5)  # its key's registration, then the four
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.mark.parametrize(
    "command",
    [
        ["orgs", "nats-creds", "acme"],
        ["orgs", "nats-users"],
        ["orgs", "nats-revoke", "U" + "A" * 55],
    ],
)
def test_cli_says_where_users_come_from_when_the_folder_has_none(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Without a NATS users folder (no `up` ran here, no `nats-init`), exit 2 and say how to
    make one."""
    monkeypatch.delenv("TRUSTLEDGER_NATS_USERS_DIR", raising=False)
    assert main([*command, "--data-dir", str(tmp_path)]) == 2
    assert "nats-init" in capsys.readouterr().err
    assert not (tmp_path / "nats").exists()
