"""From a commit in one service to the commit of the command it becomes in another,
through each broker (PostgreSQL).

    DATABASE_URL=postgres://... CELERY_BROKER_URL=amqp://... REDIS_URL=redis://... \\
    NATS_URL=nats://... .venv/bin/python bench/bench_external_latency.py \\
    [--count 300] [--gap 0.02] [--only kafka]

On a throwaway test database, for each broker the run has (RabbitMQ from
CELERY_BROKER_URL; Redis Streams from REDIS_URL; NATS JetStream from NATS_URL, a stream of
the run's own; Kafka from KAFKA_URL or a tansu broker of the run's own: as
bench/bench_external.py sets them up), one ``messagebus worker`` process (woken by
LISTEN/NOTIFY, polling every second besides) publishes and one ``messagebus consume``
process takes in. This process plays service A: ``--count`` transactions, ``--gap``
seconds apart, each writing a row and recording a ``Sent`` event, published on
``busapp_record``. The consumer plays service B (the same project): each message becomes
a ``Record`` command whose handler writes a row. A deferred trigger stamps each row with
the database's clock as its transaction commits, on both sides; an event's delay is from
its row's stamp to its ``Record``'s. Events sent first, one every 0.2 s until one comes
through, are left out: the consumer's queue, group or subscription is in place and the
broker connections are open when the count starts. p50, p95, p99 and max per broker, in
one table. Redis pub/sub (REDIS_URL) runs with ``--only redis`` alone: its channels are
shared by every database of the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import override_settings, setup_databases, teardown_databases  # noqa: E402

import messagebus  # noqa: E402
from bench import bench_external, external_streams  # noqa: E402
from messagebus.external import transports  # noqa: E402
from messagebus.models import Delivery  # noqa: E402
from tests.busapp.events import Sent  # noqa: E402
from tests.busapp.models import Entry  # noqa: E402
from tests.conftest import database_url  # noqa: E402

LABELS = {
    "amqp": "RabbitMQ", "redis+stream": "Redis Streams", "nats": "NATS JetStream",
    "kafka": "Kafka (tansu)" if not external_streams.KAFKA_URL else "Kafka",
    "redis": "Redis pub/sub",
}  # fmt: skip
# A row of busapp_entry is stamped in bench_committed by the database's clock as its
# transaction commits: a constraint trigger deferred to the commit.
STAMPING = [
    "CREATE TABLE bench_committed (account text NOT NULL, n integer NOT NULL, "
    "at timestamptz NOT NULL)",
    "CREATE FUNCTION bench_committed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO bench_committed VALUES (NEW.account, NEW.amount, clock_timestamp()); "
    "RETURN NULL; END $$",
    f"CREATE CONSTRAINT TRIGGER bench_committed AFTER INSERT ON {Entry._meta.db_table} "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION bench_committed()",
]
# Run only when --only names it: a Redis server's pub/sub channels are shared by all its
# databases (REDIS_URL's number does not set them apart), so a test run on the same server
# that takes in busapp_record would take this run's messages too.
ASKED_ONLY = {"redis"}
WAIT = 60  # seconds for the first event to come through, and for the last


def send(n: int) -> None:
    """Service A's transaction: a row of its own and a Sent event, committed together."""
    with messagebus.UnitOfWork() as uow:
        Entry.objects.create(account="sent", amount=n)
        uow.publish(Sent(n=n))


def recorded(low: int, high: int) -> int:
    """Service B's rows committed for events numbered from ``low`` to below ``high``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM bench_committed WHERE account = 'record' AND n >= %s "
            "AND n < %s", [low, high],
        )  # fmt: skip
        return int(cursor.fetchone()[0])


def warm_up() -> bool:
    """Events numbered below 0, one every 0.2 s until one comes through (False if none
    does in WAIT seconds); then a second for the rest, and the rows of all of them
    cleared."""
    deadline = time.monotonic() + WAIT
    n = -1
    while not recorded(-(2**31), 0):
        if time.monotonic() > deadline:
            return False
        send(n)
        n -= 1
        time.sleep(0.2)
    time.sleep(1)
    clear()
    return True


def clear() -> None:
    Entry.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM bench_committed")


def delays(count: int, gap: float) -> list[float]:
    """Milliseconds from each event's commit to its command's, sorted: of those that came
    through within WAIT seconds of the last one's commit."""
    if not warm_up():
        return []
    for n in range(count):
        send(n)
        time.sleep(gap)
    deadline = time.monotonic() + WAIT
    while recorded(0, count) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT extract(epoch FROM taken.at - sent.at) * 1000 FROM bench_committed sent "
            "JOIN bench_committed taken USING (n) WHERE sent.account = 'sent' "
            "AND taken.account = 'record' AND n >= 0 ORDER BY 1"
        )
        found = sorted(float(delay) for (delay,) in cursor.fetchall())
    clear()
    return found


