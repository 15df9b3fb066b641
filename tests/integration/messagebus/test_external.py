"""Events published to other services, on the real Redis and RabbitMQ."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from kombu import Connection, Queue

import messagebus
from allocation.commands import Allocate, CreateBatch
from messagebus import executors
from messagebus.models import Delivery, StoredEvent
from messagebus.transports import amqp
from tests.conftest import BROKER_URL, REDIS_URL
from tests.proxy import Proxy

needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0"
)
needs_rabbitmq = pytest.mark.skipif(
    not BROKER_URL.startswith("amqp://"),
    reason="needs RabbitMQ: set CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672//",
)


def external(url: str | None):
    return override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url})


def allocate_the_books_order() -> None:
    messagebus.bus.handle(CreateBatch("batch1", "RETRO-CLOCK", 10))
    messagebus.bus.handle(Allocate("order1", "RETRO-CLOCK", 3))


@pytest.fixture
def rabbitmq_queue():
    """A queue of the test's own, bound to line_allocated on the messagebus exchange."""
    with Connection(BROKER_URL) as connection:
        queue = Queue(
            f"test-line-allocated-{uuid.uuid4().hex[:8]}", amqp.EXCHANGE,
            routing_key="line_allocated", auto_delete=True,
        )(connection.default_channel)  # fmt: skip
        queue.declare()
        yield queue
        queue.delete()


@needs_redis
def test_allocated_is_published_on_redis_as_the_books_clients_read_it(messagebus_deliver):
    subscriber = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("line_allocated")
    with external(REDIS_URL):
        allocate_the_books_order()

    deadline = time.monotonic() + 3
    message = None
    while message is None and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=deadline - time.monotonic())
    assert message is not None, "nothing on line_allocated within 3 s"
    assert json.loads(message["data"]) == {
        "orderid": "order1", "sku": "RETRO-CLOCK", "qty": 3, "batchref": "batch1",
    }  # fmt: skip
    assert Delivery.objects.get(handler="publish:line_allocated").status == "done"


@needs_rabbitmq
def test_allocated_is_published_to_the_messagebus_exchange_with_its_ids(
    messagebus_deliver, rabbitmq_queue
):
    with external(BROKER_URL):
        allocate_the_books_order()

    message = rabbitmq_queue.get(no_ack=True)
    assert message is not None
    assert json.loads(message.body) == {
        "orderid": "order1", "sku": "RETRO-CLOCK", "qty": 3, "batchref": "batch1",
    }  # fmt: skip
    event = StoredEvent.objects.get(type="allocation.Allocated")
    assert message.properties["message_id"] == str(event.id)
    assert message.properties["type"] == "allocation.Allocated"
    assert message.properties["correlation_id"] == str(event.correlation_id)
    assert message.properties["delivery_mode"] == 2  # persistent


@needs_rabbitmq
def test_a_command_rolled_back_publishes_nothing(messagebus_deliver, rabbitmq_queue):
    messagebus.bus.handle(CreateBatch("batch1", "RETRO-CLOCK", 10))
    with external(BROKER_URL), pytest.raises(RuntimeError), transaction.atomic():
        messagebus.bus.handle(Allocate("order1", "RETRO-CLOCK", 3))
        raise RuntimeError("the outer transaction rolls back")

    assert rabbitmq_queue.get(no_ack=True) is None
    assert not Delivery.objects.filter(handler="publish:line_allocated").exists()


@needs_rabbitmq
def test_a_publish_refused_by_the_broker_is_retried_by_the_outbox(
    messagebus_deliver, rabbitmq_queue
):
    port = int(BROKER_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    proxy.cut(refuse=True)
    with external(proxy.url(BROKER_URL)):
        allocate_the_books_order()
        publishing = Delivery.objects.get(handler="publish:line_allocated")
        assert publishing.status == "pending" and publishing.runs == 1
        assert publishing.last_error
        assert rabbitmq_queue.get(no_ack=True) is None

        proxy.mend()
        executors.retry("default", [publishing.pk])

    publishing.refresh_from_db()
    assert publishing.status == "done"
    message = rabbitmq_queue.get(no_ack=True)
    assert message is not None and json.loads(message.body)["orderid"] == "order1"


def test_with_no_external_url_nothing_is_published_and_nothing_fails(messagebus_deliver):
    with external(None):
        allocate_the_books_order()
    assert Delivery.objects.get(handler="publish:line_allocated").status == "done"
