"""The celery executor on a real broker, with real `celery -A config worker` processes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

import messagebus
from allocation.commands import Allocate, CreateBatch
from allocation.queries import GetAllocations
from config import celery_app
from messagebus.models import Delivery
from tests.busapp.commands import Deposit, OpenAccount
from tests.busapp.events import Napped, Pinged
from tests.busapp.models import Entry
from tests.conftest import (
    BROKER_URL,
    REDIS_URL,
    celery_on_postgres,
    redis_on_postgres,
)
from tests.proxy import Proxy
from tests.subprocesses import CeleryWorker, celery_env

DEPOSIT = """
import time
import messagebus
from tests.busapp.commands import Deposit, OpenAccount

messagebus.bus.handle(OpenAccount("ann"))
started = time.monotonic()
messagebus.bus.handle(Deposit("ann", 5))
print(f"deposited in {time.monotonic() - started:.2f}s")
"""


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:.0f}s for {what or condition}")
        time.sleep(0.05)


def all_done() -> bool:
    return set(Delivery.objects.values_list("status", flat=True)) == {"done"}


@contextmanager
def celery_executor() -> Iterator[None]:
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "celery"}):
        yield


@pytest.fixture
def workers(transactional_db) -> Iterator[Callable[..., CeleryWorker]]:
    """Start Celery workers (``workers("a", **env)``) on an empty queue; all stopped after."""
    celery_app.control.purge()
    started: list[CeleryWorker] = []

    def start(name: str, **env: str) -> CeleryWorker:
        started.append(CeleryWorker(name, **env))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@celery_on_postgres
def test_a_celery_worker_runs_the_handlers_and_the_read_model_shows_the_allocation(workers):
    worker = workers("one")
    with celery_executor():
        messagebus.bus.handle(CreateBatch("b1", "LAMP", 10))
        messagebus.bus.handle(Allocate("o1", "LAMP", 2))

    allocated = [{"sku": "LAMP", "batchref": "b1"}]
    wait_for(
        lambda: messagebus.bus.handle(GetAllocations(orderid="o1")) == allocated, what="allocation"
    )
    wait_for(all_done, what="every delivery done")
    assert "messagebus.run_delivery" in worker.output


@celery_on_postgres
def test_events_recorded_by_a_task_travel_on_as_tasks(workers):
    workers("one")
    with celery_executor():
        messagebus.bus.handle(OpenAccount("ann"))
        messagebus.bus.handle(Deposit("ann", 5))

    # Deposited: written and audited; Audited, published by a handler in the worker: written
    wait_for(lambda: Entry.objects.filter(note="audited").exists(), what="the audit entry")
    wait_for(all_done, what="every delivery done")
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


@celery_on_postgres
def test_a_celery_task_awaits_an_async_handler(workers, tmp_path):
    log = tmp_path / "naps.log"
    workers("one", BUSAPP_NAP_LOG=str(log))
    with celery_executor():
        messagebus.bus.handle(Napped(n=7, seconds=0.1))

    wait_for(all_done, what="the delivery done")
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [
        ["start", "7"],
        ["end", "7"],
    ]


@celery_on_postgres
def test_broker_down_at_commit_then_the_relay_sends_what_is_due(workers, manage, tmp_path):
    proxy, through_proxy = Proxy.to(BROKER_URL)
    proxy.cut()
    done = manage("shell", "-c", DEPOSIT, env=celery_env(CELERY_BROKER_URL=through_proxy))

    assert done.returncode == 0, done.stderr
    took = float(done.stdout.split("deposited in ")[1].split("s")[0])
    assert took < 30  # three tries of a 1 s connection timeout, not a hang
    assert "stay due for `messagebus relay`" in done.stderr
    pending = Delivery.objects.filter(status="pending")
    assert pending.count() == 2 and not pending.filter(lease_until__isnull=False).exists()
    assert not Entry.objects.exists()

    proxy.mend()
    time.sleep(1)
    workers("one", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    relay = manage("messagebus", "relay", "--once", env=celery_env())
    assert relay.returncode == 0, relay.stderr
    assert "Sent 2 deliveries to Celery." in relay.stdout

    wait_for(all_done, what="every delivery done")
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]
    assert set(Delivery.objects.values_list("attempts", "runs")) == {(1, 1)}
    # Each waited from its event's storing, through the outage, to its first run.
    waited = waits(tmp_path)
    assert sorted(waited) == sorted(Delivery.objects.values_list("handler", flat=True))
    assert [count for count, _ in waited.values()] == [1] * len(waited)
    outage = {handler for handler, (_, seconds) in waited.items() if seconds > 1}
    assert outage == {"tests.busapp.handlers.write_entry", "tests.busapp.handlers.audit"}


@celery_on_postgres
def test_a_celery_worker_times_the_wait_from_commit_to_each_first_run(workers, tmp_path):
    workers("one", PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    with celery_executor():
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))

    wait_for(all_done, what="every delivery done")
    count, seconds = waits(tmp_path)["tests.busapp.handlers.record_ping"]
    assert count == 3
    assert 0 < seconds < 30


def waits(directory: Path) -> dict[str, tuple[float, float]]:
    """messagebus_commit_to_handler_seconds by handler (count, sum), as a Celery worker
    writing its metrics to ``directory`` counted them."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    found: dict[str, list[float]] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name in (f"{WAITED}_count", f"{WAITED}_sum"):
                found.setdefault(sample.labels["handler"], [0.0, 0.0])[
                    sample.name.endswith("_sum")
                ] = sample.value
    return {handler: (count, total) for handler, (count, total) in found.items()}


