"""The domain, in memory: no database is touched (pytest-django would refuse)."""

from datetime import date, timedelta

import pytest

from allocation.events import Allocated, Deallocated, OutOfStock, Released
from allocation.exceptions import LineAlreadyAllocated, UnknownBatch
from allocation.models import OrderLine, Product
from tests.factories import ProductFactory

today = date.today()
tomorrow = today + timedelta(days=1)
later = tomorrow + timedelta(days=10)


def line(orderid: str, sku: str, qty: int) -> OrderLine:
    return OrderLine(orderid=orderid, sku=sku, qty=qty)


@pytest.fixture
def product() -> Product:
    return ProductFactory.build(sku="RETRO-CLOCK")


def test_prefers_warehouse_batches_to_shipments(product: Product) -> None:
    shipment = product.add_batch("shipment-batch", 100, eta=tomorrow)
    in_stock = product.add_batch("in-stock-batch", 100, eta=None)

    product.allocate(line("oref", "RETRO-CLOCK", 10))

    assert in_stock.available_quantity == 90
    assert shipment.available_quantity == 100


def test_prefers_earlier_batches(product: Product) -> None:
    latest = product.add_batch("slow-batch", 100, eta=later)
    earliest = product.add_batch("speedy-batch", 100, eta=today)
    medium = product.add_batch("normal-batch", 100, eta=tomorrow)

    product.allocate(line("order1", "RETRO-CLOCK", 10))

    assert earliest.available_quantity == 90
    assert medium.available_quantity == 100
    assert latest.available_quantity == 100


def test_skips_batches_too_small_for_the_line(product: Product) -> None:
    product.add_batch("in-stock-batch", 5)
    product.add_batch("shipment-batch", 100, eta=tomorrow)

    assert product.allocate(line("oref", "RETRO-CLOCK", 10)) == "shipment-batch"


def test_returns_allocated_batch_ref(product: Product) -> None:
    product.add_batch("in-stock-batch-ref", 100)
    product.add_batch("shipment-batch-ref", 100, eta=tomorrow)

    assert product.allocate(line("oref", "RETRO-CLOCK", 10)) == "in-stock-batch-ref"


def test_records_allocated_event(product: Product) -> None:
    product.add_batch("batchref", 100)

    product.allocate(line("oref", "RETRO-CLOCK", 10))

    assert product.events == [
        Allocated(orderid="oref", sku="RETRO-CLOCK", qty=10, batchref="batchref")
    ]


def test_records_out_of_stock_event_if_cannot_allocate(product: Product) -> None:
    batch = product.add_batch("batch1", 10, eta=today)
    product.allocate(line("order1", "RETRO-CLOCK", 10))

    assert product.allocate(line("order2", "RETRO-CLOCK", 1)) is None

    assert product.events[-1] == OutOfStock(sku="RETRO-CLOCK")
    assert batch.available_quantity == 0


def test_out_of_stock_without_any_batch(product: Product) -> None:
    assert product.allocate(line("order1", "RETRO-CLOCK", 1)) is None
    assert product.events == [OutOfStock(sku="RETRO-CLOCK")]


def test_increments_version_number(product: Product) -> None:
    product.add_batch("b1", 100)
    product.version_number = 7

    product.allocate(line("oref", "RETRO-CLOCK", 10))

    assert product.version_number == 8


def test_out_of_stock_leaves_version_number(product: Product) -> None:
    product.allocate(line("oref", "RETRO-CLOCK", 10))
    assert product.version_number == 0


def test_allocating_the_same_order_line_again_keeps_its_batch(product: Product) -> None:
    first = product.add_batch("first", 100)
    product.allocate(line("oref", "RETRO-CLOCK", 10))
    first.purchased_quantity = 10  # full: a new allocation would go elsewhere
    product.add_batch("second", 100)

    assert product.allocate(line("oref", "RETRO-CLOCK", 10)) == "first"

    assert first.available_quantity == 0
    assert product.version_number == 1
    assert len(product.events) == 1


