"""From a command's commit to its event's delivery, with the worker executor (PostgreSQL).

    DATABASE_URL=postgres://... make bench

One ``messagebus worker`` process (poll interval 1 s) waits on a throwaway
test database; this process stores ``--count`` Pinged events one at a time,
``--gap`` seconds apart, each in its own transaction. The delay of each is
from just after its commit to the moment its delivery was marked done (the
handler writes one row). Median and p99 are printed, with the target (median
under 20 ms): a worker that only polled would average half its interval.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
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
from messagebus.models import Delivery  # noqa: E402
from tests.busapp.events import Pinged  # noqa: E402
from tests.conftest import database_url  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between events")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        print("latency: skipped (LISTEN/NOTIFY is PostgreSQL's; SQLite workers poll)")
        return
    config = setup_databases(verbosity=0, interactive=False)
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "1"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(3)  # started, and waiting
        committed = {}
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"}):
            for n in range(args.count):
                event = Pinged(n=n)
                messagebus.bus.handle(event)
                committed[event.message_id] = timezone.now()
                time.sleep(args.gap)
        deadline = time.monotonic() + 30
        while Delivery.objects.filter(status="pending").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        delays = sorted(
            (finished - committed[event]).total_seconds() * 1000
            for event, finished in Delivery.objects.values_list("event_id", "finished_at")
        )
        if len(delays) != args.count:
            raise RuntimeError(f"{len(delays)} of {args.count} deliveries done")
        median = statistics.median(delays)
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"commit to delivery, worker executor, {connection.vendor}, {args.count} events")
        print(f"  median {median:6.1f} ms   p99 {p99:6.1f} ms   (target: median < 20 ms; "
              "polling once a second would average about 500 ms)")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
