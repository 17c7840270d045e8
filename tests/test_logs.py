"""Log lines: an expected outage is one line, anything else keeps its traceback."""

from __future__ import annotations

import io
import logging

import asyncpg
import pytest

from service.logs import OutageFilter


def _emit(error: BaseException) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(OutageFilter())
    logger = logging.getLogger(f"test.outage.{id(error)}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise error
    except BaseException:
        logger.exception("Failed to restore the pool connection floor")
    logger.removeHandler(handler)
    return stream.getvalue()


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError("timed out"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
def test_outage_is_logged_as_one_line_when_a_library_logs_its_traceback(
    error: BaseException,
) -> None:
    """A server being down or restarting gives one line naming the error, no traceback."""
    text = _emit(error)
    assert text.count("\n") == 1
    assert "Traceback" not in text
    assert type(error).__name__ in text


@pytest.mark.parametrize("error", [ValueError("bug"), asyncpg.UniqueViolationError("dup")])
def test_traceback_is_kept_when_the_error_is_not_an_outage(error: BaseException) -> None:
    """Anything that is not an outage keeps its traceback: it may be a bug."""
    assert "Traceback" in _emit(error)
