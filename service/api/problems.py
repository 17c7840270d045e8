"""The one place where errors become HTTP responses (RFC 9457 problem details)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from service.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    StorageError,
    StorageUnavailableError,
    TrustLedgerError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(msgspec.Struct, omit_defaults=True):
    """An error body: `type` names the kind, `detail` says what to do about it."""

    type: str
    title: str
    status: int
    detail: str = ""
    errors: list[dict[str, object]] = msgspec.field(default_factory=list)


def _problem(
    kind: str,
    title: str,
    status: int,
    detail: str,
    errors: list[dict[str, object]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    return Response(
        Problem(f"https://trustledger.dev/problems/{kind}", title, status, detail, errors or []),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _service_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if isinstance(exc, NotFoundError):
        return _problem("not-found", "Not found", 404, str(exc))
    if isinstance(exc, ConflictError):
        return _problem("conflict", "Conflict", 409, str(exc))
    if isinstance(exc, IntegrityError):
        log.error("ledger integrity on %s: %s", request.url.path, exc)
        return _problem("ledger-integrity", "The ledger does not verify", 500, str(exc))
    if isinstance(exc, StorageUnavailableError):
        log.error("storage unavailable on %s: %s", request.url.path, exc)
        return _problem(
            "unavailable",
            "Storage unavailable",
            503,
            "the ledger database is unavailable; retry later",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, StorageError):
        # The database refused the work itself: retrying would fail alike, so this
        # is our error (a bound the API should have checked), not an outage.
        log.error("storage refused the work on %s: %s", request.url.path, exc)
        return _problem("internal", "Internal error", 500, "unexpected error; see the service log")
    log.error("error on %s: %s", request.url.path, exc)
    return _problem("internal", "Internal error", 500, "unexpected error; see the service log")


def _http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        return _problem(
            "invalid-request",
            "Invalid request",
            400,
            exc.detail,
            [dict(e) for e in extra if isinstance(e, dict)],
        )
    kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", exc.detail or "HTTP error"))
    return _problem(kind, title, exc.status_code, exc.detail, headers=exc.headers)


_HTTP_KINDS = {
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    429: ("rate-limited", "Too many requests"),
    503: ("unavailable", "Unavailable"),
}


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _problem("internal", "Internal error", 500, "unexpected error; see the service log")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    TrustLedgerError: _service_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
