import json

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import get_resolver

from tests.factories import BatchFactory, OrderLineFactory

# Event handlers run as each request's command ends, as they would after its commit.
pytestmark = pytest.mark.usefixtures("messagebus_deliver")

BATCH = {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}


def test_add_batch(api):
    response = api.post("/api/batches", {**BATCH, "eta": "2031-01-02"})

    assert response.status_code == 201
    assert response.json() == {
        "ref": "b1",
        "sku": "LAMP",
        "qty": 10,
        "eta": "2031-01-02",
        "allocated": 0,
        "available": 10,
    }
    assert response["Location"] == "http://testserver/api/batches/b1"
    assert api.get(response["Location"]).json() == response.json()


def test_add_batch_without_eta_is_in_stock(api):
    response = api.post("/api/batches", {"ref": "b1", "sku": "LAMP", "qty": 10})

    assert response.status_code == 201
    assert response.json()["eta"] is None


def test_add_batch_with_a_taken_reference_is_a_conflict(api):
    BatchFactory(reference="b1", product__sku="CHAIR")

    response = api.post("/api/batches", BATCH)

    assert response.status_code == 409
    assert response.json() == {"message": "Batch b1 already exists"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ref": None}, "ref"),
        ({"sku": ""}, "sku"),
        ({"ref": "a/b"}, "ref"),
        ({"sku": "TWO WORDS"}, "sku"),
        ({"ref": "x" * 256}, "ref"),
        ({"sku": "nul\x00"}, "sku"),
        ({"sku": ["LAMP"]}, "sku"),
        ({"qty": 0}, "qty"),
        ({"qty": -1}, "qty"),
        ({"qty": 1_000_001}, "qty"),
        ({"qty": 10**40}, "qty"),
        ({"qty": "ten"}, "qty"),
        ({"qty": 1.5}, "qty"),
        ({"qty": True}, "qty"),
        ({"qty": None}, "qty"),
        ({"eta": "2031-02-30"}, "eta"),
        ({"eta": "tomorrow"}, "eta"),
        ({"eta": 20310102}, "eta"),
    ],
)
def test_add_batch_with_invalid_field(api, change, field):
    response = api.post("/api/batches", {**BATCH, **change})

    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize("missing", ["ref", "sku", "qty"])
def test_add_batch_without_a_required_field(api, missing):
    body = {key: value for key, value in BATCH.items() if key != missing}

    response = api.post("/api/batches", body)

    assert response.status_code == 400
    assert response.json() == {missing: ["This field is required."]}


def test_list_batches_with_their_quantities(api):
    batch = BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)
    OrderLineFactory(batch=batch, qty=5)
    BatchFactory(reference="b2", product__sku="CHAIR", purchased_quantity=7)

    response = api.get("/api/batches")

    assert response.status_code == 200
    assert response.json() == [
        {"ref": "b2", "sku": "CHAIR", "qty": 7, "eta": None, "allocated": 0, "available": 7},
        {"ref": "b1", "sku": "LAMP", "qty": 20, "eta": None, "allocated": 5, "available": 15},
    ]


def test_list_batches_by_sku_in_the_order_allocation_prefers(api):
    BatchFactory(reference="a-later", product__sku="LAMP", eta="2031-02-01")
    BatchFactory(reference="b-sooner", product__sku="LAMP", eta="2031-01-01")
    BatchFactory(reference="c-in-stock", product__sku="LAMP", eta=None)
    BatchFactory(reference="d-chair", product__sku="CHAIR", eta="2031-03-01")

    refs = [batch["ref"] for batch in api.get("/api/batches").json()]

    assert refs == ["d-chair", "c-in-stock", "b-sooner", "a-later"]


def test_list_one_skus_batches(api):
    BatchFactory(reference="b1", product__sku="LAMP")
    BatchFactory(reference="b2", product__sku="CHAIR")

    response = api.get("/api/batches?sku=CHAIR")

    assert [batch["ref"] for batch in response.json()] == ["b2"]


