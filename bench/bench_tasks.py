"""Django's tasks: the outbox's backend against django-tasks-db and the ImmediateBackend.

    DATABASE_URL=postgres://... .venv/bin/python bench/bench_tasks.py [--count 5000]
        [--rounds 2]

On a throwaway test database (PostgreSQL; SQLite is skipped), ``--count``
no-op tasks (``tests.busapp.jobs.noop``) are enqueued, each in a transaction
of its own as a request would (the two backends' in alternating blocks, so the
database's background work falls on both alike), then run, by:

- outbox: ``messagebus.task_backend.OutboxBackend`` (worker executor: the
  enqueue stores an event and its delivery in one prepared statement, which
  wakes the workers too), run by one
  ``manage.py messagebus worker --once`` process (batches of 100);
- django-tasks-db: ``django_tasks_db.DatabaseBackend`` (one ORM insert), run by
  one ``manage.py db_worker --batch --no-startup-delay`` process;
- immediate: django.tasks' ``ImmediateBackend``, which runs each task as it is
  enqueued, in the caller, storing nothing.

Each round also enqueues as many into a transaction already open (rolled back
after): what a task adds to a request's transaction, the commit aside.

A worker's time is its wall time less the start-up of the same command on an
empty queue (median of three). Every task must end SUCCESSFUL (checked in the
tables). Rates are medians over the rounds; ratios are of the medians, the
targets: throughput (enqueue and run) at least 3x django-tasks-db's, enqueue
cost within 1.2x of it, and enqueues a second at least 1.2x its.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.tasks_settings"
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from django_tasks_db.models import DBTaskResult  # noqa: E402

from messagebus.models import Delivery, StoredEvent  # noqa: E402
from tests.busapp.jobs import noop  # noqa: E402
from tests.conftest import database_url  # noqa: E402

WORKERS = {
    "outbox": ["messagebus", "worker", "--once"],
    "django-tasks-db": ["db_worker", "--batch", "--no-startup-delay", "--backend", "db"],
}
BACKENDS = {"outbox": "default", "django-tasks-db": "db"}


def load() -> str:
    return "load average " + " ".join(f"{n:.1f}" for n in os.getloadavg())


def reset() -> None:
    Delivery.objects.all().delete()
    StoredEvent.objects.all().delete()
    DBTaskResult.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def enqueue(backend: str, count: int) -> float:
    """Seconds to enqueue ``count`` tasks, each committed at once."""
    task = noop.using(backend=backend)
    started = time.perf_counter()
    for n in range(count):
        task.enqueue(n, label="bench")
    return time.perf_counter() - started


def enqueue_within(backend: str, count: int) -> float:
    """Seconds to enqueue ``count`` tasks in a transaction already open, as a view that
    writes too would: what each adds to it (rolled back: the queue is left as it was)."""
    with transaction.atomic():
        taken = enqueue(backend, count)
        transaction.set_rollback(True)
    return taken


def manage(command: list[str]) -> float:
    env = {**os.environ, "DATABASE_URL": database_url()}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *command],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    taken = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr}")
    return taken


def startup(name: str) -> float:
    return statistics.median(manage(WORKERS[name]) for _ in range(3))


def check(name: str, count: int) -> None:
    if name == "outbox":
        done = Delivery.objects.filter(status=Delivery.Status.DONE).count()
    else:
        done = DBTaskResult.objects.filter(status="SUCCESSFUL").count()
    if done != count:
        raise SystemExit(f"{name}: {done} of {count} tasks ran")


BLOCKS = 10
"""Each round enqueues a backend's tasks in this many blocks, alternating with the
other's (ABBA), so a checkpoint or a slow fsync falls on both alike."""


