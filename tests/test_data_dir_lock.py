"""The data-folder lock of `trustledger up`: one holder at a time, freed when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.adapters.data_dir_lock import DataDirInUseError, DataDirLock
from service.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

_HOLDER_SCRIPT = """
import sys, time
from pathlib import Path
from service.adapters.data_dir_lock import DataDirLock
lock = DataDirLock.acquire(Path(sys.argv[1]), "http://127.0.0.1:9")
print("locked", flush=True)
time.sleep(600)
"""


def test_second_lock_is_refused_naming_the_holder_when_the_folder_is_locked(
    tmp_path: Path,
) -> None:
    """A second acquire gets the holder's pid and URL; after release the folder is free."""
    with DataDirLock.acquire(tmp_path, "http://127.0.0.1:8123"):
        with pytest.raises(DataDirInUseError) as refused:
            DataDirLock.acquire(tmp_path, "http://127.0.0.1:9")
        assert f"already running (pid {os.getpid()}, http://127.0.0.1:8123)" in str(refused.value)
        assert isinstance(refused.value, ConfigError)
    with DataDirLock.acquire(tmp_path, "http://127.0.0.1:9"):
        pass


def test_lock_is_free_when_its_holder_was_killed(tmp_path: Path) -> None:
    """The kernel drops the lock of a SIGKILLed holder: no stale lock, no clean-up needed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_SCRIPT, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(DataDirInUseError, match=rf"\(pid {holder.pid}, http://127.0.0.1:9\)"):
            DataDirLock.acquire(tmp_path, "http://127.0.0.1:8123")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        with DataDirLock.acquire(tmp_path, "http://127.0.0.1:8123"):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
