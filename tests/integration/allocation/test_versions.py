"""The product's version guards every save, locked or not."""

import pytest
from django.db.models import F

import messagebus
from allocation.commands import Allocate
from allocation.exceptions import ProductChanged
from allocation.models import OrderLine, Product
from tests.factories import BatchFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_save_over_a_newer_version_is_refused():
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=10)
    mine, theirs = Product.objects.get(sku="LAMP"), Product.objects.get(sku="LAMP")
    theirs.allocate(OrderLine(orderid="o1", sku="LAMP", qty=1))
    theirs.save()

    mine.allocate(OrderLine(orderid="o2", sku="LAMP", qty=1))
    with pytest.raises(ProductChanged, match="Product LAMP changed since version 0"):
        mine.save()
    assert Product.objects.get().version_number == 1

    again = Product.objects.get(sku="LAMP")
    again.allocate(OrderLine(orderid="o2", sku="LAMP", qty=1))
    again.save()
    again.allocate(OrderLine(orderid="o3", sku="LAMP", qty=1))
    again.save()  # its own saves move its expected version along
    assert Product.objects.get().version_number == 3


def test_a_command_that_loaded_a_stale_product_runs_again(messagebus_registry):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=10)
    runs = []

    def allocate_unlocked(cmd: Allocate) -> str | None:
        runs.append(1)
        product = Product.objects.get(sku=cmd.sku)  # no lock: relies on the version
        if len(runs) == 1:  # as if another request saved it meanwhile
            Product.objects.filter(pk=product.pk).update(version_number=F("version_number") + 1)
        line = OrderLine(orderid=cmd.orderid, sku=cmd.sku, qty=cmd.qty)
        batchref = product.allocate(line)
        line.save()
        product.save(update_fields=["version_number"])
        return batchref

    messagebus_registry.unregister(messagebus_registry.command_handler(Allocate).func)
    messagebus_registry.register(Allocate, allocate_unlocked)
    assert messagebus.bus.handle(Allocate("o1", "LAMP", 2)) == "b1"
    assert len(runs) == 2
    assert list(OrderLine.objects.values_list("orderid", "qty")) == [("o1", 2)]
    assert Product.objects.get().version_number == 1  # the bump went with the first run


def test_a_save_writes_its_update_fields_only_and_moves_the_version_along():
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=10)
    product = Product.objects.get(sku="LAMP")
    product.sku, product.version_number = "LAMPS", 5
    product.save(update_fields=["version_number"])
    assert list(Product.objects.values_list("sku", "version_number")) == [("LAMP", 5)]

    product.sku = "LAMP"
    product.save(update_fields=[])  # nothing to save: no query, no version check
    with pytest.raises(ValueError, match="colour"):
        product.save(update_fields=["colour"])
    product.save()
    assert list(Product.objects.values_list("sku", "version_number")) == [("LAMP", 5)]
