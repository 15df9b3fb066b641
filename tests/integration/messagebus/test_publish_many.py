"""``publish_many`` on the real brokers: every message on the broker in order with its
headers, each one's outcome in its place, a refused one among confirmed ones, and never a
message reported confirmed that the broker did not keep (broker away, connection cut)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

import messagebus
from messagebus import executors
from messagebus.core.envelope import Envelope
from messagebus.executors.worker import WorkerExecutor
from messagebus.external import transports
from messagebus.external.cloudevents import KAFKA, NATS, REDIS
from messagebus.external.transports import ORDERING_KEY, Published, amqp
from messagebus.external.transports import nats as nats_transport
from messagebus.external.transports.redis import RedisTransport
from messagebus.models import Delivery
from messagebus.testing import run_due
from tests.brokers import external, needs_redis, wait_for
from tests.busapp.events import Opened, Sent, Sequenced
from tests.conftest import BROKER_URL, REDIS_URL, needs_rabbitmq
from tests.durable import Broker, JetStream, Kafka
from tests.proxy import Proxy

CHANNEL = "busapp_record"


def envelopes(count: int, start: int = 0) -> list[Envelope]:
    return [Envelope.of(Sent(n=n)) for n in range(start, start + count)]


def fields_json(envelope: Envelope) -> bytes:
    """The body every transport sends, in the envelope format: the event's fields as JSON."""
    return json.dumps(envelope.payload, separators=(",", ":")).encode()


def message_id(fields: dict[str, str]) -> str:
    return fields.get("message_id") or fields[nats_transport.MESSAGE_ID]


def confirmed(sent: list[Envelope], published: Published) -> set[str]:
    assert len(published) == len(sent)
    return {str(e.id) for e, outcome in zip(sent, published, strict=True) if outcome is None}


def built(url: str) -> Any:
    """The transport of ``url``, as the bus builds it."""
    with external(url):
        return transports.get()


# Redis Streams, NATS JetStream, Kafka


def test_every_message_goes_on_the_broker_in_order_with_its_headers(durable: Broker, db):
    sent = [*envelopes(20), Envelope.of(Sequenced(key="k7", n=20))]
    assert built(durable.url).publish_many(CHANNEL, sent) == [None] * 21

    kept = durable.messages(CHANNEL)
    assert [data for data, _ in kept] == [fields_json(envelope) for envelope in sent]
    id_name = nats_transport.MESSAGE_ID if durable.name == "nats" else "message_id"
    binding = {"redis+stream": REDIS, "nats": NATS, "kafka": KAFKA}[durable.name]
    for envelope, (_, fields) in zip(sent, kept, strict=True):
        assert transports.headers(envelope, binding, id_name).items() <= fields.items()
    assert kept[-1][1][ORDERING_KEY] == "k7" and ORDERING_KEY not in kept[0][1]


def test_a_broker_out_of_reach_confirms_none_and_the_next_call_goes_out(durable: Broker, db):
    proxy, through_proxy = durable.proxied()
    transport = built(through_proxy)
    assert transport.publish_many(CHANNEL, envelopes(1)) == [None]  # connected
    proxy.cut(refuse=True)
    try:
        published = transport.publish_many(CHANNEL, envelopes(5, start=1))
    except transport.connection_errors:
        pass  # none confirmed, all at once
    else:
        assert all(isinstance(outcome, Exception) for outcome in published), published
    proxy.mend()

    def published_again() -> bool:
        try:
            return transport.publish_many(CHANNEL, envelopes(2, start=6)) == [None, None]
        except transport.connection_errors:
            return False

    wait_for(published_again, timeout=30)
    bodies = [data for data, _ in durable.messages(CHANNEL)]
    assert bodies[0] == b'{"n":0}' and bodies[-2:] == [b'{"n":6}', b'{"n":7}']


def test_a_connection_cut_mid_call_confirms_only_what_the_broker_kept(durable: Broker, db):
    proxy, through_proxy = durable.proxied()
    transport = built(through_proxy)
    assert transport.publish_many(CHANNEL, envelopes(1)) == [None]  # connected
    sent = envelopes(300, start=1)
    proxy.cut_after(20_000, mend_after=durable.outage)  # some 50 messages in
    try:
        published = transport.publish_many(CHANNEL, sent)
    except transport.connection_errors:
        published = [ConnectionError("raised")] * len(sent)
    time.sleep(durable.outage)  # mended
    kept = {message_id(fields) for _, fields in durable.messages(CHANNEL)}
    assert confirmed(sent, published) <= kept


