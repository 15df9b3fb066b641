"""Concurrency limits: ``@handler(max_concurrency=N)`` runs at most N deliveries at once
across every process, ``concurrency_key=`` at most N per value of a field; a delivery
that finds every slot taken waits, pending, without counting a run or holding a batch."""

import datetime as dt
import json
import sys
import threading
import uuid
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import anyio
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import messagebus
from config import celery_app
from messagebus import executors
from messagebus.delivery import concurrent, run
from messagebus.executors.celery import run_delivery
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, Slot
from messagebus.ops import dashboard
from messagebus.outbox import slots, states
from messagebus.outbox.reference import Reference
from messagebus.testing import run_due
from tests import subprocesses
from tests.brokers import wait_for
from tests.busapp.events import Metered, MeteredFor, Pinged
from tests.busapp.handlers import register_capped
from tests.busapp.models import Entry
from tests.conftest import ROOT, celery_on_postgres, postgres_only, server_database
from tests.subprocesses import CeleryWorker, Watched, celery_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("capped")]

METER = "tests.busapp.handlers.call_the_meter"  # max_concurrency=2
METER_FOR = "tests.busapp.handlers.call_the_meter_for"  # 2 per account
PING = "tests.busapp.handlers.record_ping"


@pytest.fixture
def capped(messagebus_registry):
    """The busapp's capped handlers, registered here (and, $BUSAPP_METERED, in the
    worker processes started here)."""
    register_capped(messagebus_registry)
    return messagebus_registry


def stored(*events: messagebus.Event) -> list[Reference]:
    """Store ``events`` for workers (nothing runs them): their deliveries, in order."""
    with executors.use(WorkerExecutor()):
        for event in events:
            messagebus.bus.handle(event)
    rows = Delivery.objects.filter(event_id__in=[e.message_id for e in events]).order_by("id")
    return [Reference("default", row.event_id, row.handler) for row in rows]


def take(ref: Reference, most: int, lease: dt.datetime | None = None) -> int | None:
    """The number of the slot ``ref``'s delivery takes, if one is free."""
    taken = slots.take(ref, lease, most, wakes=True)
    return None if taken is None else taken.number


def free(ref: Reference, number: int) -> None:
    """Free the slot ``ref``'s delivery holds, as its run would end."""
    with transaction.atomic():
        slots.free(slots.Taken(ref, number, wakes=True))


def row(ref: Reference) -> Delivery:
    return Delivery.objects.get(event_id=ref.event_id, handler=ref.handler)


def metered() -> list[int]:
    return sorted(Entry.objects.filter(note="metered").values_list("amount", flat=True))


# The slots


def test_a_handler_has_as_many_slots_as_its_max_concurrency_each_freed_for_the_next():
    first, second, third = stored(Metered(n=0), Metered(n=1), Metered(n=2))

    assert take(first, 2) == 0
    assert take(second, 2) == 1
    assert take(third, 2) is None  # both taken: they are marked wanted
    assert list(Slot.objects.values_list("number", "wanted")) == [(0, True), (1, True)]

    free(first, 0)
    assert take(third, 2) == 0
    assert slots.taken("default") == {METER: 2}


def test_slots_are_per_value_of_the_concurrency_key_read_as_the_delivery_is_stored():
    a1, a2, a3, b1 = stored(
        MeteredFor(n=1, account="a"), MeteredFor(n=2, account="a"),
        MeteredFor(n=3, account="a"), MeteredFor(n=4, account="b"),
    )  # fmt: skip

    assert [row(ref).concurrency_key for ref in (a1, b1)] == ["a", "b"]
    assert [take(ref, 2) for ref in (a1, a2, a3, b1)] == [0, 1, None, 0]
    assert sorted(Slot.objects.values_list("key", "number")) == [("a", 0), ("a", 1), ("b", 0)]


def test_a_long_key_is_kept_to_its_first_255_characters():
    (ref,) = stored(MeteredFor(n=1, account="x" * 300))
    assert row(ref).concurrency_key == "x" * 255


