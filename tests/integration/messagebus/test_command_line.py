"""``manage.py messagebus``: Django's options anywhere, help, and one clear line when the
database cannot be used."""

import logging
import os
import subprocess
import sys

import pytest
from django.db import DataError, OperationalError

from messagebus.outbox import states
from messagebus.processes import process
from messagebus.processes.worker import Worker
from tests.conftest import ROOT

UNREACHABLE = "postgres://root@127.0.0.1:1/test"  # nothing listens on port 1


def manage(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [("messagebus", "status"), ("messagebus", "worker", "--once"), ("messagebus", "retry", "1")],
)
def test_an_unreachable_database_is_one_line_and_a_failure(args):
    done = manage(*args, database_url=UNREACHABLE)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("CommandError")]
    assert line.startswith("CommandError: Cannot use the database 'default': connection failed")


def test_a_database_never_migrated_says_so(tmp_path):
    done = manage("messagebus", "status", database_url=f"sqlite:///{tmp_path / 'new.sqlite3'}")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("no such table: messagebus_delivery")


def test_djangos_options_work_after_the_action(manage):
    done = manage("messagebus", "worker", "--once", "-v", "2", "--settings", "tests.settings")
    assert done.returncode == 0, done.stderr
    assert "Processed 0 deliveries." in done.stdout


def test_each_action_describes_itself(manage):
    retry = manage("messagebus", "retry", "--help").stdout
    assert "Run dead (or waiting) deliveries again." in retry
    assert "Ids of the deliveries" in retry
    worker = manage("messagebus", "worker", "--help").stdout
    assert "--limit N" in worker and "Exit after N deliveries." in worker
    assert "--max-deliveries" not in worker  # MAX_DELIVERIES is a setting: runs before dead


def test_a_worker_backs_off_from_an_unreachable_database(transactional_db, monkeypatch, caplog):
    monkeypatch.setattr(process, "BACKOFF", 0.01)
    worker = Worker(poll_interval=0)
    tries = []

    def unreachable(*args, **kwargs):
        tries.append(1)
        if len(tries) <= 4:
            raise OperationalError("connection refused\nIs the server running?")
        worker.stop()  # the database is back: enough
        return []

    monkeypatch.setattr(states, "claim", unreachable)
    waits = []
    real_wait = worker.stopping.wait

    def wait(seconds):
        waits.append(seconds)
        return real_wait(0)

    monkeypatch.setattr(worker.stopping, "wait", wait)
    with caplog.at_level(logging.INFO, logger="messagebus"):
        worker.run()
    assert waits == [0.01, 0.02, 0.04, 0.08]  # doubling, from BACKOFF
    failures = [r for r in caplog.records if "cannot reach the outbox" in r.getMessage()]
    assert len(failures) == 4
    assert [bool(r.exc_info) for r in failures] == [False] * 4  # refused: the line says it all
    assert all("connection refused" in r.getMessage() for r in failures)
    assert all("Is the server running" not in r.getMessage() for r in failures)  # one line
    assert "reached the outbox again" in caplog.text


def test_an_unexpected_database_error_is_logged_with_its_traceback_once(
    transactional_db, monkeypatch, caplog
):
    monkeypatch.setattr(process, "BACKOFF", 0.01)
    worker = Worker(poll_interval=0)
    tries = []

    def odd(*args, **kwargs):
        tries.append(1)
        if len(tries) <= 2:
            raise DataError("value out of range")
        worker.stop()
        return []

    monkeypatch.setattr(states, "claim", odd)
    with caplog.at_level(logging.INFO, logger="messagebus"):
        worker.run()
    failures = [r for r in caplog.records if "cannot reach the outbox" in r.getMessage()]
    assert [bool(r.exc_info) for r in failures] == [True, False]


def test_a_worker_stops_on_a_misconfiguration_rather_than_waiting(transactional_db, monkeypatch):
    def missing(*args, **kwargs):
        raise OperationalError('database "nosuchdb" does not exist')

    monkeypatch.setattr(states, "claim", missing)
    with pytest.raises(OperationalError):
        Worker(poll_interval=0).run()


def test_retry_by_handler_says_it_retries_the_dead_and_pending_makes_the_waiting_due(
    transactional_db,
):
    from datetime import timedelta
    from io import StringIO

    from django.core.management import CommandError, call_command
    from django.test import override_settings
    from django.utils import timezone

    import messagebus
    from messagebus.models import Delivery
    from tests.busapp.events import Pinged

    def retry(*args: str) -> str:
        out = StringIO()
        call_command("messagebus", "retry", *args, stdout=out)
        return out.getvalue()

    handler = "tests.busapp.handlers.record_ping"
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        for n in range(2):
            messagebus.bus.handle(Pinged(n=n))
    later = timezone.now() + timedelta(hours=1)
    Delivery.objects.update(next_attempt_at=later)  # waiting for their next try
    running = Delivery.objects.create(
        event=Delivery.objects.first().event, handler="tests.elsewhere", lease_until=later
    )

    assert retry("--handler", handler) == (
        f"Nothing to retry. --handler retries dead deliveries: none to {handler} is dead. "
        "Pending to it: 2 deliveries; add --pending to make them due now.\n"
    )
    assert "Requeued 2 deliveries." in retry("--handler", handler, "--pending")
    assert all(row.next_attempt_at < later for row in Delivery.objects.filter(handler=handler))
    assert retry("--handler", "tests.elsewhere", "--pending") == (
        "Nothing to retry. No delivery to tests.elsewhere is pending.\n"
    )  # the one running is left to its runner
    running.refresh_from_db()
    assert running.lease_until == later
    with pytest.raises(CommandError, match="--pending goes with --handler"):
        retry("--all-dead", "--pending")
