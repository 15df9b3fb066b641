"""The book's handler tests, through the bus and the database, event handlers included."""

from datetime import date, timedelta

import pytest

import messagebus
from allocation.commands import Allocate, ChangeBatchQuantity, CreateBatch
from allocation.events import Allocated, Deallocated, OutOfStock
from allocation.exceptions import DuplicateBatch, InvalidSku, LineAlreadyAllocated, UnknownBatch
from allocation.handlers import reallocate
from allocation.models import AllocationView, Batch, OrderLine, Product
from tests.factories import ProductFactory

# Each command's event handlers run as the command ends, as they would after its commit.
pytestmark = pytest.mark.usefixtures("messagebus_deliver")

tomorrow = date.today() + timedelta(days=1)


def available(ref: str) -> int:
    return Batch.objects.with_quantities().get(reference=ref).available


class TestCreateBatch:
    def test_for_new_product(self):
        messagebus.bus.handle(CreateBatch("b1", "CRUNCHY-ARMCHAIR", 100, None))

        batch = Batch.objects.get(reference="b1")
        assert (batch.sku, batch.purchased_quantity, batch.eta) == ("CRUNCHY-ARMCHAIR", 100, None)
        assert Product.objects.filter(sku="CRUNCHY-ARMCHAIR").exists()

    def test_for_existing_product(self):
        messagebus.bus.handle(CreateBatch("b1", "GARISH-RUG", 100, None))
        messagebus.bus.handle(CreateBatch("b2", "GARISH-RUG", 99, tomorrow))

        assert list(
            Batch.objects.filter(product__sku="GARISH-RUG").values_list("reference", "eta")
        ) == [("b1", None), ("b2", tomorrow)]
        assert Product.objects.count() == 1

    @pytest.mark.parametrize("sku", ["GARISH-RUG", "OTHER-SKU"], ids=["same sku", "other sku"])
    def test_duplicate_reference_is_rejected(self, sku):
        messagebus.bus.handle(CreateBatch("b1", "GARISH-RUG", 100, None))

        with pytest.raises(DuplicateBatch, match="Batch b1 already exists"):
            messagebus.bus.handle(CreateBatch("b1", sku, 5, None))

        assert Batch.objects.get().purchased_quantity == 100
        assert not Product.objects.filter(sku="OTHER-SKU").exists()


class TestAllocate:
    def test_returns_allocation(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("batch1", "COMPLICATED-LAMP", 100, None))

        assert messagebus.bus.handle(Allocate("o1", "COMPLICATED-LAMP", 10)) == "batch1"

        line = OrderLine.objects.get()
        assert (line.orderid, line.sku, line.qty, line.batch.reference) == (
            "o1",
            "COMPLICATED-LAMP",
            10,
            "batch1",
        )
        assert available("batch1") == 90
        assert Product.objects.get().version_number == 1
        messagebus_capture.assert_published(
            Allocated, orderid="o1", sku="COMPLICATED-LAMP", qty=10, batchref="batch1"
        )

    def test_prefers_batches_in_stock_then_earlier(self):
        messagebus.bus.handle(CreateBatch("later", "SOFA", 100, tomorrow + timedelta(days=3)))
        messagebus.bus.handle(CreateBatch("sooner", "SOFA", 100, tomorrow))
        messagebus.bus.handle(CreateBatch("warehouse", "SOFA", 10, None))

        assert messagebus.bus.handle(Allocate("o1", "SOFA", 10)) == "warehouse"
        assert messagebus.bus.handle(Allocate("o2", "SOFA", 10)) == "sooner"

    def test_errors_for_invalid_sku(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("b1", "AREALSKU", 100, None))

        with pytest.raises(InvalidSku, match="Invalid sku NONEXISTENTSKU"):
            messagebus.bus.handle(Allocate("o1", "NONEXISTENTSKU", 10))

        assert not OrderLine.objects.exists()
        messagebus_capture.assert_not_published(OutOfStock)

    def test_allocating_the_same_line_again_allocates_nothing_more(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("b1", "STOOL", 100, None))
        messagebus.bus.handle(Allocate("o1", "STOOL", 10))

        assert messagebus.bus.handle(Allocate("o1", "STOOL", 10)) == "b1"

        assert OrderLine.objects.count() == 1
        assert available("b1") == 90
        assert Product.objects.get().version_number == 1
        messagebus_capture.assert_published(Allocated, orderid="o1")  # once

    def test_allocating_the_same_line_with_another_quantity_is_rejected(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("b1", "STOOL", 100, None))
        messagebus.bus.handle(Allocate("o1", "STOOL", 10))

        with pytest.raises(
            LineAlreadyAllocated, match=r"^Order o1 already has 10 x STOOL allocated \(batch b1\)$"
        ):
            messagebus.bus.handle(Allocate("o1", "STOOL", 15))

        assert OrderLine.objects.get().qty == 10
        assert available("b1") == 90
        assert Product.objects.get().version_number == 1

    def test_adds_the_allocation_to_the_read_model(self):
        messagebus.bus.handle(CreateBatch("b1", "STOOL", 100, None))
        messagebus.bus.handle(Allocate("o1", "STOOL", 10))

        assert list(AllocationView.objects.values_list("orderid", "sku", "batchref")) == [
            ("o1", "STOOL", "b1")
        ]

    def test_sends_notification_when_out_of_stock(
        self, notifications, settings, messagebus_capture
    ):
        settings.ALLOCATION_STOCK_EMAIL = "stock@made.com"
        messagebus.bus.handle(CreateBatch("b1", "POPULAR-CURTAINS", 9, None))

        assert messagebus.bus.handle(Allocate("o1", "POPULAR-CURTAINS", 10)) is None

        messagebus_capture.assert_published(OutOfStock, sku="POPULAR-CURTAINS")
        messagebus_capture.assert_not_published(Allocated)
        assert notifications.sent == [("stock@made.com", "Out of stock for POPULAR-CURTAINS")]
        assert not OrderLine.objects.exists()
        assert not AllocationView.objects.exists()
        assert Product.objects.get().version_number == 0


