"""The book's batch tests, on an unsaved Batch."""

import pytest

from allocation.exceptions import LineAlreadyAllocated, LineDoesNotFit
from allocation.models import Batch, OrderLine
from tests.factories import ProductFactory


def make_batch_and_line(sku: str, batch_qty: int, line_qty: int) -> tuple[Batch, OrderLine]:
    batch = ProductFactory.build(sku=sku).add_batch("batch-001", batch_qty)
    return batch, OrderLine(orderid="order-123", sku=sku, qty=line_qty)


def test_allocating_to_a_batch_reduces_the_available_quantity() -> None:
    batch, line = make_batch_and_line("SMALL-TABLE", 20, 2)

    batch.allocate(line)

    assert batch.available_quantity == 18
    assert batch.allocated_quantity == 2
    assert line.batch is batch


@pytest.mark.parametrize(
    ("batch_qty", "line_qty", "expected"),
    [(20, 2, True), (2, 20, False), (2, 2, True)],
    ids=["available greater", "available smaller", "available equal"],
)
def test_can_allocate(batch_qty: int, line_qty: int, expected: bool) -> None:
    batch, line = make_batch_and_line("ELEGANT-LAMP", batch_qty, line_qty)
    assert batch.can_allocate(line) is expected


def test_cannot_allocate_if_skus_do_not_match() -> None:
    batch, _ = make_batch_and_line("UNCOMFORTABLE-CHAIR", 100, 10)
    different_sku_line = OrderLine(orderid="order-123", sku="EXPENSIVE-TOASTER", qty=10)
    assert batch.can_allocate(different_sku_line) is False


def test_allocation_is_idempotent() -> None:
    batch, line = make_batch_and_line("ANGULAR-DESK", 20, 2)
    batch.allocate(line)

    batch.allocate(OrderLine(orderid="order-123", sku="ANGULAR-DESK", qty=2))

    assert batch.available_quantity == 18
    assert batch.allocations == [line]


def test_deallocate_one_gives_up_the_latest_line() -> None:
    batch, first = make_batch_and_line("DECORATIVE-TRINKET", 20, 2)
    second = OrderLine(orderid="order-456", sku="DECORATIVE-TRINKET", qty=3)
    batch.allocate(first)
    batch.allocate(second)

    assert batch.deallocate_one() is second
    assert batch.available_quantity == 18


@pytest.mark.parametrize(
    ("batch_sku", "line_qty", "error"),
    [
        ("SMALL-TABLE", 21, "cannot take 21 x SMALL-TABLE: 20 x SMALL-TABLE available"),
        ("LARGE-TABLE", 2, "cannot take 2 x SMALL-TABLE: 20 x LARGE-TABLE available"),
    ],
    ids=["too big", "other sku"],
)
def test_cannot_take_a_line_that_does_not_fit(batch_sku: str, line_qty: int, error: str) -> None:
    batch, _ = make_batch_and_line(batch_sku, 20, 2)
    line = OrderLine(orderid="order-123", sku="SMALL-TABLE", qty=line_qty)

    with pytest.raises(LineDoesNotFit, match=f"^Batch batch-001 {error}$"):
        batch.allocate(line)

    assert batch.available_quantity == 20
    assert batch.allocations == []
    assert line.batch_id is None


def test_a_full_batch_takes_nothing_more() -> None:
    batch, line = make_batch_and_line("SMALL-TABLE", 20, 20)
    batch.allocate(line)

    with pytest.raises(LineDoesNotFit):
        batch.allocate(OrderLine(orderid="order-456", sku="SMALL-TABLE", qty=1))

    assert batch.available_quantity == 0


def test_the_same_line_with_another_quantity_is_refused() -> None:
    batch, line = make_batch_and_line("ANGULAR-DESK", 20, 2)
    batch.allocate(line)

    with pytest.raises(LineAlreadyAllocated, match="Order order-123 already has 2 x ANGULAR-DESK"):
        batch.allocate(OrderLine(orderid="order-123", sku="ANGULAR-DESK", qty=5))

    assert batch.allocations == [line]


def test_deallocate() -> None:
    batch, line = make_batch_and_line("EXPENSIVE-FOOTSTOOL", 20, 2)
    batch.allocate(line)

    assert batch.deallocate(line) is line

    assert batch.available_quantity == 20
    assert batch.allocations == []


def test_deallocate_takes_off_the_line_of_the_same_order_and_sku() -> None:
    batch, line = make_batch_and_line("EXPENSIVE-FOOTSTOOL", 20, 2)
    other = OrderLine(orderid="order-456", sku="EXPENSIVE-FOOTSTOOL", qty=3)
    batch.allocate(line)
    batch.allocate(other)

    same = OrderLine(orderid="order-123", sku="EXPENSIVE-FOOTSTOOL", qty=2)
    assert batch.deallocate(same) is line

    assert batch.allocations == [other]
    assert batch.available_quantity == 17


def test_can_only_deallocate_allocated_lines() -> None:
    batch, unallocated_line = make_batch_and_line("DECORATIVE-TRINKET", 20, 2)

    assert batch.deallocate(unallocated_line) is None

    assert batch.available_quantity == 20
