"""Deliveries per second drained by ``messagebus worker`` processes (PostgreSQL or
MariaDB).

    DATABASE_URL=postgres://... make bench
    DATABASE_URL=postgres://... .venv/bin/python bench/bench_worker.py [--count 20000]
        [--batch 100] [--rounds 2]
    DATABASE_URL=mysql://root@127.0.0.1:3306/NAME .venv/bin/python bench/bench_worker.py

On a throwaway test database, ``--count`` Pinged events are stored with the
worker executor, each with one pending delivery to
tests.busapp.handlers.record_ping (one ORM insert). Then, in alternating
rounds, the same deliveries are drained by:

- 1 worker: one ``manage.py messagebus worker --once --batch B`` process;
- 2 workers: two such processes at once;
- floor: a plain Django loop in this process, no bus: claim B due rows (the
  worker's condition, so the same index) with their events, SELECT ... FOR
  UPDATE OF the deliveries (MariaDB: of the rows joined too) SKIP LOCKED through
  the ORM, call record_ping on
  each event rebuilt from its payload, mark the batch done in one UPDATE,
  commit once per batch;
- raw: the driver in this process (psycopg 3; on MariaDB, Django's MySQLdb), no
  ORM and no handler: claim B due rows (with their events' payloads) FOR UPDATE
  SKIP LOCKED, mark them done, commit.

A worker's time is its wall time less the start-up of as many processes on an
empty queue (median of three, measured right after the drain); "by
finished_at" is the same rate from the first delivery's finished_at to the
last, a check on that subtraction. Between cases
every delivery is made pending again, the Entry rows deleted and the tables
vacuumed (MariaDB: analyzed). After each case every delivery must be done and the Entry table
hold one row per event (none after the raw loop). Rates are medians over the
rounds; ratios are of the medians. SQLite: skipped.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# record_ping would also append to a file or sleep: neither belongs in a benchmark.
for _name in ("BUSAPP_PING_LOG", "BUSAPP_PING_SLEEP"):
    os.environ.pop(_name, None)

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Count, F, Max, Min  # noqa: E402
from django.test.utils import override_settings, setup_databases, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

import messagebus  # noqa: E402
from messagebus.models import Delivery, StoredEvent  # noqa: E402
from tests.busapp.events import Pinged  # noqa: E402
from tests.busapp.handlers import record_ping  # noqa: E402
from tests.busapp.models import Entry  # noqa: E402
from tests.conftest import database_url  # noqa: E402

HANDLER = f"{record_ping.__module__}.{record_ping.__qualname__}"
# The worker claims due rows (pending, not leased, next_attempt_at passed) through a partial
# index on that condition; the floor and raw loops ask for the same rows the same way, or
# each of their claims would scan the whole table.
LEASED = "lease_until" in {f.name for f in Delivery._meta.get_fields()}
UNLEASED = {"lease_until__isnull": True} if LEASED else {}
# Where deliveries have priorities, the index leads with them, as the worker's claim does.
PRIORITY = "priority" in {f.name for f in Delivery._meta.get_fields()}
ORDER = ("-priority", "next_attempt_at", "id") if PRIORITY else ("next_attempt_at", "id")
STORE_CHUNK = 1000
MYSQL = connection.vendor == "mysql"


def load() -> str:
    return "load average " + " ".join(f"{n:.1f}" for n in os.getloadavg())


def store(count: int) -> None:
    """``count`` Pinged events, a thousand per unit of work, left for workers."""
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"}):
        for start in range(0, count, STORE_CHUNK):
            with messagebus.UnitOfWork() as uow:
                for n in range(start, min(start + STORE_CHUNK, count)):
                    uow.publish(Pinged(n=n))
    pending = Delivery.objects.filter(status="pending", handler=HANDLER).count()
    if pending != count or Delivery.objects.count() != count:
        raise RuntimeError(f"stored {count} events but found {pending} pending deliveries")


def reset() -> None:
    """Every delivery pending and due again, no Entry rows, tables vacuumed."""
    Entry.objects.all().delete()
    lease = {"lease_until": None} if LEASED else {}
    Delivery.objects.update(
        status="pending", runs=0, attempts=0, finished_at=None, next_attempt_at=timezone.now(),
        **lease,
    )  # fmt: skip
    tidy = "ANALYZE TABLE" if MYSQL else "VACUUM ANALYZE"
    with connection.cursor() as cursor:  # autocommit: VACUUM runs outside a transaction
        for model in (Delivery, StoredEvent, Entry):
            cursor.execute(f"{tidy} {connection.ops.quote_name(model._meta.db_table)}")
            cursor.fetchall()


def check(label: str, count: int, entries: int) -> None:
    """Raise unless every delivery is done and the handler left ``entries`` rows."""
    statuses = dict(Delivery.objects.values_list("status").annotate(n=Count("id")).order_by())
    not_done = Delivery.objects.exclude(status="done").count()
    total = Delivery.objects.count()
    if not_done or total != count:
        raise RuntimeError(
            f"{label}: {not_done} of {total} deliveries not done (by status: {statuses})"
        )
    rows = Entry.objects.count()
    distinct = Entry.objects.values("amount").distinct().count()
    if rows != entries or distinct != entries:
        raise RuntimeError(f"{label}: {rows} Entry rows ({distinct} distinct), expected {entries}")


def workers(processes: int, batch: int) -> float:
    """Seconds from starting ``processes`` workers (--once) until the last one exits."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "LOG_LEVEL": "WARNING",
    }
    command = [
        sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
        "--once", "--batch", str(batch),
    ]  # fmt: skip
    begin = time.perf_counter()
    running = [
        subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    outputs = [p.communicate(timeout=600) for p in running]
    elapsed = time.perf_counter() - begin
    for process, (out, err) in zip(running, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(
                f"worker exited with {process.returncode}\nstdout:\n{out}\nstderr:\n{err}"
            )
    return elapsed


def finished_span(count: int) -> float:
    """Deliveries per second from the first finished_at to the last."""
    span = Delivery.objects.aggregate(first=Min("finished_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    return (count - 1) / seconds if seconds > 0 else float("nan")


def worker_case(processes: int, count: int, batch: int) -> tuple[float, str]:
    wall = workers(processes, batch)
    label = f"{processes} worker{'s' if processes > 1 else ''}"
    check(label, count, count)
    by_finish = finished_span(count)
    # Start-up (interpreter, Django, connecting, one empty claim) on the now empty queue.
    start_up = statistics.median(workers(processes, batch) for _ in range(3))
    rate = count / (wall - start_up)
    note = f"wall {wall:.2f}s - start-up {start_up:.2f}s; by finished_at {by_finish:.0f}/s"
    return rate, note


def floor(count: int, batch: int) -> tuple[float, str]:
    """The plain Django loop, in this process."""
    # FOR UPDATE OF where the database has it (MariaDB has not: it locks the events too).
    of = ("self",) if connection.features.has_select_for_update_of else ()
    done = 0
    begin = time.perf_counter()
    while True:
        with transaction.atomic():
            rows = list(
                Delivery.objects.select_for_update(skip_locked=True, of=of)
                .filter(status="pending", next_attempt_at__lte=timezone.now(), **UNLEASED)
                .select_related("event")
                .order_by(*ORDER)[:batch]
            )
            if not rows:
                break
            for row in rows:
                record_ping(Pinged(n=row.event.payload["n"]))
            Delivery.objects.filter(pk__in=[row.pk for row in rows]).update(
                status="done", finished_at=timezone.now(), attempts=F("attempts") + 1
            )
        done += len(rows)
    elapsed = time.perf_counter() - begin
    check("floor", count, count)
    return done / elapsed, f"{elapsed:.2f}s in this process"


def raw(count: int, batch: int) -> tuple[float, str]:
    """The driver alone, in this process: claim and mark done, no handler."""
    quote = connection.ops.quote_name
    deliveries, events = quote(Delivery._meta.db_table), quote(StoredEvent._meta.db_table)
    unleased = " AND d.lease_until IS NULL" if UNLEASED else ""
    now = "UTC_TIMESTAMP(6)" if MYSQL else "now()"  # Django keeps MariaDB's times in UTC
    claim = (
        f"SELECT d.id, e.payload FROM {deliveries} d JOIN {events} e ON e.id = d.event_id "
        f"WHERE d.status = 'pending' AND d.next_attempt_at <= {now}{unleased} "
        f"ORDER BY {'d.priority DESC, ' if PRIORITY else ''}d.next_attempt_at, d.id LIMIT %s "
        f"FOR UPDATE{'' if MYSQL else ' OF d'} SKIP LOCKED"
    )
    complete = (
        f"UPDATE {deliveries} SET status = 'done', finished_at = {now}, "
        "attempts = attempts + 1 WHERE id "
    )
    done = 0
    with driver_connection() as conn:
        begin = time.perf_counter()
        while True:
            with conn.cursor() as cursor:
                cursor.execute(claim, [batch])
                ids = [row[0] for row in cursor.fetchall()]
                if MYSQL and ids:
                    cursor.execute(complete + f"IN ({', '.join(['%s'] * len(ids))})", ids)
                elif ids:
                    cursor.execute(complete + "= ANY(%s)", [ids])
            conn.commit()
            if not ids:
                break
            done += len(ids)
        elapsed = time.perf_counter() - begin
    check("raw", count, 0)
    return done / elapsed, f"{elapsed:.2f}s in this process"


def driver_connection() -> Any:
    """A connection of the driver's own to the test database: psycopg 3's, or (MariaDB)
    the one Django's backend makes (MySQLdb, or PyMySQL standing in), with its settings."""
    if MYSQL:
        return connection.get_new_connection(connection.get_connection_params())
    db = connection.settings_dict
    params = {"dbname": db["NAME"], "user": db["USER"], "password": db["PASSWORD"],
              "host": db["HOST"], "port": db["PORT"]}  # fmt: skip
    return psycopg.connect(**{k: v for k, v in params.items() if v})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20_000, help="deliveries to drain")
    parser.add_argument("--batch", type=int, default=100, help="deliveries claimed at a time")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    if connection.vendor not in ("postgresql", "mysql"):
        print(
            f"bench_worker: skipped on {connection.vendor}; "
            "set DATABASE_URL=postgres://... or mysql://..."
        )
        return

    config = setup_databases(verbosity=0, interactive=False)
    try:
        begin = time.perf_counter()
        store(args.count)
        print(
            f"{connection.vendor}, {args.count} deliveries (stored in "
            f"{time.perf_counter() - begin:.1f}s), batch {args.batch}, {args.rounds} rounds; "
            f"floor and raw loops in this process; {os.cpu_count()} CPUs, {load()}"
        )
        cases: dict[str, Callable[[], tuple[float, str]]] = {
            "1 worker": lambda: worker_case(1, args.count, args.batch),
            "2 workers": lambda: worker_case(2, args.count, args.batch),
            "floor": lambda: floor(args.count, args.batch),
            "raw driver": lambda: raw(args.count, args.batch),
        }
        rates: dict[str, list[float]] = {name: [] for name in cases}
        order = list(cases)
        first = True
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else reversed(order):
                if not first:
                    reset()
                first = False
                rate, note = cases[name]()
                rates[name].append(rate)
                print(f"  round {r + 1} {name:<12} {rate:8.0f} deliveries/s  ({note})")
        med = {name: statistics.median(values) for name, values in rates.items()}
        print("medians:")
        for name, value in med.items():
            print(f"  {name:<12} {value:8.0f} deliveries/s")
        print(f"  1 worker / floor      {med['1 worker'] / med['floor']:.2f}x (target >= 0.85x)")
        print(f"  2 workers / 1 worker  {med['2 workers'] / med['1 worker']:.2f}x (target >= 1.5x)")
        print(f"  floor / raw           {med['floor'] / med['raw driver']:.2f}x")
        print(f"({load()}: other work on the machine skews the figures)")
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
