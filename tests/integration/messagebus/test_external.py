"""Events published to other services, on the real Redis and RabbitMQ."""

from __future__ import annotations

import json
import re
import time
from datetime import date, timedelta

import pytest
import redis
from django.conf import settings
from django.db import transaction
from django.test import override_settings

import messagebus
from allocation.commands import Allocate, CreateBatch
from allocation.models import Batch
from messagebus.core.envelope import Envelope
from messagebus.external import transports
from messagebus.external.transports import ORDERING_KEY
from messagebus.models import Delivery, InboxMessage, StoredEvent, WorkerBeat
from messagebus.processes.worker import Worker
from tests.brokers import external, needs_redis, read_all, wait_for
from tests.busapp.events import Sequenced
from tests.conftest import BROKER_URL, REDIS_URL, needs_rabbitmq
from tests.proxy import Proxy


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
def test_an_ordered_message_carries_its_ordering_key_in_an_amqp_header(rabbitmq_queue):
    with external(BROKER_URL):
        transport = transports.get()
        assert transport is not None
        transport.publish("line_allocated", Envelope.of(Sequenced(key="k7", n=1)))
    message = rabbitmq_queue.get(no_ack=True)
    assert message is not None and message.headers[ORDERING_KEY] == "k7"


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
        assert (publishing.status, publishing.runs, publishing.calls) == ("pending", 0, 1)
        # The broker is away: the socket's own error (refused, reset, or the proxy's
        # closed end), one of the transport's connection_errors, not kombu's wrapping.
        assert re.match(r"builtins\.(OSError|Connection\w*Error): ", publishing.last_error)
        assert rabbitmq_queue.get(no_ack=True) is None

        proxy.mend()
        assert Worker().run_batch() == 1  # its next call, due at once, as a worker takes it

    publishing.refresh_from_db()
    assert (publishing.status, publishing.runs, publishing.attempts) == ("done", 1, 2)
    message = rabbitmq_queue.get(no_ack=True)
    assert message is not None and json.loads(message.body)["orderid"] == "order1"
    assert rabbitmq_queue.get(no_ack=True) is None  # once


def test_with_no_external_url_nothing_is_published_and_nothing_fails(messagebus_deliver):
    with external(None):
        allocate_the_books_order()
    assert Delivery.objects.get(handler="publish:line_allocated").status == "done"


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
        "allocation.external.change_batch_quantity", "no 'qty' in ['batchref']", "not JSON",
        "not a JSON object but list",
    ]  # fmt: skip
    assert reasons[0].endswith("qty: 'five' is not a whole number")
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
    # Both said: in one batch, the duplicate is told before the batch commits.
    wait_for(
        lambda: (
            "Duplicate message the-same-id" in process.output
            and "Handled message the-same-id" in process.output
        )
    )

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
    failures = [line for line in process.output.splitlines() if "cannot reach" in line]
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
    # It said it was alive, as a consumer, and that it stopped.
    [beat] = WorkerBeat.objects.filter(role="consumer")
    assert beat.id.startswith("consumer:") and beat.stopped and beat.processed <= 1
