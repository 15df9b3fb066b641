"""Per-message cost of the bus against hand-written Django, in one process.

    make bench                                  # SQLite
    DATABASE_URL=postgres://... make bench      # PostgreSQL

Each case is timed in alternating rounds against its baseline; the ratio is
of the medians. Runs on a throwaway test database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

import messagebus  # noqa: E402
from messagebus.models import StoredEvent  # noqa: E402
from tests.busapp.models import Account, Entry  # noqa: E402


@dataclass(frozen=True)
class Nothing(messagebus.Command):
    n: int


@dataclass(frozen=True)
class Open(messagebus.Command):
    name: str


@dataclass(frozen=True)
class Made(messagebus.Event):
    name: str


def do_nothing(cmd: Nothing) -> int:
    return cmd.n


def open_account(cmd: Open) -> None:
    account = Account.objects.create(name=cmd.name)
    account.record(Made(name=cmd.name))


def on_made(event: Made) -> None:
    Entry.objects.create(account=event.name, amount=0)


def hand_written(name: str) -> None:
    with transaction.atomic():
        Account.objects.create(name=name)
        StoredEvent.objects.create(
            id=uuid.uuid4(), type="bench.Made", payload={"name": name}, correlation_id=uuid.uuid4()
        )
    with transaction.atomic():
        Entry.objects.create(account=name, amount=0)


def timed(func: Callable[[int], object], count: int, start: int) -> float:
    begin = time.perf_counter()
    for i in range(start, start + count):
        func(i)
    return (time.perf_counter() - begin) / count * 1e6


def compare(
    label: str, bus: Callable[[int], object], base: Callable[[int], object], count: int, rounds: int
) -> None:
    timed(bus, count // 10, 10**8)  # warm up
    timed(base, count // 10, 2 * 10**8)
    bus_us, base_us = [], []
    for r in range(rounds):
        bus_us.append(timed(bus, count, (2 * r + 3) * 10**8))
        base_us.append(timed(base, count, (2 * r + 4) * 10**8))
    b, h = statistics.median(bus_us), statistics.median(base_us)
    print(f"{label}\n  bus {b:8.1f} us   baseline {h:8.1f} us   ratio {b / h:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    config = setup_databases(verbosity=0, interactive=False)
    try:
        print(f"{connection.vendor}, {args.rounds} rounds x {args.count} messages")
        with messagebus.registry.temporary(do_nothing, open_account, on_made):

            def plain(i: int) -> object:
                with transaction.atomic():
                    return do_nothing(Nothing(i))

            compare(
                "command, no database work, no events (target <= 1.2x atomic + handler)",
                lambda i: messagebus.bus.handle(Nothing(i)),
                plain,
                args.count * 5,
                args.rounds,
            )
            compare(
                "command writing a row + an event whose handler writes a row (target <= 1.5x)",
                lambda i: messagebus.bus.handle(Open(f"b{i}")),
                lambda i: hand_written(f"h{i}"),
                args.count,
                args.rounds,
            )
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
