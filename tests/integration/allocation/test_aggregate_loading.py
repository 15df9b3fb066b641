"""Allocating reads a product's batches and quantities, never all its order lines."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import messagebus
from allocation.commands import Allocate, ChangeBatchQuantity
from allocation.events import Deallocated
from allocation.exceptions import LineAlreadyAllocated
from allocation.models import Batch, OrderLine, Product
from tests.factories import BatchFactory, OrderLineFactory

pytestmark = pytest.mark.usefixtures("messagebus_deliver")


def queries_to_allocate(orderid: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        assert messagebus.bus.handle(Allocate(orderid, "LAMP", 1)) == "stock"
    # Less the bus's look, at most once a second, at whether any handler is paused.
    return [q["sql"] for q in captured.captured_queries if "messagebus_pause" not in q["sql"]]


def test_the_work_of_an_allocation_does_not_grow_with_the_lines_held():
    batch = BatchFactory(reference="stock", product__sku="LAMP", purchased_quantity=1000)
    OrderLineFactory(batch=batch, orderid="first", qty=1)
    few = queries_to_allocate("o-few")
    OrderLineFactory.create_batch(200, batch=batch, qty=1)
    many = queries_to_allocate("o-many")

    assert len(many) == len(few)
    line_reads = [sql for sql in many if sql.startswith('SELECT "allocation_orderline"."id"')]
    assert line_reads == []  # quantities come summed by the database
    assert Batch.objects.with_quantities().get(reference="stock").allocated == 203


def test_a_repeat_is_found_in_the_database_without_loading_lines():
    batch = BatchFactory(reference="stock", product__sku="LAMP", purchased_quantity=10)
    OrderLineFactory(batch=batch, orderid="o1", sku="LAMP", qty=3)
    assert messagebus.bus.handle(Allocate("o1", "LAMP", 3)) == "stock"
    assert OrderLine.objects.count() == 1


def test_changing_a_quantity_still_sees_every_line_of_the_batch():
    batch = BatchFactory(reference="stock", product__sku="LAMP", purchased_quantity=10)
    OrderLineFactory.create_batch(5, batch=batch, qty=2)
    messagebus.bus.handle(ChangeBatchQuantity("stock", 4))
    assert Batch.objects.with_quantities().get(reference="stock").allocated == 4


def test_a_repeat_with_another_quantity_is_found_in_the_database():
    batch = BatchFactory(reference="stock", product__sku="LAMP", purchased_quantity=10)
    OrderLineFactory(batch=batch, orderid="o1", sku="LAMP", qty=3)

    with pytest.raises(LineAlreadyAllocated, match="Order o1 already has 3 x LAMP"):
        messagebus.bus.handle(Allocate("o1", "LAMP", 4))

    assert OrderLine.objects.get().qty == 3


def test_deallocate_finds_a_stored_line():
    batch = BatchFactory(reference="stock", product__sku="LAMP", purchased_quantity=10)
    OrderLineFactory(batch=batch, orderid="o1", sku="LAMP", qty=3)
    OrderLineFactory(batch=batch, orderid="o2", sku="LAMP", qty=4)
    product = Product.objects.locked().get(sku="LAMP")

    taken = product.deallocate(OrderLine(orderid="o1", sku="LAMP", qty=3))

    assert taken == OrderLine.objects.get(orderid="o1")
    assert product.get_batch("stock").available_quantity == 6
    assert product.events == [Deallocated(orderid="o1", sku="LAMP", qty=3)]
