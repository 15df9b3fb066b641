"""Process managers: an instance started by a message, found by its key in later ones,
its steps sent through the outbox with its state, compensated last first, timed out."""

import os
import sys
import time
from dataclasses import dataclass

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import messagebus
from messagebus import executors
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, ProcessEntry, ProcessInstance
from messagebus.testing import run_due
from tests.busapp.models import Entry
from tests.busapp.processes import (
    FLAKY_CALLED,
    BookTrip,
    PaymentOverdue,
    Trip,
    TripPaid,
)
from tests.conftest import ROOT, database_url
from tests.subprocesses import Watched

TRIP = "tests.busapp.processes.Trip"


def notes(trip: str = "t1") -> list[str]:
    return list(Entry.objects.filter(account=trip).order_by("id").values_list("note", flat=True))


def instance(trip: str = "t1") -> ProcessInstance:
    return ProcessInstance.objects.get(name=TRIP, key=trip)


def history(trip: str = "t1") -> list[tuple[str, str, str]]:
    rows = ProcessEntry.objects.filter(process__key=trip).order_by("id")
    return [
        (kind, type_name.rpartition(".")[2], outcome)
        for kind, type_name, outcome in rows.values_list("kind", "message_type", "outcome")
    ]


@pytest.mark.usefixtures("messagebus_deliver")
class TestInline:
    def test_steps_run_one_after_another_and_the_process_finishes_once_paid(self):
        messagebus.bus.handle(BookTrip("t1", ("a", "b")))
        assert notes() == ["reserved a", "reserved b"]
        assert instance().status == "running"

        messagebus.bus.handle(TripPaid("t1"))

        found = instance()
        assert (found.status, found.state["seats"]) == ("finished", ["seat-a", "seat-b"])
        assert found.finished_at is not None and found.timed_out_at is None
        assert history() == [
            ("handled", "BookTrip", "done"),
            ("timeout", "PaymentOverdue", "cancelled"),
            ("step", "Reserve", "done"),
            ("step", "Reserve", "done"),
            ("handled", "TripPaid", "done"),
        ]
        overdue = Delivery.objects.get(event__type__endswith="PaymentOverdue")
        assert overdue.status == "discarded"

    def test_a_step_rejected_compensates_the_steps_done_last_first(self):
        messagebus.bus.handle(BookTrip("t1", ("a", "b", "full")))

        assert notes() == ["reserved a", "reserved b", "cancelled b", "cancelled a"]
        found = instance()
        assert found.status == "compensated"
        assert found.reason == "Reserve failed: no seats on full"
        assert history()[-5:] == [
            ("step", "Reserve", "compensated"),
            ("step", "Reserve", "compensated"),
            ("step", "Reserve", "failed"),
            ("compensation", "CancelReservation", "done"),
            ("compensation", "CancelReservation", "done"),
        ]

    def test_a_step_that_fails_for_a_while_is_retried_not_compensated(self, settings):
        settings.MESSAGEBUS = {**settings.MESSAGEBUS, "RETRY_WAIT": 0}
        FLAKY_CALLED.discard("t1")
        messagebus.bus.handle(BookTrip("t1", ("flaky", "b")))
        assert notes() == []  # its first call failed

        run_due()

        assert notes() == ["reserved flaky", "reserved b"]
        assert instance().status == "running"

    def test_a_step_whose_delivery_dies_compensates(self, settings):
        settings.MESSAGEBUS = {**settings.MESSAGEBUS, "RETRY_ATTEMPTS": 1, "MAX_DELIVERIES": 1}
        messagebus.bus.handle(BookTrip("t1", ("a", "broken")))

        assert notes() == ["reserved a", "cancelled a"]
        found = instance()
        assert found.status == "compensated"
        assert "broken is down" in found.reason
        # The process took the failure over: its delivery is done, not dead.
        assert not Delivery.objects.filter(status="dead").exists()

    def test_its_timeout_fails_it_and_marks_it_timed_out(self):
        messagebus.bus.handle(BookTrip("t1", ("a",)))
        Delivery.objects.filter(event__type__endswith="PaymentOverdue").update(
            next_attempt_at=timezone.now()
        )

        run_due()

        found = instance()
        assert (found.status, found.reason) == ("compensated", "payment overdue")
        assert found.timed_out_at is not None
        assert notes() == ["reserved a", "cancelled a"]

    def test_its_state_and_the_commands_it_sends_commit_together_or_not_at_all(self):
        with pytest.raises(RuntimeError, match="exploded"):
            messagebus.bus.handle(BookTrip("t1", ("explode",)))

        assert not ProcessInstance.objects.exists()
        assert not Delivery.objects.exists()
        assert notes() == []

    def test_a_second_start_and_a_message_for_no_instance_are_refused(self):
        messagebus.bus.handle(BookTrip("t1", ("a",)))

        with pytest.raises(messagebus.ProcessAlreadyStarted, match="t1 has started already"):
            messagebus.bus.handle(BookTrip("t1", ("b",)))
        with pytest.raises(messagebus.ProcessNotFound, match=r"No .*Trip t2 has started"):
            messagebus.bus.handle(PaymentOverdue("t2"))

    def test_a_finished_process_sends_nothing_more(self):
        messagebus.bus.handle(BookTrip("t1", ()))
        messagebus.bus.handle(TripPaid("t1"))

        assert instance().status == "finished"
        with (
            messagebus.UnitOfWork() as uow,
            pytest.raises(messagebus.ProcessNotRunning, match="finished: it cannot fail"),
        ):
            Trip(instance(), uow).fail("too late")


