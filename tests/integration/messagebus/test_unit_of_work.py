"""Commands run in a unit of work; recorded events are stored and delivered after commit."""

import logging

import pytest
from django.db import transaction

import messagebus
from messagebus.models import Delivery, StoredEvent
from tests.busapp.commands import Deposit, OpenAccount, Overdrawn
from tests.busapp.events import Audited, Deposited, Opened
from tests.busapp.models import Account, Entry

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_command_returns_its_handlers_result():
    assert messagebus.bus.handle(OpenAccount("alice")) == Account.objects.get(name="alice").pk


def test_events_are_handled_after_commit_before_handle_returns(caplog):
    messagebus.bus.handle(OpenAccount("alice"))
    with caplog.at_level(logging.INFO, logger="messagebus"):
        cmd = Deposit("alice", 5)
        assert messagebus.bus.handle(cmd) == 5

    assert sorted(Entry.objects.values_list("note", "amount")) == [("audited", 5), ("deposited", 5)]
    deposited = StoredEvent.objects.get(type="busapp.Deposited")
    assert deposited.payload == {"name": "alice", "amount": 5}
    assert deposited.correlation_id == cmd.correlation_id
    assert deposited.causation_id == cmd.message_id
    assert set(deposited.deliveries.values_list("handler", "status", "attempts")) == {
        ("tests.busapp.handlers.write_entry", "done", 1),
        ("tests.busapp.handlers.audit", "done", 1),
    }
    delivered = [r for r in caplog.records if r.getMessage().startswith("Delivered")]
    assert len(delivered) == 3
    for record in delivered:
        assert str(cmd.correlation_id) in record.getMessage()
    assert any(str(deposited.id) in r.getMessage() for r in delivered)


def test_events_recorded_by_event_handlers_continue_the_chain():
    cmd = Deposit("bob", 7)
    messagebus.bus.handle(OpenAccount("bob"))
    messagebus.bus.handle(cmd)
    deposited = StoredEvent.objects.get(type="busapp.Deposited")
    audited = StoredEvent.objects.get(type="busapp.Audited")
    assert audited.causation_id == deposited.id
    assert audited.correlation_id == cmd.correlation_id
    assert audited.deliveries.get().status == Delivery.Status.DONE


def test_an_event_recorded_in_a_rolled_back_savepoint_is_never_delivered(messagebus_registry):
    def open_two(cmd: OpenAccount) -> None:
        kept = Account.objects.create(name=cmd.name)
        kept.open()
        try:
            with transaction.atomic():
                dropped = Account.objects.create(name=cmd.name + "-dropped")
                dropped.open()
                raise Overdrawn("changed my mind")
        except Overdrawn:
            pass

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, open_two)
    seen = []

    def opened(event: Opened) -> None:
        seen.append(event.name)

    messagebus_registry.register(None, opened)
    messagebus.bus.handle(OpenAccount("carol"))

    assert list(Account.objects.values_list("name", flat=True)) == ["carol"]
    assert list(StoredEvent.objects.values_list("payload", flat=True)) == [{"name": "carol"}]
    assert seen == ["carol"]


def test_a_failing_command_rolls_back_its_data_and_events(caplog):
    messagebus.bus.handle(OpenAccount("dave"))
    with caplog.at_level(logging.INFO, logger="messagebus"), pytest.raises(Overdrawn):
        messagebus.bus.handle(Deposit("dave", -1))
    assert Account.objects.get(name="dave").balance == 0
    assert not StoredEvent.objects.filter(type="busapp.Deposited").exists()
    rejected = [r for r in caplog.records if r.getMessage().startswith("Rejected")]
    assert (
        len(rejected) == 1 and rejected[0].exc_info is None and rejected[0].levelno == logging.INFO
    )


