"""Async handlers on the worker: a pool against one at a time, and what awaiting costs.

    make bench                                  # SQLite
    DATABASE_URL=postgres://... make bench      # PostgreSQL
    .venv/bin/python bench/bench_async.py [--count 2000] [--naps 100] [--rounds 3]
        [--concurrency 50]

On a throwaway test database, deliveries are stored with the worker executor,
then drained in this process by ``Worker(once=True, concurrency=N).run()``:

- I/O: ``--naps`` Napped events, each with one delivery to the async handler
  tests.busapp.handlers.nap, which awaits ``anyio.sleep(0.05)``: drained at
  ``--concurrency`` (an AnyIO pool) and at 1 (awaited one at a time). Target:
  the pool at least 20x faster.
- overhead: ``--count`` deliveries to a sync no-op handler, and as many to an
  async no-op (their events stored apart, so each drain runs one kind only):
  microseconds per delivery of each, and the ratio async / sync. First at
  concurrency 1, the default worker (sync ones batched in one transaction,
  async ones awaited one at a time, their done-marks group-committed): the
  target, async at most 1.5x sync, applies to this line. Then at
  ``--concurrency``, for information (sync ones in threads, a transaction
  each; async ones in the pool).

Before each drain the case's deliveries are made pending again (the others
stay done; on PostgreSQL the table is vacuumed); after it, every delivery
must be done, each called once, and the worker must report as many as
expected. Rounds alternate the order; times are medians over the rounds and
ratios are of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.pop("BUSAPP_NAP_LOG", None)  # nap would write two lines to a file per call

import django

django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from django.utils import timezone  # noqa: E402

import messagebus  # noqa: E402
from messagebus import executors  # noqa: E402
from messagebus.executors.worker import WorkerExecutor  # noqa: E402
from messagebus.models import Delivery  # noqa: E402
from messagebus.processes.worker import Worker  # noqa: E402
from tests.busapp.events import Napped  # noqa: E402
from tests.busapp.handlers import nap  # noqa: E402

NAP = 0.05  # seconds each nap awaits
STORE_CHUNK = 1000


@dataclass(frozen=True)
class Idled(messagebus.Event):
    """Handled by a no-op: the sync one or the async one, whichever was registered."""

    n: int


def noop(event: Idled) -> None:
    pass


async def anoop(event: Idled) -> None:
    pass


def name(func: Callable[..., Any]) -> str:
    """The name a delivery remembers ``func`` by."""
    return f"{func.__module__}.{func.__qualname__}"


def store(events: Sequence[messagebus.Event], handler: Callable[..., Any]) -> None:
    """Store ``events`` for workers, each with one delivery, to ``handler``; then mark every
    delivery done (each case makes its own pending again)."""
    with executors.use(WorkerExecutor()):
        for start in range(0, len(events), STORE_CHUNK):
            with messagebus.UnitOfWork() as uow:
                for event in events[start : start + STORE_CHUNK]:
                    uow.publish(event)
    to = name(handler)
    stored = Delivery.objects.filter(handler=to, status="pending").count()
    if stored != len(events) or Delivery.objects.filter(status="pending").count() != stored:
        raise SystemExit(f"stored {len(events)} events but found {stored} deliveries to {to}")
    Delivery.objects.update(status="done", runs=1, attempts=1, finished_at=timezone.now())


def again(handler: str) -> None:
    """Make the deliveries to ``handler`` pending and due, as if just stored."""
    Delivery.objects.filter(handler=handler).update(
        status="pending", runs=0, attempts=0, finished_at=None, lease_until=None,
        next_attempt_at=timezone.now(),
    )  # fmt: skip
    if connection.vendor == "postgresql":  # autocommit: VACUUM runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(Delivery._meta.db_table)}")


def drain(handler: str, count: int, concurrency: int) -> float:
    """Seconds for ``Worker(once=True)`` to drain the ``count`` deliveries to ``handler``."""
    again(handler)
    begin = time.perf_counter()
    processed = Worker(once=True, concurrency=concurrency).run()
    elapsed = time.perf_counter() - begin
    label = f"{handler} at concurrency {concurrency}"
    if processed != count:
        raise SystemExit(f"{label}: the worker processed {processed}, expected {count}")
    statuses = dict(Delivery.objects.values_list("status").annotate(n=Count("id")).order_by())
    if set(statuses) != {"done"}:
        raise SystemExit(f"{label}: deliveries not all done (by status: {statuses})")
    once = Delivery.objects.filter(handler=handler, attempts=1, runs=1, lease_until=None).count()
    if once != count:
        raise SystemExit(f"{label}: {count - once} of {count} not called exactly once")
    return elapsed


def alternate(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Median seconds of each case, run in turn, in reverse order every other round."""
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    order = list(cases)
    for r in range(rounds):
        for case in order if r % 2 == 0 else reversed(order):
            seconds[case].append(cases[case]())
    return {case: statistics.median(values) for case, values in seconds.items()}


def naps(count: int, concurrency: int, rounds: int) -> None:
    handler = name(nap)
    med = alternate(
        rounds,
        {
            "pool": partial(drain, handler, count, concurrency),
            "alone": partial(drain, handler, count, 1),
        },
    )
    if med["alone"] < count * NAP or med["pool"] < NAP:
        raise SystemExit(f"naps drained faster than they sleep ({med}): nap did not await")
    print(f"{count} async handlers awaiting {NAP * 1000:.0f} ms each")
    print(
        f"  concurrency {concurrency} {med['pool']:6.2f} s   concurrency 1 {med['alone']:6.2f} s"
        f"   speed-up {med['alone'] / med['pool']:.1f}x (target >= 20x)"
    )


def overhead(count: int, concurrency: int, rounds: int) -> None:
    print(f"no-op handlers, {count} deliveries each, microseconds per delivery")
    for level, target in ((1, " (target <= 1.5x)"), (concurrency, "")):
        med = alternate(
            rounds,
            {
                "sync": partial(drain, name(noop), count, level),
                "async": partial(drain, name(anoop), count, level),
            },
        )
        sync_us, async_us = (med[kind] / count * 1e6 for kind in ("sync", "async"))
        print(
            f"  concurrency {level:<3} sync {sync_us:7.1f} us   async {async_us:7.1f} us"
            f"   ratio {async_us / sync_us:.2f}x{target}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="deliveries per no-op handler")
    parser.add_argument("--naps", type=int, default=100, help="deliveries to the napping handler")
    parser.add_argument("--concurrency", type=int, default=50, help="the pool's size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    if [h.func for h in messagebus.registry.event_handlers(Napped)] != [nap]:
        raise SystemExit(f"Napped must have one handler, {name(nap)}")
    config = setup_databases(verbosity=0, interactive=False)
    try:
        store([Napped(n=n, seconds=NAP) for n in range(args.naps)], nap)
        for handler in (noop, anoop):
            with messagebus.registry.temporary(handler):
                store([Idled(n=n) for n in range(args.count)], handler)
        print(
            f"async handlers on the worker, {connection.vendor}, {args.rounds} rounds; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        naps(args.naps, args.concurrency, args.rounds)
        with messagebus.registry.temporary(noop, anoop):
            overhead(args.count, args.concurrency, args.rounds)
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