def test_show_unknown_batch(api):
    response = api.get("/api/batches/nope")

    assert response.status_code == 404
    assert response.json() == {"message": "Unknown batch nope"}


def test_change_batch_quantity(api):
    batch = BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)
    BatchFactory(reference="b2", product__sku="LAMP", purchased_quantity=20, eta="2031-01-01")
    OrderLineFactory(batch=batch, orderid="o1", qty=8)
    OrderLineFactory(batch=batch, orderid="o2", qty=8)

    response = api.patch("/api/batches/b1", {"qty": 10})

    assert response.status_code == 200
    assert response.json() == {
        "ref": "b1",
        "sku": "LAMP",
        "qty": 10,
        "eta": None,
        "allocated": 8,
        "available": 2,
    }
    assert api.get("/api/batches/b2").json()["allocated"] == 8


def test_change_quantity_of_unknown_batch(api):
    response = api.patch("/api/batches/nope", {"qty": 10})

    assert response.status_code == 404
    assert response.json() == {"message": "Unknown batch nope"}


@pytest.mark.parametrize("body", [{}, {"qty": 0}, {"qty": "many"}, [10]], ids=repr)
def test_change_batch_quantity_with_invalid_input(api, body):
    BatchFactory(reference="b1", purchased_quantity=20)

    response = api.patch("/api/batches/b1", body)

    assert response.status_code == 400
    assert api.get("/api/batches/b1").json()["qty"] == 20


@pytest.mark.parametrize(
    ("method", "path"),
    [("put", "/api/batches/b1"), ("delete", "/api/batches/b1"), ("patch", "/api/batches")],
)
def test_other_methods_are_not_allowed(api, method, path):
    BatchFactory(reference="b1")

    response = getattr(api, method)(path, {"qty": 1})

    assert response.status_code == 405
    assert response.json() == {"message": f'Method "{method.upper()}" not allowed.'}


@pytest.mark.parametrize("sku", ["a b", "\x00", "x" * 256, "", ".", ".."])
def test_list_batches_of_an_invalid_sku(api, sku):
    response = api.get("/api/batches", {"sku": sku})

    assert response.status_code == 400
    assert list(response.json()) == ["sku"]


@pytest.mark.parametrize("ref", ["a%20b", "%00", "%E2%80%8F", "a%2Fb"])
def test_a_path_that_is_no_reference_names_no_batch(api, ref):
    for response in (api.get(f"/api/batches/{ref}"), api.patch(f"/api/batches/{ref}", {"qty": 1})):
        assert response.status_code == 404
        assert response.json()["message"].startswith("Nothing at /api/batches/")


def test_an_unknown_route_answers_json_and_the_admin_html(api, admin_client):
    response = api.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"message": "Nothing at /api/nothing-here"}
    page = admin_client.get("/admin/nothing-here/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")


def test_a_bad_request_outside_the_api_views_answers_json_and_the_admin_html(api, admin_client):
    response = api.get("/api/batches", HTTP_HOST="elsewhere.example")
    assert response.status_code == 400
    assert response.json() == {"message": "Bad request"}
    page = admin_client.get("/admin/", HTTP_HOST="elsewhere.example")
    assert page.status_code == 400
    assert page["Content-Type"].startswith("text/html")


def test_permission_denied_outside_the_api_views_answers_json_and_the_admin_html(rf):
    handler = get_resolver().resolve_error_handler(403)

    response = handler(rf.get("/api/batches"), exception=PermissionDenied())
    page = handler(rf.get("/admin/"), exception=PermissionDenied())

    assert response.status_code == 403
    assert json.loads(response.content) == {
        "message": "You do not have permission to perform this action."
    }
    assert page.status_code == 403
    assert page["Content-Type"].startswith("text/html")


def test_an_unexpected_error_answers_json_500(api, monkeypatch):
    def broken(rows):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("allocation.queries._shown", broken)
    api.raise_request_exception = False
    response = api.get("/api/batches")
    assert response.status_code == 500
    assert response.json() == {"message": "Internal server error"}
