"""What the API takes: malformed input on any write route is a 4xx with a clear message,
never a server error; identifiers may be any letters; a trailing slash is accepted."""

import json

import pytest

from allocation.models import Batch, OrderLine
from tests.factories import AllocationViewFactory, BatchFactory

pytestmark = pytest.mark.usefixtures("messagebus_deliver")

BATCH = {"ref": "b2", "sku": "LAMP", "qty": 10, "eta": None}
LINE = {"orderid": "o1", "sku": "LAMP", "qty": 3}
# (method, path, a valid body)
WRITES = [
    ("POST", "/api/batches", BATCH),
    ("POST", "/add_batch", BATCH),
    ("PATCH", "/api/batches/b1", {"qty": 50}),
    ("POST", "/api/allocations", LINE),
    ("POST", "/allocate", LINE),
]
WRITE_IDS = [f"{method} {path}" for method, path, _ in WRITES]
# The routes whose bodies hold identifiers (ref, sku, orderid).
IDENTIFIED_WRITES = [write for write in WRITES if write[0] == "POST"]


@pytest.fixture(autouse=True)
def batch(db):
    return BatchFactory(reference="b1", product__sku="LAMP", purchased_quantity=20)


def send(api, method: str, path: str, body: str | bytes, content_type: str = "application/json"):
    return api.generic(method, path, body, content_type=content_type)


def assert_nothing_changed() -> None:
    assert list(Batch.objects.values_list("reference", "purchased_quantity")) == [("b1", 20)]
    assert not OrderLine.objects.exists()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize("body", ["{", "[1,", "NaN", b"\xff\xfe", b"\x00", '{"qty": 1'], ids=repr)
def test_a_body_that_is_not_json(api, method, path, valid, body):
    response = send(api, method, path, body)

    assert response.status_code == 400
    assert response.json()["message"].startswith("JSON parse error")
    assert_nothing_changed()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize("body", ["[]", '"x"', "3", "true", "null"])
def test_json_that_is_not_an_object(api, method, path, valid, body):
    response = send(api, method, path, body)

    assert response.status_code == 400
    assert "non_field_errors" in response.json()
    assert_nothing_changed()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""]
)
def test_a_body_that_is_not_json_by_its_content_type(api, method, path, valid, content_type):
    response = send(api, method, path, json.dumps(valid), content_type)

    assert response.status_code == 415
    assert "Unsupported media type" in response.json()["message"]
    assert_nothing_changed()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    ("qty", "error"),
    [
        ("10" * 20, "qty"),
        ("1e20", "qty"),
        ("1e400", "qty"),  # infinity, to Python's json
        ("-1e400", "qty"),
        ("9" * 5000, "message"),  # too long for int(): a JSON parse error
    ],
    ids=lambda value: value[:8],
)
def test_a_huge_quantity(api, method, path, valid, qty, error):
    body = json.dumps({**valid, "qty": 0}).replace('"qty": 0', f'"qty": {qty}')

    response = send(api, method, path, body)

    assert response.status_code == 400
    assert list(response.json()) == [error]
    assert_nothing_changed()


@pytest.mark.parametrize(
    ("method", "path", "valid"),
    IDENTIFIED_WRITES,
    ids=[f"{m} {p}" for m, p, _ in IDENTIFIED_WRITES],
)
@pytest.mark.parametrize("text", ["\x00", "b\x00", "\ud800", "a\u200fb", " ", ""], ids=repr)
def test_identifiers_with_unprintable_characters(api, method, path, valid, text):
    fields = {field: text for field in ("ref", "sku", "orderid") if field in valid}
    body = json.dumps({**valid, **fields}).encode()  # "\ud800" stays escaped

    response = send(api, method, path, body)

    assert response.status_code == 400
    assert set(response.json()) == set(fields)
    assert_nothing_changed()


def test_unicode_identifiers_go_all_the_way(api):
    batch = api.post("/api/batches", {"ref": "partie-été", "sku": "ЛАМПА", "qty": 5})

    allocation = api.post("/api/allocations", {"orderid": "注文-1", "sku": "ЛАМПА", "qty": 2})

    assert batch.status_code == 201
    assert batch["Location"] == "http://testserver/api/batches/partie-%C3%A9t%C3%A9"
    assert api.get(batch["Location"]).json()["available"] == 3
    assert allocation.status_code == 201
    assert api.get(allocation["Location"]).json() == [{"sku": "ЛАМПА", "batchref": "partie-été"}]


