"""Messages sent later: bus.schedule / bus.cancel, through the one delivery engine."""

import datetime as dt
import json
import os
import random
import sys
import time

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import SUCCESS, WARNING, get_messages
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import messagebus
from messagebus import executors
from messagebus.exceptions import HandlerNotFound, ScheduleError
from messagebus.models import Delivery, StoredEvent
from messagebus.outbox import next_due, states
from messagebus.testing import run_due
from tests.busapp.commands import Deposit, OpenAccount
from tests.busapp.events import Reminded
from tests.busapp.models import Account, Entry
from tests.conftest import ROOT, database_url, server_database
from tests.subprocesses import Watched


class Clock:
    """``timezone.now()`` as the bus reads it, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = timezone.now()
        monkeypatch.setattr(timezone, "now", lambda: self.now)

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch):
    return Clock(monkeypatch)


def reminders() -> list[int]:
    return sorted(Entry.objects.filter(account="reminder").values_list("amount", flat=True))


def test_a_scheduled_event_runs_once_due_and_not_before(messagebus_deliver, clock):
    message_id = messagebus.bus.schedule(Reminded(n=1), after=dt.timedelta(minutes=5))
    # Committed: the inline executor runs what a commit stores, but not this.
    assert reminders() == []
    row = Delivery.objects.get()
    assert (row.event_id, row.status, row.next_attempt_at) == (
        message_id, "pending", clock.now + dt.timedelta(minutes=5)
    )  # fmt: skip
    clock.advance(minutes=4, seconds=59)
    assert run_due() == 0
    assert reminders() == []
    clock.advance(seconds=1)
    assert run_due() == 1
    assert reminders() == [1]
    assert run_due() == 0  # once
    assert Delivery.objects.get().status == "done"


def test_a_rolled_back_schedule_is_never_sent(messagebus_deliver, clock):
    with pytest.raises(RuntimeError), transaction.atomic():
        messagebus.bus.schedule(Reminded(n=2), after=dt.timedelta(seconds=1))
        raise RuntimeError("the caller's transaction rolls back")
    assert not StoredEvent.objects.exists()
    clock.advance(hours=1)
    assert run_due() == 0
    assert reminders() == []


def test_a_schedule_joins_the_unit_of_work_it_is_made_in(messagebus_deliver, clock):
    with pytest.raises(RuntimeError), messagebus.UnitOfWork():
        messagebus.bus.handle(OpenAccount("una"))
        messagebus.bus.schedule(Deposit("una", 5), at=clock.now + dt.timedelta(days=1))
        raise RuntimeError("the whole unit of work rolls back")
    assert not Account.objects.exists()
    assert not StoredEvent.objects.exists()


def test_a_time_already_past_is_due_at_once(messagebus_deliver, clock):
    messagebus.bus.schedule(Reminded(n=3), at=clock.now - dt.timedelta(seconds=1))
    assert reminders() == [3]  # the inline executor ran it after the commit


def test_a_cancelled_message_is_never_delivered(messagebus_deliver, clock):
    kept = messagebus.bus.schedule(Reminded(n=4), after=dt.timedelta(seconds=30))
    dropped = messagebus.bus.schedule(Reminded(n=5), after=dt.timedelta(seconds=30))
    assert messagebus.bus.cancel(dropped) is True
    assert messagebus.bus.cancel(str(dropped)) is False  # cancelled already
    clock.advance(minutes=1)
    assert run_due() == 1
    assert reminders() == [4]
    assert messagebus.bus.cancel(kept) is False  # it ran
    row = Delivery.objects.get(event_id=dropped)
    assert (row.status, row.attempts, row.last_error) == ("discarded", 0, states.CANCELLED)


def test_cancel_inside_a_rolled_back_transaction_cancels_nothing(messagebus_deliver, clock):
    message_id = messagebus.bus.schedule(Reminded(n=6), after=dt.timedelta(seconds=30))
    with pytest.raises(RuntimeError), transaction.atomic():
        assert messagebus.bus.cancel(message_id)
        raise RuntimeError("changed our mind")
    clock.advance(minutes=1)
    assert run_due() == 1
    assert reminders() == [6]


def test_schedule_refuses_what_it_cannot_do(db):
    with pytest.raises(ScheduleError, match="one of at="):
        messagebus.bus.schedule(Reminded(n=1))
    with pytest.raises(ScheduleError, match="one of at="):
        messagebus.bus.schedule(Reminded(n=1), at=timezone.now(), after=dt.timedelta(1))
    with pytest.raises(ScheduleError, match="time zone"):
        messagebus.bus.schedule(Reminded(n=1), at=dt.datetime(2030, 1, 1))  # naive
    with pytest.raises(ScheduleError, match="not a message id"):
        messagebus.bus.cancel("tomorrow")

    class Unhandled(messagebus.Command):
        pass

    with pytest.raises(HandlerNotFound):
        messagebus.bus.schedule(Unhandled(), after=dt.timedelta(1))
    assert not StoredEvent.objects.exists()


def test_a_scheduled_command_runs_its_handler_in_a_unit_of_work(messagebus_deliver, clock):
    messagebus.bus.handle(OpenAccount("ada"))
    command = Deposit("ada", 7)
    messagebus.bus.schedule(command, after=dt.timedelta(hours=1))
    row = Delivery.objects.get(event_id=command.message_id)
    # A delivery of the command to its one handler.
    assert (row.event.type, row.handler) == ("busapp.Deposit", "tests.busapp.handlers.deposit")
    assert Account.objects.get().balance == 0
    clock.advance(hours=1)
    run_due()
    assert Account.objects.get().balance == 7
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("done", 1)
    # The events the command recorded were delivered in turn, with its correlation.
    deposited = StoredEvent.objects.get(type="busapp.Deposited")
    assert deposited.correlation_id == command.correlation_id
    assert deposited.causation_id == command.message_id
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


def test_a_failing_scheduled_command_is_retried_then_dead_then_replayed(
    messagebus_deliver, clock, settings
):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "RETRY_ATTEMPTS": 2, "MAX_DELIVERIES": 2}
    messagebus.bus.schedule(Deposit("bob", 3), after=dt.timedelta(minutes=1))  # no account yet
    clock.advance(minutes=1)
    run_due()  # run 1: two calls, both fail
    row = Delivery.objects.get()
    assert (row.status, row.attempts, row.runs) == ("pending", 2, 1)
    assert "DoesNotExist" in row.last_error
    clock.advance(hours=2)  # past the redelivery delay
    run_due()  # run 2: dead
    row.refresh_from_db()
    assert (row.status, row.attempts, row.runs) == ("dead", 4, 2)
    assert messagebus.bus.cancel(row.event_id) is False  # it ran
    messagebus.bus.handle(OpenAccount("bob"))
    assert executors.retry("default", [row.pk]) == 1  # the admin's or the command line's retry
    row.refresh_from_db()
    assert row.status == "done"
    assert Account.objects.get(name="bob").balance == 3


def test_a_scheduled_command_whose_handler_is_renamed_waits_for_one_that_has_it(
    messagebus_deliver, clock, messagebus_registry
):
    messagebus.bus.schedule(Deposit("cy", 1), after=dt.timedelta(seconds=1))
    messagebus_registry.unregister(messagebus_registry.command_handler(Deposit).func)

    def deposit_elsewhere(cmd: Deposit) -> None:
        raise AssertionError("a handler of another name is not the one it was stored for")

    messagebus_registry.register(Deposit, deposit_elsewhere)
    clock.advance(seconds=2)
    run_due()
    row = Delivery.objects.get()
    assert (row.status, row.attempts) == ("pending", 0)
    assert row.last_error.startswith("waiting: no handler")


def test_the_next_due_time_is_that_of_the_soonest_scheduled_delivery(db, clock):
    assert next_due("default") is None
    messagebus.bus.schedule(Reminded(n=1), after=dt.timedelta(seconds=90))
    messagebus.bus.schedule(Reminded(n=2), after=dt.timedelta(seconds=30))
    assert next_due("default") == clock.now + dt.timedelta(seconds=30)


@override_settings(MESSAGEBUS={"EXECUTOR": "worker"})
def test_status_says_how_many_are_scheduled_and_when_the_next_is_due(db, clock, capsys):
    soon = clock.now + dt.timedelta(minutes=10)
    messagebus.bus.schedule(Reminded(n=1), at=soon)
    messagebus.bus.schedule(Reminded(n=2), at=soon + dt.timedelta(hours=1))
    call_command("messagebus", "status")
    out = capsys.readouterr().out
    assert f"2 scheduled, next due at {soon.isoformat()}." in out
    call_command("messagebus", "status", "--json")
    report = json.loads(capsys.readouterr().out)
    assert (report["scheduled"], report["next_scheduled_at"]) == (2, soon.isoformat())
    assert report["statuses"]["pending"] == 2
    assert report["due"] == 0


@pytest.mark.django_db(transaction=True)
def test_the_admin_lists_scheduled_deliveries_with_their_due_time_and_cancels_one(
    admin_client, clock
):
    later = messagebus.bus.schedule(Reminded(n=8), after=dt.timedelta(hours=3))
    messagebus.bus.handle(Reminded(n=9))  # delivered at once: not scheduled
    url = reverse("admin:messagebus_delivery_changelist")
    listed = admin_client.get(url, {"when": "scheduled"})
    assert listed.context["cl"].result_count == 1
    assert "column-next_attempt" in listed.content.decode()
    row = Delivery.objects.get(event_id=later)
    page = admin_client.get(reverse("admin:messagebus_delivery_change", args=[row.pk]))
    cancel = reverse("admin:messagebus_delivery_cancel", args=[row.pk])
    assert cancel in page.content.decode()
    response = admin_client.post(cancel, follow=True)
    said = [(m.level, m.message) for m in get_messages(response.wsgi_request)]
    assert said == [(SUCCESS, f"Cancelled {later}: its deliveries will not run.")]
    row.refresh_from_db()
    assert row.status == "discarded"
    page = admin_client.get(reverse("admin:messagebus_delivery_change", args=[row.pk]))
    assert cancel not in page.content.decode()  # nothing left to cancel
    response = admin_client.post(cancel, follow=True)
    said = [(m.level, m.message) for m in get_messages(response.wsgi_request)]
    assert said == [(WARNING, f"Delivery {row.pk} is discarded and started already: "
                              "nothing to cancel.")]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_only_whoever_may_retry_deliveries_may_cancel_one(client, django_user_model, clock):
    later = messagebus.bus.schedule(Reminded(n=8), after=dt.timedelta(hours=3))
    row = Delivery.objects.get(event_id=later)
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(user)
    page = client.get(reverse("admin:messagebus_delivery_change", args=[row.pk]))
    cancel = reverse("admin:messagebus_delivery_cancel", args=[row.pk])
    assert page.status_code == 200
    assert cancel not in page.content.decode()
    assert client.post(cancel).status_code == 403
    row.refresh_from_db()
    assert row.status == "pending"


def worker(log, *options: str) -> Watched:
    """A worker subprocess on the test database, noting each reminder in ``log``."""
    env = {
        **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
        "MESSAGEBUS_EXECUTOR": "worker", "BUSAPP_REMINDER_LOG": str(log),
    }  # fmt: skip
    command = [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", *options]
    return Watched(command, env=env, ready="started", what="a worker")


def runs(log) -> dict[int, list[float]]:
    """When each reminder ran, by its number, from a log of "n time pid" lines."""
    found: dict[int, list[float]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        n, ran, _ = line.split()
        found.setdefault(int(n), []).append(float(ran))
    return found


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_an_idle_worker_wakes_when_a_scheduled_message_falls_due(tmp_path):
    """Its poll interval is half a minute: it wakes at the due time instead."""
    log = tmp_path / "reminders.log"
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        messagebus.bus.schedule(Reminded(n=1), after=dt.timedelta(seconds=3))
    due = Delivery.objects.get().next_attempt_at.timestamp()
    started = worker(log, "--interval", "30")
    try:
        wait_for(lambda: 1 in runs(log), 30)
    finally:
        code, output = started.stop()
    assert code == 0, output
    (ran,) = runs(log)[1]
    assert 0 <= ran - due < 2, f"ran {ran - due:+.3f}s from its due time"


@server_database
@pytest.mark.django_db(transaction=True)
def test_a_thousand_scheduled_messages_run_once_on_time_and_the_cancelled_never(tmp_path):
    """Scheduled 2 s ahead while two workers wait, a fifth of them cancelled before they
    fall due: each of the others runs once, none early, 95% within a second."""
    log = tmp_path / "reminders.log"
    workers = [worker(log), worker(log)]
    cancelled: set[int] = set()
    try:
        time.sleep(0.5)  # both idle, listening
        with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
            for first in range(0, 1000, 50):
                ids = {}
                with transaction.atomic():
                    for n in range(first, first + 50):
                        ids[n] = messagebus.bus.schedule(
                            Reminded(n=n), after=dt.timedelta(seconds=2)
                        )
                for n in random.sample(sorted(ids), 10):
                    assert messagebus.bus.cancel(ids[n]), f"{n} ran before it was cancelled"
                    cancelled.add(n)
        kept = set(range(1000)) - cancelled
        wait_for(lambda: len(runs(log)) >= len(kept), 60)
        time.sleep(1)  # any run twice, or cancelled, would show by now
    finally:
        outcomes = [w.stop() for w in workers]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    ran = runs(log)
    assert set(ran) == kept
    assert all(len(times) == 1 for times in ran.values())
    due = {
        n: at.timestamp()
        for n, at in Delivery.objects.filter(status="done").values_list(
            "event__payload__n", "next_attempt_at"
        )
    }
    late = sorted(ran[n][0] - due[n] for n in kept)
    p95 = late[int(len(late) * 0.95)]
    figures = (
        f"lateness over {len(late)} runs: min {late[0]:.3f}s, median "
        f"{late[len(late) // 2]:.3f}s, p95 {p95:.3f}s, max {late[-1]:.3f}s"
    )
    print(figures)  # noqa: T201  (the figures measured, shown by pytest -s)
    assert late[0] >= 0, f"ran {-late[0]:.3f}s early"
    assert p95 < 1.0, f"p95 lateness {p95:.3f}s"
    assert Delivery.objects.filter(status="discarded").count() == len(cancelled) == 200
