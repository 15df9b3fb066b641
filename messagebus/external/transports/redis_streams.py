"""Redis Streams (``redis+stream://host:port/db``): a stream per channel, a consumer group
per consuming app.

Publishing is an ``XADD`` to the stream named as the channel, its entry holding the
body (field ``body``) and, as on RabbitMQ, ``message_id``, ``type``,
``correlation_id``, ``causation_id`` and the W3C ``traceparent`` / ``tracestate``;
``MESSAGEBUS["REDIS_STREAM_MAXLEN"]`` caps a stream, about (``MAXLEN ~``), or not at all.
``publish_many`` sends its ``XADD`` commands in one pipeline (one round trip, no ``MULTI``),
each answered on its own.
Unlike pub/sub, a stream keeps what is published while no one reads it.

Coming in, each consuming app reads through a consumer group named after its label,
created at the start of the stream (``MKSTREAM``) if missing, so nothing published
before the first consumer started is missed. A batch is acknowledged (``XACK``) once
the inbox recorded it; an entry read but never acknowledged (its consumer died, or
the database went away) stays pending: this consumer reads its own again when it
reconnects, and any consumer of the group takes over another's once it was idle
``MESSAGEBUS["REDIS_STREAM_CLAIM_IDLE"]`` seconds (``XAUTOCLAIM``). A dead message,
or an entry with no ``body`` field, is copied to ``<stream>.dead`` with the reason
(``x-reason``) and acknowledged in one ``MULTI``: the group goes on at once.

With ``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"`` an entry's ``body`` is instead a
whole CloudEvent (structured content mode, ``cloudevents.REDIS``), its only other field
``content-type``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import conf
from ...core.envelope import Envelope
from ..cloudevents import REDIS
from . import BATCH, Inbound, Published, Receive, Verdict, body, headers, received
from .redis import executed

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds to connect, or to wait for an answer
WAIT = 0.5  # seconds a read waits for the first message
TURN = 0.05  # seconds it waits instead with several groups: the others' are read in turn
FORGET_AFTER = 3600.0  # seconds idle after which a consumer with nothing pending is removed
Entry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields)


def dead_stream(stream: str) -> str:
    """Where ``stream``'s dead messages are copied."""
    return f"{stream}.dead"


