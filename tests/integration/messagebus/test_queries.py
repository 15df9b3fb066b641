"""Queries: one handler, called at once in the caller with no unit of work, its answer
returned; never stored or retried, and nothing sent from inside one."""

import logging
from dataclasses import dataclass

import pytest
from django.db import connection, transaction
from prometheus_client import CollectorRegistry

import messagebus
from messagebus import QuerySideEffect
from messagebus.core.messages import current_message
from messagebus.exceptions import HandlerAlreadyRegistered, HandlerNotFound, RegistrationError
from messagebus.models import Delivery, StoredEvent
from messagebus.ops import prometheus
from messagebus.testing import capture_messages
from tests.busapp.commands import OpenAccount
from tests.busapp.events import Pinged
from tests.busapp.models import Account

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Balance(messagebus.Query):
    owner: str


@dataclass(frozen=True)
class Owners(messagebus.Query):
    pass


@dataclass(frozen=True)
class Unanswered(messagebus.Query):
    pass


def counted(query: str, outcome: str) -> float:
    """``messagebus_queries_total`` for a query of this module, as /metrics shows it."""
    counts = CollectorRegistry()
    counts.register(prometheus.Collector())
    labels = {"type": f"{__name__}.{query}", "outcome": outcome}
    return counts.get_sample_value("messagebus_queries_total", labels) or 0.0


def balance(query: Balance) -> int | None:
    account = Account.objects.filter(name=query.owner).first()
    return None if account is None else account.balance


def test_a_query_returns_its_handlers_answer(messagebus_registry):
    messagebus_registry.register(None, balance)
    messagebus.bus.handle(OpenAccount("ann"))

    assert messagebus.bus.handle(Balance("ann")) == 0
    assert messagebus.bus.handle(Balance("bob")) is None


def test_a_query_runs_with_no_unit_of_work_and_leaves_nothing_stored(messagebus_registry):
    seen = []

    def owners(query: Owners) -> list[str]:
        seen.append((connection.in_atomic_block, current_message.get()))
        return sorted(Account.objects.values_list("name", flat=True))

    messagebus_registry.register(None, owners)
    messagebus.bus.handle(OpenAccount("ann"))
    stored = StoredEvent.objects.count(), Delivery.objects.count()

    query = Owners()
    assert messagebus.bus.handle(query) == ["ann"]
    assert seen == [(False, query)]  # no transaction opened for it; its logs name it
    assert (StoredEvent.objects.count(), Delivery.objects.count()) == stored


def test_inside_a_transaction_a_query_reads_what_the_transaction_wrote(messagebus_registry):
    messagebus_registry.register(None, balance)
    with transaction.atomic():
        Account.objects.create(name="cy", balance=7)
        assert messagebus.bus.handle(Balance("cy")) == 7


def test_a_query_has_exactly_one_handler(messagebus_registry):
    messagebus_registry.register(None, balance)

    def another(query: Balance) -> int:
        return 0

    with pytest.raises(HandlerAlreadyRegistered, match="The query Balance already has"):
        messagebus_registry.register(None, another)
    with pytest.raises(HandlerNotFound, match="No handler is registered for the query Unanswered"):
        messagebus.bus.handle(Unanswered())


def test_a_query_handler_cannot_take_a_unit_of_work(messagebus_registry):
    def balance_in_uow(query: Balance, uow: messagebus.UnitOfWork) -> int:
        return 0

    with pytest.raises(RegistrationError, match="answers a query, so it runs with no unit"):
        messagebus_registry.register(None, balance_in_uow)


def test_a_failing_query_raises_once_and_is_counted(messagebus_registry, caplog):
    calls = []

    def broken(query: Unanswered) -> None:
        calls.append(query)
        raise ConnectionError("read replica down")

    messagebus_registry.register(None, broken)
    before = counted("Unanswered", "failed")

    with caplog.at_level(logging.ERROR), pytest.raises(ConnectionError, match="replica"):
        messagebus.bus.handle(Unanswered())

    assert len(calls) == 1  # a query is asked again by its caller, not retried
    assert counted("Unanswered", "failed") == before + 1
    assert "failed on" in caplog.text


def test_an_answered_query_is_counted(messagebus_registry):
    messagebus_registry.register(None, balance)
    before = counted("Balance", "ok")

    messagebus.bus.handle(Balance("ann"))
    messagebus.bus.handle(Balance("bob"))

    assert counted("Balance", "ok") == before + 2


