"""``messagebus prune`` against two plain DELETE statements, in one process.

    make bench                                  # SQLite
    DATABASE_URL=postgres://... make bench      # PostgreSQL

On a throwaway test database, ``--count`` finished deliveries with their
events (one each) are written, then deleted: by ``outbox.prune`` (set-based
DELETEs of a bounded chunk, each its own transaction), and by two plain
DELETE statements in one transaction (the deliveries, then the events left
without any). Rounds alternate; the ratio is of the medians, baseline over
prune (1.0x: as fast; target >= 0.5x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

from messagebus import outbox  # noqa: E402
from messagebus.models import Delivery, StoredEvent  # noqa: E402


def fill(count: int) -> None:
    """``count`` events, each with one delivery done two days ago."""
    old = timezone.now() - timedelta(days=2)
    for start in range(0, count, 5000):
        with transaction.atomic():
            events = StoredEvent.objects.bulk_create(
                StoredEvent(id=uuid.uuid4(), type="bench.Done", payload={"n": n},
                            correlation_id=uuid.uuid4(), created_at=old)
                for n in range(start, min(start + 5000, count))
            )  # fmt: skip
            Delivery.objects.bulk_create(
                Delivery(event=event, handler="bench.handler", status="done", runs=1,
                         attempts=1, created_at=old, finished_at=old)
                for event in events
            )  # fmt: skip


def plain(cutoff: object) -> None:
    quote = connection.ops.quote_name
    deliveries, events = quote(Delivery._meta.db_table), quote(StoredEvent._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {deliveries} WHERE status IN ('done', 'discarded') AND finished_at < %s",
            [cutoff],
        )
        cursor.execute(
            f"DELETE FROM {events} e WHERE created_at < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {deliveries} d WHERE d.event_id = e.id)"
            if connection.vendor == "postgresql"
            else f"DELETE FROM {events} WHERE created_at < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {deliveries} d WHERE d.event_id = {events}.id)",
            [cutoff],
        )


def timed(label: str, count: int, delete: object) -> float:
    fill(count)
    cutoff = timezone.now() - timedelta(days=1)
    begin = time.perf_counter()
    delete(cutoff)  # type: ignore[operator]
    elapsed = time.perf_counter() - begin
    if Delivery.objects.exists() or StoredEvent.objects.exists():
        raise RuntimeError(f"{label} left rows behind")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="deliveries to delete")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = setup_databases(verbosity=0, interactive=False)
    try:
        prune_s, plain_s = [], []
        for _ in range(args.rounds):
            prune_s.append(
                timed("prune", args.count, lambda cutoff: outbox.prune("default", cutoff))
            )
            plain_s.append(timed("plain", args.count, plain))
        p, b = statistics.median(prune_s), statistics.median(plain_s)
        print(
            f"prune, {connection.vendor}, {args.rounds} rounds x {args.count} finished deliveries"
        )
        print(f"  prune {p:6.2f} s   two plain DELETEs {b:6.2f} s   ratio {b / p:.2f}x "
              "(target >= 0.5x)")  # fmt: skip
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