def test_a_key_that_is_not_a_stream_refuses_each_message_with_the_reason(redis_streams, db):
    redis_streams.client.set(CHANNEL, "not a stream")
    published = built(redis_streams.url).publish_many(CHANNEL, envelopes(3))
    assert all(isinstance(outcome, redis.ResponseError) for outcome in published)
    assert "WRONGTYPE" in str(published[0])
    assert redis_streams.client.get(CHANNEL) == b"not a stream"


def test_a_message_larger_than_the_stream_takes_is_refused_in_its_place(jetstream: JetStream, db):
    async def limited(js) -> None:
        subjects = [f"{jetstream.prefix}.>"]
        await js.add_stream(name=jetstream.stream, subjects=subjects, max_msg_size=1024)

    jetstream._run(limited)
    refused_in_its_place(jetstream, size=2000, reason="message size exceeds maximum")


def test_a_message_too_large_for_kafka_is_refused_in_its_place(kafka: Kafka, db):
    # over message.max.bytes (1 MB)
    refused_in_its_place(kafka, size=2_000_000, reason="MSG_SIZE_TOO_LARGE")


def refused_in_its_place(broker: Broker, size: int, reason: str) -> None:
    """A message of ``size`` bytes between four others: refused for ``reason``, alone."""
    large = Envelope.of(Opened(name="x" * size))
    sent = [*envelopes(2), large, *envelopes(2, start=2)]
    published = built(broker.url).publish_many(CHANNEL, sent)

    assert [outcome is None for outcome in published] == [True, True, False, True, True]
    assert reason in str(published[2])
    kept = [data for data, _ in broker.messages(CHANNEL)]
    assert kept == [fields_json(envelope) for envelope in sent if envelope is not large]


# RabbitMQ


@pytest.fixture
def bound() -> Iterator[tuple[str, Queue]]:
    """A routing key of the test's own, and a queue bound to it that refuses
    (``x-overflow: reject-publish``) what would take it over 1000 bytes."""
    key = f"test_many_{uuid.uuid4().hex[:8]}"
    limited = {"x-max-length-bytes": 1000, "x-overflow": "reject-publish"}
    with Connection(BROKER_URL) as connection:
        queue = Queue(key, amqp.exchange(), routing_key=key, queue_arguments=limited)
        queue = queue(connection.default_channel)
        queue.declare()
        yield key, queue
        queue.delete()


def drained(queue: Queue) -> list[tuple[bytes, dict[str, object]]]:
    taken = []
    while (message := queue.get(no_ack=True)) is not None:
        data = message.body if isinstance(message.body, bytes) else message.body.encode()
        taken.append((data, {**message.properties, **message.headers}))
    return taken


@needs_rabbitmq
def test_rabbitmq_takes_every_message_in_order_with_its_properties(bound):
    key, queue = bound
    sent = [*envelopes(10), Envelope.of(Sequenced(key="k7", n=10))]
    assert amqp.AmqpTransport(BROKER_URL).publish_many(key, sent) == [None] * 11

    kept = drained(queue)
    assert [data for data, _ in kept] == [fields_json(envelope) for envelope in sent]
    for envelope, (_, found) in zip(sent, kept, strict=True):
        assert found["message_id"] == str(envelope.id)
        assert found["type"] == envelope.type
        assert found["correlation_id"] == str(envelope.correlation_id)
        assert found["delivery_mode"] == 2
    assert kept[-1][1][ORDERING_KEY] == "k7"


@needs_rabbitmq
def test_a_message_rabbitmq_refuses_gets_its_nack_in_its_place(bound):
    key, queue = bound
    large = Envelope.of(Opened(name="x" * 2000))  # over the queue's 1000 bytes
    sent = [*envelopes(2), large, *envelopes(2, start=2)]
    published = amqp.AmqpTransport(BROKER_URL).publish_many(key, sent)

    assert [outcome is None for outcome in published] == [True, True, False, True, True]
    assert str(large.id) in str(published[2])
    kept = [data for data, _ in drained(queue)]
    assert kept == [fields_json(envelope) for envelope in sent if envelope is not large]


