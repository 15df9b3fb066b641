"""Events published to other services, on the real Redis and RabbitMQ."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test import override_settings
from kombu import Connection, Producer, Queue

import messagebus
from allocation.commands import Allocate, CreateBatch
from allocation.models import Batch
from messagebus.external import consumed
from messagebus.models import Delivery, InboxMessage, StoredEvent
from messagebus.transports import amqp
from messagebus.worker import Worker
from tests.conftest import BROKER_URL, REDIS_URL, ROOT, database_url, needs_rabbitmq
from tests.proxy import Proxy
from tests.subprocesses import Watched

needs_redis = pytest.mark.skipif(
    not REDIS_URL, reason="needs Redis: set REDIS_URL=redis://127.0.0.1:6379/0"
)


def external(url: str | None):
    return override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url})


def allocate_the_books_order() -> None:
    messagebus.bus.handle(CreateBatch("batch1", "RETRO-CLOCK", 10))
    messagebus.bus.handle(Allocate("order1", "RETRO-CLOCK", 3))


@needs_redis
def test_allocated_is_published_on_redis_as_the_books_clients_read_it(messagebus_deliver):
    subscriber = redis.Redis.from_url(REDIS_URL).pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("line_allocated")
    with external(REDIS_URL):
        allocate_the_books_order()

    deadline = time.monotonic() + 30  # a ceiling: a busy machine is slow, not wrong
    message = None
    while message is None and time.monotonic() < deadline:
        message = subscriber.get_message(timeout=deadline - time.monotonic())
    assert message is not None, "nothing on line_allocated within 30 s"
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
    proxy, through_proxy = Proxy.to(BROKER_URL)
    proxy.cut(refuse=True)
    again_soon = {"EXTERNAL_URL": through_proxy, "REDELIVERY_DELAY": 0}
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, **again_soon}):
        allocate_the_books_order()
        publishing = Delivery.objects.get(handler="publish:line_allocated")
        assert publishing.status == "pending" and publishing.runs == 1
        assert "OperationalError" in publishing.last_error  # kombu's: the broker is away
        assert rabbitmq_queue.get(no_ack=True) is None

        proxy.mend()
        assert Worker().run_batch() == 1  # the outbox's next run, as a worker takes it

    publishing.refresh_from_db()
    assert (publishing.status, publishing.runs) == ("done", 2)
    message = rabbitmq_queue.get(no_ack=True)
    assert message is not None and json.loads(message.body)["orderid"] == "order1"
    assert rabbitmq_queue.get(no_ack=True) is None  # once


def test_with_no_external_url_nothing_is_published_and_nothing_fails(messagebus_deliver):
    with external(None):
        allocate_the_books_order()
    assert Delivery.objects.get(handler="publish:line_allocated").status == "done"


class ConsumerProcess(Watched):
    """`manage.py messagebus consume` on the test database, listening once it says so."""

    def __init__(self, url: str) -> None:
        env = {
            **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
            "DJANGO_SETTINGS_MODULE": "tests.settings", "MESSAGEBUS_EXTERNAL_URL": url,
        }  # fmt: skip
        super().__init__(
            [sys.executable, str(ROOT / "manage.py"), "messagebus", "consume"],
            env=env,
            ready="Consuming ",
            what="the consumer",
        )


@pytest.fixture
def consumer(transactional_db):
    started: list[ConsumerProcess] = []

    def start(url: str) -> ConsumerProcess:
        started.append(ConsumerProcess(url))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def two_batches_and_an_order() -> None:
    """The book's scenario: the order goes to the earlier batch."""
    messagebus.bus.handle(CreateBatch("sooner", "RETRO-LAMP", 10, date.today()))
    messagebus.bus.handle(CreateBatch("later", "RETRO-LAMP", 10, date.today() + timedelta(1)))
    messagebus.bus.handle(Allocate("order1", "RETRO-LAMP", 10))


@needs_redis
def test_the_books_scenario_on_redis(consumer):
    with external(REDIS_URL):
        two_batches_and_an_order()
    client = redis.Redis.from_url(REDIS_URL)
    subscriber = client.pubsub(ignore_subscribe_messages=True)
    subscriber.subscribe("line_allocated")
    consumer(REDIS_URL)

    client.publish("change_batch_quantity", json.dumps({"batchref": "sooner", "qty": 5}))

    deadline = time.monotonic() + 30  # a ceiling: a busy machine is slow, not wrong
    seen = []
    while time.monotonic() < deadline and not any(m["batchref"] == "later" for m in seen):
        message = subscriber.get_message(timeout=deadline - time.monotonic())
        if message is not None:
            seen.append(json.loads(message["data"]))
    assert {"orderid": "order1", "sku": "RETRO-LAMP", "qty": 10, "batchref": "later"} in seen


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

        def publish(body: str | bytes, message_id: str | None = None) -> None:
            producer.publish(
                body, routing_key="change_batch_quantity", declare=[amqp.exchange()],
                content_type="application/json", content_encoding="utf-8",
                message_id=message_id or str(uuid.uuid4()),
            )  # fmt: skip

        yield SimpleNamespace(publish=publish, allocated=allocated, dead=dead)
        allocated.delete()


