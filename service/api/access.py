"""The one place where the HTTP API decides who may call what (docs/api.md).

Every route handler runs behind `enforce_access`, an app-wide Litestar guard:

1. the caller is authenticated from `Authorization: Bearer <key>` (no header:
   anonymous; a header that is not a live key: 401, whatever the route);
2. the caller's token bucket is charged (per key; per client address when
   anonymous or refused): 429 with `Retry-After` when empty;
3. the route's rule (`service.domain.access.MATRIX`, by method and route
   template) is applied: 401 or 403, before any parameter is parsed or any
   data read.

Handlers learn who called with `caller(request)`, e.g. to limit a listing to
the caller's org (`own_org` routes) or to show readiness detail to operators.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from litestar.connection import ASGIConnection
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    TooManyRequestsException,
)
from litestar.handlers.base import BaseRouteHandler

from service.app.access import AccessStore, Authenticator, AuthFailure
from service.domain.access import MAX_TOKEN_CHARS, Principal, decide, rule_for
from service.domain.rate_limit import Limit, RateLimiter

log = logging.getLogger(__name__)

KEY_LIMIT = Limit(rate_per_s=50.0, burst=100)
"""Per API key and API process: 50 requests a second sustained, bursts of 100."""
ANONYMOUS_LIMIT = Limit(rate_per_s=10.0, burst=50)
"""Per client address and API process, for calls without a key."""
FAILED_KEY_LIMIT = Limit(rate_per_s=1.0, burst=20)
"""Per client address and API process: refused keys. An address whose bucket is
empty gets 429 before its next key is even looked up, so keys cannot be guessed
at speed (they cannot be guessed at all: 256 random bits)."""

_AUTH_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="trustledger"'}


@dataclass(slots=True)
class AccessControl:
    """What the guard needs: the key store, the buckets, the clocks (tests set them)."""

    authenticator: Authenticator
    keyed: RateLimiter = field(default_factory=lambda: RateLimiter(KEY_LIMIT))
    anonymous: RateLimiter = field(default_factory=lambda: RateLimiter(ANONYMOUS_LIMIT))
    failed: RateLimiter = field(default_factory=lambda: RateLimiter(FAILED_KEY_LIMIT))
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic_s: Callable[[], float] = field(default=time.monotonic)

    @classmethod
    def over(
        cls, store: AccessStore, key_limit: Limit = KEY_LIMIT, anonymous: Limit = ANONYMOUS_LIMIT
    ) -> AccessControl:
        return cls(Authenticator(store), RateLimiter(key_limit), RateLimiter(anonymous))


def caller(connection: ASGIConnection) -> Principal | None:  # type: ignore[type-arg]
    """Who made this request, as the guard authenticated it (None: anonymous)."""
    found = connection.scope.get("auth")
    return found if isinstance(found, Principal) else None


def _bearer(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    """The bearer token, or None without an Authorization header; 401 for any other scheme."""
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise NotAuthorizedException(
            "send the API key as 'Authorization: Bearer <key>'", headers=_AUTH_CHALLENGE
        )
    return token


def _throttle(limiter: RateLimiter, who: str, now_s: float, *, peek: bool = False) -> None:
    wait_s = limiter.peek(who, now_s) if peek else limiter.take(who, now_s)
    if wait_s:
        raise TooManyRequestsException(
            f"rate limit of {limiter.limit.rate_per_s:g} requests/s (bursts of "
            f"{limiter.limit.burst}) reached; retry in {wait_s} s",
            headers={"Retry-After": str(wait_s)},
        )


def _named_org(connection: ASGIConnection) -> str | None:  # type: ignore[type-arg]
    """The org the request is about: its `{org}`, or else its one `?org=`."""
    in_path = connection.path_params.get("org")
    if isinstance(in_path, str):
        return in_path
    in_query = connection.query_params.getall("org", [])
    if len(in_query) > 1:
        # The guard and the handler must read the same org: two names match no
        # caller's org ("" is no org id), so only an operator gets further.
        return ""
    return in_query[0] if in_query else None


async def enforce_access(
    connection: ASGIConnection,  # type: ignore[type-arg]
    _: BaseRouteHandler,
) -> None:
    """The app's only guard: authenticate, rate-limit, apply the route's rule."""
    access = connection.app.state["access"]
    assert isinstance(access, AccessControl)
    client = connection.client.host if connection.client else "unknown"
    token = _bearer(connection)
    principal: Principal | None = None
    if token is None:
        _throttle(access.anonymous, client, access.monotonic_s())
    else:
        _throttle(access.failed, client, access.monotonic_s(), peek=True)
        found = await access.authenticator.authenticate(token, access.now())
        if isinstance(found, AuthFailure):
            access.failed.take(client, access.monotonic_s())
            log.info("refused an API key from %s: %s", client, found.reason)
            raise NotAuthorizedException(found.reason, headers=_AUTH_CHALLENGE)
        principal = found
        _throttle(access.keyed, principal.key_id, access.monotonic_s())
    connection.scope["auth"] = principal
    method = connection.scope.get("method", "GET")  # HTTP routes only: no websockets here
    rule = rule_for(str(method), connection.scope["path_template"])
    refusal = decide(rule, principal, _named_org(connection))
    if refusal is None:
        return
    if refusal.status == 401:
        raise NotAuthorizedException(refusal.detail, headers=_AUTH_CHALLENGE)
    raise PermissionDeniedException(refusal.detail)
