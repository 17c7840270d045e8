"""Publish bytes to JetStream over a raw NATS protocol connection.

nats-py will not send some of the hostile messages the suite needs (a subject
that is not valid UTF-8, a header value with a NUL), so this writes the
protocol lines itself (docs.nats.io, "Client Protocol": CONNECT, SUB, PUB,
HPUB) and waits for JetStream's ack on a reply inbox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from urllib.parse import urlsplit

import nkeys

ACK_TIMEOUT_S = 5.0


class RawPublishError(Exception):
    """The server refused the message, or no JetStream ack came."""


def header_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"NATS/1.0\r\n" + lines + b"\r\n"


async def raw_publish(
    nats_url: str,
    subject: bytes,
    payload: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    timeout_s: float = ACK_TIMEOUT_S,
    seed: bytes | None = None,
) -> int:
    """Publish exactly these bytes; returns the stream seq from JetStream's ack.

    `seed`: an nkey user seed, for a server that admits only known users (it
    signs the server's nonce, as every NATS client does)."""
    url = urlsplit(nats_url)
    reader, writer = await asyncio.open_connection(url.hostname or "127.0.0.1", url.port or 4222)
    try:
        return await asyncio.wait_for(
            _exchange(reader, writer, subject, payload, headers, seed), timeout_s
        )
    except TimeoutError as e:
        raise RawPublishError(f"no JetStream ack within {timeout_s:.0f} s") from e
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    subject: bytes,
    payload: bytes,
    headers: list[tuple[bytes, bytes]] | None,
    seed: bytes | None,
) -> int:
    info = await reader.readline()
    if not info.startswith(b"INFO "):
        raise RawPublishError(f"not a NATS server: {info[:80]!r}")
    connect: dict[str, object] = {"verbose": False, "pedantic": False, "headers": True}
    connect |= {"protocol": 1, "no_responders": True, "name": "faults-raw"}
    if seed is not None:
        user = nkeys.from_seed(bytearray(seed.strip()))
        nonce = str(json.loads(info[5:]).get("nonce", ""))
        connect["nkey"] = user.public_key.decode()
        connect["sig"] = base64.urlsafe_b64encode(user.sign(nonce.encode())).decode().rstrip("=")
    inbox = f"_INBOX.faults.{secrets.token_hex(8)}".encode()
    writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
    writer.write(b"SUB " + inbox + b" 1\r\n")
    if headers is None:
        writer.write(b"PUB %s %s %d\r\n" % (subject, inbox, len(payload)) + payload + b"\r\n")
    else:
        block = header_block(headers)
        writer.write(
            b"HPUB %s %s %d %d\r\n" % (subject, inbox, len(block), len(block) + len(payload))
            + block
            + payload
            + b"\r\n"
        )
    writer.write(b"PING\r\n")
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line:
            raise RawPublishError("the server closed the connection")
        if line.startswith(b"PING"):
            writer.write(b"PONG\r\n")
            await writer.drain()
        elif line.startswith(b"-ERR"):
            raise RawPublishError(line.decode(errors="replace").strip())
        elif line.startswith((b"MSG ", b"HMSG ")):
            parts = line.split()
            size = int(parts[-1])
            body = await reader.readexactly(size + 2)
            if line.startswith(b"HMSG "):
                body = body[int(parts[-2]) :]
            answer = json.loads(body[:-2] or b"{}")
            if "error" in answer:
                raise RawPublishError(f"JetStream refused it: {answer['error']}")
            if "seq" not in answer:
                raise RawPublishError(f"no stream took it (reply {body[:120]!r})")
            return int(answer["seq"])