def test_a_slot_whose_lease_ran_out_is_free_again():
    first, second = stored(Metered(n=0), Metered(n=1))
    gone = timezone.now() - dt.timedelta(seconds=1)
    Slot.objects.create(handler=METER, key="", number=0, event=uuid.uuid4(), lease_until=gone)
    assert slots.taken("default") == {}

    assert take(first, 2) == 0  # its runner died: taken over
    assert take(second, 2) == 1
    assert Slot.objects.get(number=0).event == first.event_id
    assert slots.taken("default") == {METER: 2}


def test_the_sweep_for_lost_runs_deletes_the_slots_whose_lease_ran_out():
    (ref,) = stored(Metered(n=0))
    take(ref, 2)
    gone = timezone.now() - dt.timedelta(seconds=1)
    Slot.objects.create(handler=METER, key="k", number=0, event=uuid.uuid4(), lease_until=gone)

    states.lease_expired("default", run.policy_of)

    assert list(Slot.objects.values_list("event", flat=True)) == [ref.event_id]


def test_no_slot_for_a_delivery_not_pending_under_the_lease_given():
    (ref,) = stored(Metered(n=0))
    lease = states.fresh_lease()
    assert take(ref, 2, lease) is None  # it is not leased
    Delivery.objects.filter(event_id=ref.event_id).update(status="done")
    assert take(ref, 2) is None
    assert not Slot.objects.exists()


def test_slots_taken_under_a_higher_cap_count_against_a_lower_one():
    refs = stored(Metered(n=0), Metered(n=1), Metered(n=2))
    assert [take(ref, 3) for ref in refs[:2]] == [0, 1]
    free(refs[0], 0)  # 1 is held, and, below, 2

    assert take(refs[0], 3) == 0
    assert take(refs[2], 2) is None  # two run already: 0 and 1


# The engine, on every path


def hold_both_slots() -> list[Reference]:
    """Two Metered deliveries holding the handler's two slots, as if running elsewhere."""
    refs = stored(Metered(n=100), Metered(n=101))
    assert [take(ref, 2) for ref in refs] == [0, 1]
    return refs


def free_all(refs: list[Reference]) -> None:
    """The slots these deliveries hold, freed as their runs would end."""
    for ref in refs:
        free(ref, Slot.objects.get(event=ref.event_id, handler=ref.handler).number)


def test_inline_a_delivery_finding_its_slots_taken_waits_pending_without_counting_a_run():
    holders = hold_both_slots()

    messagebus.bus.handle(Metered(n=1))  # the inline executor, after commit

    waiting = Delivery.objects.get(handler=METER, event__payload__n=1)
    assert (waiting.status, waiting.runs, waiting.attempts, waiting.calls) == ("pending", 0, 0, 0)
    assert waiting.lease_until is None
    assert metered() == []

    free_all(holders)  # their runs ended
    run_due()  # a worker, or the inline executor's sweep, finds it due

    waiting.refresh_from_db()
    assert (waiting.status, waiting.runs, waiting.attempts) == ("done", 1, 1)
    assert metered() == [1, 100, 101]
    assert not Slot.objects.exists()


def test_a_claim_leaves_out_a_handlers_deliveries_while_its_slots_are_all_taken():
    holders = hold_both_slots()
    stored(Metered(n=1), Pinged(n=1), Pinged(n=2))

    claimed = states.claim("default", 10)

    assert sorted(claim.ref.handler for claim in claimed) == [PING, PING]
    states.released("default", claimed)
    free_all(holders[1:])  # one slot frees: its deliveries are claimed again
    assert {claim.ref.handler for claim in states.claim("default", 10)} == {METER, PING}


def test_a_claim_leaves_out_only_the_keys_whose_slots_are_all_taken():
    a1, a2, _, b1 = stored(
        MeteredFor(n=1, account="a"), MeteredFor(n=2, account="a"),
        MeteredFor(n=3, account="a"), MeteredFor(n=4, account="b"),
    )  # fmt: skip
    take(a1, 2)
    take(a2, 2)

    claimed = states.claim("default", 10)

    assert [claim.ref.event_id for claim in claimed] == [b1.event_id]


