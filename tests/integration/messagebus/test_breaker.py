"""Circuit breakers: a handler whose calls keep failing is paused, one delivery probes
after a cool-down, and it closes once its service is back; no delivery dies of it."""

import os
import threading
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.utils import timezone

import messagebus
from messagebus.delivery import breaker, concurrent
from messagebus.models import Delivery, Pause, StoredEvent
from messagebus.outbox import states
from messagebus.processes.worker import Worker
from tests.busapp.events import Pinged

pytestmark = pytest.mark.django_db(transaction=True)

FLAKY = "tests.integration.messagebus.test_breaker.call_the_service"
HEALTHY = "tests.busapp.handlers.record_ping"
BUS = {
    **settings.MESSAGEBUS, "RETRY_WAIT": 0, "RETRY_WAIT_MAX": 0, "RETRY_ATTEMPTS": 1,
    "REDELIVERY_DELAY": 0, "MAX_DELIVERIES": 1000, "SWEEP_INTERVAL": 0,
}  # fmt: skip
BREAKER = {"rate": 0.5, "window": 60, "calls": 4, "cool_down": 60}


class Service:
    """A downstream service: down (each call raises) until it is up again."""

    def __init__(self) -> None:
        self.up_at = float("inf")
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, n: int) -> None:
        up = time.monotonic() >= self.up_at
        self.calls.append((n, up))
        if not up:
            raise ConnectionError("the service is down")


@pytest.fixture
def service(messagebus_registry, monkeypatch):
    monkeypatch.setattr(breaker, "TICK", 0)
    breaker.reset()
    down = Service()

    def call_the_service(event: Pinged) -> None:
        down(event.n)

    messagebus_registry.register(None, call_the_service, name=FLAKY, breaker=BREAKER)
    yield down
    breaker.reset()


def stored(type_name: str) -> list[dict]:
    return [e.payload for e in StoredEvent.objects.filter(type=type_name).order_by("created_at")]


def flaky() -> list[tuple[str, int]]:
    return sorted(Delivery.objects.filter(handler=FLAKY).values_list("status", "runs"))


def cool_down_over() -> None:
    Pause.objects.update(until=timezone.now() - timedelta(seconds=1))


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_the_breaker_opens_probes_and_closes_and_no_delivery_dies_of_it(service):
    for n in range(6):
        messagebus.bus.handle(Pinged(n=n))

    concurrent.drain("default")  # one batch: each fails once, and the breaker opens

    pause = Pause.objects.get()
    assert (pause.handler, pause.paused_by, pause.probe) == (FLAKY, "circuit breaker", None)
    assert pause.reason == "6 of 6 calls failed within 60s"
    assert len(service.calls) == 6
    assert [p["handler"] for p in stored("messagebus.HandlerPaused")] == [FLAKY]
    assert {status for status, _ in flaky()} == {"pending"}
    assert Delivery.objects.filter(handler=HEALTHY, status="done").count() == 6

    cool_down_over()
    concurrent.drain("default")  # one probe, still down: open again

    assert len(service.calls) == 7
    pause = Pause.objects.get()
    assert pause.probe is None and pause.until > timezone.now() + timedelta(seconds=50)

    service.up_at = 0
    cool_down_over()
    concurrent.drain("default")  # the probe passes: closed, the rest delivered

    assert not Pause.objects.exists()
    assert {status for status, _ in flaky()} == {"done"}
    assert max(runs for _, runs in flaky()) < BUS["MAX_DELIVERIES"]
    assert sorted(n for n, up in service.calls if up) == list(range(6))
    assert [p["handler"] for p in stored("messagebus.HandlerResumed")] == [FLAKY]