@pytest.mark.parametrize(
    "side_effect, said",
    [
        (lambda bus: bus.handle(OpenAccount("eve")), "tried to send the command OpenAccount"),
        (lambda bus: bus.handle(Pinged(1)), "tried to publish Pinged"),
        (lambda bus: messagebus.UnitOfWork().__enter__(), "opened a unit of work"),
        (lambda bus: bus.schedule(Pinged(1), after=__import__("datetime").timedelta(1)),
         "opened a unit of work"),
    ],
    ids=["command", "event", "unit of work", "schedule"],
)  # fmt: skip
def test_a_query_that_would_change_something_is_refused(messagebus_registry, side_effect, said):
    def meddling(query: Unanswered, bus: messagebus.MessageBus) -> None:
        side_effect(bus)

    messagebus_registry.register(None, meddling)

    with pytest.raises(QuerySideEffect, match=said):
        messagebus.bus.handle(Unanswered())
    assert not Account.objects.filter(name="eve").exists()
    assert StoredEvent.objects.count() == 0
    messagebus.bus.handle(OpenAccount("eve"))  # outside the query, all is allowed again
    assert Account.objects.filter(name="eve").exists()


def test_a_query_may_ask_other_queries(messagebus_registry):
    messagebus_registry.register(None, balance)

    def owners(query: Owners, bus: messagebus.MessageBus) -> dict[str, int]:
        names = Account.objects.values_list("name", flat=True)
        return {name: bus.handle(Balance(name)) for name in names}

    messagebus_registry.register(None, owners)
    messagebus.bus.handle(OpenAccount("ann"))

    assert messagebus.bus.handle(Owners()) == {"ann": 0}


def test_a_command_handler_may_ask_a_query(messagebus_registry):
    @dataclass(frozen=True)
    class Report(messagebus.Command):
        owner: str

    def report(cmd: Report, bus: messagebus.MessageBus) -> str:
        return f"{cmd.owner}: {bus.handle(Balance(cmd.owner))}"

    messagebus_registry.register(None, balance)
    messagebus_registry.register(None, report)
    messagebus.bus.handle(OpenAccount("ann"))

    assert messagebus.bus.handle(Report("ann")) == "ann: 0"


def test_a_query_cannot_be_scheduled(messagebus_registry):
    messagebus_registry.register(None, balance)
    with pytest.raises(messagebus.ScheduleError, match="is a query"):
        messagebus.bus.schedule(Balance("ann"), after=__import__("datetime").timedelta(1))


def test_the_test_harness_records_the_queries_asked(messagebus_registry):
    messagebus_registry.register(None, balance)
    with capture_messages() as captured:
        messagebus.bus.handle(OpenAccount("ann"))
        messagebus.bus.handle(Balance("ann"))

    assert captured.queries == [Balance("ann")]
    assert captured.commands == [OpenAccount("ann")]
    captured.assert_handled(Balance, owner="ann")


@pytest.mark.anyio
async def test_ahandle_awaits_an_async_query_handler_on_the_loop(messagebus_registry):
    async def owners(query: Owners) -> list[str]:
        return [name async for name in Account.objects.values_list("name", flat=True)]

    messagebus_registry.register(None, owners)
    await messagebus.bus.ahandle(OpenAccount("ann"))

    assert await messagebus.bus.ahandle(Owners()) == ["ann"]


def test_handle_answers_an_async_query_handler_from_sync_code(messagebus_registry):
    async def owners(query: Owners) -> list[str]:
        return [name async for name in Account.objects.values_list("name", flat=True)]

    messagebus_registry.register(None, owners)
    messagebus.bus.handle(OpenAccount("ann"))

    assert messagebus.bus.handle(Owners()) == ["ann"]


@pytest.mark.anyio
async def test_ahandle_answers_a_sync_query_handler(messagebus_registry):
    messagebus_registry.register(None, balance)
    await messagebus.bus.ahandle(OpenAccount("ann"))

    assert await messagebus.bus.ahandle(Balance("ann")) == 0


@pytest.mark.anyio
async def test_an_async_query_that_would_send_a_command_is_refused(messagebus_registry):
    async def meddling(query: Unanswered, bus: messagebus.MessageBus) -> None:
        await bus.ahandle(OpenAccount("eve"))

    messagebus_registry.register(None, meddling)

    with pytest.raises(QuerySideEffect, match="tried to send the command OpenAccount"):
        await messagebus.bus.ahandle(Unanswered())
