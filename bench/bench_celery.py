"""The celery executor's deliveries per second against plain Celery tasks (PostgreSQL, a broker).

    DATABASE_URL=postgres://... CELERY_BROKER_URL=amqp://... make bench
    .venv/bin/python bench/bench_celery.py [--count 2000] [--rounds 3]

One `celery -A config worker --concurrency 2` (prefork, Celery's default
pool) on a throwaway test database and a queue of its own; in alternating rounds, from this process:

- plain: ``--count`` plain tasks (tests.busapp.tasks.record_ping) sent on one
  producer, each inserting one Entry row;
- bus: ``--count`` stored Pinged events, each with one delivery to
  tests.busapp.handlers.record_ping (the same insert), handed to the celery
  executor as its commit would hand them: leased, then a task each carrying
  its reference, run by the worker with the bus's bookkeeping (the event read,
  the done-mark in the handler's transaction).

Each round is timed from the first send until every row is there (every
delivery done); after it, the rows are checked (one per task) and deleted.
The ratio is of the median rates, bus over plain (target >= 0.8x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
for _name in ("BUSAPP_PING_LOG", "BUSAPP_PING_SLEEP"):
    os.environ.pop(_name, None)

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import override_settings, setup_databases, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

import messagebus  # noqa: E402
from config import celery_app  # noqa: E402
from messagebus.executors.celery import CeleryExecutor  # noqa: E402
from messagebus.models import Delivery  # noqa: E402
from messagebus.outbox.reference import Reference  # noqa: E402
from tests.busapp import tasks  # noqa: E402
from tests.busapp.events import Pinged  # noqa: E402
from tests.busapp.models import Entry  # noqa: E402
from tests.conftest import database_url  # noqa: E402


def start_worker(log: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MESSAGEBUS_EXECUTOR": "celery",
        "LOG_LEVEL": "WARNING",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", "2",
         "--queues", settings.CELERY_TASK_DEFAULT_QUEUE, "--without-gossip", "--without-mingle",
         "--without-heartbeat", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_until(lambda: " ready." in log.read_text(), timeout=60)
    return worker


def wait_until(done: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def plain(count: int) -> float:
    begin = time.perf_counter()
    with celery_app.producer_or_acquire() as producer:
        for n in range(count):
            tasks.record_ping.apply_async((n,), producer=producer)
    wait_until(lambda: Entry.objects.count() >= count)
    return time.perf_counter() - begin


def bus(count: int) -> float:
    stored_only = override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"})
    with stored_only, messagebus.UnitOfWork() as uow:
        for n in range(count):
            uow.publish(Pinged(n=n))
    refs = [Reference("default", e, h) for e, h in Delivery.objects.values_list("event", "handler")]
    begin = time.perf_counter()
    CeleryExecutor().retried(refs)  # as a commit hands them over: leased, then sent
    wait_until(lambda: not Delivery.objects.exclude(status="done").exists())
    return time.perf_counter() - begin


def check_and_clear(label: str, count: int) -> None:
    rows = Entry.objects.values("amount").distinct().count()
    if rows != count or Entry.objects.count() != count:
        raise RuntimeError(f"{label}: {Entry.objects.count()} rows, expected {count}")
    Entry.objects.all().delete()
    Delivery.objects.all().delete()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="tasks a round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if connection.vendor != "postgresql" or not os.environ.get("CELERY_BROKER_URL"):
        print("bench_celery: skipped; set DATABASE_URL=postgres://... and CELERY_BROKER_URL")
        return

    config = setup_databases(verbosity=0, interactive=False)
    celery_app.control.purge()
    log = Path(tempfile.mkdtemp()) / "worker.log"
    worker = start_worker(log)
    try:
        print(
            f"celery, {connection.vendor}, broker {settings.CELERY_BROKER_URL.split(':')[0]}, "
            f"{args.rounds} rounds x {args.count} tasks, one worker (prefork, concurrency 2)"
        )
        cases = {"plain tasks": plain, "bus deliveries": bus}
        rates: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(args.rounds):
            for name in cases if r % 2 == 0 else reversed(list(cases)):
                rate = args.count / cases[name](args.count)
                check_and_clear(name, args.count)
                rates[name].append(rate)
                print(f"  round {r + 1} {name:<15} {rate:7.0f}/s")
        med = {name: statistics.median(values) for name, values in rates.items()}
        ratio = med["bus deliveries"] / med["plain tasks"]
        print(f"  medians: plain {med['plain tasks']:.0f}/s, bus {med['bus deliveries']:.0f}/s; "
              f"ratio {ratio:.2f}x (target >= 0.8x)  {timezone.now():%Y-%m-%d}")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(30)
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
