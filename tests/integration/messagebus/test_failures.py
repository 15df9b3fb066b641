"""Poison told from transient; handlers that reject or postpone; commands that lose a race."""

import json
import logging

import pytest
from django.db import IntegrityError, connection
from django.test import override_settings

import messagebus
from messagebus.delivery.concurrent import run_one
from messagebus.models import Delivery, StoredEvent
from messagebus.outbox.reference import Reference
from messagebus.outbox.states import Claim
from messagebus.processes.worker import Worker
from messagebus.testing import run_due
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Opened, Pinged
from tests.busapp.models import Account, Entry
from tests.conftest import server_database

pytestmark = pytest.mark.django_db(transaction=True)
BUS = {"RETRY_WAIT": 0, "RETRY_WAIT_MAX": 0, "SWEEP_INTERVAL": 0}


@pytest.fixture
def welcome(messagebus_registry):
    """Register ``func`` as the handler of Opened, with delivery options."""

    def install(func, **options):
        messagebus_registry.register(Opened, func, name="welcome", **options)
        return func

    return install


def row() -> Delivery:
    return Delivery.objects.get(handler="welcome")


def test_a_poison_failure_is_dead_after_one_call_with_the_reason(welcome, caplog):
    calls = []

    def duplicate(event: Opened) -> None:
        calls.append(1)
        Entry.objects.create(account=event.name, amount=1, note="half done")
        raise IntegrityError("duplicate key value violates unique constraint")

    welcome(duplicate)
    with caplog.at_level(logging.ERROR, logger="messagebus"):
        messagebus.bus.handle(OpenAccount("ann"))
    delivery = row()
    assert (delivery.status, delivery.runs, delivery.attempts, len(calls)) == ("dead", 1, 1, 1)
    assert delivery.last_error.startswith("django.db.utils.IntegrityError: duplicate key")
    assert "fails at once: IntegrityError" in delivery.last_error
    assert not Entry.objects.filter(note="half done").exists()  # its savepoint rolled back
    assert Account.objects.filter(name="ann").exists()  # the command stands
    [dead] = [r for r in caplog.records if r.getMessage().startswith("Dead:")]
    assert dead.exc_info is not None  # one traceback, on the line that ends the run


def test_a_transient_failure_is_pending_with_one_run_counted(welcome, caplog):
    def down(event: Opened) -> None:
        raise ConnectionError("mail server down")

    welcome(down)
    with caplog.at_level(logging.WARNING, logger="messagebus"):
        messagebus.bus.handle(OpenAccount("ben"))
        assert (row().runs, row().attempts) == (0, 1)  # one call in the request
        run_due()
    delivery = row()
    assert (delivery.status, delivery.runs, delivery.attempts) == ("pending", 1, 3)
    assert delivery.lease_until is None and delivery.last_error.endswith("mail server down")
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # one per failed run; each failed call is one line
    assert len([r for r in caplog.records if "failed on" in r.getMessage()]) == 3


def test_reject_is_dead_at_once(welcome):
    welcome(lambda event: (_ for _ in ()).throw(messagebus.Reject("no such customer")))
    messagebus.bus.handle(OpenAccount("cat"))
    delivery = row()
    assert (delivery.status, delivery.runs, delivery.attempts) == ("dead", 1, 1)
    assert "messagebus.exceptions.Reject: no such customer" in delivery.last_error


def test_retry_later_reschedules_without_counting_a_failure(welcome):
    from django.utils import timezone

    def not_yet(event: Opened) -> None:
        raise messagebus.RetryLater(120, "the warehouse opens at nine")

    welcome(not_yet, max_deliveries=1)
    before = timezone.now()
    messagebus.bus.handle(OpenAccount("dot"))
    delivery = row()
    assert (delivery.status, delivery.runs, delivery.attempts) == ("pending", 0, 1)
    assert delivery.next_attempt_at >= before + timezone.timedelta(seconds=119)
    assert "the warehouse opens at nine" in delivery.last_error


@override_settings(MESSAGEBUS={**BUS, "DEAD_AT_ONCE": ["builtins.LookupError"]})
def test_the_poison_list_is_a_setting(welcome):
    welcome(lambda event: {}["missing"])  # KeyError is a LookupError
    messagebus.bus.handle(OpenAccount("eve"))
    assert (row().status, row().runs) == ("dead", 1)


def test_a_handler_may_set_its_own_limits(welcome):
    calls = []

    def fragile(event: Opened) -> None:
        calls.append(1)
        raise ConnectionError("down")

    welcome(fragile, retry_attempts=1, max_deliveries=1)
    messagebus.bus.handle(OpenAccount("fay"))
    assert (row().status, row().attempts, len(calls)) == ("dead", 1, 1)


def test_a_reference_survives_json_and_runs_to_the_same_end(welcome):
    def greet(event: Opened) -> None:
        Entry.objects.create(account=event.name, amount=0, note="greeted")

    welcome(greet)
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        messagebus.bus.handle(OpenAccount("gus"))
    stored = row()
    ref = Reference("default", stored.event_id, "welcome")
    travelled = Reference.from_json(json.loads(json.dumps(ref.to_json())))
    assert travelled == ref and travelled.envelope is None

    assert run_one(Claim.fresh(travelled)) is True
    assert run_one(Claim.fresh(travelled)) is False  # done: a duplicate is a no-op
    assert (row().status, row().runs, row().attempts) == ("done", 1, 1)
    assert list(Entry.objects.values_list("account", "note")) == [("gus", "greeted")]


