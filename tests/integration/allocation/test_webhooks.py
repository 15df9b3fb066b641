"""The async example: each Allocated POSTed as JSON to ALLOCATION_WEBHOOK_URLS, against
real HTTP servers on this machine."""

import uuid

import pytest
from django.test import override_settings

import messagebus
from allocation.commands import Allocate, CreateBatch
from allocation.events import Allocated
from allocation.handlers import post_allocation
from messagebus import executors
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery
from messagebus.processes.worker import Worker
from tests.receiver import Receiver, nothing_listens

pytestmark = pytest.mark.django_db(transaction=True)
HANDLER = "allocation.handlers.post_allocation"


@pytest.fixture
def webhook(messagebus_registry):
    """The handler registered, as it is when ALLOCATION_WEBHOOK_URLS is set at start-up."""
    messagebus_registry.register(None, post_allocation)


def delivery() -> Delivery:
    return Delivery.objects.get(handler=HANDLER)


def test_each_allocation_is_posted_to_every_url(webhook):
    with (
        Receiver() as shop,
        Receiver() as warehouse,
        override_settings(ALLOCATION_WEBHOOK_URLS=[shop.url, warehouse.url]),
    ):
        messagebus.bus.handle(CreateBatch("b1", "LAMP", 100, None))
        messagebus.bus.handle(Allocate("o1", "LAMP", 10))

    for receiver in (shop, warehouse):
        [got] = receiver.received
        assert got.body == {"orderid": "o1", "sku": "LAMP", "qty": 10, "batchref": "b1"}
        assert got.headers["Content-Type"] == "application/json"
        event = Delivery.objects.get(handler=HANDLER).event
        assert uuid.UUID(got.headers["Idempotency-Key"]) == event.id
    assert delivery().status == Delivery.Status.DONE


@override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 2, "MAX_DELIVERIES": 2, "SWEEP_INTERVAL": 0})
def test_a_server_that_is_down_is_retried_then_the_delivery_is_dead_with_the_reason(webhook):
    down = nothing_listens()
    with Receiver() as up, override_settings(ALLOCATION_WEBHOOK_URLS=[up.url, down]):
        messagebus.bus.handle(CreateBatch("b1", "LAMP", 100, None))
        messagebus.bus.handle(Allocate("o1", "LAMP", 10))

        first = delivery()  # one call in the request; its next after RETRY_WAIT
        assert (first.status, first.runs, first.attempts) == ("pending", 0, 1)
        assert f"{down}: ConnectError" in first.last_error
        ends = []
        for _ in range(3):  # the worker takes it on as it falls due
            Delivery.objects.filter(pk=first.pk).update(next_attempt_at=first.created_at)
            assert Worker(once=True).run() == 1
            ends.append((delivery().runs, delivery().attempts))
        assert ends == [(1, 2), (1, 3), (2, 4)]

    dead = delivery()
    assert (dead.status, dead.runs, dead.attempts) == ("dead", 2, 4)
    assert "allocation.webhooks.WebhookFailed" in dead.last_error
    assert f"{down}: ConnectError" in dead.last_error and up.url not in dead.last_error
    assert len(up.received) == 4  # at least once: the one that answered is posted again


@override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0})
def test_an_answer_other_than_2xx_is_a_failure(webhook):
    with Receiver(status=503) as busy, override_settings(ALLOCATION_WEBHOOK_URLS=[busy.url]):
        messagebus.bus.handle(Allocated(orderid="o1", sku="LAMP", qty=1, batchref="b1"))

    assert len(busy.received) == 1
    failed = delivery()
    assert failed.status == Delivery.Status.PENDING
    assert f"{busy.url} answered 503" in failed.last_error


def test_twenty_deliveries_to_a_slow_server_overlap_under_concurrency_20(webhook, manage):
    # The server answers none until all twenty are in at once: only twenty running together
    # can meet there, however busy the machine.
    with Receiver(hold_until=20) as slow:
        with override_settings(ALLOCATION_WEBHOOK_URLS=[slow.url]), executors.use(WorkerExecutor()):
            for n in range(20):
                messagebus.bus.handle(Allocated(orderid=f"o{n}", sku="LAMP", qty=1, batchref="b1"))

        result = manage(
            "messagebus", "worker", "--once", "--concurrency", "20",
            env={"ALLOCATION_WEBHOOK_URLS": slow.url},
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert len(slow.received) == 20
    assert slow.held_together
    assert sorted(r.body["orderid"] for r in slow.received) == sorted(f"o{n}" for n in range(20))
    assert Delivery.objects.filter(handler=HANDLER, status="done").count() == 20


@override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0})
def test_every_url_that_fails_is_named_whatever_went_wrong(webhook):
    down = nothing_listens()
    with override_settings(ALLOCATION_WEBHOOK_URLS=[down, "http://[::1"]):
        messagebus.bus.handle(Allocated(orderid="o1", sku="LAMP", qty=1, batchref="b1"))

    error = delivery().last_error
    assert error.startswith("allocation.webhooks.WebhookFailed: ")
    assert f"{down}: ConnectError" in error and "http://[::1: InvalidURL" in error
