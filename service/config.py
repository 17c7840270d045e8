"""One frozen settings object, read from the environment once at start.

Nothing below the entry points reads `os.environ`: the CLI builds a `Settings`
and passes it down.

| variable                          | default                         |
|-----------------------------------|---------------------------------|
| DATABASE_URL                      | embedded PostgreSQL (`up` only) |
| NATS_URL                          | embedded NATS (`up` only)       |
| TRUSTLEDGER_DATA_DIR              | the user's data dir             |
| TRUSTLEDGER_HOST / _PORT          | 127.0.0.1 / 8000                |
| TRUSTLEDGER_STREAM                | TRUSTLEDGER                     |
| TRUSTLEDGER_SUBJECT_PREFIX        | tl                              |
| TRUSTLEDGER_CONSUMER              | ingest                          |
| TRUSTLEDGER_BATCH_MAX             | 500 events                      |
| TRUSTLEDGER_FETCH_WAIT_MS         | 100                             |
| TRUSTLEDGER_INGEST_STALL_S        | 30                              |
| TRUSTLEDGER_DUPLICATE_WINDOW_S    | 120                             |
| TRUSTLEDGER_NATS_SYNC_ALWAYS      | 0 (embedded NATS: 1 = fsync before every ack) |
| TRUSTLEDGER_NATS_SEED_FILE        | none: the service's NATS nkey seed (external NATS) |
| TRUSTLEDGER_NATS_USERS_DIR        | <data dir>/nats/auth (NATS users, for `orgs nats-creds`) |
| TRUSTLEDGER_LEDGER_NAME           | trustledger.local               |
| TRUSTLEDGER_LEDGER_KEY_FILE       | <data dir>/ledger-key.json      |
| TRUSTLEDGER_CHECKPOINT_INTERVAL_S | 60                              |
| TRUSTLEDGER_VERIFY_INTERVAL_S     | 30                              |
| TRUSTLEDGER_POSTURE_INTERVAL_S    | 5                               |
| TRUSTLEDGER_LOG_LEVEL             | INFO                            |
| TRUSTLEDGER_LOG_FORMAT            | text (or json)                  |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import platformdirs

from service.errors import ConfigError

_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9._~/:-]{1,200}$")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a process role needs to know, fixed at start."""

    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path(platformdirs.user_data_dir("trustledger"))
    host: str = "127.0.0.1"
    port: int = 8000
    stream: str = "TRUSTLEDGER"
    subject_prefix: str = "tl"
    consumer: str = "ingest"
    batch_max: int = 500
    fetch_wait_s: float = 0.1
    """How long an idle fetch waits; also the most a lone event waits to be chained.
    Under load a fetch returns at once with what is there, up to `batch_max`."""
    ingest_stall_s: int = 30
    """Readiness fails when messages wait and ingest committed nothing for this long."""
    duplicate_window_s: float = 120.0
    nats_sync_always: bool = False
    """The embedded NATS syncs to disk before every ack (docs/reliability.md §4)."""
    nats_seed_file: Path | None = None
    """The nkey seed the service connects to NATS with; `up` with an embedded NATS
    uses the one it keeps in the data folder (docs/operations.md §8)."""
    nats_users_dir: Path | None = None
    """Where the NATS users are listed; `<data dir>/nats/auth` (the embedded server's) when unset."""
    ledger_name: str = "trustledger.local"
    """Names the ledger in checkpoints (origin `<name>/<chain>`) and its note key."""
    ledger_key_file: Path | None = None
    """The ledger's Ed25519 signing key; `<data dir>/ledger-key.json` when unset."""
    checkpoint_interval_s: int = 60
    verify_interval_s: int = 30
    """How often the scheduler verifies what was appended since its last run."""
    posture_interval_s: int = 5
    """How often the scheduler re-assesses agents whose evidence changed or whose
    posture was due to change (windows roll, commitments expire, evidence decays)."""
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def event_subjects(self) -> str:
        """The stream's subject filter: `<prefix>.ev.<org>.<agent or _>`."""
        return f"{self.subject_prefix}.ev.*.*"

    @property
    def nats_users_path(self) -> Path:
        return self.nats_users_dir or self.data_dir / "nats" / "auth"

    @property
    def ledger_key_path(self) -> Path:
        return self.ledger_key_file or self.data_dir / "ledger-key.json"

    def with_servers(self, database_url: str, nats_url: str) -> Settings:
        """A copy pointing at the given servers (used after starting embedded ones)."""
        return replace(self, database_url=database_url, nats_url=nats_url)

    def require_database(self) -> str:
        """The database URL, or a clear error."""
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL not set: set it, or run `trustledger up` on this data dir"
            )
        return self.database_url

    def require_nats(self) -> str:
        """The NATS URL, or a clear error."""
        if not self.nats_url:
            raise ConfigError("NATS_URL not set: set it, or run `trustledger up` on this data dir")
        return self.nats_url

    def require_servers(self) -> tuple[str, str]:
        """The database and NATS URLs, or a clear error naming what is missing."""
        if not self.database_url or not self.nats_url:
            missing = [
                name
                for name, value in (
                    ("DATABASE_URL", self.database_url),
                    ("NATS_URL", self.nats_url),
                )
                if not value
            ]
            raise ConfigError(
                f"{' and '.join(missing)} not set: set them, or run `trustledger up` "
                "which starts embedded servers"
            )
        return self.database_url, self.nats_url


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "0").strip().lower()
    if raw not in ("0", "1", "false", "true"):
        raise ConfigError(f"{name} must be 1 or 0 (true or false), got {raw!r}")
    return raw in ("1", "true")


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw).expanduser() if raw else None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from e
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_log_level(raw: str) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {raw!r}")
    return level


