import uuid
from types import SimpleNamespace

import pytest
from kombu import Connection, Producer, Queue

from messagebus.external import consumed
from messagebus.external.transports import amqp
from tests.brokers import ConsumerProcess
from tests.conftest import BROKER_URL


@pytest.fixture
def consumer(transactional_db):
    started: list[ConsumerProcess] = []

    def start(url: str) -> ConsumerProcess:
        started.append(ConsumerProcess(url))
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
