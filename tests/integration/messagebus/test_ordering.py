"""Per-key ordering: an ordered handler's deliveries of one key run one at a time, in
the order their events committed; different keys run side by side; a dead one holds
its key back (or not, by the handler's ``dead_head``)."""

import random
import sys
import time
from io import StringIO
from itertools import combinations, pairwise

import anyio
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

import messagebus
from config import celery_app
from messagebus import executors
from messagebus.core.envelope import Envelope
from messagebus.core.policy import Retry
from messagebus.delivery import run
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, KeySequence
from messagebus.outbox import ordering, states
from messagebus.outbox.reference import Reference
from messagebus.processes.worker import Worker
from messagebus.testing import run_due
from tests.brokers import wait_for
from tests.busapp.events import Pinged, Sequenced
from tests.busapp.handlers import DOOMED, register_ordered, see_in_turn, see_past_the_dead
from tests.busapp.models import Entry
from tests.conftest import ROOT, celery_on_postgres, server_database
from tests.subprocesses import CeleryWorker, Watched, celery_env, started_workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("ordered")]

IN_TURN = "tests.busapp.handlers.see_in_turn"
PAST = "tests.busapp.handlers.see_past_the_dead"


@pytest.fixture
def ordered(messagebus_registry):
    """The busapp's ordered handlers, registered here (and, $BUSAPP_ORDERED, in the worker
    processes started here)."""
    register_ordered(messagebus_registry)
    return messagebus_registry


def stored(*events: messagebus.Event) -> None:
    """Store ``events``, each in a transaction of its own, for workers (nothing runs them)."""
    with executors.use(WorkerExecutor()):
        for event in events:
            messagebus.bus.handle(event)


def seen(note: str = "in turn") -> dict[str, list[int]]:
    """What the handler of ``note`` saw of each key, in the order it committed them."""
    found: dict[str, list[int]] = {}
    for key, n in Entry.objects.filter(note=note).order_by("id").values_list("account", "amount"):
        found.setdefault(key, []).append(n)
    return found


def sequence_of(handler: str) -> list[tuple[str, int, int]]:
    rows = Delivery.objects.filter(handler=handler).order_by("id")
    return list(rows.values_list("concurrency_key", "sequence", "event__payload__n"))


