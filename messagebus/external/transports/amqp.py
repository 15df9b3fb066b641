"""RabbitMQ through kombu: one durable topic exchange (MESSAGEBUS["AMQP_EXCHANGE"]), the
channel as routing key.

With ``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"`` the headers are a CloudEvent's
attributes instead, ``cloudEvents:<name>`` (binary content mode, ``cloudevents.AMQP``).

Messages are persistent and confirmed by the broker before ``publish``
returns; the message id, type and correlation id travel as AMQP properties,
the causation id as a header. Coming in, each consuming app has a durable
queue per channel (``<app label>.<channel>``), bound to the exchange; a
message is acknowledged once its command committed, and a dead one (its own
fault: ``messagebus.external.inbox``) is copied to the dead-letter queue ``messagebus.dead``
with the reason in its headers, for an operator to read, then acknowledged: the
consumer goes on with the next at once. A copy keeps at most
``MESSAGEBUS["INBOUND_MAX_BYTES"]`` of the body; the header ``x-original-size``
says how large it was.

``publish_many`` sends its messages on a channel in confirm mode of a connection of
its own (one per thread), then waits for the broker's answers, known by delivery tag:
a message it refuses (``basic.nack``, as a queue full with ``x-overflow:
reject-publish`` does) gets ``amqp.exceptions.MessageNacked`` in its place, as
``publish`` raises it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from amqp.exceptions import MessageNacked
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.messaging import Consumer, Producer

from ... import conf
from ...core.envelope import Envelope
from ..cloudevents import AMQP
from . import BATCH, Published, Receive, Verdict, body, headers, received

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds to connect, or to wait for the broker's confirmation
DEAD = Exchange("messagebus.dead", type="fanout", durable=True)
DEAD_QUEUE = Queue("messagebus.dead", DEAD, durable=True)
Message = tuple[bytes, dict[str, Any]]  # a body, and its properties and headers for kombu


def exchange() -> Exchange:
    """The durable topic exchange every service publishes to and consumes from."""
    return Exchange(conf.settings.AMQP_EXCHANGE, type="topic", durable=True)


def inbound_queue(channel: str, app: str) -> Queue:
    """The durable queue where ``app`` takes in ``channel``'s messages."""
    return Queue(
        f"{app}.{channel}", exchange(), routing_key=channel, durable=True,
        queue_arguments={"x-dead-letter-exchange": DEAD.name},
    )  # fmt: skip


class AmqpTransport:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connection_errors = Connection(url).connection_errors
        self._local = threading.local()  # a connection per thread: kombu's are not shared

    def publish(self, channel: str, envelope: Envelope) -> None:
        topic = exchange()
        data, properties = message(envelope)
        try:
            self._producer().publish(
                data,
                exchange=topic,
                routing_key=channel,
                declare=[topic],
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.2},
                timeout=TIMEOUT,
                **properties,
            )
        except KombuOperationalError as exc:
            # Its retry wraps the connection's error in kombu's own: raised as it came,
            # one of connection_errors, as every transport raises a broker out of reach.
            if isinstance(exc.__cause__, self.connection_errors):
                raise exc.__cause__ from None
            raise

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """Send every envelope, then wait for the broker's answer to each (up to TIMEOUT
        seconds for each next one): None for each acknowledged, ``MessageNacked`` for each
        refused. A connection or channel lost meanwhile (or no answer in time) is the
        error of each not answered yet. Raises one of ``connection_errors`` when the
        broker cannot be reached. A connection of an earlier call found lost before any
        answer came is replaced, and the messages sent again on the new one, once."""
        messages = [message(envelope) for envelope in envelopes]
        confirming: _Confirming | None = getattr(self._local, "confirming", None)
        if confirming is not None and confirming.open and confirming.pid == os.getpid():
            published = confirming.send(channel, messages)
            if confirming.open or confirming.answered:
                return published
        confirming = self._local.confirming = _Confirming(self.url)
        return confirming.send(channel, messages)

    def _producer(self) -> Producer:
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = Connection(
                self.url, connect_timeout=TIMEOUT, transport_options={"confirm_publish": True}
            )
            producer = self._local.producer = Producer(connection)
        return producer

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        queues = [inbound_queue(channel, app) for channel, app in channels.items()]

        at_hand: list[Any] = []

        def settle() -> None:
            # Taken out first: publishing a dead letter may read more messages off the
            # connection, which land in ``at_hand`` for the next round.
            taken = at_hand[:]
            del at_hand[:]
            messages = [
                received(m.delivery_info.get("routing_key", ""),
                         m.body if isinstance(m.body, bytes) else m.body.encode(),
                         {**(m.headers or {}), "content-type": m.content_type or ""}, AMQP,
                         m.properties.get("message_id"))
                for m in taken
            ]  # fmt: skip
            for message, settled in zip(taken, receive(messages), strict=True):
                if settled.verdict is Verdict.DEAD:
                    dead_letter(producer, message, settled.reason)
                message.ack()

        with Connection(self.url, connect_timeout=TIMEOUT, heartbeat=30) as connection:
            connection.connect()  # one try: the consumer backs off between tries
            channel = connection.channel()
            DEAD_QUEUE(channel).declare()
            producer = Producer(channel, exchange=DEAD)
            with Consumer(channel, queues, on_message=at_hand.append, prefetch_count=BATCH):
                logger.info("Consuming %s from RabbitMQ", ", ".join(q.name for q in queues))
                while not stopping.is_set():
                    try:
                        connection.drain_events(timeout=0.5)
                        while len(at_hand) < BATCH:  # and whatever else is already here
                            connection.drain_events(timeout=0.001)
                    except TimeoutError:
                        connection.heartbeat_check()
                    if at_hand:
                        settle()


