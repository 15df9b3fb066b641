"""Prometheus metrics: counted as the bus goes, served at /metrics to allowed addresses,
by a worker on a port of its own, and added up across processes."""

import datetime as dt
import os
import socket
import sys
import time
import urllib.request

import pytest
from django.test import override_settings
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import messagebus
from messagebus import executors
from messagebus.executors.celery import run_delivery
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery
from messagebus.ops import prometheus
from messagebus.outbox import states
from messagebus.processes.worker import Worker
from messagebus.testing import run_due
from tests.busapp.commands import Deposit, OpenAccount, Overdrawn
from tests.busapp.events import Napped, Pinged
from tests.conftest import ROOT, database_url
from tests.subprocesses import Watched

pytestmark = pytest.mark.django_db(transaction=True)
ALLOWED = {"METRICS_ALLOWED_IPS": ["127.0.0.1", "10.0.0.0/8"], "SWEEP_INTERVAL": 0}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def now(name: str, **labels: str) -> float:
    counts = CollectorRegistry()
    counts.register(prometheus.Collector())
    return counts.get_sample_value(name, labels) or 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_are_off_unless_some_address_is_allowed(client):
    assert client.get("/metrics").status_code == 404


@override_settings(MESSAGEBUS={"METRICS_ALLOWED_IPS": ["10.0.0.0/8"]})
def test_metrics_are_refused_to_an_address_not_allowed(client):
    response = client.get("/metrics")  # from 127.0.0.1
    assert response.status_code == 403


@override_settings(MESSAGEBUS=ALLOWED)
def test_the_endpoint_shows_what_the_bus_did(client, monkeypatch):
    monkeypatch.setattr(prometheus, "OUTBOX_EVERY", 0)
    ok = ("messagebus_commands_total", {"type": "busapp.OpenAccount", "outcome": "ok"})
    rejected = ("messagebus_commands_total", {"type": "busapp.Deposit", "outcome": "rejected"})
    done = (
        "messagebus_deliveries_total",
        {"handler": "tests.busapp.handlers.write_entry", "outcome": "done"},
    )
    calls = (
        "messagebus_delivery_duration_seconds_count",
        {"handler": "tests.busapp.handlers.write_entry"},
    )
    before = [now(name, **labels) for name, labels in (ok, rejected, done, calls)]

    messagebus.bus.handle(OpenAccount("ann"))
    messagebus.bus.handle(OpenAccount("bob"))
    messagebus.bus.handle(Deposit("ann", 5))
    with pytest.raises(Overdrawn):
        messagebus.bus.handle(Deposit("ann", -50))
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    for (name, labels), was, added in zip(
        (ok, rejected, done, calls), before, (2, 1, 1, 1), strict=True
    ):
        assert found[name, tuple(sorted(labels.items()))] == was + added
    assert found["messagebus_outbox_deliveries", (("status", "done"),)] == (
        Delivery.objects.filter(status="done").count()
    )
    assert found["messagebus_outbox_due", ()] == 0
    assert ("messagebus_outbox_lag_seconds", ()) in found


@override_settings(
    MESSAGEBUS={**ALLOWED, "RETRY_ATTEMPTS": 2, "MAX_DELIVERIES": 1, "RETRY_WAIT": 0}
)
def test_retries_and_dead_letters_are_counted(messagebus_registry):
    def refuse(event: Pinged) -> None:
        raise ConnectionError("down")

    messagebus_registry.register(None, refuse)
    name = f"{refuse.__module__}.{refuse.__qualname__}"
    retries, dead = (
        now("messagebus_retries_total", handler=name),
        now("messagebus_dead_letters_total", handler=name),
    )

    messagebus.bus.handle(Pinged(n=1))
    run_due()

    assert now("messagebus_retries_total", handler=name) == retries + 2
    assert now("messagebus_dead_letters_total", handler=name) == dead + 1
    assert now("messagebus_deliveries_total", handler=name, outcome="dead") >= 1


