import pytest

from allocation.events import Deallocated
from allocation.models import OrderLine
from tests.factories import AllocationViewFactory, BatchFactory

# Event handlers run as each request's command ends, as they would after its commit.
pytestmark = pytest.mark.usefixtures("messagebus_deliver")

LINE = {"orderid": "o1", "sku": "LAMP", "qty": 3}


def test_allocate(api):
    BatchFactory(reference="later", product__sku="LAMP", eta="2031-01-02")
    BatchFactory(reference="early", product__sku="LAMP", eta="2031-01-01")

    response = api.post("/api/allocations", LINE)

    assert response.status_code == 201
    assert response.json() == {**LINE, "batchref": "early"}
    assert response["Location"] == "http://testserver/api/allocations/o1"
    assert api.get(response["Location"]).json() == [{"sku": "LAMP", "batchref": "early"}]


def test_allocate_unknown_sku(api):
    response = api.post("/api/allocations", {**LINE, "sku": "NOPE"})

    assert response.status_code == 400
    assert response.json() == {"message": "Invalid sku NOPE"}


def test_allocate_out_of_stock_is_a_conflict_and_emails_stock(api, mailoutbox):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=2)

    response = api.post("/api/allocations", LINE)

    assert response.status_code == 409
    assert response.json() == {"message": "Out of stock for LAMP"}
    assert [mail.subject for mail in mailoutbox] == ["Out of stock for LAMP"]
    assert not OrderLine.objects.exists()


def test_allocating_the_same_line_again_returns_its_batch(api):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=5)
    first = api.post("/api/allocations", LINE)

    again = api.post("/api/allocations", LINE)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["batchref"] == "b1"
    assert OrderLine.objects.get().qty == 3


@pytest.mark.parametrize("path", ["/api/allocations", "/allocate"])
def test_allocating_the_same_line_with_another_quantity_is_a_conflict(api, path):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=5)
    api.post(path, LINE)

    again = api.post(path, {**LINE, "qty": 4})

    assert again.status_code == 409
    assert again.json() == {"message": "Order o1 already has 3 x LAMP allocated (batch b1)"}
    assert OrderLine.objects.get().qty == 3


@pytest.mark.parametrize(
    "body",
    [
        {},
        {**LINE, "qty": 0},
        {**LINE, "qty": 10**6 + 1},
        {**LINE, "qty": ""},
        {**LINE, "orderid": "o 1"},
        {**LINE, "orderid": "o" * 256},
        {**LINE, "sku": {"a": 1}},
        [LINE],
    ],
    ids=repr,
)
def test_allocate_invalid_input(api, body):
    BatchFactory(product__sku="LAMP")

    response = api.post("/api/allocations", body)

    assert response.status_code == 400
    assert not OrderLine.objects.exists()


def test_order_allocations_come_from_the_read_model(api):
    AllocationViewFactory(orderid="o1", sku="LAMP", batchref="b1")
    AllocationViewFactory(orderid="o1", sku="CHAIR", batchref="b2")
    AllocationViewFactory(orderid="o2", sku="LAMP", batchref="b1")

    response = api.get("/api/allocations/o1")

    assert response.status_code == 200
    assert response.json() == [
        {"sku": "CHAIR", "batchref": "b2"},
        {"sku": "LAMP", "batchref": "b1"},
    ]


def test_order_without_allocations_is_not_found(api):
    response = api.get("/api/allocations/o1")

    assert response.status_code == 404
    assert response.json() == {"message": "No allocations for order o1"}


def test_a_reallocated_line_shows_its_new_batch(api, messagebus_capture):
    BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=10)
    BatchFactory(reference="b2", product__sku="LAMP", purchased_quantity=10, eta="2031-01-01")
    api.post("/api/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 6})

    api.patch("/api/batches/b1", {"qty": 5})

    assert api.get("/api/allocations/o1").json() == [{"sku": "LAMP", "batchref": "b2"}]
    messagebus_capture.assert_published(Deallocated, orderid="o1", sku="LAMP", qty=6)