def message(envelope: Envelope) -> Message:
    """What is published of ``envelope``: its body, and its properties and headers."""
    return body(envelope, AMQP), {
        "delivery_mode": "persistent",
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "message_id": str(envelope.id),
        "type": envelope.type,
        "correlation_id": str(envelope.correlation_id),
        "headers": headers(envelope, AMQP),
    }


class _Confirming:
    """A connection of one thread's for ``publish_many``: one channel in confirm mode, its
    messages known by their delivery tags (1, 2, ... in the order sent), each acknowledged
    or refused (``basic.nack``) by the broker, alone or with all before it (``multiple``).
    Once anything went wrong on it, it is closed: the next call makes another, as does
    the first call in a forked child (the socket is its parent's)."""

    def __init__(self, url: str) -> None:
        self.pid = os.getpid()
        self.connection = Connection(url, connect_timeout=TIMEOUT)
        try:
            self.connection.ensure_connection(
                max_retries=1, interval_start=0.2, reraise_as_library_errors=False
            )  # as publish retries: raises one of its connection_errors
            channel = self.connection.channel()
            channel.confirm_select()
        except BaseException:
            self.connection.collect()
            raise
        channel.events["basic_ack"].add(partial(self._answer, acked=True))
        channel.events["basic_nack"].add(partial(self._answer, acked=False))
        self.producer = Producer(channel)
        self.errors = self.connection.connection_errors + self.connection.channel_errors
        self.open = True
        self.sent = 0  # the last delivery tag given out
        self.waiting: set[int] = set()  # tags of the last call not answered yet
        self.answers: dict[int, bool] = {}  # tag -> acknowledged (else refused)

    def close(self) -> None:
        """Drop the connection, saying nothing more on it: it is in doubt."""
        self.open = False
        self.waiting.clear()
        self.connection.collect()

    @property
    def answered(self) -> int:
        """Messages of the last call the broker answered for."""
        return len(self.answers)

    def _answer(self, tag: int, multiple: bool, *, acked: bool) -> None:
        for each in [t for t in self.waiting if t <= tag] if multiple else [tag]:
            if each in self.waiting:
                self.waiting.discard(each)
                self.answers[each] = acked

    def send(self, routing_key: str, messages: list[Message]) -> Published:
        """Publish each, then wait for the broker's answers; each one's outcome."""
        topic = exchange()
        first = self.sent + 1
        self.answers.clear()
        failed: Exception | None = None
        try:
            for data, properties in messages:
                self.producer.publish(
                    data, exchange=topic, routing_key=routing_key, declare=[topic],
                    timeout=TIMEOUT, **properties,
                )  # fmt: skip
                self.sent += 1
                self.waiting.add(self.sent)
            while self.waiting:
                self.connection.drain_events(timeout=TIMEOUT)
        except TimeoutError:
            failed = TimeoutError(f"RabbitMQ answered nothing more within {TIMEOUT:g}s")
        except self.errors as exc:
            failed = exc
        except BaseException:
            self.close()
            raise
        if failed is not None:
            self.close()
        published: Published = []
        for tag, (_, properties) in enumerate(messages, first):
            answer = self.answers.get(tag)
            if answer is None:
                published.append(failed)  # not answered: the loop ended on a failure
            elif answer:
                published.append(None)
            else:
                published.append(MessageNacked(f"RabbitMQ refused {properties['message_id']}"))
        return published


def dead_letter(producer: Producer, message: Any, reason: str) -> None:
    """A copy of ``message`` on ``messagebus.dead``, with why and where from in its headers."""
    raw = message.body if isinstance(message.body, bytes) else message.body.encode()
    limit = conf.settings.INBOUND_MAX_BYTES
    properties = {
        key: message.properties[key]
        for key in ("message_id", "correlation_id", "type")
        if message.properties.get(key)
    }
    whole = len(raw) <= limit  # else its first bytes, which may end mid-character
    producer.publish(
        raw[:limit],
        routing_key=message.delivery_info.get("routing_key", ""),
        delivery_mode="persistent",
        content_type=(whole and message.content_type) or "application/octet-stream",
        content_encoding=(whole and message.content_encoding) or "binary",
        headers={
            **(message.headers or {}),
            "x-reason": reason,
            "x-original-routing-key": message.delivery_info.get("routing_key", ""),
            "x-original-size": len(raw),
        },
        **properties,
    )
