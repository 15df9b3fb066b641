"""Periodic schedules: each tick sent exactly once, however many workers tick."""

import datetime as dt
import json
import os
import random
import sys
import threading
import time

import pytest
from django.db import connection

from messagebus.core.periodic import LATE, schedules
from messagebus.models import Delivery, ScheduleTick, StoredEvent
from messagebus.processes.ticker import Ticker
from messagebus.testing import run_due
from tests.busapp.models import Entry
from tests.conftest import ROOT, database_url, server_database
from tests.subprocesses import Watched

EVERY_MINUTE = {
    "reminder": {
        "cron": "* * * * *",
        "message": "tests.busapp.events.Reminded",
        "kwargs": {"n": 1},
        "missed": "once",
    }
}
START = dt.datetime(2031, 5, 6, 7, 0, 30, tzinfo=dt.UTC)  # a simulated clock: no waiting
# Minutes of real time three worker processes tick once a minute (0: that test is skipped).
REAL_MINUTES = int(os.environ.get("BUSAPP_PERIODIC_MINUTES", "0"))


@pytest.fixture
def every_minute(settings):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "SCHEDULES": EVERY_MINUTE}
    return schedules.all()[0]


def sent() -> int:
    return StoredEvent.objects.filter(type="busapp.Reminded").count()


def test_three_tickers_send_each_tick_once(db, every_minute):
    tickers = [Ticker("default", f"worker {n}") for n in range(3)]
    now = START
    for _ in range(10 * 60 // 7):  # ten minutes, a look every 7 s, in a random order
        for ticker in random.sample(tickers, 3):
            ticker.run(now + dt.timedelta(seconds=random.uniform(0, 3)))
        now += dt.timedelta(seconds=7)
    ticks = list(ScheduleTick.objects.order_by("tick_at").values_list("tick_at", flat=True))
    # 07:00 (30 s late when first seen: on time) to 07:10, each once.
    minutes = [START.replace(second=0) + dt.timedelta(minutes=m) for m in range(11)]
    assert ticks == minutes
    assert sent() == 11
    assert ScheduleTick.objects.filter(message_id__isnull=True).count() == 0
    assert run_due() == 11
    assert Entry.objects.filter(account="reminder").count() == 11


def test_a_ticker_asks_the_database_only_once_a_tick_is_due(db, every_minute):
    ticker = Ticker("default")
    ticker.run(START)
    assert ticker.next_at() == START.replace(second=0) + dt.timedelta(minutes=1)
    with CountQueries() as queries:
        ticker.run(START + dt.timedelta(seconds=29))
    assert queries.count == 0
    with CountQueries() as queries:
        assert ticker.run(START + dt.timedelta(seconds=31)) == 1
    assert queries.count > 0


class CountQueries:
    def __enter__(self):
        from django.test.utils import CaptureQueriesContext

        self.context = CaptureQueriesContext(connection)
        self.context.__enter__()
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.context.captured_queries)