def open_breaker() -> None:
    until = timezone.now() + timedelta(seconds=60)
    states.breaker_opened("default", FLAKY, until, "opened by the test")


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_a_probe_run_by_another_process_is_settled_from_the_database(service, monkeypatch):
    messagebus.bus.handle(Pinged(n=1))
    open_breaker()
    service.up_at = 0
    cool_down_over()
    breaker.tick("default")  # takes the probe
    assert Pause.objects.get().probe is not None
    with monkeypatch.context() as elsewhere:  # run by a process that then stops
        elsewhere.setattr(breaker, "tick", lambda using: None)
        concurrent.drain("default")
    breaker.reset()
    assert Pause.objects.exists() and flaky() == [("done", 1)]

    cool_down_over()
    breaker.tick("default")

    assert not Pause.objects.exists()
    assert [p["handler"] for p in stored("messagebus.HandlerResumed")] == [FLAKY]


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_failures_counted_before_the_window_open_nothing(service, monkeypatch):
    for n in range(6):
        messagebus.bus.handle(Pinged(n=n))
    monkeypatch.setattr(breaker.time, "monotonic", lambda: 0.0)  # long ago
    with monkeypatch.context() as quiet:
        quiet.setattr(breaker, "tick", lambda using: None)
        concurrent.drain("default")  # six failures, all counted at time 0
    monkeypatch.undo()
    monkeypatch.setattr(breaker, "TICK", 0)

    breaker.tick("default")

    assert not Pause.objects.exists()


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_a_pause_by_hand_takes_over_a_breakers_which_then_never_lifts_it(service):
    messagebus.bus.handle(Pinged(n=1))
    open_breaker()

    assert messagebus.pause(FLAKY, by="ops", reason="vendor down till Monday") is True
    service.up_at = 0
    cool_down_over()
    Pause.objects.update(until=None)  # as the pause by hand left it
    breaker.tick("default")

    pause = Pause.objects.get()
    assert (pause.paused_by, pause.until, pause.probe) == ("ops", None, None)
    assert flaky() == [("pending", 0)]


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_a_probe_is_never_a_delivery_waiting_for_a_later_time(service):
    messagebus.bus.handle(Pinged(n=1))
    later = timezone.now() + timedelta(hours=1)
    Delivery.objects.filter(handler=FLAKY).update(next_attempt_at=later)
    open_breaker()
    cool_down_over()

    breaker.tick("default")  # nothing due to probe with: closed

    assert not Pause.objects.exists()
    assert Delivery.objects.get(handler=FLAKY).next_attempt_at == later
    assert service.calls == []


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "inline"})
def test_inline_the_breaker_holds_the_failing_handler_back_and_its_probe_runs_at_once(service):
    for n in range(4):
        messagebus.bus.handle(Pinged(n=n))  # each fails once, inline; the fourth opens it
    assert Pause.objects.filter(paused_by="circuit breaker").exists()

    messagebus.bus.handle(Pinged(n=4))

    assert len(service.calls) == 4  # held back
    service.up_at = 0
    cool_down_over()
    messagebus.bus.handle(Pinged(n=5))  # its commit's tick takes a probe, which runs

    assert not Pause.objects.exists()
    assert {status for status, _ in flaky()} == {"done"}


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_failures_below_the_rate_or_of_poison_never_open_it(service, messagebus_registry):
    service.up_at = 0
    for n in range(8):
        messagebus.bus.handle(Pinged(n=n))
    concurrent.drain("default")

    assert not Pause.objects.exists()
    assert len(service.calls) == 8


def test_a_breaker_is_checked_like_the_other_options(messagebus_registry):
    from django.core import checks

    def bad(event: Pinged) -> None: ...

    messagebus_registry.register(None, bad, breaker={"rate": 2})

    errors = [e for e in checks.run_checks(tags=["messagebus"]) if e.id == "messagebus.E006"]
    assert [e.msg for e in errors] == [
        f"{bad.__module__}.{bad.__qualname__}: the option breaker=(('rate', 2),) has rate=2; "
        "it must be a share of calls, above 0 and up to 1."
    ]


SECONDS = float(os.environ.get("BUSAPP_BREAKER_SECONDS", "8"))  # the service is down
RATE = 10  # events a second


@override_settings(
    MESSAGEBUS={
        **BUS, "EXECUTOR": "worker", "RETRY_WAIT": 0.5, "RETRY_WAIT_MAX": 10.0,
        "RETRY_ATTEMPTS": 3, "REDELIVERY_DELAY": 1.0,
    }
)  # fmt: skip
def test_a_service_down_for_a_while_opens_the_breaker_then_everything_is_delivered(
    messagebus_registry,
):
    """The issue's timeline: the service fails for SECONDS, then recovers."""
    service = Service()
    window = 3.0

    def call_the_service(event: Pinged) -> None:
        service(event.n)

    fast = {"rate": 0.5, "window": window, "calls": 5, "cool_down": 1}
    messagebus_registry.register(None, call_the_service, name=FLAKY, breaker=fast)
    breaker.reset()
    worker = Worker(poll_interval=0.05)
    thread = threading.Thread(target=_serve, args=(worker,))
    thread.start()
    start = time.monotonic()
    service.up_at = start + SECONDS
    try:
        for n in range(int((SECONDS + 4) * RATE)):
            time.sleep(max(0.0, start + n / RATE - time.monotonic()))
            messagebus.bus.handle(Pinged(n=n))
        deadline = time.monotonic() + 30
        while Delivery.objects.filter(handler=FLAKY).exclude(status="done").exists():
            assert time.monotonic() < deadline, flaky()
            time.sleep(0.2)
    finally:
        worker.stop()
        thread.join(30)
        breaker.reset()

    opened = StoredEvent.objects.filter(type="messagebus.HandlerPaused").earliest("created_at")
    first = StoredEvent.objects.filter(type="busapp.Pinged").earliest("created_at")
    assert opened.created_at - first.created_at < timedelta(seconds=window + 1)
    assert not Delivery.objects.filter(status="dead").exists()
    assert StoredEvent.objects.filter(type="messagebus.HandlerResumed").exists()
    lags = [row.latency for row in Delivery.objects.filter(handler=HEALTHY)]
    assert len(lags) == (SECONDS + 4) * RATE
    assert max(lags) < timedelta(seconds=1), max(lags)
    down = [n for n, up in service.calls if not up]
    assert len(down) < SECONDS * RATE / 2  # the breaker held most of them back


def _serve(worker: Worker) -> None:
    try:
        worker.run()
    finally:
        connections.close_all()
