"""Apache Kafka (``kafka://host:port[,host:port]``) through confluent-kafka (librdkafka):
a topic per channel, named as the channel, a consumer group per consuming app.

Publishing goes through one idempotent producer per process (``enable.idempotence``,
``acks=all``): the call returns once the delivery report says the broker wrote the
message, and raises otherwise, so the outbox marks a delivery done only then. Calls
from several threads share the producer, each waiting for its own report, so that many
messages are in flight at once. The message's key is the envelope's key
(``messagebus.publishes(..., key=...)``), hashed as Java clients do (murmur2), else
none; its headers are ``message_id``, ``type``, ``correlation_id``, ``causation_id``
and the W3C ``traceparent`` / ``tracestate``. ``publish_many`` produces all of its
messages, then waits for their delivery reports together.

Coming in, each consuming app is a consumer group named after its label, its topics
created first with the broker's defaults if missing. A batch (up to BATCH messages,
each partition's in order) goes to the inbox; its dead messages are written to
``KAFKA_DEAD_TOPIC`` (``<channel>.dead``) with the reason (header ``x-reason``); only
then are the offsets after it committed. A consumer that dies before that leaves them
uncommitted: the group's next owner of the partition reads them again, and the inbox
drops what it had handled. ``lag(channels)`` is each group's lag per partition, for
``/health/`` and ``/metrics``.

With ``MESSAGEBUS["EXTERNAL_FORMAT"] = "cloudevents"`` the headers are a CloudEvent's
attributes instead, ``ce_<name>`` and ``content-type`` (binary content mode,
``cloudevents.KAFKA``); its ``partitionkey`` is the key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from ... import conf
from ...core.envelope import Envelope
from ...exceptions import MessageBusError
from ..cloudevents import KAFKA
from . import BATCH, Inbound, Lag, Published, Receive, Settled, Verdict, body, headers, received

logger = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds a request may take
DELIVERY_TIMEOUT = 10.0  # seconds librdkafka may take to write a message, retries included
WAIT = 0.5  # seconds a consume waits for the first message
TURN = 0.05  # seconds the consumer of each of several groups waits, in turn
MESSAGE_ID = "message_id"
# What says the brokers are out of reach, rather than that a request was refused.
UNREACHABLE = {
    KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT, KafkaError._RESOLVE, KafkaError.NETWORK_EXCEPTION,
    KafkaError.REQUEST_TIMED_OUT,
}  # fmt: skip
Record = tuple[str, bytes, bytes | None, list[Any]]  # (topic, value, key, headers)


class Unreachable(MessageBusError, ConnectionError):
    """Kafka did not answer: no broker reached, or not in time (an outage: waited out)."""


def failure(error: KafkaError) -> Exception:
    """The exception for ``error``: ``Unreachable`` for an outage, else KafkaException."""
    if error.code() in UNREACHABLE or error.retriable():
        return Unreachable(error.str())
    return KafkaException(error)


class _Watch:
    """A client's error callback: whether it heard that every broker is out of reach
    (librdkafka says so once, and goes on trying them)."""

    def __init__(self) -> None:
        self.down = False

    def __call__(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.down = True
        logger.debug("Kafka: %s", error.str())


def dead_topic(channel: str) -> str:
    """Where ``channel``'s dead messages go."""
    return conf.settings.KAFKA_DEAD_TOPIC.format(channel=channel)