def test_a_claim_takes_no_more_of_a_key_than_it_has_slots_free():
    refs = stored(
        *(MeteredFor(n=n, account="a") for n in range(5)), MeteredFor(n=9, account="b"),
        Pinged(n=1), Pinged(n=2), Pinged(n=3),
    )  # fmt: skip
    take(refs[0], 2)  # one of a's two slots: running elsewhere

    claimed = states.claim("default", 10)

    keys = sorted((c.ref.handler, c.key) for c in claimed)
    assert keys == [(METER_FOR, "a"), (METER_FOR, "b"), (PING, ""), (PING, ""), (PING, "")]
    assert next(c for c in claimed if c.key == "a").ref.event_id == refs[0].event_id  # due first


def test_the_relay_counts_the_deliveries_it_sent_as_running_for_their_tasks_hold_no_slot():
    stored(*(Metered(n=n) for n in range(5)))

    sent = states.claim("default", 10, in_flight=True)

    assert len(sent) == 2
    assert states.claim("default", 10, in_flight=True) == []
    assert len(states.claim("default", 10)) == 2  # a worker counts the slots: none taken


def test_a_claimed_delivery_finding_its_slots_taken_is_handed_back_and_the_batch_goes_on():
    stored(Metered(n=1), Pinged(n=1), Pinged(n=2))
    claims = states.claim("default", 10)
    holders = hold_both_slots()  # taken elsewhere after the claim

    assert run.deliver(claims) == 3

    waiting = Delivery.objects.get(handler=METER, event__payload__n=1)
    assert (waiting.status, waiting.lease_until, waiting.runs, waiting.attempts) == (
        "pending", None, 0, 0,
    )  # fmt: skip
    assert Delivery.objects.filter(handler=PING, status="done").count() == 2
    assert list(Slot.objects.values_list("wanted", flat=True)) == [True, True]
    free_all(holders)
    assert concurrent.drain("default") == 3
    assert metered() == [1, 100, 101]


def test_a_capped_handlers_deliveries_each_run_in_a_transaction_of_their_own(
    messagebus_registry,
):
    seen: list[list[tuple[int, bool]]] = []

    def look(event: Metered) -> None:
        # Its own slot, taken in a statement of its own before its transaction began.
        seen.append(list(Slot.objects.exclude(handler=METER).values_list("number", "wanted")))
        assert transaction.get_connection().in_atomic_block

    messagebus_registry.register(None, look, max_concurrency=1)
    stored(Metered(n=1), Metered(n=2))

    concurrent.drain("default")

    assert seen == [[(0, False)], [(0, False)]]  # one at a time, never in one batch
    assert not Slot.objects.exists()  # freed with each done-mark


def test_a_failed_call_frees_its_slot_with_the_failure_it_records(messagebus_registry):
    def fail(event: Metered) -> None:
        raise ConnectionError("the meter is down")

    messagebus_registry.register(None, fail, max_concurrency=1)
    stored(Metered(n=1))
    (claim,) = [c for c in states.claim("default", 10) if c.ref.handler.endswith("fail")]

    run.deliver([claim])

    failed = Delivery.objects.get(handler=claim.ref.handler)
    assert (failed.status, failed.attempts, failed.lease_until) == ("pending", 1, None)
    assert "the meter is down" in failed.last_error
    assert not Slot.objects.filter(handler=claim.ref.handler).exists()


