"""NATS JetStream: the stream, the durable pull consumer, fetching and acking.

Subjects: `<prefix>.ev.<org>.<agent>` (`_` instead of an agent for org-level
events). The stream holds them on file storage, deduplicates on `Nats-Msg-Id`
within `duplicate_window_s`, and the ingest consumer pulls them in batches and
acks each message explicitly after the batch is committed to PostgreSQL.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import DEFAULT_INBOX_PREFIX, Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from service.adapters.nats_auth import read_seed_file
from service.config import Settings
from service.domain.admission import KEY_ID_HEADER, SIGNATURE_HEADER, Incoming
from service.domain.events import STREAM_MAX_MESSAGE_BYTES
from service.errors import BrokerError, DeliveryGapError

log = logging.getLogger(__name__)

STREAM_MAX_AGE_S = 7 * 24 * 3600
"""The stream is a buffer in front of the ledger, not the record: a week lets a
stopped ingest catch up while keeping the broker's disk bounded."""

ACK_WAIT_S = 60.0
"""Longer than any batch transaction: a message is redelivered only if its
batch's process died or could not commit."""


async def connect(
    url: str,
    name: str,
    reconnect_forever: bool = True,
    seed_file: Path | None = None,
    inbox_prefix: str | None = None,
) -> Client:
    """Connect to NATS, as the NATS user whose nkey seed is in `seed_file` (if any).

    Services reconnect forever once connected (they must outlive a NATS
    restart). The first connection is tried a few times only, so a wrong URL
    or a server that is down is reported instead of waited on in silence.
    `inbox_prefix`: where replies (JetStream acks, pulled messages) arrive; a
    user may subscribe only to its own (`service.domain.bus_access`)."""
    holder: list[Client] = []
    refused: list[str] = []  # the server's reason, which nats-py's final error drops
    if seed_file is not None:
        read_seed_file(seed_file)  # a clear error for a wrong file, before nats-py reads it

    async def on_error(e: Exception) -> None:
        text = str(e).lower()
        if not holder and "authorization violation" in text:
            refused.append(str(e))
        elif holder and "permissions violation" in text:
            holder[0].last_refusal = text  # type: ignore[attr-defined]  # our _Client
        await _log_nats_error(e)

    async def disconnected() -> None:
        if holder and not (holder[0].is_closed or holder[0].is_draining):
            log.warning("disconnected from NATS; reconnecting")

    try:
        nc = _Client()
        await nc.connect(
            url,
            name=name,
            max_reconnect_attempts=3,
            reconnect_time_wait=1,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=on_error,
            disconnected_cb=disconnected,
            reconnected_cb=_log_reconnected,
            # The path, not the seed: nats-py reads the file again at each reconnection.
            nkeys_seed=None if seed_file is None else str(seed_file),
            inbox_prefix=DEFAULT_INBOX_PREFIX if inbox_prefix is None else inbox_prefix,
        )
        holder.append(nc)
        if reconnect_forever:
            # nats-py applies max_reconnect_attempts to the first connect as well;
            # lift the limit only once connected.
            nc.options["max_reconnect_attempts"] = -1
        return nc
    except (TimeoutError, OSError, nats.errors.Error) as e:
        if refused:
            who = (
                "no NATS credentials were given (TRUSTLEDGER_NATS_SEED_FILE, --nats-seed)"
                if seed_file is None
                else f"the server does not admit the NATS user of {seed_file}"
            )
            raise BrokerError(
                f"NATS at {url} refused the connection ({refused[-1]}): {who}; "
                "docs/operations.md §8"
            ) from e
        raise BrokerError(f"cannot connect to NATS at {url}: {e}") from e


def refusal(nc: Client, subject: str) -> str | None:
    """The server's last permissions violation on `nc` if it names `subject`.

    The server answers a publish it forbids with an asynchronous error, not on
    the reply subject: a JetStream publish then only times out. This tells
    the two apart."""
    last: str | None = getattr(nc, "last_refusal", None)
    return last if last is not None and f'"{subject.lower()}"' in last else None


