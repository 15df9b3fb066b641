"""What a message's JSON form costs, in one process: ``to_dict`` and ``from_dict``
against a conversion written by hand for the same message, with no checks at all.

    .venv/bin/python bench/bench_serialization.py [--count 20000] [--rounds 7]

Two messages: the book's ``Allocated`` (four str and int fields) and one with a
field of most supported types (Decimal, date, datetime, UUID, an enum, a list of
nested dataclasses, a dict of JSON). Each case is timed in alternating rounds
against its baseline; the ratio is of the medians. The baseline checks nothing,
so the ratio is what checking every value against its annotation costs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django

django.setup()

import messagebus  # noqa: E402
from allocation.events import Allocated  # noqa: E402
from messagebus.core.serialization import from_dict, to_dict  # noqa: E402


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclass(frozen=True)
class Shipped(messagebus.Event):
    orderid: str
    price: Decimal
    day: dt.date
    moment: dt.datetime
    ident: uuid.UUID
    colour: Colour
    lines: list[Line]
    payload: dict[str, Any]
    note: str | None = None


def allocated() -> Allocated:
    return Allocated(orderid="o1", sku="LAMP", qty=10, batchref="b1")


def shipped() -> Shipped:
    return Shipped(
        orderid="o1",
        price=Decimal("19.99"),
        day=dt.date(2026, 1, 31),
        moment=dt.datetime(2026, 1, 31, 12, 30, 5, tzinfo=dt.UTC),
        ident=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        colour=Colour.BLUE,
        lines=[Line("LAMP", 2), Line("CHAIR", 1), Line("SOFA", 1)],
        payload={"by": "api", "tags": ["rush"], "attempt": 1},
    )


def allocated_by_hand(m: Allocated) -> dict[str, Any]:
    return {"orderid": m.orderid, "sku": m.sku, "qty": m.qty, "batchref": m.batchref}


def allocated_from_hand(d: dict[str, Any]) -> Allocated:
    return Allocated(orderid=d["orderid"], sku=d["sku"], qty=d["qty"], batchref=d["batchref"])


def shipped_by_hand(m: Shipped) -> dict[str, Any]:
    return {
        "orderid": m.orderid,
        "price": str(m.price),
        "day": m.day.isoformat(),
        "moment": m.moment.isoformat(),
        "ident": str(m.ident),
        "colour": m.colour.value,
        "lines": [{"sku": line.sku, "qty": line.qty} for line in m.lines],
        "payload": m.payload,
        "note": m.note,
    }


def shipped_from_hand(d: dict[str, Any]) -> Shipped:
    return Shipped(
        orderid=d["orderid"],
        price=Decimal(d["price"]),
        day=dt.date.fromisoformat(d["day"]),
        moment=dt.datetime.fromisoformat(d["moment"]),
        ident=uuid.UUID(d["ident"]),
        colour=Colour(d["colour"]),
        lines=[Line(line["sku"], line["qty"]) for line in d["lines"]],
        payload=d["payload"],
        note=d["note"],
    )


def timed(func: Callable[[], object], count: int) -> float:
    begin = time.perf_counter()
    for _ in range(count):
        func()
    return (time.perf_counter() - begin) / count * 1e6


def compare(
    label: str, case: Callable[[], object], base: Callable[[], object], count: int, rounds: int
) -> None:
    timed(case, count // 10)  # warm up
    timed(base, count // 10)
    case_us, base_us = [], []
    for _ in range(rounds):
        case_us.append(timed(case, count))
        base_us.append(timed(base, count))
    c, b = statistics.median(case_us), statistics.median(base_us)
    print(f"{label}\n  module {c:6.2f} us   by hand {b:6.2f} us   ratio {c / b:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=20000, help="conversions per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{args.rounds} rounds x {args.count} conversions")
    for name, make, by_hand, from_hand in [
        ("Allocated", allocated, allocated_by_hand, allocated_from_hand),
        ("Shipped", shipped, shipped_by_hand, shipped_from_hand),
    ]:
        message = make()
        data = to_dict(message)
        assert from_dict(type(message), data) == message == from_hand(data)
        assert by_hand(message) == data
        cls = type(message)
        compare(
            f"{name}: to_dict",
            partial(to_dict, message),
            partial(by_hand, message),
            args.count,
            args.rounds,
        )
        compare(
            f"{name}: from_dict",
            partial(from_dict, cls, data),
            partial(from_hand, data),
            args.count,
            args.rounds,
        )


if __name__ == "__main__":
    main()