def test_a_batch_commits_the_others_when_one_handler_fails(messagebus_registry, caplog):
    def picky(event: Pinged) -> None:
        Entry.objects.create(account="picky", amount=event.n)
        if event.n == 2:
            raise ConnectionError("not two")

    messagebus_registry.register(None, picky)
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        for n in range(5):
            messagebus.bus.handle(Pinged(n=n))
    with caplog.at_level(logging.WARNING, logger="messagebus"):
        # record_ping and picky, 5 each, and picky's two more calls of event 2's run
        assert Worker(once=True, batch=100).run() == 12
    picky_rows = Delivery.objects.filter(handler__endswith="picky")
    assert sorted(picky_rows.values_list("status", flat=True)) == ["done"] * 4 + ["pending"]
    failed = picky_rows.get(status="pending")
    assert (failed.runs, failed.attempts) == (1, 3)  # its run went on alone, then failed
    # Its failure rolled the batch back: the others ran again and committed, once each.
    assert sorted(Entry.objects.filter(account="picky").values_list("amount", flat=True)) == [
        0, 1, 3, 4,
    ]  # fmt: skip


def test_a_handler_can_ask_for_a_transaction_of_its_own(messagebus_registry):
    seen = []

    def alone(event: Pinged) -> None:
        seen.append(len(connection.atomic_blocks))

    messagebus_registry.register(None, alone, batch=False)
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
    Worker(once=True).run()
    assert seen == [1, 1, 1]  # its own unit of work, not a savepoint in a batch
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_a_batch_commits_when_its_time_is_up(messagebus_registry):
    commits = []

    def note(event: Pinged) -> None:
        connection.on_commit(lambda: commits.append(event.n))

    messagebus_registry.register(None, note)
    with override_settings(MESSAGEBUS={**BUS, "EXECUTOR": "worker"}):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
    with override_settings(MESSAGEBUS={**BUS, "BATCH_SECONDS": 0}):
        Worker(once=True).run()
    # A batch past its time takes no more: each delivery committed on its own.
    assert commits == [0, 1, 2]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_a_command_that_loses_a_race_runs_again(messagebus_registry, caplog):
    runs = []

    def open_once(cmd: OpenAccount) -> int:
        runs.append(1)
        account = Account.objects.create(name=cmd.name)
        account.open()
        if len(runs) == 1:
            raise messagebus.ConcurrencyError("version 3 is gone")
        return account.pk

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, open_once)
    with caplog.at_level(logging.WARNING, logger="messagebus"):
        pk = messagebus.bus.handle(OpenAccount("hal"))
    assert len(runs) == 2
    assert Account.objects.get().pk == pk
    # The first run's event was rolled back with it.
    assert list(StoredEvent.objects.values_list("payload", flat=True)) == [{"name": "hal"}]
    assert "Running busapp.OpenAccount" in caplog.text and "(run 2 of 3)" in caplog.text


@override_settings(MESSAGEBUS={**BUS, "COMMAND_RETRIES": 2})
def test_a_command_that_keeps_losing_raises_after_the_limit(messagebus_registry):
    def always(cmd: OpenAccount) -> None:
        Account.objects.create(name=cmd.name)
        raise messagebus.ConcurrencyError("again")

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, always)
    with pytest.raises(messagebus.ConcurrencyError):
        messagebus.bus.handle(OpenAccount("ivy"))
    assert not Account.objects.exists()


# The database itself raises a lost race: PostgreSQL's SQLSTATE 40001, MariaDB's deadlock.
LOSE_A_RACE = {
    "postgresql": "DO $$ BEGIN RAISE EXCEPTION 'could not serialize access' "
    "USING ERRCODE = 'serialization_failure'; END $$",
    "mysql": "SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, "
    "MESSAGE_TEXT = 'Deadlock found when trying to get lock'",
}


@server_database
def test_a_serialization_failure_in_a_command_is_retried_and_succeeds_once(messagebus_registry):
    runs = []

    def open_after_a_conflict(cmd: OpenAccount) -> int:
        runs.append(1)
        account = Account.objects.create(name=cmd.name)
        account.open()
        if len(runs) == 1:
            with connection.cursor() as cursor:
                cursor.execute(LOSE_A_RACE[connection.vendor])
        return account.pk

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, open_after_a_conflict)
    messagebus.bus.handle(OpenAccount("jan"))
    assert len(runs) == 2
    assert list(Account.objects.values_list("name", flat=True)) == ["jan"]
    assert list(StoredEvent.objects.values_list("payload", flat=True)) == [{"name": "jan"}]


def test_a_command_inside_an_outer_transaction_is_not_run_again(messagebus_registry):
    from django.db import transaction

    runs = []

    def lose(cmd: OpenAccount) -> None:
        runs.append(1)
        raise messagebus.ConcurrencyError("lost")

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, lose)
    with pytest.raises(messagebus.ConcurrencyError), transaction.atomic():
        messagebus.bus.handle(OpenAccount("kim"))
    assert len(runs) == 1  # a savepoint cannot outrun its transaction's conflict
