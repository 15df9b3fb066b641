"""Claimed deliveries sent together (``delivery.bulk``): a handler with a ``bulk`` takes
a worker's claimed deliveries of it in one send; the confirmed ones are done, each
refused one a failed call of its own, judged by its policy, while the rest stay done."""

import datetime as dt
import logging

import pytest

import messagebus
from messagebus import executors
from messagebus.delivery import concurrent
from messagebus.executors.inline import InlineExecutor
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery
from messagebus.outbox import states
from tests.busapp.events import Shipped

pytestmark = pytest.mark.django_db(transaction=True)


class Shipper:
    """A bulk that records what it was given, refusing the numbers in ``refuse``."""

    def __init__(self) -> None:
        self.sends: list[list[int]] = []
        self.refuse: set[int] = set()
        self.unprepared: set[int] = set()
        self.down = False
        self.short = False
        self.steal: int | None = None  # a number whose delivery another runner takes over

    def prepare(self, message: Shipped) -> int:
        if message.n in self.unprepared:
            raise ValueError(f"cannot encode {message.n}")
        return message.n

    def send(self, prepared: list[int]) -> list[BaseException | None]:
        self.sends.append(prepared)
        if self.steal is not None:
            rows = Delivery.objects.filter(event__payload__n=self.steal)
            rows.update(lease_until=rows.get().lease_until + dt.timedelta(seconds=1))
        if self.down:
            raise ConnectionError("broker down")
        answers: list[BaseException | None] = [
            ConnectionRefusedError(f"refused {n}") if n in self.refuse else None for n in prepared
        ]
        return answers[:-1] if self.short else answers


called: list[int] = []


def ship_one(event: Shipped) -> None:
    """The handler's one-at-a-time form: where deliveries run each on its own."""
    called.append(event.n)


@pytest.fixture
def shipper(messagebus_registry) -> Shipper:
    called.clear()
    bulk = Shipper()
    messagebus_registry.register(Shipped, ship_one, bulk=bulk, retry_attempts=1)
    return bulk


def stored(*numbers: int) -> None:
    with executors.use(WorkerExecutor()):
        for n in numbers:
            messagebus.bus.handle(Shipped(n=n))


def status() -> dict[int, tuple[str, int]]:
    rows = Delivery.objects.values_list("event__payload__n", "status", "attempts")
    return {n: (state, attempts) for n, state, attempts in rows}


def run_claimed() -> int:
    return concurrent.run_claimed(states.claim("default", 100))


def test_a_worker_s_claimed_deliveries_go_in_one_send_and_are_done(shipper):
    stored(*range(5))
    assert run_claimed() == 5
    assert shipper.sends == [[0, 1, 2, 3, 4]]  # in the order they were stored
    assert called == []
    assert status() == dict.fromkeys(range(5), ("done", 1))  # one call each


def test_a_refused_one_fails_alone_and_the_rest_are_done(shipper):
    stored(*range(4))
    shipper.refuse = {2}
    run_claimed()
    assert {n: state for n, (state, _) in status().items()} == {
        0: "done", 1: "done", 2: "pending", 3: "done"
    }  # fmt: skip
    row = Delivery.objects.get(event__payload__n=2)
    assert "refused 2" in row.last_error and row.lease_until is None
    shipper.refuse = set()
    Delivery.objects.filter(pk=row.pk).update(next_attempt_at=row.created_at)  # due now
    run_claimed()
    assert shipper.sends[-1] == [2]  # sent again, alone
    assert status()[2][0] == "done"


def test_one_that_cannot_be_prepared_fails_and_the_others_are_sent(shipper):
    stored(*range(3))
    shipper.unprepared = {1}
    run_claimed()
    assert shipper.sends == [[0, 2]]
    row = Delivery.objects.get(event__payload__n=1)
    assert row.status == "pending" and "cannot encode 1" in row.last_error


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("down", "broker down"), ("short", "answered 2 of 3 sent")],
    ids=["a send that raises", "answers not one for one"],
)
def test_a_send_that_fails_as_a_whole_fails_them_all_none_done(shipper, fault, reason):
    stored(*range(3))
    setattr(shipper, fault, True)
    run_claimed()
    rows = Delivery.objects.all()
    assert {row.status for row in rows} == {"pending"}
    assert all(reason in row.last_error for row in rows)


def test_its_last_run_refused_is_dead_by_its_policy(shipper):
    stored(0, 1)
    shipper.refuse = {1}
    Delivery.objects.update(runs=messagebus.conf.settings.MAX_DELIVERIES - 1)
    run_claimed()
    assert {n: state for n, (state, _) in status().items()} == {0: "done", 1: "dead"}


def test_one_taken_over_while_sent_is_left_to_its_new_runner(shipper, caplog):
    stored(0, 1)
    shipper.steal = 1
    with caplog.at_level(logging.WARNING, "messagebus.delivery.bulk"):
        run_claimed()
    assert {n: state for n, (state, _) in status().items()} == {0: "done", 1: "pending"}
    assert "another runner had taken it over" in caplog.text


def test_just_stored_ones_run_each_through_the_handler(shipper):
    with executors.use(InlineExecutor()):
        messagebus.bus.handle(Shipped(n=7))
    assert (shipper.sends, called) == ([], [7])
    assert status() == {7: ("done", 1)}


def test_an_ordered_handler_s_run_one_at_a_time_not_together(messagebus_registry):
    called.clear()
    bulk = Shipper()
    messagebus_registry.register(Shipped, ship_one, bulk=bulk, ordering_key="n")
    stored(1, 2)
    run_claimed()
    assert (bulk.sends, sorted(called)) == ([], [1, 2])


def test_the_decorator_takes_a_bulk(messagebus_registry):
    bulk = Shipper()
    messagebus.handler(Shipped, bulk=bulk)(ship_one)
    stored(1, 2)
    run_claimed()
    assert bulk.sends == [[1, 2]]
