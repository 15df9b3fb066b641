"""The order workflow (``allocation.processes.Order``) through the bus: every line
allocated or none, then confirmed, or released when not confirmed in time."""

import pytest
from django.utils import timezone

import messagebus
from allocation.commands import (
    Allocate,
    ConfirmOrder,
    CreateBatch,
    Deallocate,
    ExpireOrder,
    Line,
    PlaceOrder,
)
from allocation.events import Deallocated, Released
from allocation.exceptions import OrderClosed
from allocation.models import AllocationView, Batch, OrderLine
from allocation.queries import GetOrder
from messagebus import executors
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, ProcessInstance
from messagebus.testing import run_due

pytestmark = pytest.mark.usefixtures("messagebus_deliver")


@pytest.fixture(autouse=True)
def stock(messagebus_deliver):
    messagebus.bus.handle(CreateBatch("b-lamp", "LAMP", 10))
    messagebus.bus.handle(CreateBatch("b-desk", "DESK", 3))


def order(orderid: str = "o1"):
    return messagebus.bus.handle(GetOrder(orderid=orderid))


def allocated(orderid: str = "o1") -> list[tuple[str, str]]:
    rows = OrderLine.objects.filter(orderid=orderid).order_by("sku")
    return list(rows.values_list("sku", "batch__reference"))


def available(ref: str) -> int:
    return Batch.objects.with_quantities().get(reference=ref).available


def place(*lines: tuple[str, int], orderid: str = "o1") -> None:
    messagebus.bus.handle(PlaceOrder(orderid, tuple(Line(sku, qty) for sku, qty in lines)))


def test_an_order_in_stock_is_allocated_then_confirmed():
    place(("LAMP", 2), ("DESK", 3))

    assert order() == {
        "orderid": "o1", "state": "pending",
        "lines": [{"sku": "LAMP", "qty": 2, "batchref": "b-lamp"},
                  {"sku": "DESK", "qty": 3, "batchref": "b-desk"}],
    }  # fmt: skip
    messagebus.bus.handle(ConfirmOrder("o1"))

    assert order()["state"] == "confirmed"
    assert allocated() == [("DESK", "b-desk"), ("LAMP", "b-lamp")]
    assert ProcessInstance.objects.get(key="o1").status == "finished"
    expiry = Delivery.objects.get(event__type="allocation.ExpireOrder")
    assert expiry.status == "discarded"  # no longer needed


def test_a_line_out_of_stock_rejects_the_order_and_releases_the_others():
    place(("LAMP", 2), ("DESK", 4))

    assert order() == {
        "orderid": "o1", "state": "rejected",
        "lines": [{"sku": "LAMP", "qty": 2, "batchref": None},
                  {"sku": "DESK", "qty": 4, "batchref": None}],
    }  # fmt: skip
    assert allocated() == []
    assert (available("b-lamp"), available("b-desk")) == (10, 3)
    assert not AllocationView.objects.filter(orderid="o1").exists()
    instance = ProcessInstance.objects.get(key="o1")
    assert (instance.status, instance.reason) == ("compensated", "Out of stock for DESK")
    with pytest.raises(OrderClosed, match="Order o1 is rejected: it cannot be confirmed"):
        messagebus.bus.handle(ConfirmOrder("o1"))


def test_an_unknown_sku_rejects_the_order():
    place(("LAMP", 2), ("NOPE", 1))

    assert order()["state"] == "rejected"
    assert ProcessInstance.objects.get(key="o1").reason == "Invalid sku NOPE"
    assert allocated() == []


def test_an_order_not_confirmed_in_time_is_released(settings):
    settings.ORDER_CONFIRM_TIMEOUT = 60
    place(("LAMP", 2), ("DESK", 1))
    expiry = Delivery.objects.get(event__type="allocation.ExpireOrder")
    assert 59 < (expiry.next_attempt_at - timezone.now()).total_seconds() <= 60
    Delivery.objects.filter(pk=expiry.pk).update(next_attempt_at=timezone.now())

    run_due()

    assert order()["state"] == "released"
    assert allocated() == []
    assert ProcessInstance.objects.get(key="o1").timed_out_at is not None
    with pytest.raises(OrderClosed, match="Order o1 is released"):
        messagebus.bus.handle(ConfirmOrder("o1"))


def test_an_order_confirmed_while_allocating_is_confirmed_once_allocated_and_never_expires():
    with executors.use(WorkerExecutor()):  # the steps wait for run_due
        place(("LAMP", 2), ("DESK", 1))
        messagebus.bus.handle(ConfirmOrder("o1"))
        assert order()["state"] == "pending"
        messagebus.bus.handle(ExpireOrder("o1"))  # as if it fell due now

        run_due()

    assert order()["state"] == "confirmed"
    assert allocated() == [("DESK", "b-desk"), ("LAMP", "b-lamp")]


def test_placing_an_order_twice_is_refused():
    place(("LAMP", 2))
    with pytest.raises(messagebus.ProcessAlreadyStarted):
        place(("DESK", 1))
    assert order()["lines"] == [{"sku": "LAMP", "qty": 2, "batchref": "b-lamp"}]


def test_an_unknown_order_is_none_and_cannot_be_confirmed():
    assert order("o9") is None
    with pytest.raises(messagebus.ProcessNotFound):
        messagebus.bus.handle(ConfirmOrder("o9"))


def test_deallocate_releases_the_line_for_good(messagebus_capture):
    messagebus.bus.handle(Allocate("o1", "LAMP", 4))

    assert messagebus.bus.handle(Deallocate("o1", "LAMP", 4)) == "b-lamp"

    assert available("b-lamp") == 10
    assert allocated() == [] and not AllocationView.objects.exists()
    messagebus_capture.assert_published(Released, orderid="o1", sku="LAMP", qty=4)
    messagebus_capture.assert_not_published(Deallocated)  # nothing reallocates it
    assert messagebus.bus.handle(Deallocate("o1", "LAMP", 4)) is None  # nothing left