def test_a_celery_task_finding_its_slots_taken_leaves_its_delivery_due_no_run_counted():
    holders = hold_both_slots()
    (ref,) = stored(Metered(n=1))
    (leased,) = states.leased("default", [ref.event_id], states.fresh_lease())  # sent

    lease = row(ref).lease_until
    assert run_delivery.run(leased.to_json(), lease.isoformat()) is False

    waiting = row(ref)
    assert (waiting.status, waiting.lease_until, waiting.runs, waiting.attempts) == (
        "pending", None, 0, 0,
    )  # fmt: skip
    free_all(holders)
    (leased,) = states.leased("default", [ref.event_id], states.fresh_lease())  # the relay's
    assert run_delivery.run(leased.to_json(), row(ref).lease_until.isoformat()) is True
    assert row(ref).status == "done"


@dataclass(frozen=True)
class Fetched(messagebus.Event):
    n: int


@pytest.mark.parametrize("concurrency", [1, 6])
def test_async_deliveries_run_at_most_max_concurrency_at_once(messagebus_registry, concurrency):
    running: list[int] = []
    most: list[int] = [0]
    calls: list[int] = []

    async def fetch(event: Fetched) -> None:
        running.append(event.n)
        most[0] = max(most[0], len(running))
        await anyio.sleep(0.2)
        running.remove(event.n)
        calls.append(event.n)

    messagebus_registry.register(None, fetch, max_concurrency=2)
    stored(*(Fetched(n=n) for n in range(8)))

    while claims := states.claim("default", 10):
        concurrent.run_now(claims, concurrency=concurrency)

    assert sorted(calls) == list(range(8))  # each once
    assert most[0] == min(concurrency, 2)
    rows = Delivery.objects.filter(handler__endswith="fetch").values_list("status", "runs")
    assert set(rows) == {("done", 1)}  # waiting for a slot counted no run
    assert not Slot.objects.exists()


def test_an_async_delivery_holds_its_slot_until_its_done_mark(messagebus_registry):
    seen: list[int] = []

    async def fetch(event: Fetched) -> None:
        seen.append(await Slot.objects.filter(lease_until__gt=timezone.now()).acount())

    messagebus_registry.register(None, fetch, max_concurrency=1)
    stored(Fetched(n=1))

    concurrent.run_now(states.claim("default", 10))

    assert seen == [1]
    assert not Slot.objects.exists()
    assert Delivery.objects.get(handler__endswith="fetch").status == "done"


# What shows a cap, and what checks it


def test_status_shows_each_capped_handlers_cap_and_slots_taken():
    hold_both_slots()
    out = StringIO()
    call_command("messagebus", "status", stdout=out)
    text = out.getvalue()
    assert f"Capped: {METER}: at most 2 at once; 2 running." in text
    assert f"Capped: {METER_FOR}: at most 2 at once per account; 0 running." in text

    out = StringIO()
    call_command("messagebus", "status", "--json", stdout=out)
    capped = {c["handler"]: c for c in json.loads(out.getvalue())["capped_handlers"]}
    assert capped[METER] == {
        "handler": METER, "max_concurrency": 2, "concurrency_key": None, "running": 2,
    }  # fmt: skip
    assert capped[METER_FOR]["concurrency_key"] == "account"


def test_the_dashboard_shows_a_handlers_cap_and_slots_taken_in_its_one_query(admin_client):
    hold_both_slots()

    with CaptureQueriesContext(connection) as queries:
        handlers = {h["name"]: h for h in dashboard.handlers("default")}

    assert len(queries) == 1
    assert (handlers[METER]["cap"], handlers[METER]["running"]) == (2, 2)
    assert handlers[METER]["pending"] == 2
    assert (handlers[METER_FOR]["cap"], handlers[METER_FOR]["key"]) == (2, "account")
    assert (handlers[PING]["cap"], handlers[PING]["running"]) == (None, 0)
    page = admin_client.get(reverse("admin:messagebus_delivery_dashboard")).content.decode()
    assert "<td>2 of 2</td>" in page and "<td>0 (at most 2 per account)</td>" in page


def test_the_claim_reads_no_slot_while_no_handler_has_a_max_concurrency(messagebus_registry):
    stored(Pinged(n=1))
    messagebus_registry.reset()  # no handler at all here: none has a cap
    with CaptureQueriesContext(connection) as queries:
        states.claim("default", 10)
    assert not any(Slot._meta.db_table in q["sql"] for q in queries)