@contextlib.contextmanager
def broker(name: str) -> Iterator[None]:
    """MESSAGEBUS pointed at ``name``'s broker, set up as bench_external sets it up."""
    if name in ("redis+stream", "nats", "kafka"):
        with external_streams.broker(name):
            yield
        return
    if name == "amqp":
        bench_external.fill(bench_external.BUS_QUEUE, 0)  # declared, and emptied
        url = bench_external.URL
    else:
        url = external_streams.REDIS_URL
    try:
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXTERNAL_URL": url}):
            yield
    finally:
        transports.reset()


@contextlib.contextmanager
def processes(plain: dict[str, object]) -> Iterator[None]:
    """One ``messagebus worker`` and one ``messagebus consume`` on the test database, given
    (as MESSAGEBUS_<KEY>) each key of MESSAGEBUS that differs from ``plain``."""
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING"}
    env.update(
        (f"MESSAGEBUS_{key}", str(value))
        for key, value in settings.MESSAGEBUS.items()
        if plain.get(key) != value
    )
    started: list[subprocess.Popen[bytes]] = []
    try:
        for action in (["worker", "--interval", "1"], ["consume"]):
            started.append(subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "messagebus", *action],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            ))  # fmt: skip
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=30)


def row(label: str, found: list[float], count: int, undone: int) -> str:
    """The delays' median, 95th and 99th percentiles and maximum; and, if some of the
    ``count`` events did not come through, how many did and how many of the worker's
    deliveries (publishing) were not done."""
    line = f"  {label:<16}"
    if len(found) >= 2:
        cuts = statistics.quantiles(found, n=100, method="inclusive")
        figures = (statistics.median(found), cuts[94], cuts[98], found[-1])
        line += "".join(f"{figure:9.1f}" for figure in figures)
    if len(found) < count:
        line += f"  {len(found)} of {count} came through in {WAIT} s; {undone} deliveries not done"
    return line


def main() -> None:
    brokers = {**bench_external.available(), "redis": bool(external_streams.REDIS_URL)}
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--only", choices=list(brokers))
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        print("external latency: skipped (LISTEN/NOTIFY and the commit stamps are "
              "PostgreSQL's; set DATABASE_URL=postgres://...)")  # fmt: skip
        return
    names = [
        name
        for name, there in brokers.items()
        if there and (args.only == name or (args.only is None and name not in ASKED_ONLY))
    ]
    if not names:
        print("external latency: skipped; set CELERY_BROKER_URL=amqp://..., REDIS_URL, "
              "NATS_URL or KAFKA_URL")  # fmt: skip
        return
    plain = dict(settings.MESSAGEBUS)
    config = setup_databases(verbosity=0, interactive=False)
    try:
        with connection.cursor() as cursor:
            for statement in STAMPING:
                cursor.execute(statement)
        print(f"commit to commit through a broker, {connection.vendor}: {args.count} events "
              f"{args.gap * 1000:g} ms apart, one worker and one consumer process, "
              "ms")  # fmt: skip
        print(f"  {'broker':<16}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")  # fmt: skip
        for name in names:
            with (
                broker(name),
                processes(plain),
                # Stored here; the worker process publishes.
                override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "worker"}),
            ):
                found = delays(args.count, args.gap)
                undone = Delivery.objects.exclude(status="done").count()
                Delivery.objects.all().delete()  # none left for the next broker's worker
            print(row(LABELS[name], found, args.count, undone), flush=True)
    finally:
        teardown_databases(config, verbosity=0)


if __name__ == "__main__":
    main()
