"""How the HTTP server treats connections: bounds on slow, idle and oversized clients.

uvicorn (0.55, h11) closes a connection idle *between* requests after
`timeout_keep_alive`, but has no limit on how long a client may take to send a
request: a connection that sends nothing, or half a header, stays open for
ever (120 such connections stayed open indefinitely). `BoundedH11Protocol`
adds that limit: from a connection's first moment, and from the first byte of
each later request, the whole request (head and body) must arrive within
`REQUEST_READ_TIMEOUT_S`, or the connection is closed. Time spent answering
(a long export stream) is not limited.

`server_options()` returns the keyword arguments for `uvicorn.Config` that
apply every bound (docs/api.md, "Abuse resistance").
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_READ_TIMEOUT_S = 10.0
"""A request's head and body must arrive within this long of its first byte
(of the connection, for its first request)."""
KEEP_ALIVE_TIMEOUT_S = 5
"""An idle connection between requests is closed after this long."""
MAX_HEADER_BYTES = 16_384
"""A request head (request line and headers) larger than this is refused with 400."""
MAX_CONCURRENCY = 1_000
"""Open connections and requests in flight per process; beyond it new requests get 503."""


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request."""

    _read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Reading a request (their side IDLE with a partial head, or SEND_BODY):
        # keep the deadline set at its first byte. Otherwise the request is in,
        # and the keep-alive timer (uvicorn's) covers the wait for the next one.
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._arm_read_deadline()
        else:
            self._disarm_read_deadline()

    def on_response_complete(self) -> None:
        self._disarm_read_deadline()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read_deadline()
        super().connection_lost(exc)

    def _arm_read_deadline(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(
                REQUEST_READ_TIMEOUT_S, self._read_deadline_passed
            )

    def _disarm_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_deadline_passed(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def server_options() -> dict[str, object]:
    """Keyword arguments for `uvicorn.Config` that bound what one client can hold."""
    return {
        "http": BoundedH11Protocol,
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT_S,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        "limit_concurrency": MAX_CONCURRENCY,
    }
