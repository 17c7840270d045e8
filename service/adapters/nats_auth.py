"""NATS credentials: nkey seeds, and the folder that lists a deployment's NATS users.

The folder (`<data dir>/nats/auth` for the embedded server, or
`TRUSTLEDGER_NATS_USERS_DIR` for an external one) holds:

    users.json        every user ever issued: public key, org, permissions, dates
                      (public keys only: a seed is shown once, to its holder)
    users.conf        the `authorization` block nats-server reads, written from
                      users.json after every change (active users only)
    service.nk        the service's own seed, mode 0600
    nats-server.pid   written by the embedded server itself, to reload it

A change takes effect when the server reloads its configuration (SIGHUP): the
embedded server is signalled here; an external one by its operator
(`nats-server --signal reload`, `docker compose kill -s HUP nats`).
Seeds are made and read with `nkeys`, the NATS project's own Python library
(nats-py uses it to answer the server's challenge).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nkeys

from service.domain.bus_access import (
    BusAccessError,
    IssuedUser,
    NatsUser,
    is_public_nkey,
    org_user,
    render_users_conf,
    service_user,
)
from service.errors import ConfigError, ConflictError, NotFoundError

log = logging.getLogger(__name__)

REGISTRY_FILE = "users.json"
CONFIG_FILE = "users.conf"
SERVICE_SEED_FILE = "service.nk"
PID_FILE = "nats-server.pid"
_LOCK_FILE = ".lock"
_ENCODER = msgspec.json.Encoder()
_SEED_BYTES = 32
MAX_SEED_FILE_BYTES = 4096
"""A seed is 58 characters; a larger file is not a seed file."""


@dataclass(frozen=True, slots=True)
class NewSeed:
    seed: str
    """`SU...`: the secret, shown once."""
    public_key: str
    """`U...`: what the server stores."""


def new_user_seed() -> NewSeed:
    """A fresh NATS user nkey."""
    seed = nkeys.encode_seed(secrets.token_bytes(_SEED_BYTES), nkeys.PREFIX_BYTE_USER)
    return NewSeed(seed.decode("ascii"), public_key_of(seed.decode("ascii")))


def public_key_of(seed: str) -> str:
    """The public key of a user seed; ConfigError when `seed` is not one."""
    try:
        pair = nkeys.from_seed(bytearray(seed.strip().encode("ascii")))
        public: str = pair.public_key.decode("ascii")
    except (nkeys.NkeysError, UnicodeEncodeError, ValueError) as e:
        raise ConfigError("not a NATS user nkey seed") from e
    if not is_public_nkey(public):
        raise ConfigError("not a NATS user nkey seed (a seed of another kind of nkey)")
    return public


def read_seed_file(path: Path) -> str:
    """The public key of the seed in `path`, after checking the file holds one.

    nats-py reads the file itself at every (re)connection; checking it first turns
    a wrong path or file into a clear error instead of a failure inside the client."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SEED_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"cannot read the NATS seed file {path}: {e.strerror}") from e
    if len(raw) > MAX_SEED_FILE_BYTES:
        raise ConfigError(f"{path} is not a NATS seed file (over {MAX_SEED_FILE_BYTES} bytes)")
    try:
        return public_key_of(raw.decode("ascii"))
    except (UnicodeDecodeError, ConfigError) as e:
        raise ConfigError(f"{path} does not hold a NATS user nkey seed (SU...)") from e


