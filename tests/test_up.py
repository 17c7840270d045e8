"""`trustledger up` as a real process: supervised embedded servers, the data-folder lock,
a first start killed during initdb.

Each test runs `python -m service.cli up` on its own data folder and HTTP port, with
no DATABASE_URL / NATS_URL, so it starts its own embedded PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from faults import poison
from faults.rawnats import raw_publish
from faults.workload import GATEWAY as poison_gateway
from service.adapters.embedded import free_tcp_port
from service.adapters.keyfile import load_key

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 30.0
CHAINED_TIMEOUT_S = 30.0
ORG = "acme"


# ---- processes --------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """The caller's environment without server URLs: `up` must embed both servers."""
    drop = ("DATABASE_URL", "NATS_URL", "TRUSTLEDGER_DATA_DIR", "TRUSTLEDGER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def _cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def _alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in children.read_text().split()]
        except OSError:
            continue
    return found


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Up:
    """A running `trustledger up`."""

    data_dir: Path
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up", "--data-dir", str(self.data_dir),
                 "--port", str(self.port)],
                cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: re.Pattern[str], timeout_s: float = 10.0) -> re.Match[str]:
        """The first match of `pattern` in the output, waiting for it to be written."""
        deadline = time.monotonic() + timeout_s
        while (found := pattern.search(self.log())) is None:
            assert time.monotonic() < deadline, f"no {pattern.pattern!r} in:\n{self.log()[-3000:]}"
            time.sleep(0.05)
        return found

    def readyz(self) -> int | None:
        """The /readyz status code, or None when nothing answers."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.readyz() != 200:
            code = self.proc.poll()
            assert code is None, f"up exited with {code} before ready:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"up not ready in {timeout_s} s:\n{self.log()[-3000:]}"
            )
            time.sleep(0.1)

    def server_pid(self, comm: str) -> int:
        """The pid of the child whose command name is `comm` (postgres, nats-server)."""
        pids = [pid for pid in _children(self.proc.pid) if _comm(pid) == comm]
        assert len(pids) == 1, f"children of up named {comm}: {pids}"
        return pids[0]

    def runtime(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.data_dir / "runtime.json").read_text())
        return loaded

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(EXIT_TIMEOUT_S)

    def kill_all(self) -> None:
        """SIGKILL up and everything it started (what the end of a test must leave: nothing)."""
        pids = [self.proc.pid, *_descendants(self.proc.pid)]
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(EXIT_TIMEOUT_S)


@pytest.fixture
def work() -> Iterator[Path]:
    """A folder for the test, outside pytest's base folder: a pytest session starting
    meanwhile resets that one to mode 0700, locking out the `pgserver` user an embedded
    PostgreSQL runs as when the tests run as root."""
    path = Path(tempfile.mkdtemp(prefix="tl-up-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_up(work: Path) -> Iterator[type[Up]]:
    started: list[Up] = []

    class Started(Up):
        def __post_init__(self) -> None:
            super().__post_init__()
            started.append(self)

    yield Started
    for up in started:
        up.kill_all()


def _new_up(start_up: type[Up], work: Path, name: str = "up") -> Up:
    return start_up(work / "data", free_tcp_port(), work / f"{name}.log")


class ReadyzWatch:
    """Polls /readyz in a thread, recording each distinct status in order."""

    def __init__(self, up: Up) -> None:
        self._up = up
        self.seen: list[int | None] = [up.readyz()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            status = self._up.readyz()
            if self.seen[-1] != status:
                self.seen.append(status)

    def wait_for(self, pattern: list[int | None], timeout_s: float) -> None:
        """Wait until the statuses seen so far end with `pattern`."""
        deadline = time.monotonic() + timeout_s
        while self.seen[-len(pattern) :] != pattern:
            assert time.monotonic() < deadline, f"/readyz statuses seen: {self.seen}"
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# ---- publishing through the CLI, as the README does ---------------------------------------------


def _create_key(up: Up, work: Path, org: str = ORG) -> Path:
    key_file = work / f"{org}.key.json"
    result = _cli("keys", "create", "--org", org, "--out", str(key_file),
                  "--data-dir", str(up.data_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return key_file


def _publish(up: Up, key_file: Path, work: Path, event: Mapping[str, object]) -> str:
    event_id = str(uuid.uuid4())
    events_file = work / f"{event_id}.json"
    events_file.write_text(json.dumps({"id": event_id, **event}))
    result = _cli("publish", "--key", str(key_file), "--data-dir", str(up.data_dir),
                  str(events_file))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return event_id


def _operator_auth(up: Up) -> dict[str, str]:
    """The operator key `up` wrote into its new data folder."""
    token = (up.data_dir / "operator.key").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _chained_ids(up: Up) -> list[str]:
    try:
        response = httpx.get(
            f"{up.url}/v1/chains/{ORG}/entries?limit=1000", headers=_operator_auth(up), timeout=5
        )
    except httpx.TransportError:
        return []
    if response.status_code != 200:
        return []
    return [entry["event_id"] for entry in response.json()["entries"]]


def _wait_chained(up: Up, event_id: str) -> None:
    deadline = time.monotonic() + CHAINED_TIMEOUT_S
    while event_id not in _chained_ids(up):
        assert time.monotonic() < deadline, f"{event_id} not chained:\n{up.log()[-3000:]}"
        time.sleep(0.2)


AGENT = {"kind": "agent.registered", "agent": "bot", "display_name": "Bot", "principal": "ops@acme"}
ACTION = {"kind": "action.performed", "agent": "bot", "action": "records.read", "resource": "r:1"}


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("server", "comm"), [("postgres", "postgres"), ("nats", "nats-server")])
def test_up_recovers_by_itself_when_an_embedded_server_is_killed(
    start_up: type[Up], work: Path, server: str, comm: str
) -> None:
    """A SIGKILLed embedded server is named in the log, restarted on its port, and events
    published afterwards are chained; /readyz goes not ready, then ready again."""
    up = _new_up(start_up, work)
    up.wait_ready()
    key_file = _create_key(up, work)
    before = _publish(up, key_file, work, AGENT)
    _wait_chained(up, before)
    runtime = up.runtime()
    old_pid = up.server_pid(comm)

    watch = ReadyzWatch(up)
    try:
        os.kill(old_pid, signal.SIGKILL)
        watch.wait_for([503, 200], RECOVERY_TIMEOUT_S)
    finally:
        watch.close()
    assert watch.seen[0] == 200

    death = re.compile(
        rf"ERROR +service\.adapters\.supervision: embedded {server} \(pid {old_pid}, "
        r"127\.0\.0\.1:\d+\) killed by SIGKILL; restarting it on the same port; "
        r"its log \(\S+\) ends: .+\n"
    )
    up.wait_log(death)
    up.wait_log(re.compile(rf"INFO +service\.adapters\.supervision: embedded {server} is back on "))
    assert up.server_pid(comm) != old_pid
    assert up.runtime() == runtime

    after = _publish(up, key_file, work, ACTION)
    _wait_chained(up, after)
    assert _chained_ids(up)[-2:] == [before, after]
    verified = _cli("ledger", "verify", "--data-dir", str(up.data_dir))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert up.stop() == 0


def test_up_exits_non_zero_when_a_killed_server_cannot_be_restarted(
    start_up: type[Up], work: Path
) -> None:
    """When the port of a killed NATS stays taken, `up` says so and exits with code 3."""
    up = _new_up(start_up, work)
    up.wait_ready()
    nats_port = int(str(up.runtime()["nats_url"]).rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        os.kill(up.server_pid("nats-server"), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            try:
                squatter.bind(("127.0.0.1", nats_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "the killed server's port never came free"
                time.sleep(0.001)
        squatter.listen()
        code = up.proc.wait(60)
    log = up.log()
    assert code == 3, log[-3000:]
    assert f"could not be restarted on 127.0.0.1:{nats_port} in 5 attempts" in log
    assert "another process took that port" in log
    assert not (up.data_dir / "runtime.json").exists()
    assert _descendants(up.proc.pid) == []


@pytest.mark.parametrize("same_port", [False, True], ids=["other port", "same port"])
def test_second_up_is_refused_when_the_data_folder_is_in_use(
    start_up: type[Up], work: Path, same_port: bool
) -> None:
    """A second `up` on a folder in use says who runs it and exits non-zero, touching nothing."""
    first = _new_up(start_up, work, "first")
    first.wait_ready()
    runtime = first.runtime()
    servers = (first.server_pid("postgres"), first.server_pid("nats-server"))

    port = first.port if same_port else free_tcp_port()
    second = start_up(first.data_dir, port, work / "second.log")
    assert second.proc.wait(EXIT_TIMEOUT_S) == 2
    assert f"already running (pid {first.proc.pid}, {first.url})" in second.log()
    assert "embedded" not in second.log()

    assert first.readyz() == 200
    assert first.runtime() == runtime
    assert (first.server_pid("postgres"), first.server_pid("nats-server")) == servers
    # Commands that only read runtime.json still work meanwhile.
    assert _cli("ledger", "verify", "--data-dir", str(first.data_dir)).returncode == 0
    assert first.stop() == 0


def _kill_during_initdb(start_up: type[Up], work: Path) -> Path:
    """Start `up` on a new folder; SIGKILL it, and everything it started, once initdb has
    begun writing the cluster. Returns the data folder."""
    up = _new_up(start_up, work, "first")
    deadline = time.monotonic() + READY_TIMEOUT_S
    cluster_dirs = [up.data_dir / "postgres", up.data_dir / "postgres.initdb"]
    while True:
        initdb = [pid for pid in _children(up.proc.pid) if _comm(pid) == "initdb"]
        if initdb and any((d / "PG_VERSION").exists() for d in cluster_dirs):
            break
        assert up.proc.poll() is None, f"up exited before initdb was caught:\n{up.log()}"
        assert time.monotonic() < deadline, "initdb never seen"
        time.sleep(0.002)
    # A power cut or a killed container: nothing of the first start runs on.
    everything = [up.proc.pid, *_descendants(up.proc.pid)]
    for pid in everything:
        os.kill(pid, signal.SIGKILL)
    up.proc.wait(EXIT_TIMEOUT_S)
    for pid in everything:
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
            time.sleep(0.05)
    return up.data_dir


def _leave_half_made_cluster(start_up: type[Up], work: Path) -> Path:
    """Make a folder as a first start killed during initdb leaves it: a partial cluster."""
    data_dir = work / "data"
    (data_dir / "postgres").mkdir(parents=True)
    staging = data_dir / "postgres.initdb"
    (staging / "base" / "1").mkdir(parents=True)
    (staging / "PG_VERSION").write_text("16\n")
    (staging / "base" / "1" / "1259").write_bytes(b"\0" * 100)
    return data_dir


@pytest.mark.parametrize(
    "interrupt", [_kill_during_initdb, _leave_half_made_cluster], ids=["killed", "simulated"]
)
def test_up_starts_when_a_first_start_was_killed_during_initdb(
    start_up: type[Up], work: Path, interrupt: Callable[[type[Up], Path], Path]
) -> None:
    """A first `up` killed while initdb runs leaves nothing that stops the next `up`."""
    data_dir = interrupt(start_up, work)
    second = start_up(data_dir, free_tcp_port(), work / "second.log")
    second.wait_ready()
    assert not (data_dir / "postgres.initdb").exists()
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    assert second.stop() == 0


def test_up_prints_an_operator_key_once_when_the_data_folder_is_new(
    start_up: type[Up], work: Path
) -> None:
    """The first `up` on a folder prints a working operator key and keeps it in a file only
    its user can read; a restart on the same folder prints none."""
    first = _new_up(start_up, work, "first")
    first.wait_ready()
    key_file = first.data_dir / "operator.key"
    token = key_file.read_text().strip()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert first.log().count(token) == 1
    metrics = httpx.get(f"{first.url}/metrics", headers=_operator_auth(first), timeout=5)
    assert metrics.status_code == 200
    assert httpx.get(f"{first.url}/metrics", timeout=5).status_code == 401
    demo = _cli("demo", "--data-dir", str(first.data_dir))
    assert demo.returncode == 0, demo.stderr
    assert f"{first.url}/v1/agents/acme/billing-bot/posture" in demo.stdout  # its own port
    assert first.stop() == 0

    again = start_up(first.data_dir, free_tcp_port(), work / "again.log")
    again.wait_ready()
    assert "operator API key" not in again.log()
    assert key_file.read_text().strip() == token
    assert again.stop() == 0


def test_up_quarantines_hostile_messages_and_stays_ready_when_they_are_published_to_it(
    start_up: type[Up], work: Path
) -> None:
    """Every hostile class of issue 8 that must be refused, published to a running `up`
    (as the service's own NATS user, so the bus lets it through), lands in the quarantine
    with a reason; the good event after each is chained within seconds; `up` never exits
    and /readyz answers 200 throughout."""
    up = _new_up(start_up, work)
    up.wait_ready()
    key_files = {org: _create_key(up, work, org) for org in (poison.ORG, poison_gateway)}
    keys = {org: load_key(path) for org, path in key_files.items()}
    runtime = up.runtime()
    seed = Path(str(runtime["nats_seed_file"])).read_bytes()
    watch = ReadyzWatch(up)
    hostile = [p for p in poison.POISONS if p.expect == "quarantine"]
    try:
        for case in hostile:
            raw = case.build("tl", keys)
            asyncio.run(
                raw_publish(
                    str(runtime["nats_url"]), raw.subject, raw.payload, raw.headers, seed=seed
                )
            )
            started = time.monotonic()
            good = _publish(up, key_files[poison.ORG], work, AGENT)
            _wait_chained(up, good)
            assert time.monotonic() - started < 10, case.name
            assert up.proc.poll() is None, case.name
    finally:
        watch.close()
    # 429: the watch polls anonymously, faster than an address without a key may.
    assert {status for status in watch.seen if status != 429} == {200}, watch.seen
    response = httpx.get(f"{up.url}/v1/quarantine?limit=100", headers=_operator_auth(up), timeout=5)
    assert response.status_code == 200
    reasons = [item["reason"] for item in response.json()["items"]]
    assert len(reasons) == len(hostile), reasons
    assert all(reasons), reasons
    assert up.stop() == 0
