"""One `trustledger up` per data folder.

Two `up` on one folder would share one PostgreSQL cluster (the second stops the
first's server, taking it for one left over by a crash) and one JetStream store.
So `up` takes an exclusive `flock` on `<data dir>/up.lock` without waiting, and
holds it through an open file for the life of the process. The kernel releases
the lock when the process ends, however it ends: a crash never leaves a stale
lock behind. The file also names the holder (pid and HTTP URL) for the refusal
message. Commands that only read `runtime.json` (export, publish, ...) take no
lock. On Windows (no `flock`) there is no lock.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from service.errors import ConfigError

if sys.platform != "win32":
    import fcntl

__all__ = ["LOCK_FILE", "DataDirInUseError", "DataDirLock"]

LOCK_FILE = "up.lock"
_HOLDER_READ_TIMEOUT_S = 1.0
_HOLDER_MAX_BYTES = 4096


class DataDirInUseError(ConfigError):
    """Another `trustledger up` holds the data folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DataDirLock:
    """An exclusive lock on a data folder, held until `release()` or the process's end."""

    def __init__(self, fd: int | None, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path, api_url: str) -> DataDirLock:
        """Lock `data_dir` for this process, recording its pid and `api_url`.

        Raises DataDirInUseError, naming the holder, when another process holds it.
        Touches nothing else in the folder."""
        path = data_dir / LOCK_FILE
        if sys.platform == "win32":
            return cls(None, path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirInUseError(
                f"trustledger up is already running ({holder}) on the data folder {data_dir}: "
                "stop it first, or choose another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = json.dumps({"pid": os.getpid(), "api_url": api_url}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        return cls(fd, path)

    def release(self) -> None:
        """Empty the holder record and unlock. The file stays: removing it would let
        a process that opened it a moment before lock a file no one else sees."""
        if self._fd is None:
            return
        if sys.platform != "win32":
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """`pid N, http://HOST:PORT` of the holder, which writes it just after locking."""
    deadline = time.monotonic() + _HOLDER_READ_TIMEOUT_S
    while True:
        try:
            record = json.loads(os.pread(fd, _HOLDER_MAX_BYTES, 0))
            pid, api_url = int(record["pid"]), str(record["api_url"])
        except (ValueError, KeyError, TypeError, OSError):
            pass
        else:
            # A record left by a holder that crashed names a dead pid: the new holder
            # has not written its own yet.
            if _pid_alive(pid):
                return f"pid {pid}, {api_url}"
        if time.monotonic() >= deadline:
            return "pid unknown"
        time.sleep(0.05)
