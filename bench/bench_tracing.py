"""What tracing costs per message, in one process.

    make bench                                  # SQLite
    DATABASE_URL=postgres://... make bench      # PostgreSQL
    .venv/bin/python bench/bench_tracing.py [--count 500] [--rounds 20]

A message here is a command that writes a row and records an event, whose
handler writes a row, delivered inline: three spans when traced (the command,
the event stored, the delivery), and the trace context stored with the event.
Each mode is timed in alternating rounds against tracing off
(MESSAGEBUS["TRACING"] = False), on a throwaway test database:

- API only: opentelemetry-api, no SDK, no tracer provider set (target <= 1.05x);
- SDK: the SDK's tracer provider, its simple span processor and an exporter
  that drops what it gets: the SDK's own cost (target <= 1.3x). Then, for
  information, its batch span processor instead, whose thread takes the spans
  to the exporter: in a process that does nothing but make spans, that thread
  competes for the GIL. Once set, a tracer provider stays: these run last.

The same for a command with no database work and no event, for information.
Ratios are of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django

django.setup()

from bench_bus import Nothing, Open, do_nothing, on_made, open_account  # noqa: E402  (the same messages)
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

import messagebus  # noqa: E402


class Dropped(SpanExporter):
    """An exporter that sends nothing anywhere."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def tracing(on: bool) -> override_settings:
    return override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "TRACING": on})


def timed(traced: bool, func: Callable[[int], object], count: int, start: int) -> float:
    with tracing(traced):
        begin = time.perf_counter()
        for i in range(start, start + count):
            func(i)
        return (time.perf_counter() - begin) / count * 1e6


_numbers = iter(range(10**8, 10**12, 10**8))  # a fresh range of names for every run


def compare(label: str, func: Callable[[int], object], count: int, rounds: int) -> float:
    timed(True, func, count // 10, next(_numbers))  # warm up
    timed(False, func, count // 10, next(_numbers))
    on_us, off_us = [], []
    for r in range(rounds):
        first, second = (True, False) if r % 2 == 0 else (False, True)
        for traced in (first, second):
            took = timed(traced, func, count, next(_numbers))
            (on_us if traced else off_us).append(took)
    on, off = statistics.median(on_us), statistics.median(off_us)
    print(f"  {label:<34} {on:8.1f} us   off {off:8.1f} us   ratio {on / off:.2f}x")
    return on / off


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500, help="messages per round")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    config = setup_databases(verbosity=0, interactive=False)
    try:
        print(f"tracing, {connection.vendor}, {args.rounds} rounds x {args.count} messages")
        with messagebus.registry.temporary(do_nothing, open_account, on_made):
            message = lambda i: messagebus.bus.handle(Open(f"a{i}"))  # noqa: E731
            command = lambda i: messagebus.bus.handle(Nothing(i))  # noqa: E731
            print("API only, no SDK (target <= 1.05x)")
            compare("command + event + handler", message, args.count, args.rounds)
            compare("command, no table", command, args.count * 5, args.rounds)

            provider = TracerProvider()
            processor = SimpleSpanProcessor(Dropped())
            provider.add_span_processor(processor)
            trace.set_tracer_provider(provider)
            print("SDK, an exporter that drops (target <= 1.3x)")
            compare("command + event + handler", message, args.count, args.rounds)
            compare("command, no table", command, args.count * 5, args.rounds)

            batch = BatchSpanProcessor(Dropped(), max_queue_size=100_000)
            provider._active_span_processor._span_processors = (batch,)  # the only one
            print("SDK, batch processor, an exporter that drops (for information)")
            compare("command + event + handler", message, args.count, args.rounds)
            compare("command, no table", command, args.count * 5, args.rounds)
            provider.shutdown()
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
