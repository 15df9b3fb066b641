"""The order workflow over HTTP, on every executor: the lines allocated in the request
(inline), by a `messagebus worker`, or by a Celery worker (with the relay for the
confirmation timeout); placed, then confirmed, rejected or released."""

import os
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from config import celery_app
from messagebus.testing import run_due
from tests.conftest import ROOT, celery_on_postgres, database_url
from tests.e2e.allocation.test_book_api import ApiClient, random_orderid, random_sku
from tests.subprocesses import CeleryWorker, Watched, celery_env

# What runs the deliveries that fall due later (the confirmation timeout), by executor.
Runner = Callable[[], None]


def worker_process() -> Watched:
    env = {**os.environ, "DATABASE_URL": database_url(), "MESSAGEBUS_EXECUTOR": "worker",
           "LOG_LEVEL": "INFO"}  # fmt: skip
    command = [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "0.2"]
    return Watched(command, env=env, ready="started", what="a worker")


@pytest.fixture(params=["inline", "worker", pytest.param("celery", marks=celery_on_postgres.marks)])
def service(request, live_server, settings) -> Iterator[tuple[ApiClient, Runner]]:
    """The API (anonymous access), its executor, and what runs deliveries due later: the
    test itself for the inline executor (as a `messagebus worker` beside it would),
    a worker process, or a Celery worker and the relay."""
    executor = request.param
    settings.API_ALLOW_ANONYMOUS = True
    started: list[Watched] = []
    if executor == "worker":
        started.append(worker_process())
    elif executor == "celery":
        celery_app.control.purge()
        started.append(CeleryWorker("orders"))
        relay = [sys.executable, str(ROOT / "manage.py"), "messagebus", "relay", "--interval",
                 "0.2"]  # fmt: skip
        started.append(Watched(relay, env=celery_env(), ready="started", what="the relay"))
    runner = run_due if executor == "inline" else lambda: None
    with override_settings(MESSAGEBUS={**django_settings.MESSAGEBUS, "EXECUTOR": executor}):
        yield ApiClient(live_server.url), runner
    for process in started:
        process.stop()


def stocked(api: ApiClient, qty: int) -> str:
    sku = random_sku()
    status, _ = api.request("POST", "/api/batches", {"ref": f"b-{sku}", "sku": sku, "qty": qty})
    assert status == 201
    return sku


def place(api: ApiClient, *lines: tuple[str, int]) -> str:
    orderid = random_orderid()
    body = {"orderid": orderid, "lines": [{"sku": sku, "qty": qty} for sku, qty in lines]}
    status, shown = api.request("POST", "/api/orders", body)
    assert status == 202, shown
    assert shown["orderid"] == orderid and shown["state"] in ("pending", "rejected")
    return orderid


def until(api: ApiClient, orderid: str, check: Callable[[dict], bool], runner: Runner) -> dict:
    """The order once ``check`` holds of it (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        runner()
        status, order = api.request("GET", f"/api/orders/{orderid}")
        assert status == 200, order
        if check(order):
            return order
        assert time.monotonic() < deadline, f"still {order}"
        time.sleep(0.1)


def allocated(order: dict) -> bool:
    return all(line["batchref"] for line in order["lines"])


def released(order: dict) -> bool:
    return not any(line["batchref"] for line in order["lines"])


def test_an_order_in_stock_is_allocated_then_confirmed(service):
    api, runner = service
    lamp, desk = stocked(api, 10), stocked(api, 5)
    orderid = place(api, (lamp, 2), (desk, 5))

    order = until(api, orderid, allocated, runner)
    assert order["state"] == "pending"
    assert [line["batchref"] for line in order["lines"]] == [f"b-{lamp}", f"b-{desk}"]

    status, order = api.request("POST", f"/api/orders/{orderid}/confirm")
    assert (status, order["state"]) == (200, "confirmed")
    status, order = api.request("POST", f"/api/orders/{orderid}/confirm")  # again: the same
    assert (status, order["state"]) == (200, "confirmed")


def test_an_order_with_a_line_out_of_stock_is_rejected_and_holds_nothing(service):
    api, runner = service
    lamp, desk = stocked(api, 10), stocked(api, 1)
    orderid = place(api, (lamp, 2), (desk, 5))

    order = until(api, orderid, lambda o: o["state"] == "rejected" and released(o), runner)

    assert [line["qty"] for line in order["lines"]] == [2, 5]
    assert api.request("GET", f"/api/allocations/{orderid}")[0] == 404
    status, batch = api.request("GET", f"/api/batches/b-{lamp}")
    assert (status, batch["available"]) == (200, 10)
    status, body = api.request("POST", f"/api/orders/{orderid}/confirm")
    assert (status, body) == (
        409,
        {"message": f"Order {orderid} is rejected: it cannot be confirmed"},
    )


def test_an_order_not_confirmed_in_time_is_released(service, settings):
    api, runner = service
    settings.ORDER_CONFIRM_TIMEOUT = 1
    lamp = stocked(api, 10)
    orderid = place(api, (lamp, 3))

    order = until(api, orderid, lambda o: o["state"] == "released" and released(o), runner)

    assert order["lines"] == [{"sku": lamp, "qty": 3, "batchref": None}]
    assert api.request("GET", f"/api/batches/b-{lamp}")[1]["available"] == 10
    status, body = api.request("POST", f"/api/orders/{orderid}/confirm")
    assert (status, body) == (
        409,
        {"message": f"Order {orderid} is released: it cannot be confirmed"},
    )


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        (
            {"orderid": "o1", "lines": []},
            {"lines": {"non_field_errors": ["This list may not be empty."]}},
        ),
        (
            {"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 0}]},
            {"lines": {"0": {"qty": ["Ensure this value is greater than or equal to 1."]}}},
        ),
        (
            {"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 1}, {"sku": "LAMP", "qty": 2}]},
            {"lines": ["1 to 100 lines, each of its own SKU"]},
        ),
        ({"lines": [{"sku": "LAMP", "qty": 1}]}, {"orderid": ["This field is required."]}),
    ],
    ids=["no line", "a quantity of 0", "a SKU twice", "no order id"],
)
def test_a_bad_order_is_a_400_naming_what_is_wrong(api, body, errors):
    response = api.post("/api/orders", body, format="json")
    assert (response.status_code, response.json()) == (400, errors)


def test_an_order_that_is_not_json_is_a_400_with_a_message(api):
    response = api.post("/api/orders", "{", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["message"].startswith("JSON parse error")


def test_an_unknown_order_is_a_404_and_cannot_be_confirmed(api):
    for response in (api.get("/api/orders/o9"), api.post("/api/orders/o9/confirm")):
        assert (response.status_code, response.json()) == (404, {"message": "Unknown order o9"})


def test_an_order_id_taken_is_a_409(api, messagebus_deliver):
    body = {"orderid": "o1", "lines": [{"sku": "LAMP", "qty": 1}]}
    assert api.post("/api/orders", body, format="json").status_code == 202
    response = api.post("/api/orders", body, format="json")
    assert response.status_code == 409
    assert "o1 has started already" in response.json()["message"]
