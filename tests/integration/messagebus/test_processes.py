"""Real processes: a crash after commit, worker shutdown, workers sharing one queue."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings

import messagebus
from messagebus.delivery.concurrent import run_one
from messagebus.models import Delivery
from messagebus.outbox import states
from messagebus.outbox.reference import Reference
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened, Pinged
from tests.busapp.models import Account, Entry
from tests.conftest import ROOT, database_url, postgres_only, server_database

CRASH_AFTER_COMMIT = """
import os
from django.db import transaction
import messagebus
from tests.busapp.commands import Deposit, OpenAccount

messagebus.bus.handle(OpenAccount("zed"))
with transaction.atomic():
    transaction.on_commit(lambda: os._exit(17))  # dies before the bus's own callbacks
    messagebus.bus.handle(Deposit("zed", 9))
"""


def test_deliveries_left_by_a_crash_after_commit_are_run_by_a_worker(manage):
    crashed = manage("shell", "-c", CRASH_AFTER_COMMIT)
    assert crashed.returncode == 17, crashed.stderr

    assert Account.objects.get(name="zed").balance == 9
    assert list(Delivery.objects.values_list("status", "attempts")) == [
        ("pending", 0),
        ("pending", 0),
    ]
    assert not Entry.objects.exists()

    worker = manage("messagebus", "worker", "--once")
    assert worker.returncode == 0, worker.stderr
    assert "Processed 2 deliveries." in worker.stdout  # the Audited they record runs inline
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


def test_a_worker_exits_cleanly_on_sigterm(transactional_db):
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO"}
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "0.1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = worker.stderr.readline()
        assert re.search(r"Worker [^ ]+:\d+ started", started), started
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=20)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "Processed 0 deliveries." in stdout
    assert re.search(rf"Worker [^ ]+:{worker.pid} stopped after 0 deliveries", stderr), stderr


@server_database
def test_two_workers_never_run_one_delivery_twice(manage, tmp_path):
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        for n in range(200):
            messagebus.bus.handle(Pinged(n=n))
    assert Delivery.objects.filter(status="pending").count() == 200

    log = tmp_path / "pings.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "BUSAPP_PING_LOG": str(log),
        "BUSAPP_PING_SLEEP": "0.002",
    }
    command = [
        sys.executable,
        str(ROOT / "manage.py"),
        "messagebus",
        "worker",
        "--once",
        "--batch",
        "5",
    ]
    workers = [
        subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    lines = log.read_text().split()
    runs = [int(n) for n in lines[::2]]
    pids = set(lines[1::2])
    assert sorted(runs) == list(range(200))  # each handler call exactly once
    assert len(pids) == 2  # both workers took part
    assert sorted(Entry.objects.values_list("amount", flat=True)) == list(range(200))
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


@server_database
def test_two_runners_of_one_delivery_complete_it_once(transactional_db, messagebus_registry):
    calls = []

    def slow(event: Pinged) -> None:
        calls.append(threading.get_ident())
        Entry.objects.create(account="slow", amount=event.n)
        time.sleep(0.3)

    messagebus_registry.register(None, slow)
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        messagebus.bus.handle(Pinged(n=1))
    row = Delivery.objects.select_related("event").get(handler__endswith="slow")

    results = []
    barrier = threading.Barrier(2)

    def run() -> None:
        ref = Reference("default", row.event_id, row.handler)  # each its own, from the row
        barrier.wait()
        results.append(run_one(states.Claim.fresh(ref)))
        connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert sorted(results) == [False, True]
    assert len(calls) == 1  # the second waited on the row lock, then found it done
    assert Entry.objects.filter(account="slow").count() == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("done", 1)


@server_database
def test_a_claim_skips_rows_another_transaction_holds(transactional_db):
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        for n in range(6):
            messagebus.bus.handle(Pinged(n=n))
    ids = list(Delivery.objects.order_by("id").values_list("id", flat=True))
    held, released = threading.Event(), threading.Event()

    def hold_first_three() -> None:
        with transaction.atomic():
            list(Delivery.objects.select_for_update().filter(id__in=ids[:3]))
            held.set()
            released.wait(timeout=30)
        connection.close()

    holder = threading.Thread(target=hold_first_three)
    holder.start()
    try:
        assert held.wait(timeout=30)
        claimed = states.claim("default", limit=6)  # does not wait for the holder
    finally:
        released.set()
        holder.join(timeout=30)
    assert sorted(claim.id for claim in claimed) == ids[3:]


def test_sigterm_lets_the_running_delivery_finish_and_hands_back_the_rest(
    transactional_db, tmp_path
):
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
    log = tmp_path / "pings.log"
    env = {
        **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
        "BUSAPP_PING_LOG": str(log), "BUSAPP_PING_SLEEP": "1",
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--batch", "5"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.send_signal(signal.SIGTERM)  # while the first handler sleeps
        stdout, stderr = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, stderr
    assert "Processed 1 delivery." in stdout
    assert Entry.objects.count() == 1
    pending = Delivery.objects.filter(status="pending")
    assert pending.count() == 2
    assert all(row.runs == 0 for row in pending)


@postgres_only
def test_only_delivery_transactions_skip_the_wal_flush_wait(transactional_db, messagebus_registry):
    seen = {}

    def setting() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return str(cursor.fetchone()[0])

    def open_account(cmd: OpenAccount) -> None:
        seen["command"] = setting()
        Account.objects.create(name=cmd.name).open()

    def welcome(event: Opened) -> None:
        seen["delivery, during the handler"] = setting()

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, open_account)
    messagebus_registry.register(None, welcome)
    messagebus.bus.handle(OpenAccount("ola"))
    assert seen == {"command": "on", "delivery, during the handler": "off"}
    assert setting() == "on"  # SET LOCAL: gone with the delivery's transaction


@postgres_only
def test_a_notify_wakes_a_worker_long_before_its_poll_interval(transactional_db):
    env = {**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO"}
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "60"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert "started" in worker.stderr.readline()
        time.sleep(1)  # its first claim found nothing: it waits, listening
        with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
            messagebus.bus.handle(Pinged(n=5))
        committed = time.monotonic()
        while not Entry.objects.exists() and time.monotonic() - committed < 30:
            time.sleep(0.01)
        waited = time.monotonic() - committed
        worker.send_signal(signal.SIGTERM)  # noticed within a fraction of a second
        stopped = time.monotonic()
        worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert Entry.objects.filter(account="ping", amount=5).exists()
    # Far under the 60 s poll interval, with room for a busy machine.
    assert waited < 20, f"the delivery ran {waited:.2f}s after its commit, not at once"
    assert time.monotonic() - stopped < 20
    assert worker.returncode == 0


@server_database
def test_three_workers_drain_the_queue_though_one_is_killed_mid_batch(transactional_db):
    count = 5000
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}), transaction.atomic():
        for n in range(count):
            messagebus.bus.handle(Pinged(n=n))
    env = {
        **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "WARNING",
        "BUSAPP_CLAIM_TIMEOUT": "3", "BUSAPP_PING_SLEEP": "0.001",
    }  # fmt: skip
    command = [
        sys.executable, str(ROOT / "manage.py"), "messagebus", "worker",
        "--batch", "50", "--interval", "0.2",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while Delivery.objects.filter(status="done").count() < count // 3:
            assert time.monotonic() < deadline, "the workers made no headway"
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)  # its batch in hand is lost with it
        while Delivery.objects.exclude(status="done").exists():
            assert time.monotonic() < deadline, "deliveries were left undone"
            time.sleep(0.2)
    finally:
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
    assert workers[0].returncode == -signal.SIGKILL
    assert [w.returncode for w in workers[1:]] == [0, 0], [w.stderr.read() for w in workers]
    # Each handler's database work is there exactly once, its batch's lost work not at all.
    amounts = list(Entry.objects.order_by("amount").values_list("amount", flat=True))
    assert amounts == list(range(count))
    assert not Delivery.objects.filter(runs__gt=2).exists()
    assert Delivery.objects.filter(runs=2).count() <= 50  # at most the batch it held


@postgres_only
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
def test_a_transaction_that_stores_many_events_wakes_the_workers_once(transactional_db, prepared):
    """The wake-up rides in the statement that stores an event, and PostgreSQL delivers it
    once per committed transaction, and not for a savepoint rolled back."""
    import psycopg
    from django.test.utils import CaptureQueriesContext

    params = connection.settings_dict
    listener = psycopg.connect(
        dbname=params["NAME"], user=params["USER"] or None, password=params["PASSWORD"] or None,
        host=params["HOST"] or None, port=params["PORT"] or None, autocommit=True,
    )  # fmt: skip
    listener.execute("LISTEN messagebus")

    def heard() -> int:
        return len(list(listener.notifies(timeout=0.5)))

    settings = {"EXECUTOR": "worker", "PREPARED_STATEMENTS": prepared}
    with (
        listener,
        override_settings(MESSAGEBUS=settings),
        CaptureQueriesContext(connection) as queries,
    ):
        with messagebus.UnitOfWork() as uow:
            for n in range(5):
                uow.publish(Pinged(n=n))
            assert heard() == 0  # not before the commit
        assert heard() == 1
        with transaction.atomic():
            try:
                with messagebus.UnitOfWork() as uow:
                    uow.publish(Pinged(n=5))
                    raise RuntimeError("rolled back, with the wake-up it asked for")
            except RuntimeError:
                pass
        assert heard() == 0
        with transaction.atomic(), messagebus.UnitOfWork() as uow:
            uow.publish(Pinged(n=6))
        assert heard() == 1
    # No round trip of its own: each wake-up is sent with the statement that stores.
    notifies = [q["sql"] for q in queries if "notify" in q["sql"].lower()]
    assert len(notifies) == 7 and all(q.startswith("WITH event AS") for q in notifies)


@postgres_only
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
def test_the_storing_statement_is_prepared_once_per_connection(transactional_db, prepared):
    """PREPARED_STATEMENTS (the default): PostgreSQL plans the statement that stores an
    event once per connection and reuses it; without it, it is planned each time."""

    def stored_prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                ["WITH event AS (INSERT INTO %"],
            )
            return cursor.fetchone()[0]

    connection.close()  # a connection of its own: nothing prepared yet
    with override_settings(MESSAGEBUS={"PREPARED_STATEMENTS": prepared}):
        for n in range(4):
            with messagebus.UnitOfWork() as uow:
                uow.publish(Pinged(n=n))
        assert stored_prepared() == (1 if prepared else 0)
    assert sorted(Delivery.objects.values_list("event__payload__n", flat=True)) == [0, 1, 2, 3]
