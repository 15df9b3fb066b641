"""The admin changes stock only through bus commands, and shows why one is turned down."""

from datetime import date

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.messages import ERROR, SUCCESS, WARNING, get_messages
from pytest_django.asserts import assertContains

from allocation.commands import Allocate, ChangeBatchQuantity, CreateBatch
from allocation.events import Deallocated, OutOfStock
from allocation.models import AllocationView, Batch, OrderLine, Product
from tests.factories import AllocationViewFactory, BatchFactory, OrderLineFactory, UserFactory

# Event handlers run as each request's command ends, as they would after its commit.
pytestmark = pytest.mark.usefixtures("messagebus_deliver")

BATCHES = "/admin/allocation/batch/"
ALLOCATIONS = "/admin/allocation/orderline/"


def messages_of(response) -> list[tuple[int, str]]:
    return [(message.level, message.message) for message in get_messages(response.wsgi_request)]


@pytest.mark.parametrize(
    "path",
    [
        "/admin/allocation/product/",
        BATCHES,
        ALLOCATIONS,
        "/admin/allocation/allocationview/",
        f"{BATCHES}add/",
        f"{ALLOCATIONS}add/",
    ],
)
def test_pages_show(admin_client, path):
    line = OrderLineFactory(batch__reference="b1")
    AllocationViewFactory(orderid=line.orderid)

    assert admin_client.get(path).status_code == 200


def test_product_page_shows_its_batches_and_their_stock(admin_client):
    batch = BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)
    OrderLineFactory(batch=batch, qty=5)

    response = admin_client.get(f"/admin/allocation/product/{batch.product.pk}/change/")

    for field, value in [("purchased_quantity", 20), ("allocated", 5), ("available", 15)]:
        assertContains(response, f'<td class="field-{field}"><p>{value}</p></td>', html=True)


def test_add_batch_creates_the_product_through_the_bus(admin_client, messagebus_capture):
    response = admin_client.post(
        f"{BATCHES}add/", {"ref": "b1", "sku": "NEW-SKU", "qty": "20", "eta": "2031-01-02"}
    )

    assert response.status_code == 302
    messagebus_capture.assert_handled(
        CreateBatch, ref="b1", sku="NEW-SKU", qty=20, eta=date(2031, 1, 2)
    )
    batch = Batch.objects.get(reference="b1")
    assert (batch.sku, batch.purchased_quantity, batch.eta) == ("NEW-SKU", 20, date(2031, 1, 2))
    assert Product.objects.filter(sku="NEW-SKU").exists()
    assert messages_of(response) == [(SUCCESS, "Batch b1 was added.")]
    assert LogEntry.objects.get().object_repr == "b1"


def test_add_batch_shows_the_domain_error(admin_client):
    BatchFactory(reference="b1", product__sku="LAMP")

    response = admin_client.post(f"{BATCHES}add/", {"ref": "b1", "sku": "CHAIR", "qty": "5"})

    assert response.status_code == 200
    assert messages_of(response) == [(ERROR, "Batch b1 already exists")]
    assert response.context["form"].data["sku"] == "CHAIR"
    assert not Product.objects.filter(sku="CHAIR").exists()


def test_add_batch_with_invalid_fields(admin_client):
    response = admin_client.post(f"{BATCHES}add/", {"ref": "b 1", "sku": "LAMP", "qty": "0"})

    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"ref", "qty"}
    assert not Batch.objects.exists()


def test_change_batch_quantity_reallocates_through_the_bus(admin_client, messagebus_capture):
    batch = BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)
    BatchFactory(reference="b2", product__sku="LAMP", eta=date(2031, 1, 1))
    OrderLineFactory(batch=batch, orderid="o1", qty=8)
    OrderLineFactory(batch=batch, orderid="o2", qty=8)

    response = admin_client.post(f"{BATCHES}{batch.pk}/change/", {"qty": "10"})

    assert response.status_code == 302
    messagebus_capture.assert_handled(ChangeBatchQuantity, ref="b1", qty=10)
    messagebus_capture.assert_published(Deallocated, orderid="o2", sku="LAMP", qty=8)
    batch.refresh_from_db()
    assert batch.purchased_quantity == 10
    assert dict(OrderLine.objects.values_list("orderid", "batch__reference")) == {
        "o1": "b1",
        "o2": "b2",
    }
    assert messages_of(response) == [(SUCCESS, "Batch b1 now holds 10.")]


def test_batch_page_shows_its_allocations(admin_client):
    batch = BatchFactory(reference="b1", purchased_quantity=20)
    OrderLineFactory(batch=batch, orderid="o-77", qty=8)

    response = admin_client.get(f"{BATCHES}{batch.pk}/change/")

    assert ("Available", 12) in response.context["details"]
    assert [line.orderid for line in response.context["lines"]] == ["o-77"]
    assert response.context["form"].initial == {"qty": 20}


def test_batch_page_without_change_permission_has_no_form(client):
    batch = BatchFactory(reference="b1", purchased_quantity=20)
    client.force_login(UserFactory(is_staff=True, permissions=["view_batch"]))

    assert client.get(f"{BATCHES}{batch.pk}/change/").context["form"] is None
    client.post(f"{BATCHES}{batch.pk}/change/", {"qty": "5"})

    batch.refresh_from_db()
    assert batch.purchased_quantity == 20


def test_batches_cannot_be_deleted(admin_client):
    batch = BatchFactory()

    assert admin_client.get(f"{BATCHES}{batch.pk}/delete/").status_code == 403


def test_allocate_through_the_bus(admin_client, messagebus_capture):
    BatchFactory(reference="b1", product__sku="LAMP")

    response = admin_client.post(f"{ALLOCATIONS}add/", {"orderid": "o1", "sku": "LAMP", "qty": "3"})

    assert response.status_code == 302
    messagebus_capture.assert_handled(Allocate, orderid="o1", sku="LAMP", qty=3)
    assert OrderLine.objects.get().batch.reference == "b1"
    assert AllocationView.objects.get().batchref == "b1"
    assert Product.objects.get().version_number == 1
    assert messages_of(response) == [(SUCCESS, "Order o1: 3 x LAMP is allocated to batch b1.")]


def test_allocate_shows_the_domain_error(admin_client):
    response = admin_client.post(f"{ALLOCATIONS}add/", {"orderid": "o1", "sku": "NOPE", "qty": "3"})

    assert response.status_code == 200
    assert messages_of(response) == [(ERROR, "Invalid sku NOPE")]
    assert response.context["form"].data["orderid"] == "o1"


def test_allocate_says_when_out_of_stock(admin_client, messagebus_capture):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=2)

    response = admin_client.post(f"{ALLOCATIONS}add/", {"orderid": "o1", "sku": "LAMP", "qty": "3"})

    assert response.status_code == 200
    assert messages_of(response) == [(WARNING, "Out of stock for LAMP")]
    assert not OrderLine.objects.exists()
    messagebus_capture.assert_published(OutOfStock, sku="LAMP")


def test_allocate_needs_the_permission(client):
    client.force_login(UserFactory(is_staff=True, permissions=["view_orderline"]))

    assert client.get(f"{ALLOCATIONS}add/").status_code == 403


@pytest.mark.parametrize("model", ["product", "allocationview"])
def test_read_only_models(admin_client, model):
    assert admin_client.get(f"/admin/allocation/{model}/add/").status_code == 403