def test_each_key_of_each_ordered_handler_numbers_its_deliveries_from_one():
    stored(*(Sequenced(key="ab"[n % 2], n=n // 2) for n in range(6)), Pinged(n=1))
    for handler in (IN_TURN, PAST):
        assert sequence_of(handler) == [
            ("a", 1, 0), ("b", 1, 0), ("a", 2, 1), ("b", 2, 1), ("a", 3, 2), ("b", 3, 2)
        ]  # fmt: skip
    assert Delivery.objects.filter(sequence__isnull=True).count() == 1  # the ping's
    assert set(KeySequence.objects.values_list("key", "last")) == {("a", 3), ("b", 3)}


def test_a_transaction_that_rolls_back_gives_its_number_back():
    stored(Sequenced(key="a", n=0))
    with pytest.raises(RuntimeError), transaction.atomic():
        stored(Sequenced(key="a", n=1))
        raise RuntimeError("rolled back")
    stored(Sequenced(key="a", n=2))
    assert [s for _, s, _ in sequence_of(IN_TURN)] == [1, 2]


def test_a_claim_takes_each_key_s_first_delivery_only():
    stored(*(Sequenced(key=key, n=n) for n in range(3) for key in "ab"), Pinged(n=1))
    claims = states.claim("default", 100)
    taken = sorted((c.ref.handler, c.key, c.ref.envelope.payload.get("n")) for c in claims)
    assert taken == [
        ("tests.busapp.handlers.record_ping", "", 1),
        (IN_TURN, "a", 0), (IN_TURN, "b", 0), (PAST, "a", 0), (PAST, "b", 0),
    ]  # fmt: skip
    assert states.claim("default", 100) == []  # the rest wait behind the ones leased


def test_a_claim_takes_what_follows_its_firsts_up_to_one_another_runner_holds(ordered):
    ordered.unregister(see_in_turn)
    stored(*(Sequenced(key="a", n=n) for n in range(6)))
    first = states.claim("default", 1)  # runner 1: the first only
    assert [c.ref.envelope.payload["n"] for c in first] == [0]
    assert states.claim("default", 10, follow=True) == []  # all behind the first
    states.dead(first[0].ref, first[0].lease, "rejected")  # it dies; the key goes on
    second = states.claim("default", 3, follow=True)  # runner 2: the next and two after
    assert [c.ref.envelope.payload["n"] for c in second] == [1, 2, 3]
    states.requeued(Delivery.objects.filter(status="dead"))  # the dead one retried, last
    assert states.claim("default", 10, follow=True) == []  # not beside the ones held
    assert len(states.finished(second)) == 3
    third = states.claim("default", 10, follow=True)  # runner 3: the rest, not it yet
    assert [c.ref.envelope.payload["n"] for c in third] == [4, 5]
    assert len(states.finished(third)) == 2
    assert [c.ref.envelope.payload["n"] for c in states.claim("default", 10)] == [0]


def test_a_first_one_due_again_behind_the_rest_of_its_key_is_still_claimed(ordered):
    ordered.unregister(see_past_the_dead)
    stored(*(Sequenced(key="a", n=n) for n in range(6)))
    [first] = states.claim("default", 1)
    states.failed(first.ref, first.lease, ConnectionError("down"), Retry(0))
    # Due again now: after the other five in the order claims look at (the first four).
    [again] = states.claim("default", 1)
    assert again.ref == first.ref


def test_every_key_s_handler_sees_its_events_in_order_each_once():
    stored(*(Sequenced(key=key, n=n) for n in range(5) for key in "abc"))
    run_due()
    assert seen() == {key: list(range(5)) for key in "abc"}
    assert seen("past the dead") == seen()


def test_a_failed_call_holds_back_its_own_key_only(monkeypatch):
    stored(*(Sequenced(key=key, n=n) for n in range(3) for key in "ab"))
    failing = {("a", 0)}

    def flaky(event, note):
        if (event.key, event.n) in failing:
            raise ConnectionError("down")
        Entry.objects.create(account=event.key, amount=event.n, note=note)

    monkeypatch.setattr("tests.busapp.handlers.seen", flaky)
    with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "RETRY_ATTEMPTS": 1}):
        run_due()
    assert seen() == {"b": [0, 1, 2]}  # a's first is due again later; the rest of a wait
    failing.clear()
    Delivery.objects.filter(status="pending").update(next_attempt_at=timezone.now())
    run_due()
    assert seen() == {"b": [0, 1, 2], "a": [0, 1, 2]}


def test_a_dead_first_delivery_blocks_its_key_until_retried_unless_the_handler_proceeds(
    monkeypatch,
):
    doomed = f"{DOOMED}-1"
    stored(*(Sequenced(key=key, n=n) for n in range(3) for key in (doomed, "ok")))
    run_due()
    assert seen() == {"ok": [0, 1, 2]}  # the doomed key waits behind its dead first
    assert seen("past the dead") == {"ok": [0, 1, 2], doomed: [1, 2]}
    dead = Delivery.objects.get(handler=IN_TURN, status="dead")
    assert ordering.blocked("default") == [ordering.Blocked(IN_TURN, doomed, dead.pk, 2)]
    assert str(ordering.blocked("default")[0]) == (
        f"key {doomed} of {IN_TURN} blocked by delivery {dead.pk}"
    )

    out = StringIO()
    call_command("messagebus", "status", stdout=out)
    assert f"key {doomed} of {IN_TURN} blocked by delivery {dead.pk} (2 waiting)" in out.getvalue()

    monkeypatch.setattr("tests.busapp.handlers.DOOMED", "no longer")  # the cause fixed
    assert states.requeued(Delivery.objects.filter(pk=dead.pk)) == 1  # the admin's Retry
    run_due()
    assert ordering.blocked("default") == []
    assert seen() == {"ok": [0, 1, 2], doomed: [0, 1, 2]}  # the retried one first


def test_health_names_a_blocked_key(client):
    doomed = f"{DOOMED}-2"
    stored(*(Sequenced(key=doomed, n=n) for n in range(2)))
    run_due()
    dead = Delivery.objects.get(handler=IN_TURN, status="dead")
    body = client.get(reverse("health")).json()
    assert f"key {doomed} of {IN_TURN} blocked by delivery {dead.pk}" in str(body)


def test_a_delivery_run_out_of_turn_is_handed_back_unrun():
    """The inline executor's and Celery's way in: a delivery not claimed, looked at as its
    transaction begins."""
    stored(Sequenced(key="a", n=0), Sequenced(key="a", n=1))
    second = Delivery.objects.get(handler=IN_TURN, sequence=2)
    ref = Reference("default", second.event_id, IN_TURN)
    job = run.resolve(states.Claim.fresh(ref))
    assert job is not None and run.call(job) is False
    assert Delivery.objects.get(pk=second.pk).attempts == 0  # not called, nothing counted
    assert states.taken([ref]) == []  # nor leased to an async runner
    run_due()
    assert seen() == {"a": [0, 1]}


def test_the_inline_executor_runs_a_key_in_order():
    for n in range(3):
        messagebus.bus.handle(Sequenced(key="a", n=n))
    assert seen() == {"a": [0, 1, 2]}


def test_the_envelope_carries_the_key_outward():
    event = Sequenced(key="k7", n=1)
    assert Envelope.of(event).ordering_key == "k7"
    assert Envelope.of(Pinged(n=1)).ordering_key is None


def test_an_async_handler_s_keys_run_side_by_side_each_one_at_a_time_in_order(ordered):
    calls: list[tuple[str, int, float, float]] = []

    async def see_async(event: Sequenced) -> None:
        started = time.monotonic()
        await anyio.sleep(0.02)
        calls.append((event.key, event.n, started, time.monotonic()))

    ordered.register(None, see_async)
    for func in (see_in_turn, see_past_the_dead):
        ordered.unregister(func)
    stored(*(Sequenced(key=key, n=n) for n in range(6) for key in "abc"))
    assert Worker(once=True, concurrency=4).run() == 18
    for key in "abc":
        mine = [(n, start, end) for k, n, start, end in calls if k == key]
        assert [n for n, _, _ in mine] == list(range(6))
        assert all(end <= after for (_, _, end), (_, after, _) in pairwise(mine))  # one at a time
    assert any(  # and the keys side by side
        a[0] != b[0] and a[2] < b[3] and b[2] < a[3] for a, b in combinations(calls, 2)
    )


@celery_on_postgres
def test_celery_workers_and_the_relay_run_each_key_in_order():
    env = {"BUSAPP_ORDERED": "1", "BUSAPP_FLAKY": "0.05"}
    celery_app.control.purge()
    worker = CeleryWorker("ordered", "--concurrency", "4", **env)
    relay = Watched(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "relay", "--interval", "0.2"],
        env=celery_env(**env), ready="started on database", what="the relay",
    )  # fmt: skip
    try:
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "celery"}):
            for n in range(10):  # a task each at commit: those out of turn are handed back
                for key in "abc":
                    messagebus.bus.handle(Sequenced(key=key, n=n))
        wait_for(lambda: Delivery.objects.filter(status="done").count() == 60, 300)
    finally:
        outputs = [relay.stop(), worker.stop()]
    assert seen() == {key: list(range(10)) for key in "abc"}, outputs
    assert seen("past the dead") == seen()


