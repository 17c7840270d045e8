"""Structured logs: one line per record, as text for people or JSON for collectors."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _is_outage(error: BaseException) -> bool:
    """A server being down or restarting: expected in operation, not a bug."""
    # The driver is looked up, not imported: `trustledger verify` must load no
    # database code, and if asyncpg is not loaded no error can be one of its.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is None:
        return isinstance(error, OSError | TimeoutError)
    if isinstance(error, asyncpg.PostgresError):
        return str(error.sqlstate or "")[:2] in {"08", "57"}
    return isinstance(error, OSError | TimeoutError | asyncpg.InterfaceError)


class OutageFilter(logging.Filter):
    """Turns a library's traceback for an expected outage (asyncpg's pool failing to
    reconnect while PostgreSQL restarts, say) into one line naming the error.

    Operators read "connection refused" once; a traceback per attempt buries the
    log lines that matter. Tracebacks of anything else are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and _is_outage(record.exc_info[1]):
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def configure(level: str, fmt: str) -> None:
    """Log to stderr at `level`, as `text` or `json`."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    if level != "DEBUG":
        handler.addFilter(OutageFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at warnings, except when debugging.
    for noisy in ("uvicorn.error", "apscheduler", "nats", "pgserver"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
