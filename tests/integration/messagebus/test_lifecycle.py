"""A handler's lifecycle: after commit (the default), or in the command's transaction."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import DatabaseError

import messagebus
from messagebus import executors
from messagebus.exceptions import RegistrationError
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, StoredEvent
from messagebus.processes.worker import Worker
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Audited, Opened, Pinged
from tests.busapp.models import Account, Entry

pytestmark = pytest.mark.django_db(transaction=True)


def note_opening(event: Opened) -> None:
    """Derived data: it reads what the command wrote, in its transaction."""
    account = Account.objects.get(name=event.name)
    Entry.objects.create(account=account.name, amount=0, note="opened")


def test_it_runs_in_the_commands_transaction_so_a_read_right_after_sees_it(
    messagebus_registry,
):
    messagebus_registry.register(None, note_opening, run="in_transaction")
    with executors.use(WorkerExecutor()):  # nothing after commit runs: no worker
        messagebus.bus.handle(OpenAccount("ann"))

    assert Entry.objects.filter(account="ann", note="opened").exists()
    assert StoredEvent.objects.filter(type="busapp.Opened").exists()
    assert not Delivery.objects.filter(handler__endswith="note_opening").exists()


def test_its_failure_fails_the_command_and_rolls_it_back(messagebus_registry):
    def refuse(event: Opened) -> None:
        Entry.objects.create(account=event.name, amount=0, note="half done")
        raise DatabaseError("the read model's table is gone")

    messagebus_registry.register(None, refuse, run="in_transaction")
    with pytest.raises(DatabaseError, match="read model's table is gone"):
        messagebus.bus.handle(OpenAccount("ben"))

    assert not Account.objects.exists() and not Entry.objects.exists()
    assert not StoredEvent.objects.exists()


def test_what_it_records_is_stored_with_the_command_and_delivered_after(messagebus_registry):
    def audit_opening(event: Opened, uow: messagebus.UnitOfWork) -> None:
        uow.publish(Audited(name=event.name, amount=0))

    messagebus_registry.register(None, audit_opening, run="in_transaction")
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(OpenAccount("cat"))
    [audited] = StoredEvent.objects.filter(type="busapp.Audited")
    assert audited.deliveries.get().status == "pending"  # write_audit_entry's, after commit

    Worker(once=True).run()
    assert Entry.objects.filter(account="cat", note="audited").exists()


def test_in_a_workers_batch_a_failure_in_the_transaction_is_the_recording_handlers(
    messagebus_registry,
):
    def sound(event: Pinged, uow: messagebus.UnitOfWork) -> None:
        uow.publish(Opened(name=f"ping {event.n}"))

    def picky(event: Opened) -> None:
        if event.name == "ping 1":
            raise DatabaseError("not this one")
        Entry.objects.create(account=event.name, amount=0, note="seen")

    messagebus_registry.register(None, sound)
    messagebus_registry.register(None, picky, run="in_transaction")
    with executors.use(WorkerExecutor()):
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))

    Worker(once=True, batch=100).run()

    sounded = Delivery.objects.filter(handler__endswith="sound")
    assert sorted(sounded.values_list("status", flat=True)) == ["done", "done", "pending"]
    assert "not this one" in sounded.get(status="pending").last_error
    assert sorted(Entry.objects.filter(note="seen").values_list("account", flat=True)) == [
        "ping 0",
        "ping 2",
    ]


def test_a_delivery_stored_before_it_ran_in_the_transaction_still_runs_once(
    messagebus_registry,
):
    messagebus_registry.register(None, note_opening)  # after commit, as it was
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(OpenAccount("dot"))
    messagebus_registry.unregister(note_opening)
    messagebus_registry.register(None, note_opening, run="in_transaction")  # deployed anew

    Worker(once=True).run()

    [delivery] = Delivery.objects.filter(handler__endswith="note_opening")
    assert delivery.status == "done"
    assert Entry.objects.filter(account="dot", note="opened").count() == 1


@pytest.mark.parametrize("kind", ["async", "bus"])
def test_one_that_is_async_or_takes_the_bus_is_refused(messagebus_registry, kind):
    async def handler_async(event: Opened) -> None: ...

    def handler_bus(event: Opened, bus: messagebus.MessageBus) -> None: ...

    handler = handler_async if kind == "async" else handler_bus
    with pytest.raises(RegistrationError, match="runs in the transaction that records"):
        messagebus_registry.register(None, handler, run="in_transaction")


@pytest.mark.django_db(databases="__all__", transaction=True)  # Django 6.1's check uses each
def test_an_unknown_lifecycle_is_a_check_error(messagebus_registry):
    messagebus_registry.register(None, note_opening, run="later")
    with pytest.raises(SystemCheckError) as found:
        call_command("check")
    assert "messagebus.E006" in str(found.value)
    assert "the option run='later' must be 'after_commit' or 'in_transaction'" in str(found.value)