def enqueue_both(count: int, how: Callable[[str, int], float] = enqueue) -> dict[str, float]:
    """Seconds each backend took to enqueue ``count`` tasks ``how``, in interleaved blocks."""
    taken = dict.fromkeys(WORKERS, 0.0)
    names = list(WORKERS)
    for block in range(BLOCKS):
        size = count // BLOCKS + (block < count % BLOCKS)
        for name in names if block % 2 == 0 else reversed(names):
            taken[name] += how(BACKENDS[name], size)
    return taken


def case(count: int, idle: dict[str, float]) -> dict[str, tuple[float, float, float]]:
    """Per backend, (seconds to enqueue, seconds to run, seconds to enqueue within a
    transaction open) ``count`` tasks."""
    reset()
    enqueued = enqueue_both(count)
    within = enqueue_both(count, enqueue_within)
    ran = {name: max(manage(WORKERS[name]) - idle[name], 1e-9) for name in WORKERS}
    for name in WORKERS:
        check(name, count)
    return {name: (enqueued[name], ran[name], within[name]) for name in WORKERS}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000, help="tasks to enqueue and run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        print(f"bench_tasks: skipped on {connection.vendor}; set DATABASE_URL=postgres://...")
        return
    config = setup_databases(verbosity=0, interactive=False)
    try:
        count = args.count
        print(f"{count} no-op tasks, enqueued one per transaction, then run ({load()})")
        idle = {name: startup(name) for name in WORKERS}
        rates: dict[str, list[tuple[float, float, float, float]]] = {}
        for r in range(args.rounds):
            for name, (enqueued, ran, within) in case(count, idle).items():
                total = count / (enqueued + ran)
                rates.setdefault(name, []).append(
                    (enqueued / count, count / ran, total, within / count)
                )
                print(
                    f"  round {r + 1} {name:<16} enqueue {enqueued / count * 1e6:6.0f} us/task"
                    f" ({within / count * 1e6:4.0f} within)"
                    f"  run {count / ran:7.0f} tasks/s  both {total:7.0f} tasks/s"
                )
            immediate = count / enqueue("immediate", count)
            rates.setdefault("immediate", []).append((0.0, 0.0, immediate, 0.0))
            print(f"  round {r + 1} {'immediate':<16} enqueue and run in the caller "
                  f"{immediate:7.0f} tasks/s")  # fmt: skip
        med = {
            name: tuple(statistics.median(row[i] for row in rows) for i in range(4))
            for name, rows in rates.items()
        }
        outbox, db, immediate = med["outbox"], med["django-tasks-db"], med["immediate"]
        print("medians:")
        print(f"  {'backend':<16} {'enqueue us/task':>16} {'within':>7} {'run tasks/s':>12} "
              f"{'both tasks/s':>13}")  # fmt: skip
        for name, (cost, run, total, inside) in med.items():
            enq = f"{cost * 1e6:.0f}" if cost else "-"
            within = f"{inside * 1e6:.0f}" if inside else "-"
            ran = f"{run:.0f}" if run else "-"
            print(f"  {name:<16} {enq:>16} {within:>7} {ran:>12} {total:>13.0f}")
        print(f"  outbox / django-tasks-db, throughput (both)  {outbox[2] / db[2]:.2f}x "
              "(target >= 3x)")  # fmt: skip
        print(f"  outbox / django-tasks-db, run                {outbox[1] / db[1]:.2f}x")
        print(f"  outbox / django-tasks-db, enqueue cost       {outbox[0] / db[0]:.2f}x "
              "(target <= 1.2x)")  # fmt: skip
        print(f"  outbox / django-tasks-db, enqueues a second  {db[0] / outbox[0]:.2f}x "
              "(target >= 1.2x)")  # fmt: skip
        print(f"  outbox / django-tasks-db, enqueues a second within a transaction open "
              f"{db[3] / outbox[3]:.2f}x")  # fmt: skip
        print(f"  outbox / immediate, throughput (both)        {outbox[2] / immediate[2]:.2f}x")
        print(f"({load()}: other work on the machine skews the figures)")
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
