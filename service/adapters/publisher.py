"""The publisher for agent runtimes and gateways: sign exactly what is sent.

    async with await Publisher.connect("nats://...", key, seed_file=Path("acme.nk")) as p:
        await p.publish(ActionPerformed(...))

Each event is encoded once; the Ed25519 signature covers those exact bytes and
travels in the `Tl-Signature` header (base64url, no padding) beside
`Tl-Key-Id`. `Nats-Msg-Id` is `<org>/<event id>/<signature>`: JetStream drops a
repeat within its duplicate window, and the ledger drops any later one.
Publishing retries on timeouts with the same bytes, hence the same signature
and id, so delivery is at-least-once and the log still holds each event once.

The signature is in the id because the duplicate window is stream-wide: another
org, although it may publish only on its own subjects, could otherwise publish
first with `<org>/<event id>` of an event it expects from this org, and the
broker would drop the real one as a duplicate. No one can write the id of a
message before its signer has signed it (docs/wire-contract.md §2).

The connection is made as the org's NATS user (`seed_file`, from `trustledger
orgs nats-creds`), with the org's own inbox, the only one its user may read.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck

from service.adapters.broker import connect, refusal
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER
from service.domain.bus_access import org_inbox_prefix
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
    signature = b64url(key.sign(data))
    return data, {
        MSG_ID_HEADER: msg_id(event.org, event.id, signature),
        KEY_ID_HEADER: key.key_id,
        SIGNATURE_HEADER: signature,
    }


def msg_id(org: str, event_id: str, signature: str) -> str:
    """`Nats-Msg-Id`: unique per event and signed bytes, and unknowable before signing."""
    return f"{org}/{event_id}/{signature}"


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
    async def connect(
        cls,
        url: str,
        key: SigningKey,
        subject_prefix: str = "tl",
        seed_file: Path | None = None,
    ) -> Publisher:
        """Connect as the NATS user of `seed_file` (none: a server without authentication)."""
        nc = await connect(
            url,
            name=f"trustledger-publisher-{key.org}",
            reconnect_forever=False,
            seed_file=seed_file,
            inbox_prefix=org_inbox_prefix(subject_prefix, key.org),
        )
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
                refused = refusal(self._nc, subject)
                if refused is not None:
                    # Permissions do not change by retrying: the org's NATS user may
                    # publish only on its own subjects.
                    raise PublishError(f"NATS refused the publish to {subject}: {refused}") from e
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
