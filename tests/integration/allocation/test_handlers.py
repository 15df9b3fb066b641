"""The book's handler tests, through the bus and the database."""

from datetime import date, timedelta

import pytest

import messagebus
from allocation.commands import Allocate, ChangeBatchQuantity, CreateBatch
from allocation.exceptions import DuplicateBatch, InvalidSku, UnknownBatch
from allocation.models import AllocationView, Batch, OrderLine, Product
from tests.factories import BatchFactory, ProductFactory

pytestmark = pytest.mark.django_db

tomorrow = date.today() + timedelta(days=1)


def available(ref: str) -> int:
    return Batch.objects.with_quantities().get(reference=ref).available


class TestCreateBatch:
    def test_for_new_product(self, handle):
        handle(CreateBatch("b1", "CRUNCHY-ARMCHAIR", 100, None))

        batch = Batch.objects.get(reference="b1")
        assert (batch.sku, batch.purchased_quantity, batch.eta) == ("CRUNCHY-ARMCHAIR", 100, None)
        assert Product.objects.filter(sku="CRUNCHY-ARMCHAIR").exists()

    def test_for_existing_product(self, handle):
        handle(CreateBatch("b1", "GARISH-RUG", 100, None))
        handle(CreateBatch("b2", "GARISH-RUG", 99, tomorrow))

        assert list(
            Batch.objects.filter(product__sku="GARISH-RUG").values_list("reference", "eta")
        ) == [("b1", None), ("b2", tomorrow)]
        assert Product.objects.count() == 1

    @pytest.mark.parametrize("sku", ["GARISH-RUG", "OTHER-SKU"], ids=["same sku", "other sku"])
    def test_duplicate_reference_is_rejected(self, handle, sku):
        handle(CreateBatch("b1", "GARISH-RUG", 100, None))

        with pytest.raises(DuplicateBatch, match="Batch b1 already exists"):
            handle(CreateBatch("b1", sku, 5, None))

        assert Batch.objects.get().purchased_quantity == 100
        assert not Product.objects.filter(sku="OTHER-SKU").exists()


class TestAllocate:
    def test_returns_allocation(self, handle):
        handle(CreateBatch("batch1", "COMPLICATED-LAMP", 100, None))

        assert handle(Allocate("o1", "COMPLICATED-LAMP", 10)) == "batch1"

        line = OrderLine.objects.get()
        assert (line.orderid, line.sku, line.qty, line.batch.reference) == (
            "o1",
            "COMPLICATED-LAMP",
            10,
            "batch1",
        )
        assert available("batch1") == 90
        assert Product.objects.get().version_number == 1

    def test_prefers_batches_in_stock_then_earlier(self, handle):
        handle(CreateBatch("later", "SOFA", 100, tomorrow + timedelta(days=3)))
        handle(CreateBatch("sooner", "SOFA", 100, tomorrow))
        handle(CreateBatch("warehouse", "SOFA", 10, None))

        assert handle(Allocate("o1", "SOFA", 10)) == "warehouse"
        assert handle(Allocate("o2", "SOFA", 10)) == "sooner"

    def test_errors_for_invalid_sku(self, handle):
        handle(CreateBatch("b1", "AREALSKU", 100, None))

        with pytest.raises(InvalidSku, match="Invalid sku NONEXISTENTSKU"):
            handle(Allocate("o1", "NONEXISTENTSKU", 10))

        assert not OrderLine.objects.exists()

    def test_allocating_the_same_line_again_allocates_nothing_more(self, handle):
        handle(CreateBatch("b1", "STOOL", 100, None))
        handle(Allocate("o1", "STOOL", 10))

        assert handle(Allocate("o1", "STOOL", 10)) == "b1"

        assert OrderLine.objects.count() == 1
        assert available("b1") == 90
        assert Product.objects.get().version_number == 1

    def test_adds_the_allocation_to_the_read_model(self, handle):
        handle(CreateBatch("b1", "STOOL", 100, None))
        handle(Allocate("o1", "STOOL", 10))

        assert list(AllocationView.objects.values_list("orderid", "sku", "batchref")) == [
            ("o1", "STOOL", "b1")
        ]

    def test_sends_notification_when_out_of_stock(self, handle, notifications, settings):
        settings.ALLOCATION_STOCK_EMAIL = "stock@made.com"
        handle(CreateBatch("b1", "POPULAR-CURTAINS", 9, None))

        assert handle(Allocate("o1", "POPULAR-CURTAINS", 10)) is None

        assert notifications.sent == [("stock@made.com", "Out of stock for POPULAR-CURTAINS")]
        assert not OrderLine.objects.exists()
        assert not AllocationView.objects.exists()

    def test_notification_only_runs_once_the_command_commits(self, notifications):
        BatchFactory(reference="b1", product__sku="CURTAINS", purchased_quantity=1)

        assert messagebus.bus.handle(Allocate("o1", "CURTAINS", 10)) is None

        assert notifications.sent == []


class TestChangeBatchQuantity:
    def test_changes_available_quantity(self, handle):
        handle(CreateBatch("batch1", "ADORABLE-SETTEE", 100, None))

        handle(ChangeBatchQuantity("batch1", 50))

        assert available("batch1") == 50

    def test_reallocates_if_necessary(self, handle):
        handle(CreateBatch("batch1", "INDIFFERENT-TABLE", 50, None))
        handle(CreateBatch("batch2", "INDIFFERENT-TABLE", 50, date.today()))
        handle(Allocate("order1", "INDIFFERENT-TABLE", 20))
        handle(Allocate("order2", "INDIFFERENT-TABLE", 20))
        assert (available("batch1"), available("batch2")) == (10, 50)

        handle(ChangeBatchQuantity("batch1", 25))

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

    def test_deallocated_line_with_nowhere_to_go_is_out_of_stock(self, handle, notifications):
        handle(CreateBatch("batch1", "RARE-VASE", 10, None))
        handle(Allocate("order1", "RARE-VASE", 6))

        handle(ChangeBatchQuantity("batch1", 5))

        assert not OrderLine.objects.exists()
        assert not AllocationView.objects.exists()
        assert notifications.sent[-1][1] == "Out of stock for RARE-VASE"

    def test_unknown_batch_is_rejected(self, handle):
        ProductFactory(sku="RARE-VASE")

        with pytest.raises(UnknownBatch, match="Unknown batch nope"):
            handle(ChangeBatchQuantity("nope", 5))
