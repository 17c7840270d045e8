"""docker-compose.yml's bus: its NATS admits only the users `nats-init` and `orgs nats-creds`
list, and every role connects as the service's user.

No Docker here: the structure is read from the file, and the NATS part is run as compose
would run it (the same nats-server arguments, container paths mapped to folders here).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from service.adapters.embedded import _nats_binary, _nats_info, free_tcp_port
from service.adapters.nats_auth import CONFIG_FILE, SERVICE_SEED_FILE, NatsUsers, write_seed_file
from service.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = [name for name, s in SERVICES.items() if s.get("image") == "trustledger:local"]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Volume name -> path inside the container."""
    found = {}
    for entry in service.get("volumes", []):
        volume, path = entry.split(":")[:2]
        found[volume] = path
    return found


def test_every_role_connects_as_the_service_user_when_compose_runs_it() -> None:
    """Each trustledger container has the users volume where TRUSTLEDGER_NATS_USERS_DIR says,
    and its seed file there as TRUSTLEDGER_NATS_SEED_FILE."""
    assert {"api", "ingest", "scheduler", "migrate", "nats-users"} <= set(ROLES)
    for name in ROLES:
        env = SERVICES[name]["environment"]
        users_dir = _mounts(SERVICES[name])["natsusers"]
        assert env["TRUSTLEDGER_NATS_USERS_DIR"] == users_dir, name
        assert env["TRUSTLEDGER_NATS_SEED_FILE"] == f"{users_dir}/{SERVICE_SEED_FILE}", name


def test_nats_reads_the_users_nats_init_writes_when_compose_starts_it() -> None:
    """NATS starts after `nats-init` completed, with -c on the users file of the same volume."""
    nats_service, init = SERVICES["nats"], SERVICES["nats-users"]
    assert init["command"] == ["nats-init"]
    assert init["restart"] == "no"
    assert nats_service["depends_on"] == {
        "nats-users": {"condition": "service_completed_successfully"}
    }
    command = nats_service["command"]
    config = command[command.index("-c") + 1]
    mounted = _mounts(nats_service)
    assert config == f"{mounted['natsusers']}/{CONFIG_FILE}"
    assert f"natsusers:{mounted['natsusers']}:ro" in nats_service["volumes"]  # NATS only reads
    assert "-js" in command


@pytest.fixture
def compose_nats(tmp_path: Path) -> Iterator[tuple[str, NatsUsers, subprocess.Popen[bytes]]]:
    """`nats-init`, then nats-server with compose's arguments (paths mapped here, ports free)."""
    users_dir = tmp_path / "natsusers"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRUSTLEDGER_NATS_USERS_DIR", str(users_dir))
        assert main(["nats-init", "--data-dir", str(tmp_path)]) == 0
    mounts = {"/etc/nats/users": str(users_dir), "/data": str(tmp_path / "natsdata")}
    command = list(SERVICES["nats"]["command"])
    assert command[0] == "nats-server"
    args = [next((mounts[m] + a[len(m) :] for m in mounts if a.startswith(m)), a) for a in command]
    port = free_tcp_port()
    args[0] = _nats_binary()
    args[args.index("-m") + 1] = str(free_tcp_port())
    args += ["-a", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while _nats_info(port) is None:
            assert proc.poll() is None, "nats-server exited"
            assert time.monotonic() < deadline, "nats-server not ready"
            time.sleep(0.1)
        yield f"nats://127.0.0.1:{port}", NatsUsers(users_dir), proc
    finally:
        proc.terminate()
        proc.wait(10)


async def _admitted(url: str, seed: Path | None) -> bool:
    try:
        nc = await nats.connect(
            url,
            nkeys_seed=None if seed is None else str(seed),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=3,
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    await nc.close()
    return True


def test_compose_nats_admits_only_listed_users_when_an_org_is_added_and_reloaded(
    compose_nats: tuple[str, NatsUsers, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Compose's NATS refuses anonymous clients, admits the service's seed, and admits an
    org's new seed after the reload `docker compose kill -s HUP nats` sends."""
    url, users, proc = compose_nats
    issued = users.issue("acme", "tl", "", datetime.now(UTC))
    org_seed = tmp_path / "acme.nk"
    write_seed_file(org_seed, issued.seed)

    async def check() -> None:
        assert not await _admitted(url, None)
        assert await _admitted(url, users.service_seed_path)
        assert not await _admitted(url, org_seed)  # listed, not yet reloaded
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not await _admitted(url, org_seed):
            assert time.monotonic() < deadline, "the org's seed was not admitted after SIGHUP"
            await asyncio.sleep(0.1)

    asyncio.run(check())