def test_a_step_done_after_its_process_failed_is_compensated_too(db):
    with executors.use(WorkerExecutor()):  # nothing runs until run_due
        messagebus.bus.handle(BookTrip("t1", ("a",)))
        messagebus.bus.handle(PaymentOverdue("t1"))  # before the step ran
        assert instance().status == "compensating"

        run_due()

    assert notes() == ["reserved a", "cancelled a"]
    assert instance().status == "compensated"


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_compensation_leaves_it_to_the_next_which_finishes_it(tmp_path):
    log = tmp_path / "hang.log"
    with override_settings(MESSAGEBUS={"EXECUTOR": "worker"}):
        messagebus.bus.handle(BookTrip("t1", ("a", "b", "full")))
    env = {
        **os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO",
        "MESSAGEBUS_EXECUTOR": "worker", "BUSAPP_CLAIM_TIMEOUT": "2",
    }  # fmt: skip
    command = [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", "--interval", "0.2"]
    first = Watched(command, env={**env, "BUSAPP_TRIP_HANG": str(log)}, ready="started",
                    what="a worker")  # fmt: skip
    try:
        wait_for(lambda: log.exists() and "cancelling b" in log.read_text())
    finally:
        first.kill()  # in the middle of the first compensation
    assert instance().status == "compensating"
    second = Watched(command, env=env, ready="started", what="a worker")
    try:
        wait_for(lambda: instance().status == "compensated")
    finally:
        code, output = second.stop()
    assert code == 0, output
    assert notes() == ["reserved a", "reserved b", "cancelled b", "cancelled a"]


def wait_for(predicate, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


@dataclass(frozen=True)
class Begin(messagebus.Command):
    trip: str


@dataclass(frozen=True)
class Cancelled(messagebus.Event):
    booking: str


def test_check_reports_a_message_without_the_key(messagebus_registry):
    class Other(messagebus.ProcessManager):
        key = "trip"

        @messagebus.starts
        def begin(self, cmd: Begin) -> None: ...

        @messagebus.handles
        def cancelled(self, event: Cancelled) -> None: ...

    messagebus.process_manager(Other)

    with pytest.raises(
        SystemCheckError, match=r"messagebus\.E009.*Cancelled, which has no field 'trip'"
    ):
        call_command("check")


@pytest.mark.usefixtures("messagebus_deliver")
def test_the_admin_lists_processes_by_status_and_shows_each_ones_history(admin_client):
    messagebus.bus.handle(BookTrip("t1", ("a", "full")))
    messagebus.bus.handle(BookTrip("t2", ("a",)))
    changelist = reverse("admin:messagebus_processinstance_changelist")

    page = admin_client.get(changelist, {"status": "compensated"}).content.decode()
    assert "t1" in page and "t2" not in page
    assert (
        "t2"
        in admin_client.get(changelist, {"timed_out": "no", "status": "running"}).content.decode()
    )

    page = admin_client.get(
        reverse("admin:messagebus_processinstance_change", args=[instance().pk])
    )
    text = page.content.decode()
    assert "Reserve failed: no seats on full" in text
    assert "busapp.CancelReservation" in text and "compensated" in text
    assert "Add process" not in text and "Delete" not in text  # machine-written


class Nameless(messagebus.ProcessManager):
    @messagebus.starts
    def begin(self, cmd: Begin) -> None: ...


class Unstarted(messagebus.ProcessManager):
    key = "trip"

    @messagebus.handles
    def begin(self, cmd: Begin) -> None: ...


class Unannotated(messagebus.ProcessManager):
    key = "trip"

    @messagebus.starts
    def begin(self, cmd) -> None: ...


@pytest.mark.parametrize(
    ("process", "error"),
    [
        (Nameless, "Nameless names no key: set key = 'field'"),
        (Unstarted, "Unstarted has no method marked @messagebus.starts"),
        (Unannotated, "Unannotated.begin must take self and one command or event"),
    ],
    ids=["no key", "nothing starts it", "a message not annotated"],
)
def test_registration_refuses_a_process_it_could_not_run(messagebus_registry, process, error):
    with pytest.raises(messagebus.RegistrationError, match=error):
        messagebus.process_manager(process)