@needs_rabbitmq
def test_rabbitmq_out_of_reach_raises_and_the_next_call_goes_out(bound):
    key, queue = bound
    proxy, through_proxy = Proxy.to(BROKER_URL)
    transport = amqp.AmqpTransport(through_proxy)
    proxy.cut(refuse=True)
    with pytest.raises(transport.connection_errors):
        transport.publish_many(key, envelopes(3))
    with pytest.raises(transport.connection_errors):  # not kombu's wrapping of it
        transport.publish(key, envelopes(1)[0])
    proxy.mend()
    assert transport.publish_many(key, envelopes(2, start=3)) == [None, None]
    assert [data for data, _ in drained(queue)] == [b'{"n":3}', b'{"n":4}']


@needs_rabbitmq
def test_a_connection_lost_between_calls_is_replaced_and_the_messages_sent_on_the_new(bound):
    key, queue = bound
    proxy, through_proxy = Proxy.to(BROKER_URL)
    transport = amqp.AmqpTransport(through_proxy)
    assert transport.publish_many(key, envelopes(2)) == [None, None]
    proxy.cut()  # the broker's end of the connection is gone; the transport's not told
    proxy.mend()
    assert transport.publish_many(key, envelopes(3, start=2)) == [None] * 3
    assert [data for data, _ in drained(queue)] == [f'{{"n":{n}}}'.encode() for n in range(5)]


@needs_rabbitmq
def test_a_connection_cut_mid_call_on_rabbitmq_confirms_only_what_it_kept():
    key = f"test_many_{uuid.uuid4().hex[:8]}"
    with Connection(BROKER_URL) as connection:
        queue = Queue(key, amqp.exchange(), routing_key=key)(connection.default_channel)
        queue.declare()
        try:
            proxy, through_proxy = Proxy.to(BROKER_URL)
            transport = amqp.AmqpTransport(through_proxy)
            assert transport.publish_many(key, envelopes(1)) == [None]  # connected
            sent = envelopes(300, start=1)
            proxy.cut_after(20_000, mend_after=0.5)  # some 50 messages in
            try:
                published = transport.publish_many(key, sent)
            except transport.connection_errors:
                published = [ConnectionError("raised")] * len(sent)
            kept = {str(found["message_id"]) for _, found in drained(queue)}
        finally:
            queue.delete()
    assert confirmed(sent, published) <= kept


# Redis pub/sub


@needs_redis
def test_redis_pubsub_publishes_every_message_in_order():
    channel = f"test_many_{uuid.uuid4().hex[:8]}"
    subscriber = redis.Redis.from_url(REDIS_URL).pubsub()
    subscriber.subscribe(channel)
    subscribed = subscriber.get_message(timeout=10)
    assert subscribed is not None and subscribed["type"] == "subscribe"
    sent = envelopes(20)
    assert RedisTransport(REDIS_URL).publish_many(channel, sent) == [None] * 20

    bodies = []
    deadline = time.monotonic() + 30  # a ceiling: a busy machine is slow, not wrong
    while len(bodies) < 20 and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            bodies.append(message["data"])
    subscriber.close()
    assert bodies == [fields_json(envelope) for envelope in sent]


@needs_redis
def test_redis_pubsub_out_of_reach_raises():
    proxy, through_proxy = Proxy.to(REDIS_URL)
    transport = RedisTransport(through_proxy)
    proxy.cut(refuse=True)
    with pytest.raises(transport.connection_errors):
        transport.publish_many("test_many", envelopes(3))


# The outbox's publishing deliveries, claimed by a worker: sent with one publish_many.


@pytest.mark.django_db(transaction=True)
def test_a_worker_publishes_its_claimed_events_of_a_channel_in_one_publish_many(
    durable: Broker, monkeypatch
):
    with external(durable.url), executors.use(WorkerExecutor()):
        for n in range(30):
            messagebus.bus.handle(Sent(n=n))
        transport = transports.get()
        calls: list[int] = []
        many = transport.publish_many

        def counted(channel: str, sent: Any) -> Published:
            calls.append(len(sent))
            return many(channel, sent)

        monkeypatch.setattr(transport, "publish_many", counted)
        assert run_due() == 30
    assert calls == [30]
    kept = durable.messages(CHANNEL)
    assert [json.loads(data)["n"] for data, _ in kept] == list(range(30))
    publishing = Delivery.objects.filter(handler=f"publish:{CHANNEL}")
    assert set(publishing.values_list("status", flat=True)) == {"done"}