class TestChangeBatchQuantity:
    def test_changes_available_quantity(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("batch1", "ADORABLE-SETTEE", 100, None))

        messagebus.bus.handle(ChangeBatchQuantity("batch1", 50))

        assert available("batch1") == 50
        messagebus_capture.assert_not_published(Deallocated)

    def test_reallocates_if_necessary(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("batch1", "INDIFFERENT-TABLE", 50, None))
        messagebus.bus.handle(CreateBatch("batch2", "INDIFFERENT-TABLE", 50, date.today()))
        messagebus.bus.handle(Allocate("order1", "INDIFFERENT-TABLE", 20))
        messagebus.bus.handle(Allocate("order2", "INDIFFERENT-TABLE", 20))
        assert (available("batch1"), available("batch2")) == (10, 50)

        messagebus.bus.handle(ChangeBatchQuantity("batch1", 25))

        # order2, the newest line, moves to the next batch.
        assert (available("batch1"), available("batch2")) == (5, 30)
        assert dict(OrderLine.objects.values_list("orderid", "batch__reference")) == {
            "order1": "batch1",
            "order2": "batch2",
        }
        assert dict(AllocationView.objects.values_list("orderid", "batchref")) == {
            "order1": "batch1",
            "order2": "batch2",
        }
        deallocated = messagebus_capture.assert_published(
            Deallocated, orderid="order2", sku="INDIFFERENT-TABLE", qty=20
        )
        # The Deallocated handler allocated the line again through the bus.
        assert [
            command
            for command in messagebus_capture.commands
            if command.causation_id == deallocated.message_id
        ] == [Allocate("order2", "INDIFFERENT-TABLE", 20)]
        messagebus_capture.assert_published(Allocated, orderid="order2", batchref="batch2")

    def test_deallocates_until_the_batch_is_no_longer_over_allocated(self, messagebus_capture):
        messagebus.bus.handle(CreateBatch("batch1", "DINING-CHAIR", 30, None))
        for orderid in ("order1", "order2", "order3"):
            messagebus.bus.handle(Allocate(orderid, "DINING-CHAIR", 10))

        messagebus.bus.handle(ChangeBatchQuantity("batch1", 11))

        assert [event.orderid for event in messagebus_capture.published(Deallocated)] == [
            "order3",
            "order2",
        ]
        assert list(OrderLine.objects.values_list("orderid", flat=True)) == ["order1"]
        assert available("batch1") == 1

    def test_deallocated_line_with_nowhere_to_go_is_out_of_stock(
        self, notifications, messagebus_capture
    ):
        messagebus.bus.handle(CreateBatch("batch1", "RARE-VASE", 10, None))
        messagebus.bus.handle(Allocate("order1", "RARE-VASE", 6))

        messagebus.bus.handle(ChangeBatchQuantity("batch1", 5))

        messagebus_capture.assert_published(Deallocated, orderid="order1", qty=6)
        messagebus_capture.assert_published(OutOfStock, sku="RARE-VASE")
        assert not OrderLine.objects.exists()
        assert not AllocationView.objects.exists()
        assert notifications.sent[-1][1] == "Out of stock for RARE-VASE"

    def test_a_line_allocated_again_meanwhile_is_left_as_it_is(self):
        messagebus.bus.handle(CreateBatch("batch1", "RARE-VASE", 10, None))
        messagebus.bus.handle(Allocate("order1", "RARE-VASE", 4))

        # A Deallocated delivered late: the order took the SKU again since, with 4.
        reallocate(Deallocated(orderid="order1", sku="RARE-VASE", qty=6), messagebus.bus)

        assert list(OrderLine.objects.values_list("orderid", "qty")) == [("order1", 4)]
        assert available("batch1") == 6
        assert AllocationView.objects.get().batchref == "batch1"

    def test_unknown_batch_is_rejected(self):
        ProductFactory(sku="RARE-VASE")

        with pytest.raises(UnknownBatch, match="Unknown batch nope"):
            messagebus.bus.handle(ChangeBatchQuantity("nope", 5))


class TestReadModel:
    def test_a_stale_allocated_does_not_show_a_batch_the_line_has_left(self):
        messagebus.bus.handle(CreateBatch("batch1", "LATE-LAMP", 10, None))
        messagebus.bus.handle(CreateBatch("batch2", "LATE-LAMP", 10, tomorrow))
        messagebus.bus.handle(Allocate("order1", "LATE-LAMP", 6))
        messagebus.bus.handle(ChangeBatchQuantity("batch1", 5))  # order1 moves to batch2

        # The first Allocated, delivered late (a retry, a slow worker):
        messagebus.bus.handle(
            Allocated(orderid="order1", sku="LATE-LAMP", qty=6, batchref="batch1")
        )

        assert list(AllocationView.objects.values_list("orderid", "batchref")) == [
            ("order1", "batch2")
        ]

    def test_a_stale_allocated_for_a_line_gone_shows_nothing(self):
        messagebus.bus.handle(Allocated(orderid="ghost", sku="LATE-LAMP", qty=1, batchref="b"))

        assert not AllocationView.objects.exists()