def wait_for(condition, timeout: float = 10, output: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {output()}"
        time.sleep(0.05)


def read_all(queue) -> list[dict]:
    bodies = []
    while (message := queue.get(no_ack=True)) is not None:
        bodies.append(json.loads(message.body))
    return bodies


@needs_rabbitmq
def test_the_books_scenario_on_rabbitmq(consumer, rabbitmq):
    with external(BROKER_URL):
        two_batches_and_an_order()
    read_all(rabbitmq.allocated)  # order1 to "sooner"
    process = consumer(BROKER_URL)

    rabbitmq.publish(json.dumps({"batchref": "sooner", "qty": 5}))

    seen: list[dict] = []
    deadline = time.monotonic() + 30  # a ceiling: a busy machine is slow, not wrong
    while not seen and time.monotonic() < deadline:
        seen.extend(read_all(rabbitmq.allocated))
        time.sleep(0.05)
    assert seen, process.output
    assert seen == [{"orderid": "order1", "sku": "RETRO-LAMP", "qty": 10, "batchref": "later"}]


@needs_rabbitmq
def test_malformed_messages_are_dead_lettered_and_the_consumer_carries_on(consumer, rabbitmq):
    with external(BROKER_URL):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))
    process = consumer(BROKER_URL)

    for body in ("not json", "[1]", '{"batchref": "b1"}', '{"batchref": "b1", "qty": "five"}'):
        rabbitmq.publish(body)
    rabbitmq.publish(json.dumps({"batchref": "b1", "qty": 7}))

    wait_for(lambda: InboxMessage.objects.filter(status="handled").exists())
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
    reasons = sorted(InboxMessage.objects.filter(status="skipped").values_list("reason", flat=True))
    assert [r.split(":")[0] for r in reasons] == [
        "no 'qty' in ['batchref']", "not JSON", "not a JSON object but list", "wrong type",
    ]  # fmt: skip
    dead = []
    wait_for(
        lambda: (
            dead.extend(m.body for m in iter(lambda: rabbitmq.dead.get(no_ack=True), None))
            or len(dead) >= 4
        )
    )
    assert len(dead) == 4
    assert process.process.poll() is None  # still running
    assert process.output.count("Skipped message") == 4


@needs_rabbitmq
def test_a_message_delivered_twice_is_handled_once(consumer, rabbitmq):
    with external(BROKER_URL):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))
    process = consumer(BROKER_URL)

    for _ in range(2):
        rabbitmq.publish(json.dumps({"batchref": "b1", "qty": 7}), message_id="the-same-id")
    wait_for(lambda: "Duplicate message the-same-id" in process.output)

    assert list(InboxMessage.objects.values_list("message_id", "status")) == [
        ("the-same-id", "handled")
    ]
    assert process.output.count("Handled message the-same-id") == 1
    code, output = process.stop()
    assert code == 0, output
    assert "Received 2 messages." in output


@needs_rabbitmq
def test_the_consumer_waits_out_a_broker_that_goes_away(consumer, rabbitmq):
    with external(BROKER_URL):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))
    proxy, through_proxy = Proxy.to(BROKER_URL)
    process = consumer(through_proxy)

    proxy.cut(refuse=True)
    wait_for(lambda: "(failure 2, next try in 2s)" in process.output, output=lambda: process.output)
    proxy.mend()
    wait_for(lambda: process.output.count("Consuming ") == 2)
    rabbitmq.publish(json.dumps({"batchref": "b1", "qty": 7}))
    wait_for(lambda: InboxMessage.objects.filter(status="handled").exists())

    assert "Traceback" not in process.output
    failures = [line for line in process.output.splitlines() if "cannot go on" in line]
    assert 2 <= len(failures) <= 4  # one line a try, the waits doubling


@needs_rabbitmq
def test_consume_with_a_limit_exits_after_that_many(manage, rabbitmq):
    with external(BROKER_URL):
        messagebus.bus.handle(CreateBatch("b1", "RETRO-LAMP", 10))
    rabbitmq.publish(json.dumps({"batchref": "b1", "qty": 7}))

    done = manage(
        "messagebus", "consume", "--limit", "1",
        env={"MESSAGEBUS_EXTERNAL_URL": BROKER_URL, "LOG_LEVEL": "INFO"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Received 1 message." in done.stdout
    assert Batch.objects.get(reference="b1").purchased_quantity == 7
