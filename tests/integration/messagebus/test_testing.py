"""The helpers of messagebus.testing, used the way a project's tests would."""

import pytest
from django.db import transaction

import messagebus
from messagebus.models import Delivery
from tests.busapp.commands import Deposit, OpenAccount
from tests.busapp.events import Audited, Deposited
from tests.busapp.models import Entry


def test_without_help_a_test_transaction_never_delivers(db):
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))
    assert not Entry.objects.exists()
    assert set(Delivery.objects.values_list("status", flat=True)) == {"pending"}


def test_deliver_fixture_runs_after_commit_work_as_each_command_ends(messagebus_deliver):
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_deliver_fixture_awaits_async_handlers_inside_the_tests_transaction(
    messagebus_deliver, messagebus_registry
):
    seen = []

    async def remember(event: Deposited) -> None:
        seen.append(event.amount)

    messagebus_registry.register(None, remember)
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))

    assert seen == [5]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_deliver_fixture_does_not_deliver_what_a_failed_command_recorded(messagebus_deliver):
    messagebus.bus.handle(OpenAccount("a"))
    with pytest.raises(Exception, match="below zero"):
        messagebus.bus.handle(Deposit("a", -5))
    assert not Entry.objects.exists()


def test_capture_records_commands_and_events(messagebus_deliver, messagebus_capture):
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))

    assert [type(c) for c in messagebus_capture.commands] == [OpenAccount, Deposit]
    assert messagebus_capture.assert_handled(Deposit, name="a").amount == 5
    event = messagebus_capture.assert_published(Deposited, name="a", amount=5)
    assert messagebus_capture.assert_published(Audited).causation_id == event.message_id


def test_capture_assertions_fail_with_what_was_seen(messagebus_deliver, messagebus_capture):
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))
    with pytest.raises(AssertionError, match=r"no Deposited\(amount=6\) was published"):
        messagebus_capture.assert_published(Deposited, amount=6)
    with pytest.raises(AssertionError, match="expected no Audited"):
        messagebus_capture.assert_not_published(Audited)


def test_capture_assertions_count_several_of_a_kind(messagebus_deliver, messagebus_capture):
    messagebus.bus.handle(OpenAccount("a"))
    for _ in range(2):
        messagebus.bus.handle(Deposit("a", 5))

    with pytest.raises(
        AssertionError, match=r"2 Deposit\(name='a'\) were handled, not 1: .*count=N"
    ):
        messagebus_capture.assert_handled(Deposit, name="a")
    both = messagebus_capture.assert_handled(Deposit, count=2, name="a")
    assert [d.amount for d in both] == [5, 5]
    assert len(messagebus_capture.assert_published(Deposited, count=2, amount=5)) == 2
    assert messagebus_capture.assert_handled(Deposit, count=0, name="b") == []
    with pytest.raises(AssertionError, match=r"2 Deposit\(\) were handled, not 3"):
        messagebus_capture.assert_handled(Deposit, count=3)


def test_registry_fixture_registers_handlers_for_one_test(messagebus_deliver, messagebus_registry):
    seen = []

    def remember(event: Deposited) -> None:
        seen.append(event.amount)

    messagebus_registry.register(None, remember)
    messagebus.bus.handle(Deposited(name="a", amount=3))
    assert seen == [3]


def test_dependencies_fixture_overrides_by_name(
    messagebus_deliver, messagebus_registry, messagebus_dependencies
):
    class FakeClock:
        def now(self):
            return "noon"

    seen = []

    def stamp(event: Deposited, clock) -> None:
        seen.append(clock.now())

    messagebus_registry.register(None, stamp)
    messagebus_dependencies(clock=FakeClock())
    messagebus.bus.handle(Deposited(name="a", amount=3))
    assert seen == ["noon"]


def test_deliver_fixture_waits_for_an_outer_transaction(messagebus_deliver):
    messagebus.bus.handle(OpenAccount("a"))
    with transaction.atomic():
        messagebus.bus.handle(Deposit("a", 5))
        assert not Entry.objects.exists()
    assert Entry.objects.count() == 2


def test_deliver_fixture_drops_what_an_outer_rollback_drops(messagebus_deliver, messagebus_capture):
    messagebus.bus.handle(OpenAccount("a"))
    with pytest.raises(RuntimeError), transaction.atomic():
        messagebus.bus.handle(Deposit("a", 5))
        raise RuntimeError("the view failed later")
    assert not Entry.objects.exists()
    messagebus_capture.assert_not_published(Deposited)


@pytest.mark.parametrize("executor", ["inline", "worker"])
def test_deliver_fixture_delivers_whatever_the_executor(messagebus_deliver, settings, executor):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "EXECUTOR": executor}
    messagebus.bus.handle(OpenAccount("a"))
    messagebus.bus.handle(Deposit("a", 5))
    assert sorted(Entry.objects.values_list("note", flat=True)) == ["audited", "deposited"]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_outside_the_fixture_the_worker_executor_leaves_deliveries_to_workers(db, settings):
    settings.MESSAGEBUS = {**settings.MESSAGEBUS, "EXECUTOR": "worker"}
    with transaction.atomic():
        messagebus.bus.handle(OpenAccount("a"))
        messagebus.bus.handle(Deposit("a", 5))
    assert not Entry.objects.exists()