class KafkaTransport:
    connection_errors = (Unreachable,)

    def __init__(self, url: str) -> None:
        self.servers = url.split("://", 1)[1].strip("/")
        self._lock = threading.Lock()
        # This process's producer (a forked child makes its own) and what it heard.
        self._producer: tuple[int, Producer, _Watch] | None = None
        self._admin: tuple[int, AdminClient] | None = None

    def _config(self, **more: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.servers, "client.id": "messagebus", "logger": logger,
            **more, **conf.settings.KAFKA_OPTIONS,
        }  # fmt: skip

    def producer(self) -> tuple[Producer, _Watch]:
        """This process's producer, and its error callback."""
        with self._lock:
            if self._producer is None or self._producer[0] != os.getpid():
                watch = _Watch()
                producer = Producer(self._config(**{
                    "enable.idempotence": True, "acks": "all", "linger.ms": 0,
                    "partitioner": "murmur2_random",
                    "message.timeout.ms": int(DELIVERY_TIMEOUT * 1000),
                    "request.timeout.ms": int(TIMEOUT * 1000), "error_cb": watch,
                }))  # fmt: skip
                self._producer = (os.getpid(), producer, watch)
            return self._producer[1], self._producer[2]

    def admin(self) -> AdminClient:
        with self._lock:
            if self._admin is None or self._admin[0] != os.getpid():
                self._admin = (os.getpid(), AdminClient(self._config()))
            return self._admin[1]

    def close(self) -> None:
        """Wait for what is in flight, and forget the clients: the next call makes them."""
        with self._lock:
            made, self._producer, self._admin = self._producer, None, None
        if made is not None and made[0] == os.getpid():
            made[1].flush(TIMEOUT)

    def publish(self, channel: str, envelope: Envelope) -> None:
        self.write([record(channel, envelope)])

    def publish_many(self, channel: str, envelopes: Sequence[Envelope]) -> Published:
        """Produce every envelope, then wait for their delivery reports (as ``publish``
        does, up to DELIVERY_TIMEOUT + TIMEOUT seconds in all): None for each the broker
        wrote, the error for each other (``KafkaException``: refused, larger than
        ``message.max.bytes`` say; ``Unreachable``: not reported written in time, or the
        brokers went out of reach meanwhile). Raises ``Unreachable`` when the producer
        has heard that no broker is in reach, before producing any."""
        return self.deliver([record(channel, envelope) for envelope in envelopes])

    def write(self, messages: list[Record]) -> None:
        """Produce each, and return once the broker wrote them all; raise the first
        failure else (``Unreachable`` when no broker answers)."""
        for error in self.deliver(messages):
            if error is not None:
                raise error

    def deliver(self, messages: list[Record]) -> Published:
        """Produce each, then wait for their delivery reports: None for each written, the
        error for each other. Raises ``Unreachable`` when the brokers are known out of
        reach before any is produced."""
        producer, watch = self.producer()
        producer.poll(0)  # what the brokers said since the last call
        if watch.down:  # try them, without leaving a message to go out later
            try:
                producer.list_topics(timeout=1.0)
            except KafkaException as exc:
                raise failure(exc.args[0]) from None
            watch.down = False
        outcome: Published = [None] * len(messages)
        reported = [False] * len(messages)

        def report(n: int, error: KafkaError | None, _: Message) -> None:
            reported[n] = True
            if error is not None:
                if error.fatal():
                    with self._lock:
                        self._producer = None  # unusable: the next call makes another
                outcome[n] = failure(error)

        deadline = time.monotonic() + DELIVERY_TIMEOUT + TIMEOUT
        for n, (topic, value, key, more) in enumerate(messages):
            while not reported[n]:
                try:
                    producer.produce(
                        topic, value, key, headers=more, on_delivery=partial(report, n)
                    )
                    break
                except BufferError:  # its queue is full: let some go first
                    if time.monotonic() > deadline:
                        break
                    producer.flush(0.1)
                except KafkaException as exc:  # refused before it went: too large, say
                    outcome[n], reported[n] = failure(exc.args[0]), True
        while not all(reported):
            if watch.down or time.monotonic() > deadline:
                lost = Unreachable(f"no broker wrote the message in time ({self.servers})")
                return [
                    error if done else lost for error, done in zip(outcome, reported, strict=True)
                ]
            producer.flush(0.1)  # sends now (a poll alone waits for the next send), and polls
        return outcome

    def consume(
        self, channels: Mapping[str, str], receive: Receive, stopping: threading.Event
    ) -> None:
        self._create_topics(list(channels))
        groups: dict[str, list[str]] = {}  # group -> its topics
        for topic, group in channels.items():
            groups.setdefault(group, []).append(topic)
        consumers: list[Consumer] = []
        watch = _Watch()
        try:
            for group, topics in groups.items():
                consumers.append(self._consumer(group, watch))
                consumers[-1].subscribe(topics)
            logger.info(
                "Consuming %s from Kafka (%s)",
                ", ".join(f"{t} (group {g})" for t, g in channels.items()), self.servers,
            )  # fmt: skip
            # One group's consumer waits for its messages; several wait in turn, briefly,
            # so that none waits while another's messages are at hand.
            idle = WAIT if len(consumers) == 1 else TURN
            while not stopping.is_set():
                found = False  # in this round: once one had messages, none waits
                for consumer in consumers:
                    taken = self._taken(consumer.consume(BATCH, 0 if found else idle), watch)
                    if taken:
                        found = True
                        self._handle(consumer, taken, receive)
        finally:
            for consumer in consumers:  # leaves the group: its partitions go to the others
                with contextlib.suppress(Exception):
                    consumer.close()

    def _consumer(self, group: str, watch: _Watch) -> Consumer:
        session = int(conf.settings.KAFKA_SESSION_TIMEOUT * 1000)
        return Consumer(self._config(**{
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": session, "heartbeat.interval.ms": max(session // 3, 100),
            "error_cb": watch,
        }))  # fmt: skip

    def _create_topics(self, topics: list[str]) -> None:
        """Create the topics not there yet, with the broker's defaults (its partitions)."""
        admin = self.admin()
        try:
            there = admin.list_topics(timeout=TIMEOUT).topics
            missing = [NewTopic(topic) for topic in topics if topic not in there]
            for topic, created in admin.create_topics(missing).items() if missing else ():
                try:
                    created.result()
                    logger.info("Created the Kafka topic %s", topic)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
        except KafkaException as exc:
            raise failure(exc.args[0]) from None

    def _taken(self, messages: list[Message], watch: _Watch) -> list[Message]:
        """The messages among ``messages``; raise if the brokers went out of reach."""
        if watch.down:
            raise Unreachable(f"every Kafka broker is out of reach ({self.servers})")
        taken = []
        for message in messages:
            error = message.error()
            if error is None:
                taken.append(message)
            elif error.fatal() or error.code() in UNREACHABLE:
                raise failure(error)
            else:  # a topic not there yet, a partition's end: nothing is lost
                logger.info("Kafka: %s", error.str())
        return taken

    def _handle(self, consumer: Consumer, taken: list[Message], receive: Receive) -> None:
        """Pass the messages to ``receive``; write the dead ones to their dead-letter
        topic; then commit the offsets after them."""
        settled = receive([_inbound(message) for message in taken])
        limit = conf.settings.INBOUND_MAX_BYTES
        dead = [
            (dead_topic(_place(message)[0]), _value(message)[:limit], message.key(),
             _dead_headers(message, outcome))
            for message, outcome in zip(taken, settled, strict=True)
            if outcome.verdict is Verdict.DEAD
        ]  # fmt: skip
        if dead:
            self.write(dead)
        after: dict[tuple[str, int], int] = {}
        for message in taken:
            topic, partition, offset = _place(message)
            after[(topic, partition)] = offset + 1
        offsets = [TopicPartition(topic, part, offset) for (topic, part), offset in after.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() in UNREACHABLE:
                raise failure(exc.args[0]) from None
            # The group moved the partitions on meanwhile: their next owner reads these
            # messages again, and the inbox drops them.
            logger.warning("Kafka: offsets not committed: %s", exc.args[0].str())

    def lag(self, channels: Mapping[str, str]) -> list[Lag]:
        """Each group's lag on each partition of its channels: the messages after its
        committed offset (after the partition's first, if it committed none)."""
        admin = self.admin()
        try:
            topics = admin.list_topics(timeout=TIMEOUT).topics
            partitions = [
                TopicPartition(topic, number)
                for topic in channels if topic in topics
                for number in sorted(topics[topic].partitions)
            ]  # fmt: skip
            if not partitions:
                return []
            ends = (OffsetSpec.earliest(), OffsetSpec.latest())  # type: ignore[no-untyped-call]
            first, last = (_offsets(admin, partitions, end) for end in ends)
            found: list[Lag] = []
            for group in sorted(set(channels.values())):
                mine = [tp for tp in partitions if channels[tp.topic] == group]
                asked = [ConsumerGroupTopicPartitions(group, mine)]
                answers = admin.list_consumer_group_offsets(asked, request_timeout=TIMEOUT)
                for tp in next(iter(answers.values())).result().topic_partitions or []:
                    place = (tp.topic, tp.partition)
                    committed = tp.offset if tp.offset >= 0 else first[place]
                    behind = max(last[place] - committed, 0)
                    found.append(Lag(tp.topic, group, tp.partition, behind))
        except KafkaException as exc:
            raise failure(exc.args[0]) from None
        return sorted(found)


def record(channel: str, envelope: Envelope) -> Record:
    """What is produced of ``envelope``: topic, value, key (its own, else its ordering
    key) and headers."""
    found = envelope.key if envelope.key is not None else envelope.ordering_key
    key = found.encode() if found is not None else None
    return channel, body(envelope, KAFKA), key, list(headers(envelope, KAFKA).items())


def _offsets(
    admin: AdminClient, partitions: list[TopicPartition], spec: OffsetSpec
) -> dict[tuple[str, int], int]:
    asked = {tp: spec for tp in partitions}
    answers = admin.list_offsets(asked, request_timeout=TIMEOUT).items()
    return {(tp.topic, tp.partition): answer.result().offset for tp, answer in answers}


def _place(message: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (each set, on one consumed)."""
    return message.topic() or "", message.partition() or 0, message.offset() or 0


def _value(message: Message) -> bytes:
    """Its bytes (none, a tombstone's: empty)."""
    value = message.value()
    return value.encode() if isinstance(value, str) else value or b""


def _headers(message: Message) -> list[tuple[str, bytes]]:
    found = message.headers() or []
    pairs = found.items() if isinstance(found, dict) else found
    return [(key, value.encode() if isinstance(value, str) else value or b"")
            for key, value in pairs]  # fmt: skip


def _inbound(message: Message) -> Inbound:
    found = {key: value.decode(errors="replace") for key, value in _headers(message)}
    topic, partition, offset = _place(message)
    # A message without an id is known by its place: read again, it is known as handled.
    message_id = found.get(MESSAGE_ID) or f"{topic}/{partition}/{offset}"
    return received(topic, _value(message), found, KAFKA, message_id)


def _dead_headers(message: Message, outcome: Settled) -> list[tuple[str, bytes]]:
    """The message's headers, and why, where from and how large."""
    topic, partition, offset = _place(message)
    added = {
        "x-reason": outcome.reason, "x-original-topic": topic,
        "x-original-partition": str(partition), "x-original-offset": str(offset),
        "x-original-size": str(len(_value(message))),
    }  # fmt: skip
    kept = [(key, value) for key, value in _headers(message) if key not in added]
    return [*kept, *((key, value.encode()) for key, value in added.items())]
