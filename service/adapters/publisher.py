"""The publisher for agent runtimes and gateways: sign exactly what is sent.

    async with await Publisher.connect("nats://...", key) as publisher:
        await publisher.publish(ActionPerformed(...))

Each event is encoded once; the Ed25519 signature covers those exact bytes and
travels in the `Tl-Signature` header (base64url, no padding) beside
`Tl-Key-Id`. `Nats-Msg-Id` is `<org>/<event id>`: JetStream drops a repeat
within its duplicate window, and the ledger drops any later one. Publishing
retries on timeouts with the same id, so delivery is at-least-once and the log
still holds each event once.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from service.adapters.broker import connect
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER
from service.domain.events import Event, agent_of, encode_event
from service.domain.signing import SigningKey, b64url
from service.errors import PublishError

MSG_ID_HEADER = "Nats-Msg-Id"


def subject_for(event: Event, prefix: str = "tl") -> str:
    """`<prefix>.ev.<org>.<agent>`; `_` for events about no agent of the org itself."""
    about = agent_of(event)
    token = about[1] if about is not None and about[0] == event.org else "_"
    return f"{prefix}.ev.{event.org}.{token}"


def signed_message(event: Event, key: SigningKey) -> tuple[bytes, dict[str, str]]:
    """The bytes to publish and the headers that authenticate them."""
    data = encode_event(event)
    return data, {
        MSG_ID_HEADER: f"{event.org}/{event.id}",
        KEY_ID_HEADER: key.key_id,
        SIGNATURE_HEADER: b64url(key.sign(data)),
    }


class Publisher:
    """Signs and publishes events of one org with one key."""

    def __init__(
        self, nc: Client, key: SigningKey, subject_prefix: str = "tl", own_connection: bool = False
    ) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self._key = key
        self._prefix = subject_prefix
        self._own = own_connection

    @classmethod
    async def connect(cls, url: str, key: SigningKey, subject_prefix: str = "tl") -> Publisher:
        nc = await connect(url, name=f"trustledger-publisher-{key.org}", reconnect_forever=False)
        return cls(nc, key, subject_prefix, own_connection=True)

    async def publish(self, event: Event, attempts: int = 5, timeout_s: float = 5.0) -> PubAck:
        """Publish one event and wait for the stream's ack; retries keep the same id."""
        if event.org != self._key.org:
            raise PublishError(
                f"event org {event.org!r} differs from the key's org {self._key.org!r}"
            )
        data, headers = signed_message(event, self._key)
        return await self.publish_raw(
            subject_for(event, self._prefix), data, headers, attempts, timeout_s
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str],
        attempts: int = 5,
        timeout_s: float = 5.0,
    ) -> PubAck:
        """Publish bytes as given (tests use it to send what a faulty publisher would)."""
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                return await self._js.publish(subject, data, timeout=timeout_s, headers=headers)
            except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                last = e
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
            except nats.errors.Error as e:
                raise PublishError(f"publish to {subject} failed: {e}") from e
        raise PublishError(f"publish to {subject} failed after {attempts} attempts: {last}")

    async def close(self) -> None:
        if self._own:
            await self._nc.drain()

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
