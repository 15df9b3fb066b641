"""Ordered against unordered: deliveries per second drained by 3 ``messagebus worker``
processes when their handler orders by key, and when it does not (PostgreSQL only).

    DATABASE_URL=postgres://... .venv/bin/python bench/bench_ordering.py [--count 5000]
        [--keys 50] [--workers 3] [--batch 100] [--rounds 2]

On a throwaway test database, ``--count`` Sequenced events, spread at random over
``--keys`` keys, are stored with the worker executor, each with one pending delivery
to tests.busapp.handlers.see_in_turn (one ORM insert). In alternating rounds they
are drained by ``--workers`` worker processes:

- unordered: the handler registered with ``ordering_key=None``: the deliveries have no
  sequence, and the claims look behind none (as in a project with no ordered handler);
- ordered: the handler ordered by the event's key: each key's deliveries one at a time,
  in the order stored; every key's first ones in parallel.

A case's rate is its count over the time from the first worker's start (its beat) to
the last delivery's ``finished_at``; the workers idle at most 0.05 s between claims.
After each case every delivery must be done, the handler's rows one per event, and,
ordered, each key's rows in the order of the events. Rates are medians over the
rounds; the last line is the ratio of the medians. With ``--keys 1`` the ordered
drain is serial, one delivery at a time, and the report says so. SQLite: skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Max, Min  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

import messagebus  # noqa: E402
from messagebus import executors  # noqa: E402
from messagebus.executors.worker import WorkerExecutor  # noqa: E402
from messagebus.models import Delivery, KeySequence, StoredEvent, WorkerBeat  # noqa: E402
from tests.busapp.events import Sequenced  # noqa: E402
from tests.busapp.handlers import see_in_turn  # noqa: E402
from tests.busapp.models import Entry  # noqa: E402
from tests.conftest import database_url  # noqa: E402

STORE_CHUNK = 500
DEADLINE = 600.0  # seconds a drain may take before the benchmark gives up


def load() -> str:
    return "load average " + " ".join(f"{n:.1f}" for n in os.getloadavg())


def events(count: int, keys: int) -> list[Sequenced]:
    """``count`` events over ``keys`` keys, the keys interleaved at random (the same each
    run), each key's numbered from 0."""
    chosen = random.Random(22)
    numbers = [0] * keys
    made = []
    for _ in range(count):
        key = chosen.randrange(keys)
        made.append(Sequenced(key=f"k{key}", n=numbers[key]))
        numbers[key] += 1
    return made


def store(made: list[Sequenced], *, ordered: bool) -> None:
    """Empty the tables, then store ``made`` for the workers, STORE_CHUNK a transaction."""
    for model in (Entry, Delivery, StoredEvent, KeySequence, WorkerBeat):
        model.objects.all().delete()
    options = {} if ordered else {"ordering_key": None}
    with messagebus.registry.temporary() as registry, executors.use(WorkerExecutor()):
        registry.register(None, see_in_turn, **options)
        for start in range(0, len(made), STORE_CHUNK):
            with messagebus.UnitOfWork() as uow:
                for event in made[start : start + STORE_CHUNK]:
                    uow.publish(event)
    with connection.cursor() as cursor:  # autocommit: VACUUM runs outside a transaction
        for model in (Delivery, StoredEvent, Entry):
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


def drain(processes: int, batch: int, count: int, *, ordered: bool) -> float:
    """Deliveries per second: ``processes`` workers from the first one's start to the last
    delivery done."""
    env = {
        **os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
        "LOG_LEVEL": "WARNING", "BUSAPP_ORDERED": "1" if ordered else "unordered",
    }  # fmt: skip
    command = [
        sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
        "--batch", str(batch), "--interval", "0.05",
    ]  # fmt: skip
    running = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    deadline = time.monotonic() + DEADLINE
    try:
        while Delivery.objects.filter(status="done").count() < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in running):
                raise RuntimeError(f"the drain stopped: {[p.poll() for p in running]}")
            time.sleep(0.05)
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.communicate(timeout=60)
    began = WorkerBeat.objects.aggregate(first=Min("started_at"))["first"]
    ended = Delivery.objects.aggregate(last=Max("finished_at"))["last"]
    return count / (ended - began).total_seconds()


def check(label: str, made: list[Sequenced], *, ordered: bool) -> None:
    """Raise unless every delivery is done once and, ordered, each key's in order."""
    rows = list(Entry.objects.order_by("id").values_list("account", "amount"))
    if sorted(rows) != sorted((e.key, e.n) for e in made):
        raise RuntimeError(f"{label}: {len(rows)} rows for {len(made)} events, or not one each")
    if ordered:
        seen: dict[str, list[int]] = {}
        for key, n in rows:
            seen.setdefault(key, []).append(n)
        if any(numbers != sorted(numbers) for numbers in seen.values()):
            raise RuntimeError(f"{label}: a key's events were handled out of order")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000, help="events to drain")
    parser.add_argument("--keys", type=int, default=50, help="ordering keys they are spread over")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--batch", type=int, default=100, help="deliveries claimed at a time")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    if connection.vendor != "postgresql":
        print(f"bench_ordering: skipped on {connection.vendor}; set DATABASE_URL=postgres://...")
        return

    config = setup_databases(verbosity=0, interactive=False)
    try:
        made = events(args.count, args.keys)
        print(
            f"{connection.vendor}, {args.count} events over {args.keys} keys, "
            f"{args.workers} workers, batch {args.batch}, {args.rounds} rounds; "
            f"{os.cpu_count()} CPUs, {load()}"
        )
        if args.keys == 1:
            print("1 key: the ordered drain is serial, one delivery at a time")
        rates: dict[str, list[float]] = {"unordered": [], "ordered": []}
        for r in range(args.rounds):
            for name in rates if r % 2 == 0 else reversed(list(rates)):
                ordered = name == "ordered"
                store(made, ordered=ordered)
                rate = drain(args.workers, args.batch, args.count, ordered=ordered)
                check(name, made, ordered=ordered)
                rates[name].append(rate)
                print(f"  round {r + 1} {name:<10} {rate:8.0f} deliveries/s")
        med = {name: statistics.median(values) for name, values in rates.items()}
        print("medians:")
        for name, value in med.items():
            print(f"  {name:<10} {value:8.0f} deliveries/s")
        print(f"({load()}: other work on the machine skews the figures)")
        print(f"ordered / unordered: {med['ordered'] / med['unordered']:.2f}x")
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