# Three worker processes, 5,000 events over 50 keys, 5% of calls failing at random.
COUNT, KEYS = 5000, 50


@server_database
def test_three_workers_see_each_key_in_order_each_once_through_random_failures():
    keys = [f"k{n}" for n in range(KEYS)] + [f"{DOOMED}-3"]
    shuffled = random.Random(22)
    events, count = [], {key: 0 for key in keys}
    for _ in range(COUNT):
        key = shuffled.choice(keys[:-1])
        events.append(Sequenced(key=key, n=count[key]))
        count[key] += 1
    events += [Sequenced(key=keys[-1], n=n) for n in range(3)]
    workers = started_workers(3, {"BUSAPP_ORDERED": "1", "BUSAPP_FLAKY": "0.05"}, batch=20)
    try:
        with executors.use(WorkerExecutor()):
            for start in range(0, len(events), 10):  # ten a transaction, keys interleaved
                with transaction.atomic():
                    for event in events[start : start + 10]:
                        messagebus.bus.handle(event)
        wait_for(lambda: not Delivery.objects.filter(status="pending", attempts=0).exclude(
            concurrency_key=keys[-1], handler=IN_TURN).exists() and Delivery.objects.filter(
            status="done").count() == 2 * COUNT + 2, 300)  # fmt: skip
    finally:
        outputs = [worker.stop() for worker in workers]
    assert [code for code, _ in outputs] == [0, 0, 0], outputs

    expected = {key: list(range(count[key])) for key in keys[:-1] if count[key]}
    assert seen() == expected  # in order, each once: the done-mark commits with the row
    assert seen("past the dead") == {**expected, keys[-1]: [1, 2]}
    assert Delivery.objects.filter(attempts__gt=1).exists()  # the failures did happen
    dead = Delivery.objects.get(handler=IN_TURN, status="dead")
    assert ordering.blocked("default") == [ordering.Blocked(IN_TURN, keys[-1], dead.pk, 2)]
