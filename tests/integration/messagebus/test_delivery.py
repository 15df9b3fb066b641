"""Retries, rescheduling, dead letters and the commands that show and revive them."""

import logging
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

import messagebus
from messagebus.models import Delivery, StoredEvent
from messagebus.processes.worker import Worker
from messagebus.testing import run_due
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Deposited, Opened, Pinged
from tests.busapp.models import Account, Entry

pytestmark = pytest.mark.django_db(transaction=True)
BUS = {"RETRY_WAIT": 0, "RETRY_WAIT_MAX": 0, "SWEEP_INTERVAL": 0}


class Flaky:
    """An event handler that fails its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self, event: Opened) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"mail server down (call {self.calls})")
        Entry.objects.create(account=event.name, amount=0, note="welcome")


@pytest.fixture
def flaky(messagebus_registry):
    def install(failures: int) -> Flaky:
        handler = Flaky(failures)

        def send_welcome(event: Opened) -> None:
            handler(event)

        messagebus_registry.register(None, send_welcome)
        return handler

    return install


def delivery() -> Delivery:
    return Delivery.objects.get(handler__endswith="send_welcome")


def run(*args: str) -> str:
    out = StringIO()
    call_command("messagebus", *args, stdout=out)
    return out.getvalue()


def test_a_handler_that_fails_twice_then_succeeds_ends_done(flaky, caplog):
    handler = flaky(failures=2)
    with caplog.at_level(logging.WARNING, logger="messagebus"):
        messagebus.bus.handle(OpenAccount("alice"))
        # The request made one call; the next is due (at once: RETRY_WAIT is 0).
        assert handler.calls == 1
        row = delivery()
        assert (row.status, row.attempts, row.runs, row.calls) == ("pending", 1, 0, 1)
        assert row.lease_until is None and row.next_attempt_at <= timezone.now()
        assert run_due() == 2
    assert handler.calls == 3
    row = delivery()
    assert (row.status, row.attempts, row.runs) == ("done", 3, 1)
    assert "mail server down (call 2)" in row.last_error
    assert Entry.objects.filter(note="welcome").count() == 1
    failures = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert len(failures) == 2
    # A call that fails inside a run that then succeeds is one line, no traceback.
    assert all(
        not r.exc_info and "send_welcome" in r.getMessage() and "busapp.Opened" in r.getMessage()
        for r in failures
    )


@override_settings(MESSAGEBUS={**BUS, "REDELIVERY_DELAY": 10, "REDELIVERY_DELAY_MAX": 15})
def test_a_failed_run_is_rescheduled_with_a_growing_delay(flaky):
    handler = flaky(failures=100)
    before = timezone.now()
    messagebus.bus.handle(OpenAccount("bob"))
    run_due()
    row = delivery()
    assert (row.status, row.attempts, row.runs, row.calls) == ("pending", 3, 1, 0)
    assert (
        before + timedelta(seconds=10)
        <= row.next_attempt_at
        <= timezone.now() + timedelta(seconds=10)
    )
    assert "ConnectionError: mail server down (call 3)" in row.last_error
    assert "Traceback" in row.traceback

    Delivery.objects.update(next_attempt_at=timezone.now())
    assert Worker(once=True).run() == 3  # its second run: three calls, one a claim
    row = delivery()
    assert (row.attempts, row.runs, handler.calls) == (6, 2, 6)
    assert row.next_attempt_at >= timezone.now() + timedelta(seconds=14)  # 20s, capped at 15


@override_settings(MESSAGEBUS={**BUS, "MAX_DELIVERIES": 2, "REDELIVERY_DELAY": 0})
def test_a_handler_that_always_fails_ends_dead_and_can_be_retried(flaky):
    handler = flaky(failures=6)
    messagebus.bus.handle(OpenAccount("carol"))
    assert Account.objects.filter(name="carol").exists()  # the command's data stays
    assert delivery().status == "pending"

    assert Worker(once=True).run() == 5  # the calls left of its two runs
    row = delivery()
    assert (row.status, row.runs, row.attempts) == ("dead", 2, 6)
    assert Worker(once=True).run() == 0  # a dead delivery is left alone

    status = run("status")
    assert "Dead       1" in status
    assert "send_welcome: builtins.ConnectionError: mail server down (call 6)" in status

    output = run("retry", str(row.pk))
    assert "Requeued 1 delivery." in output
    assert "done: 1" in output
    row = delivery()
    assert (row.status, handler.calls) == ("done", 7)
    assert Entry.objects.filter(note="welcome").count() == 1


@override_settings(MESSAGEBUS={**BUS, "MAX_DELIVERIES": 1})
def test_retry_all_dead_or_by_handler(flaky):
    flaky(failures=3)
    messagebus.bus.handle(OpenAccount("dan"))
    run_due()
    assert delivery().status == "dead"
    assert "Nothing to retry." in run("retry", "--handler", "nope.nothing")
    assert "done: 1" in run("retry", "--all-dead")
    assert delivery().status == "done"


def test_retry_refuses_unknown_and_finished_deliveries():
    messagebus.bus.handle(Deposited(name="erin", amount=1))
    with pytest.raises(CommandError, match="No delivery with id 999999"):
        run("retry", "999999")
    done = Delivery.objects.filter(status="done").first()
    with pytest.raises(CommandError, match="is done; only dead or pending"):
        run("retry", str(done.pk))


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_with_the_worker_executor_deliveries_wait_for_a_worker():
    messagebus.bus.handle(Deposited(name="fay", amount=1))
    assert list(Delivery.objects.values_list("status", flat=True)) == ["pending", "pending"]
    assert not Entry.objects.exists()
    assert Worker(once=True).run() == 3  # and the Audited event the first ones recorded
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}
    assert Entry.objects.count() == 2


def test_an_event_that_cannot_be_decoded_is_dead_with_the_reason():
    event = StoredEvent.objects.create(
        id="00000000-0000-0000-0000-000000000001",
        type="busapp.Opened",
        payload={"name": 42},
        correlation_id="00000000-0000-0000-0000-000000000001",
    )
    bad = Delivery.objects.create(event=event, handler="tests.busapp.handlers.anything")
    gone = StoredEvent.objects.create(
        id="00000000-0000-0000-0000-000000000002",
        type="busapp.Vanished",
        payload={},
        correlation_id="00000000-0000-0000-0000-000000000002",
    )
    unknown = Delivery.objects.create(event=gone, handler="tests.busapp.handlers.anything")
    assert Worker(once=True).run() == 2
    bad.refresh_from_db()
    unknown.refresh_from_db()
    assert bad.status == unknown.status == "dead"
    assert (
        bad.last_error == "cannot decode the event: Opened: Expected `str`, got `int` - at `$.name`"
    )
    assert "no message class is registered under the type 'busapp.Vanished'" in unknown.last_error


def stored_for_a_handler_not_here(age: timedelta) -> Delivery:
    event = StoredEvent.objects.create(
        id="00000000-0000-0000-0000-000000000003",
        type="busapp.Opened",
        payload={"name": "x"},
        correlation_id="00000000-0000-0000-0000-000000000003",
    )
    return Delivery.objects.create(
        event=event,
        handler="tests.busapp.handlers.deployed_elsewhere",
        created_at=timezone.now() - age,
    )


def test_a_delivery_whose_handler_this_process_lacks_waits_for_one_that_has_it(caplog):
    row = stored_for_a_handler_not_here(timedelta(hours=1))
    with caplog.at_level(logging.WARNING, logger="messagebus"):
        assert Worker(once=True).run() == 1
        Delivery.objects.update(next_attempt_at=timezone.now())
        assert Worker(once=True).run() == 1
    row.refresh_from_db()
    assert (row.status, row.runs, row.attempts, row.lease_until) == ("pending", 0, 0, None)
    assert row.next_attempt_at >= timezone.now() + timedelta(seconds=55)  # looked at again
    assert row.last_error == (
        "waiting: no handler tests.busapp.handlers.deployed_elsewhere is registered in this process"
    )
    warned = [r for r in caplog.records if "No handler" in r.getMessage()]
    assert len(warned) == 1  # once a minute per handler, however many deliveries
    assert "1 delivery waits for a handler no running worker has." in run("status")
    from messagebus.ops.health import check

    status, report = check("default")
    assert (status, report["outbox"]["waiting_for_a_handler"]) == ("degraded", 1)
    assert report["reasons"] == ["1 delivery waits for a handler no running worker has"]


@override_settings(MESSAGEBUS={**BUS, "HANDLER_WAIT": 3600})
def test_a_delivery_whose_handler_no_process_took_on_in_time_is_dead_with_the_reason():
    row = stored_for_a_handler_not_here(timedelta(hours=1, seconds=1))
    Worker(once=True).run()
    row.refresh_from_db()
    assert row.status == "dead"
    assert row.last_error == (
        "no handler tests.busapp.handlers.deployed_elsewhere is registered in this process, "
        "nor in any that took it on within 3600s"
    )


def test_prune_deletes_old_finished_deliveries_and_their_events():
    messagebus.bus.handle(Deposited(name="gus", amount=1))
    pending = StoredEvent.objects.create(
        id="00000000-0000-0000-0000-000000000004",
        type="busapp.Opened",
        payload={"name": "y"},
        correlation_id="00000000-0000-0000-0000-000000000004",
    )
    Delivery.objects.create(
        event=pending, handler="h", next_attempt_at=timezone.now() + timedelta(days=1)
    )
    old = timezone.now() - timedelta(days=40)
    Delivery.objects.filter(status="done").update(finished_at=old)
    StoredEvent.objects.update(created_at=old)
    assert "Would delete 3 deliveries and 2 events" in run("prune", "--days", "30", "--dry-run")
    assert StoredEvent.objects.count() == 3  # a dry run deletes nothing
    assert "Deleted 3 deliveries and 2 events" in run("prune", "--days", "30")
    assert [str(pk) for pk in StoredEvent.objects.values_list("pk", flat=True)] == [pending.pk]


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"})
def test_a_worker_rides_out_a_database_error(monkeypatch, caplog):
    from django.db import OperationalError

    from messagebus.outbox import states

    messagebus.bus.handle(Deposited(name="hal", amount=1))
    real_claim, calls = states.claim, []

    def flaky_claim(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(states, "claim", flaky_claim)
    with caplog.at_level(logging.ERROR, logger="messagebus"):
        assert Worker(poll_interval=0, limit=2).run() == 2
    assert "cannot reach the outbox" in caplog.text
    assert Entry.objects.filter(note="deposited").count() == 1


def test_a_claim_leases_the_delivery_and_a_release_hands_it_back():
    from messagebus.outbox import states

    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker", "CLAIM_TIMEOUT": 120}):
        messagebus.bus.handle(Pinged(n=1))
        before = timezone.now()
        [claim] = states.claim("default", limit=5)
    stored = Delivery.objects.get()
    assert (claim.runs, stored.runs) == (0, 0)  # a run is counted when it ends
    assert stored.lease_until >= before + timedelta(seconds=119)
    assert stored.next_attempt_at <= before  # still due from when it was stored
    assert states.claim("default", limit=5) == []  # leased: not due

    states.released("default", [claim])
    stored.refresh_from_db()
    assert stored.runs == 0 and stored.lease_until is None
    assert [c.id for c in states.claim("default", limit=5)] == [stored.pk]


@override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker", "MAX_DELIVERIES": 3})
def test_a_delivery_whose_runs_never_finish_ends_dead(caplog):
    messagebus.bus.handle(Pinged(n=2))
    lapsed = timezone.now() - timedelta(seconds=1)
    Delivery.objects.update(runs=1, lease_until=lapsed)  # a worker claimed it and died
    assert Worker(once=True).run() == 1  # the lost run is counted; it runs again
    assert Delivery.objects.get().runs == 2 + 1  # the lost run, and this one
    assert Entry.objects.count() == 1

    messagebus.bus.handle(Pinged(n=3))
    Delivery.objects.filter(status="pending").update(runs=2, lease_until=lapsed)
    with caplog.at_level(logging.ERROR, logger="messagebus"):
        assert Worker(once=True).run() == 0
    row = Delivery.objects.get(status="dead")
    assert row.runs == 3
    assert row.last_error == "3 runs started and none finished: did its process die?"
    assert Entry.objects.count() == 1
    assert str(row.event.correlation_id) in caplog.text


def test_a_worker_stopped_mid_batch_hands_back_the_rest(messagebus_registry):
    worker = Worker(batch=5)

    def stop_after_first(event: Pinged) -> None:
        Entry.objects.create(account="stop", amount=event.n)
        worker.stop()

    messagebus_registry.unregister(messagebus_registry.event_handlers(Pinged)[0].func)
    messagebus_registry.register(None, stop_after_first)
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        for n in range(5):
            messagebus.bus.handle(Pinged(n=n))
    assert worker.run() == 1
    assert Entry.objects.count() == 1
    waiting = Delivery.objects.filter(status="pending")
    assert waiting.count() == 4
    assert all(row.runs == 0 and row.next_attempt_at <= timezone.now() for row in waiting)


def test_an_event_its_own_class_refuses_to_rebuild_is_dead_not_a_crash():
    event = StoredEvent.objects.create(
        id="00000000-0000-0000-0000-000000000005", type="busapp.Pinged",
        payload={"n": -1}, correlation_id="00000000-0000-0000-0000-000000000005",
    )  # fmt: skip
    row = Delivery.objects.create(event=event, handler="tests.busapp.handlers.record_ping")
    assert Worker(once=True).run() == 1
    row.refresh_from_db()
    assert row.status == "dead"
    assert "a ping is numbered from 0, not -1" in row.last_error


@override_settings(MESSAGEBUS={**BUS, "SWEEP_INTERVAL": 0.2})
def test_the_inline_executor_sweeps_overdue_deliveries_with_one_call_each(flaky):
    import time

    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        messagebus.bus.handle(Pinged(n=7))  # left for a worker: will be overdue, and succeed
    handler = flaky(failures=100)
    messagebus.bus.handle(OpenAccount("mia"))
    run_due()  # fails its run: rescheduled
    assert handler.calls == 3
    Delivery.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=5))
    time.sleep(0.25)

    messagebus.bus.handle(Deposited(name="mia", amount=1))  # any commit with deliveries

    assert handler.calls == 4  # one call, no retries, in someone else's request
    row = delivery()
    assert (row.runs, row.calls, row.status) == (1, 1, "pending")  # its second run's first call
    assert Entry.objects.filter(account="ping", amount=7).exists()


def test_database_option_follows_the_action():
    assert "Pending" in run("status", "--database", "default")
    with pytest.raises(CommandError, match="Unknown database 'elsewhere'"):
        run("status", "--database", "elsewhere")


def test_an_event_that_could_not_be_read_back_is_refused_when_recorded():
    from messagebus.exceptions import MessageEncodeError

    with pytest.raises(
        MessageEncodeError, match=re.escape("Deposited: Expected `int`, got `str` - at `$.amount`")
    ):
        messagebus.bus.handle(Deposited(name="ned", amount="5"))  # type: ignore[arg-type]
    assert not StoredEvent.objects.exists()


def test_prune_deletes_in_chunks_and_keeps_what_is_unfinished():
    from messagebus import outbox

    for n in range(5):
        messagebus.bus.handle(Pinged(n=n))
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        messagebus.bus.handle(Pinged(n=99))  # pending: it and its event stay
    old = timezone.now() - timedelta(days=2)
    Delivery.objects.filter(status="done").update(finished_at=old)
    StoredEvent.objects.update(created_at=old)
    cutoff = timezone.now() - timedelta(days=1)
    assert outbox.prunable("default", cutoff) == (5, 5)
    assert outbox.prune("default", cutoff, chunk=2) == (5, 5)
    assert list(StoredEvent.objects.values_list("payload", flat=True)) == [{"n": 99}]
    assert Delivery.objects.get().status == "pending"