def test_an_unexpected_command_error_is_logged_with_traceback_and_raised(caplog):
    with caplog.at_level(logging.INFO, logger="messagebus"), pytest.raises(Account.DoesNotExist):
        messagebus.bus.handle(Deposit("nobody", 1))
    [record] = [r for r in caplog.records if "failed on" in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "busapp.Deposit" in record.getMessage()


def test_an_event_handed_to_the_bus_is_stored_and_delivered():
    event = Deposited(name="erin", amount=3)
    assert messagebus.bus.handle(event) is None
    assert StoredEvent.objects.filter(type="busapp.Deposited").get().id == event.message_id
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


def test_a_command_without_handler_is_refused():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Unhandled(messagebus.Command):
        x: int

    with pytest.raises(messagebus.HandlerNotFound, match="Unhandled"):
        messagebus.bus.handle(Unhandled(1))


def test_only_messages_can_be_handled():
    with pytest.raises(TypeError, match="takes a Command, an Event or a Query, not dict"):
        messagebus.bus.handle({"name": "x"})  # type: ignore[arg-type]


def test_an_aggregate_outside_a_unit_of_work_only_keeps_its_events():
    account = Account(name="frank")
    account.deposit(4)
    assert account.events == [Deposited(name="frank", amount=4)]
    assert not StoredEvent.objects.exists()


def test_an_explicit_unit_of_work_stores_what_aggregates_record():
    with messagebus.UnitOfWork():
        account = Account.objects.create(name="gina")
        account.deposit(2)
        account.save()
    assert set(StoredEvent.objects.values_list("type", flat=True)) == {
        "busapp.Deposited",
        "busapp.Audited",
    }
    assert Entry.objects.filter(note="deposited", amount=2).exists()


def test_audited_has_a_handler_that_writes():
    messagebus.bus.handle(Audited(name="h", amount=1))
    assert Entry.objects.get().note == "audited"


def test_a_handler_may_open_the_uow_it_was_given_again(messagebus_registry):
    def open_in_steps(cmd: OpenAccount, uow: messagebus.UnitOfWork) -> int:
        with uow:  # the book's habit: a savepoint here, the bus commits
            account = Account.objects.create(name=cmd.name)
            account.open()
        with pytest.raises(Overdrawn), uow:
            Account.objects.create(name=cmd.name + "-undone")
            raise Overdrawn("undone")
        return account.pk

    messagebus_registry.unregister(messagebus_registry.command_handler(OpenAccount).func)
    messagebus_registry.register(OpenAccount, open_in_steps)
    messagebus.bus.handle(OpenAccount("ivy"))

    assert list(Account.objects.values_list("name", flat=True)) == ["ivy"]
    assert StoredEvent.objects.get().payload == {"name": "ivy"}
    assert not transaction.get_connection().in_atomic_block


def test_a_unit_of_work_decorates_a_function_that_calls_itself():
    @messagebus.UnitOfWork()
    def open_accounts(names: list[str]) -> None:
        if names:
            Account.objects.create(name=names[0]).open()
            open_accounts(names[1:])

    open_accounts(["a", "b", "c"])
    assert StoredEvent.objects.filter(type="busapp.Opened").count() == 3
    assert not transaction.get_connection().in_atomic_block


def test_recording_on_another_database_than_the_unit_of_works_is_an_error():
    account = Account(name="elsewhere")
    account._state.db = "replica"
    with (
        pytest.raises(messagebus.UnitOfWorkError, match="database 'replica'"),
        messagebus.UnitOfWork(),
    ):
        account.open()


def test_recording_in_a_transaction_without_a_unit_of_work_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="messagebus"), transaction.atomic():
        Account.objects.create(name="jon").open()
    assert "recorded busapp.Opened" in caplog.text and "outside a unit of work" in caplog.text
    assert not StoredEvent.objects.exists()


def test_inside_an_outer_transaction_events_wait_for_its_commit():
    messagebus.bus.handle(OpenAccount("kim"))
    with transaction.atomic():  # as with ATOMIC_REQUESTS
        messagebus.bus.handle(Deposit("kim", 2))
        assert not Entry.objects.exists()
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]


def test_events_of_an_outer_transaction_that_rolls_back_are_never_delivered():
    messagebus.bus.handle(OpenAccount("lea"))
    with pytest.raises(Overdrawn), transaction.atomic():
        messagebus.bus.handle(Deposit("lea", 2))
        raise Overdrawn("the request failed after the command")
    assert not Entry.objects.exists()
    assert not StoredEvent.objects.filter(type="busapp.Deposited").exists()