def test_allocating_the_same_order_line_with_another_quantity_is_refused(
    product: Product,
) -> None:
    batch = product.add_batch("batch1", 100)
    product.allocate(line("oref", "RETRO-CLOCK", 10))

    with pytest.raises(
        LineAlreadyAllocated,
        match=r"^Order oref already has 10 x RETRO-CLOCK allocated \(batch batch1\)$",
    ):
        product.allocate(line("oref", "RETRO-CLOCK", 12))

    assert batch.available_quantity == 90
    assert product.version_number == 1
    assert len(product.events) == 1


def test_deallocate_takes_the_line_off_its_batch(product: Product) -> None:
    shipment = product.add_batch("shipment", 100, eta=tomorrow)
    in_stock = product.add_batch("in-stock", 100)
    product.allocate(line("order1", "RETRO-CLOCK", 10))
    product.allocate(line("order2", "RETRO-CLOCK", 95))

    taken = product.deallocate(line("order1", "RETRO-CLOCK", 10))

    assert taken is not None
    assert (taken.orderid, taken.qty) == ("order1", 10)
    assert in_stock.available_quantity == 100
    assert shipment.available_quantity == 5
    assert product.events[-1] == Deallocated(orderid="order1", sku="RETRO-CLOCK", qty=10)


def test_deallocate_a_line_not_allocated(product: Product) -> None:
    batch = product.add_batch("batch1", 100)
    product.allocate(line("order1", "RETRO-CLOCK", 10))
    events = list(product.events)

    assert product.deallocate(line("order2", "RETRO-CLOCK", 10)) is None

    assert batch.available_quantity == 90
    assert product.events == events


def test_a_deallocated_line_can_be_allocated_again(product: Product) -> None:
    product.add_batch("batch1", 10)
    product.allocate(line("order1", "RETRO-CLOCK", 10))
    product.deallocate(line("order1", "RETRO-CLOCK", 10))

    assert product.allocate(line("order1", "RETRO-CLOCK", 4)) == "batch1"


def test_release_gives_the_line_up_for_good(product: Product) -> None:
    batch = product.add_batch("batch1", 100)
    product.allocate(line("order1", "RETRO-CLOCK", 10))
    product.allocate(line("order2", "RETRO-CLOCK", 20))

    taken = product.release(line("order1", "RETRO-CLOCK", 10))

    assert taken is not None
    assert (taken.orderid, taken.qty) == ("order1", 10)
    assert batch.available_quantity == 80
    assert product.version_number == 3
    assert product.events[-1] == Released(orderid="order1", sku="RETRO-CLOCK", qty=10)
    assert not any(isinstance(event, Deallocated) for event in product.events)


def test_release_of_a_line_not_allocated_changes_nothing(product: Product) -> None:
    product.add_batch("batch1", 100)
    product.allocate(line("order1", "RETRO-CLOCK", 10))
    events = list(product.events)

    assert product.release(line("order2", "RETRO-CLOCK", 10)) is None

    assert product.version_number == 1
    assert product.events == events


def test_change_batch_quantity_deallocates_the_newest_lines(product: Product) -> None:
    batch = product.add_batch("batch1", 50)
    for orderid in ("order1", "order2", "order3"):
        product.allocate(line(orderid, "RETRO-CLOCK", 10))

    deallocated = product.change_batch_quantity("batch1", 15)

    assert [held.orderid for held in batch.allocations] == ["order1"]
    assert [gone.orderid for gone in deallocated] == ["order3", "order2"]
    assert batch.purchased_quantity == 15
    assert batch.available_quantity == 5
    assert product.events[-2:] == [
        Deallocated(orderid="order3", sku="RETRO-CLOCK", qty=10),
        Deallocated(orderid="order2", sku="RETRO-CLOCK", qty=10),
    ]


def test_change_batch_quantity_that_still_fits_deallocates_nothing(product: Product) -> None:
    batch = product.add_batch("batch1", 50)
    product.allocate(line("order1", "RETRO-CLOCK", 20))
    events = len(product.events)

    assert product.change_batch_quantity("batch1", 20) == []

    assert batch.available_quantity == 0
    assert len(product.events) == events


def test_change_quantity_of_unknown_batch(product: Product) -> None:
    product.add_batch("batch1", 50)

    with pytest.raises(UnknownBatch, match="Unknown batch nope"):
        product.change_batch_quantity("nope", 10)
