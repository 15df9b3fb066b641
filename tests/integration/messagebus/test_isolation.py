"""A handler that always fails never delays a healthy one: no retry sleeps in a batch or
a request.

Pinged events arrive at 10 a second for ``BUSAPP_ISOLATION_SECONDS`` (20 by default;
120 in CI's run with services) with two handlers: ``record_ping`` and one that
always fails, with the production retry policy (waits of 0.5 s, doubling). The
healthy handler's lag, from the event's storing to its done-mark, stays under a
second throughout, on the worker and on the inline executor, and on the inline
executor a request never waits through the failing handler's retries.
"""

import os
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

import messagebus
from messagebus.models import Delivery
from messagebus.processes.worker import Worker
from tests.busapp.events import Pinged

pytestmark = pytest.mark.django_db(transaction=True)

SECONDS = float(os.environ.get("BUSAPP_ISOLATION_SECONDS", "20"))
RATE = 10  # events a second
HEALTHY = "tests.busapp.handlers.record_ping"
PRODUCTION = {
    **settings.MESSAGEBUS,
    "RETRY_WAIT": 0.5,
    "RETRY_WAIT_MAX": 10.0,
    "RETRY_ATTEMPTS": 3,
    "MAX_DELIVERIES": 1000,
    "SWEEP_INTERVAL": 60.0,
}


@pytest.fixture
def broken(messagebus_registry):
    calls = []

    def always_fails(event: Pinged) -> None:
        calls.append(event.n)
        raise ConnectionError("the webhook's server is down")

    messagebus_registry.register(None, always_fails)
    return calls


def publish_for(seconds: float) -> list[float]:
    """Pinged events at RATE a second; how long each ``bus.handle`` took."""
    took = []
    start = time.monotonic()
    for n in range(int(seconds * RATE)):
        time.sleep(max(0.0, start + n / RATE - time.monotonic()))
        began = time.monotonic()
        messagebus.bus.handle(Pinged(n=n))
        took.append(time.monotonic() - began)
    return took


def healthy_lags() -> list[timedelta]:
    rows = Delivery.objects.filter(handler=HEALTHY)
    assert set(rows.values_list("status", flat=True)) == {"done"}
    return [row.latency for row in rows]


@override_settings(MESSAGEBUS={**PRODUCTION, "EXECUTOR": "worker"})
def test_on_the_worker_the_healthy_handlers_lag_stays_under_a_second(broken):
    worker = Worker(poll_interval=0.05)
    thread = threading.Thread(target=_serve, args=(worker,))
    thread.start()
    try:
        publish_for(SECONDS)
        time.sleep(1.0)  # the last events' deliveries
    finally:
        worker.stop()
        thread.join(30)
    lags = healthy_lags()
    assert len(lags) == SECONDS * RATE
    assert max(lags) < timedelta(seconds=1), max(lags)
    assert len(broken) > SECONDS * RATE  # called again, between the others' deliveries


@override_settings(MESSAGEBUS={**PRODUCTION, "EXECUTOR": "inline"})
def test_inline_a_request_calls_the_failing_handler_once_and_never_waits_for_a_retry(broken):
    took = publish_for(SECONDS)
    lags = healthy_lags()
    assert len(lags) == len(took) == SECONDS * RATE
    assert max(lags) < timedelta(seconds=1), max(lags)
    assert max(took) < 0.5, max(took)  # the first retry alone would wait 0.5 s
    assert len(broken) == SECONDS * RATE  # once each; the rest is left to the schedule
    failing = Delivery.objects.exclude(handler=HEALTHY)
    assert set(failing.values_list("status", "runs", "calls")) == {("pending", 0, 1)}


def _serve(worker: Worker) -> None:
    try:
        worker.run()
    finally:
        connections.close_all()