def test_a_worker_serves_its_metrics_on_a_port_of_its_own():
    with executors.use(WorkerExecutor()):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
    port = free_port()
    worker = Watched(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
         "--metrics-port", str(port), "--interval", "0.1"],
        env={**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO"},
        ready="started on database", what="the worker",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while Delivery.objects.filter(status="done").count() < 3:
            assert time.monotonic() < deadline, worker.output
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            found = samples(answer.read().decode())
    finally:
        code, output = worker.stop()

    assert code == 0, output
    assert f"Metrics on http://127.0.0.1:{port}/metrics" in output  # this machine only
    key = (("handler", "tests.busapp.handlers.record_ping"), ("outcome", "done"))
    assert found["messagebus_deliveries_total", key] == 3


@pytest.mark.parametrize(
    ("options", "address"),
    [
        ([], "127.0.0.1"),
        (["--metrics-bind", "0.0.0.0"], "0.0.0.0"),
        (["--metrics-bind", "::1"], "::1"),
    ],
)
def test_a_workers_metrics_listen_on_this_machine_only_unless_told(monkeypatch, options, address):
    import signal

    from django.core.management import call_command

    listening = []
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # this process's stay pytest's
    monkeypatch.setattr(
        prometheus.prometheus,
        "start_http_server",
        lambda port, addr, registry: listening.append(addr),
    )
    call_command("messagebus", "worker", "--once", "--metrics-port", "9999", *options)

    assert listening == [address]


def test_a_metrics_bind_that_is_not_an_address_is_refused(manage):
    result = manage(
        "messagebus", "worker", "--once", "--metrics-port", "9999", "--metrics-bind", "all"
    )

    assert result.returncode == 2
    assert "argument --metrics-bind: 'all' is not an IP address" in result.stderr


SCRIPT = """
import sys
import django
django.setup()
import messagebus
from tests.busapp.commands import OpenAccount
for n in range(int(sys.argv[1])):
    messagebus.bus.handle(OpenAccount(f"{sys.argv[2]}{n}"))
"""

SCRAPE = """
import django
django.setup()
from prometheus_client import generate_latest
from messagebus.ops import prometheus
print(generate_latest(prometheus.registry()).decode())
"""


def test_processes_sharing_a_multiprocess_directory_are_added_up(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }

    def python(*args: str) -> str:
        import subprocess

        done = subprocess.run(
            [sys.executable, "-c", *args], env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    python(SCRIPT, "2", "a")
    python(SCRIPT, "3", "b")
    found = samples(python(SCRAPE))

    key = (("outcome", "ok"), ("type", "busapp.OpenAccount"))
    assert found["messagebus_commands_total", key] == 5


def test_the_wait_from_commit_to_a_workers_first_run_is_timed():
    handler = "tests.busapp.handlers.record_ping"
    before = now("messagebus_commit_to_handler_seconds_count", handler=handler)
    with executors.use(WorkerExecutor()):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
    time.sleep(0.2)

    assert Worker(once=True).run() == 3

    assert now("messagebus_commit_to_handler_seconds_count", handler=handler) == before + 3
    waited = CollectorRegistry()
    waited.register(prometheus.Collector())
    small = waited.get_sample_value(
        "messagebus_commit_to_handler_seconds_bucket", {"handler": handler, "le": "0.1"}
    )
    large = waited.get_sample_value(
        "messagebus_commit_to_handler_seconds_bucket", {"handler": handler, "le": "10.0"}
    )
    assert large - small >= 3  # each waited more than the 0.2 s slept, and not for ever


@pytest.mark.parametrize("event", [Pinged(n=1), Napped(n=1, seconds=0)], ids=["sync", "async"])
def test_a_celery_task_times_the_wait_once_the_run_is_its_own(event):
    handler = {Pinged: "tests.busapp.handlers.record_ping", Napped: "tests.busapp.handlers.nap"}
    name = handler[type(event)]
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(event)
    stored = timezone.now() - dt.timedelta(seconds=3)
    lease = timezone.now() + dt.timedelta(seconds=60)
    [ref] = states.leased("default", [event.message_id], lease)
    before = now("messagebus_commit_to_handler_seconds_count", handler=name)
    waited = now("messagebus_commit_to_handler_seconds_sum", handler=name)

    assert run_delivery(ref.to_json(), lease.isoformat(), stored.isoformat())
    assert not run_delivery(ref.to_json(), lease.isoformat(), stored.isoformat())  # again

    assert now("messagebus_commit_to_handler_seconds_count", handler=name) == before + 1
    assert now("messagebus_commit_to_handler_seconds_sum", handler=name) - waited >= 3
    assert Delivery.objects.get(handler=name).status == "done"


def test_a_celery_task_with_an_unreadable_time_of_storing_still_runs(caplog):
    handler = "tests.busapp.handlers.record_ping"
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(Pinged(n=2))
    lease = timezone.now() + dt.timedelta(seconds=60)
    [ref] = states.leased("default", [Delivery.objects.get().event_id], lease)
    before = now("messagebus_commit_to_handler_seconds_count", handler=handler)

    assert run_delivery(ref.to_json(), lease.isoformat(), "yesterday")

    assert Delivery.objects.get().status == "done"
    assert now("messagebus_commit_to_handler_seconds_count", handler=handler) == before
    assert "Ignored a task's unreadable time of storing: 'yesterday'" in caplog.text