def write_seed_file(path: Path, seed: str) -> None:
    """Write a seed file readable by its owner only (0600); never overwrite one.

    The file holds the seed alone on one line: the form nats-py (`nkeys_seed=`),
    nats.go (`nats.NkeyOptionFromSeed`) and the `nats` CLI (`--nkey`) read."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} exists; refusing to overwrite a credentials file") from e
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (seed + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data.encode("utf-8") if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _UserRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    public_key: str
    org: str | None
    label: str
    created_at: datetime
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    revoked_at: datetime | None = None


class _Registry(msgspec.Struct, frozen=True):
    version: int
    users: list[_UserRecord]


def _to_record(user: NatsUser) -> _UserRecord:
    return _UserRecord(
        user.public_key, user.org, user.label, user.created_at, user.publish, user.subscribe,
        user.revoked_at,
    )  # fmt: skip


def _from_record(r: _UserRecord) -> NatsUser:
    return NatsUser(
        r.public_key, r.org, r.label, r.created_at, r.publish, r.subscribe, r.revoked_at
    )


class NatsUsers:
    """The NATS users of one deployment, kept in `directory` (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()

    @property
    def config_path(self) -> Path:
        """The `authorization` block for nats-server (`include` it, or pass it with -c)."""
        return self.directory / CONFIG_FILE

    @property
    def service_seed_path(self) -> Path:
        return self.directory / SERVICE_SEED_FILE

    @property
    def pid_path(self) -> Path:
        return self.directory / PID_FILE

    @property
    def registry_path(self) -> Path:
        return self.directory / REGISTRY_FILE

    def exists(self) -> bool:
        return self.registry_path.exists()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across processes (an `up` starting, a CLI issuing)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def users(self) -> list[NatsUser]:
        """Every user issued here, revoked ones included, oldest first."""
        try:
            raw = self.registry_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ConfigError(f"cannot read {self.registry_path}: {e.strerror}") from e
        try:
            registry = msgspec.json.decode(raw, type=_Registry)
        except msgspec.DecodeError as e:
            raise ConfigError(f"{self.registry_path} is not a NATS users registry: {e}") from e
        return [_from_record(r) for r in registry.users]

    def _save(self, users: list[NatsUser]) -> None:
        try:
            text = render_users_conf(users)
        except BusAccessError as e:
            raise ConfigError(f"{self.registry_path}: {e}") from e
        registry = _Registry(version=1, users=[_to_record(u) for u in users])
        _write_atomically(self.registry_path, msgspec.json.format(_ENCODER.encode(registry)))
        _write_atomically(self.config_path, text)

    def ensure_service_user(self) -> bool:
        """Make the service's user (seed file 0600) unless there is one; True when made.

        Also rewrites users.conf from the registry, so a start always serves what
        the registry says."""
        with self._locked():
            users = self.users()
            if self.service_seed_path.exists():
                public = read_seed_file(self.service_seed_path)
                if any(u.org is None and u.active and u.public_key == public for u in users):
                    self._save(users)
                    return False
            fresh = new_user_seed()
            # The seed first: a service user is never listed without its only copy.
            self.service_seed_path.unlink(missing_ok=True)
            write_seed_file(self.service_seed_path, fresh.seed)
            now = datetime.now(UTC)
            users = [replace(u, revoked_at=now) if u.org is None and u.active else u for u in users]
            users.append(service_user(fresh.public_key, now))
            self._save(users)
        log.info("created the service's NATS identity %s in %s", fresh.public_key, self.directory)
        return True

    def issue(
        self,
        org: str,
        subject_prefix: str,
        label: str,
        now: datetime,
        max_active: int | None = None,
    ) -> IssuedUser:
        """A new user for `org`: allowed `<prefix>.ev.<org>.>` and its own inbox only.

        ConflictError when `org` already has `max_active` active users (counted under
        the folder's lock, so concurrent issuers cannot pass the bound together)."""
        fresh = new_user_seed()
        try:
            user = org_user(fresh.public_key, org, subject_prefix, label, now)
        except BusAccessError as e:
            raise ConfigError(str(e)) from e
        with self._locked():
            users = self.users()
            active = sum(1 for u in users if u.org == org and u.active)
            if max_active is not None and active >= max_active:
                raise ConflictError(
                    f"org {org} has {active} active NATS users, the most allowed: "
                    "revoke one it no longer uses first"
                )
            self._save([*users, user])
        log.info("NATS user %s issued for org %s", user.public_key, org)
        return IssuedUser(user, fresh.seed)

    def revoke(self, public_key: str, now: datetime) -> NatsUser:
        """Take an org's user out of the server's list (at the next reload)."""
        with self._locked():
            users = self.users()
            found = next((u for u in users if u.public_key == public_key), None)
            if found is None:
                raise NotFoundError(f"no NATS user {public_key!r} in {self.directory}")
            if found.org is None:
                raise ConfigError(
                    "the service's own NATS user is not revoked this way: delete "
                    f"{self.service_seed_path} and restart the service to replace it"
                )
            if found.active:
                found = replace(found, revoked_at=now)
                self._save([found if u.public_key == public_key else u for u in users])
        log.info("NATS user %s of org %s revoked", public_key, found.org)
        return found

    def reload_server(self) -> bool:
        """Ask the nats-server whose pid file is here to reload its configuration.

        False when no such server runs (it reads the users at its next start).
        Only a process named nats-server is signalled: a pid file left by a
        killed server may name a reused pid."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return False
        if not _is_nats_server(pid):
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        log.info("asked nats-server (pid %d) to reload its users", pid)
        return True


def _is_nats_server(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return Path(os.fsdecode(argv0)).name == "nats-server"
