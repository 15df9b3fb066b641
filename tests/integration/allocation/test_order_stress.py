"""200 orders at once over 20 SKUs with too little stock, their lines allocated by three
worker processes, one of them killed -9 mid-run: every order ends confirmed, rejected or
released; no rejected or released order holds a line; none is both confirmed and
released; and every batch holds exactly the lines of the confirmed orders."""

import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import pytest
from django.db import connection
from django.test import override_settings

import messagebus
from allocation.commands import ConfirmOrder, CreateBatch, Line, PlaceOrder
from allocation.exceptions import OrderClosed
from allocation.models import Batch, OrderLine
from allocation.processes import Order
from messagebus.models import Delivery, ProcessEntry, ProcessInstance
from tests.conftest import ROOT, database_url, postgres_only
from tests.subprocesses import Watched

ORDERS, SKUS, STOCK = 200, 20, 30  # each SKU: 30 units; the orders ask for about twice that


def workers(count: int) -> list[Watched]:
    env = {
        **os.environ, "DATABASE_URL": database_url(), "MESSAGEBUS_EXECUTOR": "worker",
        "LOG_LEVEL": "INFO", "BUSAPP_CLAIM_TIMEOUT": "3",  # a killed worker's runs end soon
    }  # fmt: skip
    command = [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
               "--interval", "0.2", "--batch", "10"]  # fmt: skip
    return [Watched(command, env=env, ready="started", what="a worker") for _ in range(count)]


def orders_placed(rng: random.Random) -> dict[str, PlaceOrder]:
    orders = {}
    for n in range(ORDERS):
        skus = rng.sample(range(SKUS), rng.randint(1, 3))
        lines = tuple(Line(f"SKU-{s}", rng.randint(1, 5)) for s in skus)
        orders[f"o{n}"] = PlaceOrder(f"o{n}", lines)
    return orders


def place(order: PlaceOrder) -> None:
    try:
        messagebus.bus.handle(order)
    finally:
        connection.close()  # this thread's


def ended() -> int:
    rows = ProcessInstance.objects.filter(name=Order.name, status__in=["finished", "compensated"])
    return rows.count()


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_hundred_orders_under_three_workers_one_killed(settings):
    settings.ORDER_CONFIRM_TIMEOUT = 6
    rng = random.Random(22)
    for s in range(SKUS):
        messagebus.bus.handle(CreateBatch(f"b{s}", f"SKU-{s}", STOCK))
    orders = orders_placed(rng)
    running = workers(3)
    try:
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"}):
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(place, orders.values()))
            killed = False
            confirming = set(rng.sample(sorted(orders), ORDERS // 2))  # the others expire
            deadline = time.monotonic() + 180
            while ended() < ORDERS:
                assert time.monotonic() < deadline, f"{ended()} of {ORDERS} orders ended"
                steps = ProcessEntry.objects.filter(
                    kind="step", outcome__in=["done", "compensated"]
                )
                if not killed and steps.count() >= 100:
                    running[0].kill()  # mid-run: whatever it held is left to the others
                    killed = True
                for orderid in sorted(confirming & allocated_orders()):
                    with suppress(OrderClosed):  # released before it came: it stays released
                        messagebus.bus.handle(ConfirmOrder(orderid))
                    confirming.discard(orderid)
                time.sleep(0.2)
    finally:
        outcomes = [process.stop() for process in running[1:]]
        running[0].kill()
    assert killed
    assert [code for code, _ in outcomes] == [0, 0], outcomes

    instances = {i.key: i for i in ProcessInstance.objects.filter(name=Order.name)}
    states = Counter(i.state["state"] for i in instances.values())
    print(f"orders: {dict(states)}")  # noqa: T201  (the figures, shown by pytest -s)
    assert set(states) <= {"confirmed", "rejected", "released"}
    assert states["confirmed"] and states["rejected"] and states["released"]
    held = Counter()
    for orderid, instance in instances.items():
        state = instance.state["state"]
        lines = {(line.sku, line.qty) for line in orders[orderid].lines}
        stored = set(OrderLine.objects.filter(orderid=orderid).values_list("sku", "qty"))
        if state == "confirmed":
            assert instance.status == "finished" and instance.timed_out_at is None, orderid
            assert stored == lines, orderid
            held.update({sku: qty for sku, qty in lines})
        else:
            assert instance.status == "compensated", orderid
            assert stored == set(), f"{orderid} is {state} but holds {stored}"
            assert (instance.timed_out_at is not None) == (state == "released"), orderid
    batches = Batch.objects.with_quantities()
    assert {b.sku: b.allocated for b in batches if b.allocated} == dict(held)
    assert all(b.purchased_quantity == STOCK and b.available >= 0 for b in batches)
    # Nothing a confirmed order allocated was ever given up.
    finished = ProcessEntry.objects.filter(process__status="finished")
    assert not finished.filter(kind="compensation").exists()
    assert not Delivery.objects.filter(status="dead").exists()
    assert (
        not Delivery.objects.filter(status="pending")
        .exclude(event__type="allocation.ExpireOrder")
        .exists()
    )


def allocated_orders() -> set[str]:
    """The orders still pending whose every line is allocated."""
    rows = ProcessInstance.objects.filter(name=Order.name, status="running")
    return {
        key
        for key, state in rows.values_list("key", "state")
        if all(line["batchref"] for line in state["lines"])
    }