def load_settings(env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings from `env` (default: the process environment), then apply overrides."""
    env = os.environ if env is None else env
    defaults = Settings()
    settings = Settings(
        database_url=env.get("DATABASE_URL") or None,
        nats_url=env.get("NATS_URL") or None,
        data_dir=Path(env.get("TRUSTLEDGER_DATA_DIR") or defaults.data_dir).expanduser(),
        host=env.get("TRUSTLEDGER_HOST") or defaults.host,
        port=_int(env, "TRUSTLEDGER_PORT", defaults.port, minimum=0),
        stream=env.get("TRUSTLEDGER_STREAM") or defaults.stream,
        subject_prefix=env.get("TRUSTLEDGER_SUBJECT_PREFIX") or defaults.subject_prefix,
        consumer=env.get("TRUSTLEDGER_CONSUMER") or defaults.consumer,
        batch_max=_int(env, "TRUSTLEDGER_BATCH_MAX", defaults.batch_max),
        ingest_stall_s=_int(env, "TRUSTLEDGER_INGEST_STALL_S", defaults.ingest_stall_s),
        fetch_wait_s=_int(env, "TRUSTLEDGER_FETCH_WAIT_MS", int(defaults.fetch_wait_s * 1000))
        / 1000,
        duplicate_window_s=float(
            _int(env, "TRUSTLEDGER_DUPLICATE_WINDOW_S", int(defaults.duplicate_window_s))
        ),
        nats_sync_always=_flag(env, "TRUSTLEDGER_NATS_SYNC_ALWAYS"),
        nats_seed_file=_path(env, "TRUSTLEDGER_NATS_SEED_FILE"),
        nats_users_dir=_path(env, "TRUSTLEDGER_NATS_USERS_DIR"),
        ledger_name=env.get("TRUSTLEDGER_LEDGER_NAME") or defaults.ledger_name,
        ledger_key_file=(
            Path(env["TRUSTLEDGER_LEDGER_KEY_FILE"]).expanduser()
            if env.get("TRUSTLEDGER_LEDGER_KEY_FILE")
            else None
        ),
        checkpoint_interval_s=_int(
            env, "TRUSTLEDGER_CHECKPOINT_INTERVAL_S", defaults.checkpoint_interval_s
        ),
        verify_interval_s=_int(env, "TRUSTLEDGER_VERIFY_INTERVAL_S", defaults.verify_interval_s),
        posture_interval_s=_int(env, "TRUSTLEDGER_POSTURE_INTERVAL_S", defaults.posture_interval_s),
        log_level=parse_log_level(env.get("TRUSTLEDGER_LOG_LEVEL") or defaults.log_level),
        log_format=env.get("TRUSTLEDGER_LOG_FORMAT") or defaults.log_format,
    )
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    for name in ("stream", "subject_prefix", "consumer"):
        if not _SUBJECT_TOKEN.match(getattr(settings, name)):
            raise ConfigError(
                f"{name} must be letters, digits, '-' or '_', got {getattr(settings, name)!r}"
            )
    if not _KEY_NAME.match(settings.ledger_name):
        raise ConfigError(
            f"TRUSTLEDGER_LEDGER_NAME must be a schema-less URL-like name without spaces or '+',"
            f" got {settings.ledger_name!r}"
        )
    if settings.log_format not in ("text", "json"):
        raise ConfigError(
            f"TRUSTLEDGER_LOG_FORMAT must be text or json, got {settings.log_format!r}"
        )
    return settings