# Real processes (PostgreSQL: several workers on one queue)


def started_workers(count: int, env: dict[str, str], batch: int = 5) -> list[Watched]:
    return subprocesses.started_workers(count, {"BUSAPP_METERED": "1", **env}, batch=batch)


def wait_until(check, seconds: float = 120) -> None:
    wait_for(check, seconds)


Call = tuple[int, str, float, float]  # n, account, started, ended


def spans(log: Path) -> list[Call]:
    """Each call the log shows, in the order of their n; one with no end (its process was
    killed) ends at infinity."""
    calls: dict[tuple[int, str], list[float]] = {}  # (n, pid): start, end
    accounts: dict[int, str] = {}
    for line in log.read_text().splitlines():
        when, n, account, at, pid = line.split()
        if when == "start":
            calls[int(n), pid] = [float(at)]
        else:
            calls[int(n), pid].append(float(at))
        accounts[int(n)] = account
    return sorted(
        (n, accounts[n], times[0], times[1] if len(times) > 1 else float("inf"))
        for (n, _), times in calls.items()
    )


def most_at_once(calls: list[Call]) -> int:
    edges = sorted([(s, 1) for _, _, s, _ in calls] + [(e, -1) for _, _, _, e in calls])
    running = most = 0
    for _, step in edges:  # at one time an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


def drained(workers: list[Watched], count: int) -> None:
    try:
        wait_until(lambda: Delivery.objects.filter(status="done").count() == count)
    finally:
        outputs = [worker.stop() for worker in workers]
    assert [code for code, _ in outputs] == [0, 0, 0], outputs


@server_database
def test_three_workers_run_a_handler_capped_at_two_never_more_than_two_at_once(tmp_path):
    log = tmp_path / "meter.log"
    workers = started_workers(3, {"BUSAPP_METER_LOG": str(log), "BUSAPP_METER_SLEEP": "0.05"})
    count = 60
    with executors.use(WorkerExecutor()), transaction.atomic():  # one wake-up for all
        for n in range(count):
            messagebus.bus.handle(Metered(n=n))
    drained(workers, count)

    calls = spans(log)
    assert [n for n, *_ in calls] == list(range(count))  # each called once
    assert most_at_once(calls) == 2  # never more, and as many as it may
    assert metered() == list(range(count))
    rows = Delivery.objects.values_list("status", "runs", "attempts")
    assert set(rows) == {("done", 1, 1)}  # waiting for a slot counted nothing
    assert not Slot.objects.filter(lease_until__gt=timezone.now()).exists()


@server_database
def test_three_workers_run_a_handler_capped_at_two_per_key_never_more_per_key(tmp_path):
    log = tmp_path / "meter.log"
    workers = started_workers(3, {"BUSAPP_METER_LOG": str(log), "BUSAPP_METER_SLEEP": "0.05"})
    count = 90
    with executors.use(WorkerExecutor()), transaction.atomic():
        for n in range(count):
            messagebus.bus.handle(MeteredFor(n=n, account="abc"[n % 3]))
    drained(workers, count)

    calls = spans(log)
    assert [n for n, *_ in calls] == list(range(count))
    for account in "abc":
        assert most_at_once([c for c in calls if c[1] == account]) <= 2, account
    assert most_at_once(calls) == 3  # the keys' slots are their own: three workers at once
    assert set(Delivery.objects.values_list("status", "runs")) == {("done", 1)}