B1 = {"ref": "b1", "sku": "LAMP", "qty": 20, "eta": None, "allocated": 0, "available": 20}
B2 = {**BATCH, "allocated": 0, "available": 10}
ROUTES = [
    ("get", "/api/batches", None, 200, [B1]),
    ("post", "/api/batches", BATCH, 201, B2),
    ("get", "/api/batches/b1", None, 200, B1),
    ("patch", "/api/batches/b1", {"qty": 30}, 200, {**B1, "qty": 30, "available": 30}),
    ("post", "/api/allocations", LINE, 201, {**LINE, "batchref": "b1"}),
    ("get", "/api/allocations/o9", None, 200, [{"sku": "LAMP", "batchref": "b1"}]),
    ("post", "/add_batch", BATCH, 201, B2),
    ("post", "/allocate", LINE, 202, {"batchref": "b1"}),
    ("get", "/allocations/o9", None, 200, [{"sku": "LAMP", "batchref": "b1"}]),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "shown"),
    ROUTES,
    ids=[f"{route[0]} {route[1]}/" for route in ROUTES],
)
def test_a_trailing_slash_is_accepted(api, method, path, body, status, shown):
    AllocationViewFactory(orderid="o9", sku="LAMP", batchref="b1")

    response = getattr(api, method)(f"{path}/", body)

    assert (response.status_code, response.json()) == (status, shown)


NESTED = {
    "lists": "[" * 1000 + "]" * 1000,
    "objects": '{"a":' * 1000 + "1" + "}" * 1000,
    "very deep": "[" * 100_000 + "]" * 100_000,
    "deep in a field": '{"qty": ' + "[" * 950 + "]" * 950 + "}",
}


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize("body", NESTED.values(), ids=NESTED.keys())
def test_json_nested_too_deeply(api, method, path, valid, body):
    response = send(api, method, path, body)

    assert response.status_code == 400
    assert response.json() == {"message": "JSON parse error - nested more than 100 deep"}
    assert_nothing_changed()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
def test_json_nested_as_deep_as_allowed_is_read(api, method, path, valid):
    body = json.dumps({**valid, "extra": json.loads("[" * 99 + "]" * 99)})

    response = send(api, method, path, body)

    assert response.status_code < 300


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
def test_brackets_inside_a_string_are_not_nesting(api, method, path, valid):
    body = json.dumps({**valid, "extra": "[{" * 500 + '\\"' + "]}" * 500})

    response = send(api, method, path, body)

    assert response.status_code < 300


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
def test_a_body_over_the_upload_limit(api, settings, method, path, valid):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({**valid, "padding": "x" * 1000})

    response = send(api, method, path, body)

    assert response.status_code == 400
    assert response.json() == {"message": "The request body is larger than 1000 bytes."}
    assert_nothing_changed()


@pytest.mark.parametrize(
    ("method", "path", "valid"),
    IDENTIFIED_WRITES,
    ids=[f"{m} {p}" for m, p, _ in IDENTIFIED_WRITES],
)
@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_are_no_identifiers(api, method, path, valid, name):
    fields = {field: name for field in ("ref", "sku", "orderid") if field in valid}

    response = send(api, method, path, json.dumps({**valid, **fields}))

    assert response.status_code == 400
    assert response.json() == {
        field: ["'.' and '..' cannot be identifiers: in a URL they mean this path and its parent."]
        for field in fields
    }
    assert_nothing_changed()


@pytest.mark.parametrize(
    ("method", "path", "valid"),
    IDENTIFIED_WRITES,
    ids=[f"{m} {p}" for m, p, _ in IDENTIFIED_WRITES],
)
@pytest.mark.parametrize("value", [0, 12.5, 10**30], ids=repr)
def test_identifiers_are_json_strings(api, method, path, valid, value):
    fields = {field: value for field in ("ref", "sku", "orderid") if field in valid}

    response = send(api, method, path, json.dumps({**valid, **fields}))

    assert response.status_code == 400
    assert response.json() == {field: ["Not a valid string."] for field in fields}
    assert_nothing_changed()


@pytest.mark.parametrize(("method", "path", "valid"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize("qty", ["3", " 3", "3.0"], ids=repr)
def test_quantities_are_json_numbers(api, method, path, valid, qty):
    response = send(api, method, path, json.dumps({**valid, "qty": qty}))

    assert response.status_code == 400
    assert response.json() == {"qty": ["A valid integer is required."]}
    assert_nothing_changed()


@pytest.mark.parametrize("ref", ["mark¯", "¼-lot", "lot…2"])
def test_what_the_validator_takes_its_route_takes_too(api, ref):
    """Found by schemathesis: a reference the validator took had no URL (a 500)."""
    batch = api.post("/api/batches", {"ref": ref, "sku": "LAMP", "qty": 5})

    assert batch.status_code == 201, batch.content
    assert api.get(batch["Location"]).json()["ref"] == ref