class _Client(Client):
    """nats-py decodes a message's subject as strict UTF-8 inside its read loop, and
    an exception there ends the loop for good: one published message with an
    invalid byte in its subject left the client connected but deaf, and ingest
    stalled. Decoding with `surrogateescape` lets such a message reach admission
    and the quarantine like any other bad message (its subject stored escaped)."""

    last_refusal: str | None = None
    """The server's last permissions violation (lowercased, as nats-py reports it)."""

    def _build_message(  # type: ignore[no-untyped-def]  # overrides an untyped private hook
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers
    ):
        return self.msg_class(
            subject=subject.decode("utf-8", "surrogateescape"),
            reply=reply.decode("utf-8", "surrogateescape"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )


async def _log_nats_error(e: Exception) -> None:
    log.warning("nats: %s", e or type(e).__name__)


async def _log_reconnected() -> None:
    log.info("reconnected to NATS")


def stream_config(settings: Settings) -> StreamConfig:
    return StreamConfig(
        name=settings.stream,
        subjects=[settings.event_subjects],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        max_age=STREAM_MAX_AGE_S,
        duplicate_window=settings.duplicate_window_s,
        # An event over MAX_EVENT_BYTES is quarantined (`event_too_large`); one
        # that would not even fit this is refused to its publisher outright.
        max_msg_size=STREAM_MAX_MESSAGE_BYTES,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> str:
    """Create the stream, or update it to the configured settings; idempotent.

    Returns the stream's creation time, which tells one incarnation of the
    stream from another (sequence numbers restart when a stream is recreated)."""
    config = stream_config(settings)
    try:
        try:
            await js.stream_info(settings.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            log.info("created stream %s for %s", settings.stream, settings.event_subjects)
        else:
            await js.update_stream(config)
        info = await js.stream_info(settings.stream)
    except (nats.errors.Error, TimeoutError) as e:
        raise BrokerError(f"cannot create or update stream {settings.stream}: {e}") from e
    return info.created.isoformat() if info.created else "unknown"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A fetched message: what admission needs, and the handle to ack it."""

    incoming: Incoming
    msg: Msg


class EventConsumer:
    """The durable pull consumer feeding the ledger, as one incarnation of it: bound
    to deliver from a position, and refusing to go on past a lost delivery."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub
        self._next_delivery = 1

    @classmethod
    async def bind(cls, js: JetStreamContext, settings: Settings, after_seq: int) -> EventConsumer:
        """(Re)create the durable consumer to deliver from `after_seq + 1`, and bind to it.

        The ledger, not the broker, knows how far ingest has got: the position
        is committed with each batch. Recreating the consumer from it means a
        crashed batch is delivered again *before* anything published after it,
        which broker redelivery (after `ack_wait`, behind newer messages) would
        not guarantee. One process per consumer name (the store's writer lock)."""
        start = (
            {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after_seq + 1}
            if after_seq > 0
            else {"deliver_policy": DeliverPolicy.ALL}
        )
        config = ConsumerConfig(
            durable_name=settings.consumer,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            filter_subject=settings.event_subjects,
            # Bounded in-flight work: the backlog waits in the stream, not in memory.
            max_ack_pending=settings.batch_max * 4,
            max_waiting=16,
            **start,
        )
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(settings.stream, settings.consumer)
            await js.add_consumer(settings.stream, config)
            sub = await js.pull_subscribe_bind(settings.consumer, settings.stream)
        except (nats.errors.Error, TimeoutError) as e:
            raise BrokerError(f"cannot bind consumer {settings.consumer}: {e}") from e
        log.info(
            "consumer %s delivers %s from stream seq %d",
            settings.consumer,
            settings.event_subjects,
            after_seq + 1,
        )
        return cls(sub)

    async def in_progress(self, deliveries: Sequence[Delivery]) -> None:
        """Tell the broker we are still working (a commit is being retried)."""
        try:
            for d in deliveries:
                await d.msg.in_progress()
        except nats.errors.Error as e:
            log.debug("in_progress: %s", e)

    async def fetch(self, batch_max: int, timeout_s: float) -> list[Delivery]:
        """Up to `batch_max` messages: whatever is ready now, else wait up to `timeout_s`.

        JetStream numbers every delivery of a consumer, redeliveries included
        (the consumer sequence), and counts a message delivered once it is written
        to the connection: when the connection breaks, messages can be lost in
        transit while the consumer moves on. So each delivery must be the next
        number; if not, `DeliveryGapError` (nothing of this fetch is used) tells
        the caller to rebind from its committed position, as NATS's own ordered
        consumers do."""
        try:
            msgs = await self._sub.fetch(batch=batch_max, timeout=timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as e:
            raise BrokerError(f"fetch failed: {e}") from e
        for m in msgs:
            delivered = m.metadata.sequence.consumer
            if delivered != self._next_delivery:
                raise DeliveryGapError(
                    f"delivery {delivered} (stream seq {m.metadata.sequence.stream}) came"
                    f" after delivery {self._next_delivery - 1}"
                )
            self._next_delivery = delivered + 1
        return [Delivery(_incoming(m), m) for m in msgs]

    async def pending(self) -> tuple[int, int]:
        """(messages not yet delivered, delivered but not acked), asked of the server."""
        try:
            info = await self._sub.consumer_info()
        except (nats.errors.Error, TimeoutError) as e:
            raise BrokerError(f"consumer info: {e}") from e
        return (info.num_pending or 0, info.num_ack_pending or 0)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack every message of a committed batch."""
        try:
            for d in deliveries:
                await d.msg.ack()
        except nats.errors.Error as e:
            # The batch is committed; a lost ack only means a redelivery the
            # ledger will recognise as a duplicate.
            log.warning("ack failed after commit (will be redelivered and deduplicated): %s", e)

    async def unsubscribe(self) -> None:
        try:
            await self._sub.unsubscribe()
        except nats.errors.Error as e:
            log.debug("unsubscribe: %s", e)


def _incoming(msg: Msg) -> Incoming:
    headers = msg.headers or {}
    return Incoming(
        subject=msg.subject,
        data=msg.data,
        key_id=headers.get(KEY_ID_HEADER),
        signature=headers.get(SIGNATURE_HEADER),
        stream_seq=msg.metadata.sequence.stream,
    )