@pytest.mark.parametrize(("missed", "catch_up"), [("once", 1), ("skip", 0)])
def test_ticks_missed_while_no_worker_ran_follow_the_schedules_rule(db, settings, missed, catch_up):
    hourly = {**EVERY_MINUTE["reminder"], "cron": "0 * * * *", "missed": missed}
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "SCHEDULES": {"hourly": hourly}}
    Ticker("default").run(START.replace(minute=0, second=10))  # 07:00, on time
    assert sent() == 1
    back = START.replace(hour=11, minute=20)  # down from 07:00 to 11:20: four ticks missed
    tickers = [Ticker("default") for _ in range(3)]
    for ticker in tickers:
        ticker.run(back)
    assert sent() == 1 + catch_up
    last = ScheduleTick.objects.order_by("-tick_at").first()
    assert last.tick_at == START.replace(hour=11, minute=0, second=0)
    assert (last.message_id is not None) == bool(catch_up)
    for ticker in tickers:  # and on with the schedule
        ticker.run(START.replace(hour=12, minute=0, second=int(LATE // 2)))
    assert sent() == 2 + catch_up


def test_a_schedule_whose_message_cannot_be_made_leaves_the_others_ticking(
    db, every_minute, caplog
):
    def broken(tick: dt.datetime):
        raise LookupError("no such report")

    from messagebus import periodic

    with schedules.temporary():
        periodic("* * * * *", name="broken")(broken)
        ticker = Ticker("default")
        assert ticker.run(START) == 1  # the reminder
    assert "The tick 2031-05-06T07:00:00+00:00 of broken failed" in caplog.text
    assert not ScheduleTick.objects.filter(name="broken").exists()


@server_database
def test_three_threads_ticking_at_once_send_each_tick_exactly_once(transactional_db, every_minute):
    """Three workers' tickers, each on its own connection, look at the same simulated
    moments together (a barrier each time): the tick's unique row lets one send it."""
    steps = [START + dt.timedelta(seconds=5 * n) for n in range(12 * 30)]  # half an hour
    barrier = threading.Barrier(3)
    sent_by: list[int] = [0, 0, 0]
    errors: list[BaseException] = []

    def tick(n: int) -> None:
        ticker = Ticker("default", f"thread {n}")
        try:
            for now in steps:
                barrier.wait(timeout=30)
                sent_by[n] += ticker.run(now)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=tick, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    minutes = sorted({now.replace(second=0) for now in steps})  # 07:00 .. 07:30
    assert sum(sent_by) == len(minutes) == 31
    assert sent() == 31
    assert sorted(ScheduleTick.objects.values_list("tick_at", flat=True)) == minutes
    assert Delivery.objects.filter(status="pending").count() == 31
    assert len([n for n in sent_by if n]) > 1  # not one thread that always came first


@pytest.mark.skipif(
    not REAL_MINUTES,
    reason="takes minutes of real time: set BUSAPP_PERIODIC_MINUTES=3 (CI's services run does)",
)
@server_database
def test_three_worker_processes_for_minutes_run_a_once_a_minute_schedule_once_a_minute(
    transactional_db, tmp_path
):
    log = tmp_path / "reminders.log"
    env = {
        **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
        "MESSAGEBUS_EXECUTOR": "worker", "BUSAPP_SCHEDULES": json.dumps(EVERY_MINUTE),
        "BUSAPP_REMINDER_LOG": str(log),
    }  # fmt: skip
    command = [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "5"]
    time.sleep((62 - time.time() % 60) % 60)  # from 2 s past a minute: its tick is on time
    first = int(time.time() // 60) * 60
    workers = [Watched(command, env=env, ready="started", what="a worker") for _ in range(3)]
    try:
        # Until 10 s before the tick REAL_MINUTES after the first: that many ticks.
        time.sleep(max(0.0, first + REAL_MINUTES * 60 - 10 - time.time()))
    finally:
        outputs = [worker.stop() for worker in workers]
    assert [code for code, _ in outputs] == [0, 0, 0], outputs
    minutes = [first + 60 * n for n in range(REAL_MINUTES)]
    ticks = sorted(t.timestamp() for t in ScheduleTick.objects.values_list("tick_at", flat=True))
    assert ticks == minutes
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == REAL_MINUTES, (lines, outputs)  # each tick run once, by one worker
    ran = sorted(float(line.split()[1]) for line in lines)
    for at, tick in zip(ran, minutes, strict=True):
        assert 0 <= at - tick < 15, (at, tick)  # never before; the first waits for a start


def test_prune_deletes_old_ticks_but_each_schedules_last(db, capsys):
    from django.core.management import call_command
    from django.utils import timezone

    long_ago = timezone.now() - dt.timedelta(days=40)
    for name, minutes in [("a", [0, 1, 2]), ("b", [0])]:
        for minute in minutes:
            ScheduleTick.objects.create(name=name, tick_at=long_ago + dt.timedelta(minutes=minute))
    ScheduleTick.objects.create(name="a", tick_at=timezone.now())
    call_command("messagebus", "prune", "--dry-run")
    assert "Would delete 3 periodic ticks from before then." in capsys.readouterr().out
    call_command("messagebus", "prune")
    assert "Deleted 3 periodic ticks from before then." in capsys.readouterr().out
    left = sorted(ScheduleTick.objects.values_list("name", flat=True))
    assert left == ["a", "b"]  # a's newest, and b's only one (it dates b's next tick)