class RedisStreamTransport:
    connection_errors = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, url: str) -> None:
        scheme, rest = url.split("://", 1)
        self.client = redis.Redis.from_url(
            f"{scheme.removesuffix('+stream')}://{rest}",
            socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 1),  # a stale connection; else the caller backs off
        )  # fmt: skip
        self._local = threading.local()

    @property
    def consumer(self) -> str:
        """This thread's name in the groups: the same across reconnections, so that it
        reads its own pending entries again."""
        name: str | None = getattr(self._local, "name", None)
        if name is None:
            name = self._local.name = (
                f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident():x}"
            )
        return name

    def publish(self, channel: str, envelope: Envelope) -> None:
        maxlen = conf.settings.REDIS_STREAM_MAXLEN
        self.client.xadd(channel, entry(envelope), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """An ``XADD`` of each, in one pipeline: None for each Redis added, the error it
        answered for each other (``redis.ResponseError``: a key that is not a stream).
        A connection that fails meanwhile raises (one of ``connection_errors``): then
        none is known added, though some may have been."""
        maxlen = conf.settings.REDIS_STREAM_MAXLEN
        pipe = self.client.pipeline(transaction=False)
        for envelope in envelopes:
            pipe.xadd(channel, entry(envelope), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        return executed(pipe)

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        groups: dict[str, list[str]] = {}  # group -> its streams
        for stream, group in channels.items():
            groups.setdefault(group, []).append(stream)
        self._create_groups(channels)
        logger.info(
            "Consuming %s from Redis Streams as %s",
            ", ".join(f"{s} (group {g})" for s, g in channels.items()), self.consumer,
        )  # fmt: skip
        for group, streams in groups.items():  # its own, left by an outage: first
            for stream in streams:
                for entries in self._own_pending(stream, group):
                    self._handle(stream, group, entries, receive)
        claimed_at = time.monotonic()
        while not stopping.is_set():
            idle = conf.settings.REDIS_STREAM_CLAIM_IDLE
            if time.monotonic() - claimed_at >= idle / 2:
                claimed_at = time.monotonic()
                for stream, group in channels.items():
                    self._claim(stream, group, idle, receive)
            found = False  # in this round: the last group waits only if none had any
            block = int((WAIT if len(groups) == 1 else TURN) * 1000)
            for n, (group, streams) in enumerate(groups.items()):
                wait = n == len(groups) - 1 and not found
                try:
                    read: Any = self.client.xreadgroup(
                        group, self.consumer, dict.fromkeys(streams, ">"),
                        count=BATCH, block=block if wait else None,
                    )  # fmt: skip
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    logger.warning("A stream or its group went away: %s; created again", exc)
                    self._create_groups(channels)
                    continue
                for stream, entries in read or []:
                    found = found or bool(entries)
                    self._handle(stream.decode(), group, entries, receive)

    def _create_groups(self, channels: Mapping[str, str]) -> None:
        for stream, group in channels.items():
            try:
                self.client.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _own_pending(self, stream: str, group: str) -> Iterator[list[Any]]:
        """The entries this consumer read before and did not acknowledge, a batch at a time."""
        after: bytes = b"0"
        while True:
            read: Any = self.client.xreadgroup(group, self.consumer, {stream: after}, count=BATCH)
            entries = read[0][1] if read else []
            if not entries:
                return
            after = entries[-1][0]
            yield entries

    def _claim(self, stream: str, group: str, idle: float, receive: Receive) -> None:
        """Take over what another consumer of the group read and left idle ``idle``
        seconds (it died); forget consumers long idle with nothing pending."""
        start: bytes | str = "0-0"
        while True:
            reply: Any = self.client.xautoclaim(
                stream, group, self.consumer, int(idle * 1000), start_id=start, count=BATCH
            )
            start, entries = reply[0], reply[1]
            if entries:
                logger.warning(
                    "Took over %d messages on %s idle over %.0fs (their consumer died?)",
                    len(entries), stream, idle,
                )  # fmt: skip
                self._handle(stream, group, entries, receive)
            if start in (b"0-0", "0-0") or not entries:
                break
        for consumer in self.client.xinfo_consumers(stream, group):
            if consumer["pending"] == 0 and consumer["idle"] > FORGET_AFTER * 1000:
                self.client.xgroup_delconsumer(stream, group, consumer["name"])

    def _handle(self, stream: str, group: str, entries: list[Any], receive: Receive) -> None:
        """Pass the entries to ``receive``; then, in one MULTI, copy the dead ones to the
        dead-letter stream and acknowledge them all."""
        inbound: list[Inbound] = []
        taken: list[Entry] = []
        dead: list[tuple[Entry, str]] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed or deleted while pending: nothing left to handle
                gone.append(entry_id)
                continue
            message = _inbound(stream, entry_id, fields)
            if isinstance(message, str):
                logger.warning("Skipped entry %s on %s: %s", entry_id.decode(), stream, message)
                dead.append(((entry_id, fields), message))
            else:
                inbound.append(message)
                taken.append((entry_id, fields))
        if inbound:
            for entry, settled in zip(taken, receive(inbound), strict=True):
                if settled.verdict is Verdict.DEAD:
                    dead.append((entry, settled.reason))
        if gone:
            logger.warning("%d entries of %s were gone before they were handled", len(gone), stream)
        pipe = self.client.pipeline(transaction=True)
        for (entry_id, fields), reason in dead:
            pipe.xadd(dead_stream(stream), _dead_letter(stream, group, entry_id, fields, reason),
                      maxlen=conf.settings.REDIS_STREAM_MAXLEN, approximate=True)  # fmt: skip
        pipe.xack(stream, group, *(entry_id for entry_id, _ in entries))
        pipe.execute()


def entry(envelope: Envelope) -> dict[str, str | bytes]:
    """What is published of ``envelope``: the entry's fields, its body and headers."""
    return {"body": body(envelope, REDIS), **headers(envelope, REDIS)}


def _inbound(stream: str, entry_id: bytes, fields: dict[bytes, bytes]) -> Inbound | str:
    """What ``receive`` takes of an entry; or why it cannot take it."""
    data = fields.get(b"body")
    if data is None:
        names = ", ".join(sorted(repr(name.decode(errors="replace")) for name in fields)[:20])
        return f"no 'body' field, but {names}"
    found = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    # An entry without an id is known by its place in the stream: a copy of it read
    # again (taken over from a dead consumer) is known as handled.
    message_id = found.get("message_id") or f"{stream}/{entry_id.decode()}"
    return received(stream, data, found, REDIS, message_id)


def _dead_letter(
    stream: str, group: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str
) -> dict[Any, Any]:
    """The entry's fields (its body cut to INBOUND_MAX_BYTES), and why and where from."""
    raw = fields.get(b"body", b"")
    return {
        **fields,
        b"body": raw[: conf.settings.INBOUND_MAX_BYTES],
        b"x-reason": reason,
        b"x-original-stream": stream,
        b"x-original-id": entry_id,
        b"x-original-size": len(raw),
        b"x-group": group,
    }