WAITED = "messagebus_commit_to_handler_seconds"


@celery_on_postgres
def test_a_task_lost_in_the_broker_is_sent_again_once_its_lease_runs_out(workers, manage):
    with override_settings(
        MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "celery", "CLAIM_TIMEOUT": 5}
    ):
        messagebus.bus.handle(Pinged(n=4))
    lease = Delivery.objects.get().lease_until
    assert lease is not None  # its task carries it
    assert celery_app.control.purge() == 1  # the broker loses the task
    nothing = manage("messagebus", "relay", "--once", env=celery_env())
    assert "Sent 0 deliveries" in nothing.stdout  # still leased to the lost task

    wait_for(lambda: timezone.now() > lease, timeout=10, what="the lease to run out")
    relay = manage("messagebus", "relay", "--once", env=celery_env())
    assert "Sent 1 delivery to Celery." in relay.stdout, relay.stderr
    workers("one")
    wait_for(all_done, what="the delivery done")
    assert list(Entry.objects.values_list("amount", flat=True)) == [4]
    assert Delivery.objects.get().runs == 2  # the lost one counts


@celery_on_postgres
def test_a_worker_killed_mid_delivery_leaves_it_to_another_which_runs_it_once(
    workers, tmp_path: Path
):
    log = tmp_path / "pings.log"
    first = workers("first", BUSAPP_PING_LOG=str(log), BUSAPP_PING_SLEEP="60")
    with celery_executor():
        messagebus.bus.handle(Pinged(n=7))
    wait_for(lambda: log.exists() and log.read_text().count("\n") == 1, what="the handler start")
    first.kill()  # mid-handler: its transaction rolls back, its task was never acknowledged

    workers("second", BUSAPP_PING_LOG=str(log))
    wait_for(all_done, what="the delivery done by the second worker")
    runs = [line.split() for line in log.read_text().splitlines()]
    assert [n for n, _ in runs] == ["7", "7"]  # begun twice, by two processes
    assert runs[0][1] != runs[1][1]
    assert list(Entry.objects.values_list("amount", flat=True)) == [7]  # its effect, once
    assert Delivery.objects.values_list("attempts", flat=True).get() == 1


@redis_on_postgres
def test_redis_works_as_the_broker_too(workers, manage):
    redis = {"CELERY_BROKER_URL": REDIS_URL}
    workers("one", **redis)
    done = manage("shell", "-c", DEPOSIT, env=celery_env(**redis))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: Entry.objects.count() == 2 and all_done(), what="both entries")
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


def test_the_relay_refuses_to_run_for_another_executor(db):
    with pytest.raises(CommandError, match="set it to 'celery'"):
        call_command("messagebus", "relay", "--once")


def test_a_commit_stands_when_no_broker_answers(manage):
    nowhere = "amqp://guest:guest@127.0.0.1:9//"  # nothing listens there
    done = manage("shell", "-c", DEPOSIT, env=celery_env(CELERY_BROKER_URL=nowhere))
    assert done.returncode == 0, done.stderr
    assert "Deliveries of 1 event stay due for `messagebus relay`" in done.stderr
    assert Delivery.objects.filter(status="pending", lease_until=None).count() == 2


def test_the_relay_says_when_the_broker_is_out_of_reach_and_leaves_the_deliveries_due(manage):
    nowhere = {"CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:9//"}
    assert manage("shell", "-c", DEPOSIT, env=celery_env(**nowhere)).returncode == 0

    relay = manage("messagebus", "relay", "--once", env=celery_env(**nowhere))
    assert relay.returncode == 1
    assert "cannot send 2 tasks to the broker" in relay.stderr
    assert "Traceback" not in relay.stderr
    assert Delivery.objects.filter(status="pending", lease_until=None).count() == 2


@celery_on_postgres
def test_a_celery_worker_runs_django_tasks_sync_and_async(workers):
    from tests.busapp import jobs

    worker = workers("one")
    with celery_executor():
        results = [jobs.meaning_of_life.enqueue(), jobs.ameaning_of_life.enqueue()]

    wait_for(all_done, what="both tasks done")
    assert "messagebus.run_delivery" in worker.output
    for result in results:
        result.refresh()
        assert (result.status, result.return_value) == ("SUCCESSFUL", 42)
