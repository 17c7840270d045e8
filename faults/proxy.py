"""A TCP proxy on 127.0.0.1 that breaks connections on demand.

Ingest is pointed at it instead of NATS or PostgreSQL; the fault suite then
cuts every live connection (both sides closed at once, with RST by default, as
a crashed middlebox or a dead peer would), pauses forwarding (a stalled
network: bytes wait, nothing is closed) and resumes, or arms a cut that fires
after a given number of client-to-server bytes, which lands it inside a
transaction or a fetch rather than between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

CHUNK_BYTES = 65536


@dataclass(eq=False, slots=True)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    """Close a socket now, dropping unsent bytes; with `rst`, the peer gets a RST."""
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        # SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards `127.0.0.1:<port>` to `target_host:target_port`, one upstream per client."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self._listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._armed_bytes: int | None = None
        self._armed_upstream = True
        self._armed_rst = True
        self.accepted = 0
        """Client connections accepted so far."""
        self.cuts = 0
        """Cuts made (each one closes every live connection)."""
        self.connections_cut = 0
        """Connections closed by cuts, over all cuts."""
        self.armed_fired = asyncio.Event()
        """Set when an armed cut has fired (cleared by `arm_cut`)."""

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def route(self, url: str) -> str:
        """`url` (a DSN or a NATS URL of the target) with the proxy as its host and port."""
        parts = urlsplit(url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    @property
    def live(self) -> int:
        """Connections currently forwarded."""
        return len(self._links)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._listen_port)
        return self.port

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._drop(link, rst=False, graceful=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def cut(self, rst: bool = True) -> int:
        """Close every live connection on both sides at once; returns how many."""
        links = list(self._links)
        for link in links:
            self._drop(link, rst)
        if links:
            self.cuts += 1
            self.connections_cut += len(links)
        return len(links)

    def pause(self) -> None:
        """Stop forwarding in both directions; connections stay open, bytes wait."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def arm_cut(self, after_bytes: int, upstream: bool = True, rst: bool = True) -> None:
        """Cut every connection once `after_bytes` more bytes have passed one way
        (client to server when `upstream`, else server to client).

        The chunk that crosses the mark is forwarded only up to it: the peer
        sees a request (or a delivery) broken off in the middle."""
        self._armed_bytes = max(1, after_bytes)
        self._armed_upstream = upstream
        self._armed_rst = rst
        self.armed_fired.clear()

    def disarm(self) -> None:
        self._armed_bytes = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            # Upstream is down: the client sees a refused-like close, as it would directly.
            _abort(writer, rst=True)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, upstream=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        try:
            while True:
                data = await source.read(CHUNK_BYTES)
                if not data:
                    break
                await self._flowing.wait()
                if link not in self._links:
                    return
                if self._armed_bytes is not None and upstream == self._armed_upstream:
                    if len(data) >= self._armed_bytes:
                        sink.write(data[: self._armed_bytes])
                        self._armed_bytes = None
                        self.armed_fired.set()
                        self.cut(self._armed_rst)
                        return
                    self._armed_bytes -= len(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            self._drop(link, rst=False)
            return
        # A peer closed its side: pass the close on, after the bytes already written.
        self._drop(link, rst=False, graceful=True)

    def _drop(self, link: _Link, rst: bool, graceful: bool = False) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if graceful:
                writer.close()
            else:
                _abort(writer, rst)
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