@server_database
def test_the_slots_of_killed_workers_free_themselves_when_their_leases_run_out(tmp_path):
    log = tmp_path / "meter.log"
    env = {"BUSAPP_METER_LOG": str(log), "BUSAPP_CLAIM_TIMEOUT": "8"}  # renewed under load too
    stored(*(Metered(n=n) for n in range(4)))
    stuck = started_workers(2, {**env, "BUSAPP_METER_SLEEP": "600"}, batch=1)
    wait_until(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    for worker in stuck:  # each in the middle of a call, holding a slot
        worker.kill()
    held = list(Slot.objects.values_list("lease_until", flat=True))
    assert len(held) == 2 and min(held) > timezone.now()

    (worker,) = started_workers(1, env)
    try:
        wait_until(lambda: Delivery.objects.filter(status="done").count() == 4)
    finally:
        code, output = worker.stop()
    assert code == 0, output

    calls = spans(log)
    killed = [n for n, _, _, ended in calls if ended == float("inf")]
    ran = [(n, started) for n, _, started, ended in calls if ended != float("inf")]
    assert len(killed) == 2 and sorted(n for n, _ in ran) == [0, 1, 2, 3]
    assert min(at for _, at in ran) >= min(held).timestamp()  # none before a lease ran out
    assert metered() == [0, 1, 2, 3]  # the killed calls' work rolled back with them
    runs = sorted(Delivery.objects.values_list("runs", flat=True))
    assert runs == [1, 1, 2, 2]  # each killed call's run lost, counted once


@celery_on_postgres
def test_celery_workers_and_the_relay_run_a_handler_capped_at_two_never_more_at_once(tmp_path):
    log = tmp_path / "meter.log"
    env = {"BUSAPP_METERED": "1", "BUSAPP_METER_LOG": str(log), "BUSAPP_METER_SLEEP": "0.1"}
    celery_app.control.purge()
    worker = CeleryWorker("capped", "--concurrency", "4", **env)  # four tasks at once
    relay = Watched(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "relay", "--interval", "0.2"],
        env=celery_env(**env), ready="started on database", what="the relay",
    )  # fmt: skip
    count = 30
    try:
        with override_settings(MESSAGEBUS={**settings.MESSAGEBUS, "EXECUTOR": "celery"}):
            for n in range(count):  # a task each at commit: those over the cap wait
                messagebus.bus.handle(Metered(n=n))
        wait_until(lambda: Delivery.objects.filter(status="done").count() == count)
    finally:
        outputs = [relay.stop(), worker.stop()]

    calls = spans(log)
    assert [n for n, *_ in calls] == list(range(count)), outputs  # each called once
    assert most_at_once(calls) == 2
    assert set(Delivery.objects.values_list("status", "runs", "attempts")) == {("done", 1, 1)}


@postgres_only
def test_freeing_a_slot_a_delivery_wanted_wakes_the_workers_as_it_commits():
    import psycopg

    params = connection.settings_dict
    listener = psycopg.connect(
        dbname=params["NAME"], user=params["USER"] or None, password=params["PASSWORD"] or None,
        host=params["HOST"] or None, port=params["PORT"] or None, autocommit=True,
    )  # fmt: skip
    first, second, third = stored(Metered(n=0), Metered(n=1), Metered(n=2))
    listener.execute("LISTEN messagebus")

    def heard() -> int:
        return len(list(listener.notifies(timeout=0.5)))

    with listener:
        assert take(first, 2) == 0
        free(first, 0)
        assert heard() == 0  # no one wanted it
        assert [take(ref, 2) for ref in (first, second, third)] == [0, 1, None]
        with transaction.atomic():
            slots.free(slots.Taken(second, 1, wakes=False))  # a worker's: it claims next
            slots.free(slots.Taken(first, 0, wakes=True))
            assert heard() == 0  # not before the commit
        assert heard() == 1


@server_database
def test_four_threads_taking_slots_at_once_never_take_more_than_there_are():
    refs = stored(*(Metered(n=n) for n in range(12)))
    barrier = threading.Barrier(4)
    taken: list[int | None] = []

    def take_each(mine: list[Reference]) -> None:
        try:
            for ref in mine:
                barrier.wait(timeout=30)
                taken.append(take(ref, 2))
        finally:
            connection.close()

    threads = [threading.Thread(target=take_each, args=(refs[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(n for n in taken if n is not None) == [0, 1]
    assert Slot.objects.count() == 2
