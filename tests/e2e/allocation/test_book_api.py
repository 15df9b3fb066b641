"""The book's end-to-end tests (chapter 13's test_api.py), over HTTP against a live server:
Django's own (WSGI), and uvicorn serving config.asgi (ASGI)."""

import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest


def random_suffix() -> str:
    return uuid.uuid4().hex[:6]


def random_sku(name: str = "") -> str:
    return f"sku-{name}-{random_suffix()}"


def random_batchref(name: str | int = "") -> str:
    return f"batch-{name}-{random_suffix()}"


def random_orderid(name: str = "") -> str:
    return f"order-{name}-{random_suffix()}"


class ApiClient:
    """The book's api_client module, on urllib."""

    def __init__(self, url: str) -> None:
        self.url = url

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data, {"Content-Type": "application/json"}, method=method
        )
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def post_to_add_batch(self, ref: str, sku: str, qty: int, eta: str | None) -> None:
        status, _ = self.request(
            "POST", "/add_batch", {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        )
        assert status == 201

    def post_to_allocate(
        self, orderid: str, sku: str, qty: int, expect_success: bool = True
    ) -> tuple[int, Any]:
        status, body = self.request(
            "POST", "/allocate", {"orderid": orderid, "sku": sku, "qty": qty}
        )
        if expect_success:
            assert status == 202
        return status, body

    def get_allocation(self, orderid: str) -> tuple[int, Any]:
        return self.request("GET", f"/allocations/{orderid}")


@pytest.fixture(
    params=[("wsgi", "inline"), ("asgi", "inline"), ("wsgi", "worker"), ("asgi", "worker")],
    ids="-".join,
)
def api_client(request, live_server, settings) -> ApiClient:
    """The service over WSGI or ASGI, its events handled inline or left for workers
    (none runs: a read right after a write sees only what the command's transaction
    wrote, the read model included)."""
    server, executor = request.param
    if server == "asgi":
        return ApiClient(request.getfixturevalue("uvicorn")({"MESSAGEBUS_EXECUTOR": executor}))
    settings.API_ALLOW_ANONYMOUS = True
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "EXECUTOR": executor}
    return ApiClient(live_server.url)


def test_happy_path_returns_202_and_batch_is_allocated(api_client):
    orderid = random_orderid()
    sku, othersku = random_sku(), random_sku("other")
    earlybatch = random_batchref(1)
    laterbatch = random_batchref(2)
    otherbatch = random_batchref(3)
    api_client.post_to_add_batch(laterbatch, sku, 100, "2011-01-02")
    api_client.post_to_add_batch(earlybatch, sku, 100, "2011-01-01")
    api_client.post_to_add_batch(otherbatch, othersku, 100, None)

    status, body = api_client.post_to_allocate(orderid, sku, qty=3)

    assert status == 202
    assert body == {"batchref": earlybatch}
    status, body = api_client.get_allocation(orderid)
    assert status == 200
    assert body == [{"sku": sku, "batchref": earlybatch}]


def test_unhappy_path_returns_400_and_error_message(api_client):
    unknown_sku, orderid = random_sku(), random_orderid()

    status, body = api_client.post_to_allocate(orderid, unknown_sku, qty=20, expect_success=False)

    assert status == 400
    assert body["message"] == f"Invalid sku {unknown_sku}"
    status, _ = api_client.get_allocation(orderid)
    assert status == 404


def test_out_of_stock_returns_202_without_a_batch(api_client):
    sku = random_sku()
    api_client.post_to_add_batch(random_batchref(), sku, 5, None)

    status, body = api_client.post_to_allocate(random_orderid(), sku, qty=6)

    assert (status, body) == (202, {"batchref": None})


def test_add_batch_rejects_a_taken_reference(api_client):
    ref = random_batchref()
    api_client.post_to_add_batch(ref, random_sku(), 5, None)

    status, body = api_client.request(
        "POST", "/add_batch", {"ref": ref, "sku": random_sku(), "qty": 5, "eta": None}
    )

    assert (status, body) == (409, {"message": f"Batch {ref} already exists"})
