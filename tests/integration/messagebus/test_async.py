"""Async handlers: awaited on an event loop, the handlers of one event at once, each
delivery with its own bookkeeping, from sync and async code alike."""

import os
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

import messagebus
from messagebus import executors
from messagebus.delivery import concurrent, run
from messagebus.exceptions import HandlerTimeout
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery
from messagebus.outbox import states
from messagebus.outbox.reference import Reference
from messagebus.processes.worker import Worker
from messagebus.testing import run_due
from tests.busapp.commands import Deposit, OpenAccount, Overdrawn
from tests.busapp.events import Deposited, Napped, Opened, Pinged
from tests.busapp.models import Account, Entry
from tests.conftest import ROOT, database_url, server_database
from tests.subprocesses import Watched

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Double(messagebus.Command):
    n: int


NAP = 0.2  # seconds each handler awaits, once the others it waits for have started
MEET_WITHIN = 30.0  # seconds a handler waits for the others to start


class Timeline:
    """When each handler's calls started and ended. Each call waits until every handler
    named in ``meet`` has started once: they overlap by meeting, not by a clock."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.meet: set[str] = set()
        self.started: set[str] = set()

    async def nap(self, name: str) -> None:
        started = time.monotonic()
        self.started.add(name)
        try:
            with anyio.fail_after(MEET_WITHIN):
                while not self.meet <= self.started:
                    await anyio.sleep(0.01)
            await anyio.sleep(NAP)
        finally:
            self.spans[name].append((started, time.monotonic()))

    def overlap(self, a: str, b: str) -> bool:
        (start_a, end_a), (start_b, end_b) = self.spans[a][0], self.spans[b][0]
        return start_a < end_b and start_b < end_a


@pytest.fixture
def timeline(messagebus_registry):
    """Two async handlers of Opened, ``welcome`` and ``crm``, that each await NAP seconds;
    ``crm`` fails while ``timeline.crm_down`` is true. A test that needs them at once sets
    ``timeline.meet``."""
    timeline = Timeline()
    timeline.crm_down = False

    async def send_welcome(event: Opened) -> None:
        await timeline.nap("welcome")
        await sync_to_async(Entry.objects.create)(account=event.name, amount=0, note="welcome")

    async def notify_crm(event: Opened) -> None:
        await timeline.nap("crm")
        if timeline.crm_down:
            raise ConnectionError("crm down")

    messagebus_registry.register(None, send_welcome)
    messagebus_registry.register(None, notify_crm)
    return timeline


def deliveries() -> dict[str, Delivery]:
    return {d.handler.rsplit(".", 1)[-1]: d for d in Delivery.objects.all()}


def test_two_async_handlers_of_one_event_run_at_once_from_sync_code(timeline):
    timeline.meet = {"welcome", "crm"}
    account = messagebus.bus.handle(OpenAccount(name="ann"))

    assert Account.objects.get(pk=account).name == "ann"
    assert timeline.overlap("welcome", "crm")
    found = deliveries()
    assert found["send_welcome"].status == found["notify_crm"].status == Delivery.Status.DONE
    assert found["send_welcome"].lease_until is None and found["send_welcome"].runs == 1
    assert Entry.objects.filter(note="welcome").count() == 1


def test_one_failing_leaves_the_other_done_and_is_retried_itself(timeline):
    timeline.meet = {"welcome", "crm"}
    timeline.crm_down = True

    messagebus.bus.handle(OpenAccount(name="ann"))

    assert timeline.overlap("welcome", "crm")
    found = deliveries()
    assert found["send_welcome"].status == Delivery.Status.DONE
    crm = found["notify_crm"]  # one call in the request, the next one due
    assert (crm.status, crm.runs, crm.calls, crm.attempts) == (Delivery.Status.PENDING, 0, 1, 1)
    assert run_due() == 2  # the rest of its run
    crm = deliveries()["notify_crm"]
    assert crm.status == Delivery.Status.PENDING and crm.runs == 1
    assert crm.attempts == 3 and len(timeline.spans["crm"]) == 3  # RETRY_ATTEMPTS calls
    assert "crm down" in crm.last_error and crm.lease_until is None
    assert len(timeline.spans["welcome"]) == 1

    timeline.crm_down = False
    Delivery.objects.filter(pk=crm.pk).update(next_attempt_at=crm.created_at)
    assert Worker(once=True).run() == 1
    assert deliveries()["notify_crm"].status == Delivery.Status.DONE


def test_a_handler_past_its_timeout_is_cancelled_and_retried_the_others_unaffected(
    messagebus_registry,
):
    calls = []

    async def slow(event: Opened) -> None:
        calls.append("slow")
        await anyio.sleep(0 if len(calls) > 1 else 60)

    async def quick(event: Opened) -> None:
        await anyio.sleep(0.05)
        calls.append("quick")

    messagebus_registry.register(None, slow, timeout=0.3)
    messagebus_registry.register(None, quick)
    started = time.monotonic()

    messagebus.bus.handle(OpenAccount(name="ann"))

    assert time.monotonic() - started < 30  # not the 60 s it asked for
    assert deliveries()["slow"].status == Delivery.Status.PENDING
    assert run_due() == 1  # its second call
    found = deliveries()
    assert found["quick"].status == Delivery.Status.DONE
    assert found["slow"].status == Delivery.Status.DONE  # the second call, within time
    assert found["slow"].attempts == 2  # calls, the one that finished included
    assert "did not finish within 0.3s and was cancelled" in found["slow"].last_error
    assert HandlerTimeout.__name__ in found["slow"].last_error
    assert calls.count("slow") == 2 and calls.count("quick") == 1


@override_settings(MESSAGEBUS={"HANDLER_TIMEOUT": 0.2, "RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0})
def test_the_timeout_setting_applies_to_every_async_handler(messagebus_registry):
    async def stuck(event: Opened) -> None:
        await anyio.sleep(10)

    messagebus_registry.register(None, stuck)
    messagebus.bus.handle(OpenAccount(name="ann"))

    found = deliveries()["stuck"]
    assert found.status == Delivery.Status.PENDING and found.runs == 1
    assert "did not finish within 0.2s" in found.last_error


@pytest.mark.anyio
async def test_ahandle_commits_the_command_and_delivers_its_events_on_this_loop(timeline):
    timeline.meet = {"welcome", "crm"}
    account = await messagebus.bus.ahandle(OpenAccount(name="ann"))

    assert (await Account.objects.aget(pk=account)).name == "ann"
    assert timeline.overlap("welcome", "crm")
    found = await sync_to_async(deliveries)()
    assert {d.status for d in found.values()} == {Delivery.Status.DONE}
    assert await Entry.objects.filter(note="welcome").acount() == 1


@pytest.mark.anyio
async def test_ahandle_raises_the_command_handlers_error_and_rolls_back():
    await messagebus.bus.ahandle(OpenAccount(name="ann"))
    await messagebus.bus.ahandle(Deposit(name="ann", amount=10))

    with pytest.raises(Overdrawn, match="cannot go below zero"):
        await messagebus.bus.ahandle(Deposit(name="ann", amount=-11))

    assert (await Account.objects.aget(name="ann")).balance == 10
    assert await Entry.objects.filter(note="deposited").acount() == 1  # the first one's


@pytest.mark.anyio
async def test_ahandle_runs_sync_event_handlers_and_the_events_they_record():
    await messagebus.bus.ahandle(OpenAccount(name="ann"))
    await messagebus.bus.ahandle(Deposit(name="ann", amount=5))

    # write_entry (Deposited), audit (records Audited), write_audit_entry (Audited)
    notes = [e async for e in Entry.objects.order_by("note").values_list("note", flat=True)]
    assert notes == ["audited", "deposited"]


@pytest.mark.anyio
async def test_an_async_command_handler_is_awaited_and_its_result_returned(messagebus_registry):
    async def double(cmd: Double, bus) -> int:
        await anyio.sleep(0)
        if cmd.n < 0:
            raise Overdrawn("no")
        await bus.ahandle(OpenAccount(name=f"n{cmd.n}"))  # database work: a command of its own
        return cmd.n * 2

    messagebus_registry.register(None, double)

    assert await messagebus.bus.ahandle(Double(n=4)) == 8
    assert await Account.objects.filter(name="n4").aexists()
    with pytest.raises(Overdrawn):
        await messagebus.bus.ahandle(Double(n=-1))


def test_sync_handle_awaits_an_async_command_handler(messagebus_registry):
    async def double(cmd: Double) -> int:
        await anyio.sleep(0)
        return cmd.n * 2

    messagebus_registry.register(None, double)
    assert messagebus.bus.handle(Double(n=1)) == 2


def test_an_async_handlers_done_mark_does_not_commit_with_its_database_work(
    messagebus_registry,
):
    """What the docs say: its writes are its own, so a failure after them keeps them,
    and the delivery runs again (at least once, not exactly once)."""

    async def welcome(event: Opened) -> None:
        await sync_to_async(Entry.objects.create)(account=event.name, amount=0, note="welcome")
        raise ConnectionError("mail server down")

    messagebus_registry.register(None, welcome)
    with override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0}):
        messagebus.bus.handle(OpenAccount(name="ann"))

    assert Entry.objects.filter(note="welcome").count() == 1  # committed without the mark
    assert deliveries()["welcome"].status == Delivery.Status.PENDING


def test_a_sync_handlers_work_rolls_back_with_its_failure(messagebus_registry):
    """The contrast: a sync handler's writes and its done-mark share one transaction."""

    def welcome(event: Opened) -> None:
        Entry.objects.create(account=event.name, amount=0, note="welcome")
        raise ConnectionError("mail server down")

    messagebus_registry.register(None, welcome)
    with override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0}):
        messagebus.bus.handle(OpenAccount(name="ann"))

    assert not Entry.objects.filter(note="welcome").exists()
    assert deliveries()["welcome"].status == Delivery.Status.PENDING


def test_an_async_handler_running_past_the_claim_timeout_keeps_its_lease(messagebus_registry):
    calls = []

    async def slow(event: Opened) -> None:
        calls.append(time.monotonic())
        await anyio.sleep(3)

    messagebus_registry.register(None, slow)
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(OpenAccount(name="ann"))
    worker = Worker(once=True, concurrency=2)
    with override_settings(MESSAGEBUS={"CLAIM_TIMEOUT": 0.6, "SWEEP_INTERVAL": 0}):
        thread = threading.Thread(target=worker.run)
        thread.start()
        wait_for(lambda: calls)  # claimed and running
        time.sleep(1.2)  # twice the lease it was claimed with
        ended = states.lease_expired("default", run.policy_of)  # another worker's sweep
        thread.join(10)

    assert ended == [] and len(calls) == 1
    row = deliveries()["slow"]
    assert (row.status, row.runs, row.attempts) == (Delivery.Status.DONE, 1, 1)


def test_a_timeout_the_handlers_own_code_lets_through_is_still_a_timeout(messagebus_registry):
    async def records_failure(event: Opened) -> None:
        try:
            raise ConnectionError("api down")
        except ConnectionError:
            await sync_to_async(time.sleep)(0.5)  # writing the failure down, say

    messagebus_registry.register(None, records_failure, timeout=0.2)
    with override_settings(MESSAGEBUS={"RETRY_ATTEMPTS": 1, "SWEEP_INTERVAL": 0}):
        messagebus.bus.handle(OpenAccount(name="ann"))  # returns: the failure is the delivery's

    row = deliveries()["records_failure"]
    assert (row.status, row.runs, row.attempts) == (Delivery.Status.PENDING, 1, 1)
    assert "did not finish within 0.2s" in row.last_error


def test_what_an_async_handlers_commands_store_runs_after_it_outside_its_timeout(
    messagebus_registry,
):
    async def deposit_bonus(event: Opened, bus) -> None:
        await bus.ahandle(Deposit(name=event.name, amount=5))

    async def slow_receipt(event: Deposited) -> None:
        await anyio.sleep(2.5)

    messagebus_registry.register(None, deposit_bonus, timeout=2)
    messagebus_registry.register(None, slow_receipt)

    messagebus.bus.handle(OpenAccount(name="ann"))

    assert Account.objects.get(name="ann").balance == 5  # deposited once
    statuses = {name: d.status for name, d in deliveries().items()}
    assert set(statuses) == {
        "deposit_bonus", "slow_receipt", "write_entry", "audit", "write_audit_entry"
    }  # fmt: skip
    assert set(statuses.values()) == {Delivery.Status.DONE}


def test_an_async_delivery_held_by_another_runner_is_left_to_it(timeline):
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(OpenAccount(name="ann"))
    [held] = states.claim("default", 1)
    [free] = Delivery.objects.exclude(pk=held.id)

    assert not concurrent.run_one(states.Claim.fresh(held.ref))
    assert concurrent.run_one(states.Claim.fresh(Reference("default", free.event_id, free.handler)))

    assert Delivery.objects.get(pk=held.id).lease_until == held.lease
    assert Delivery.objects.get(pk=free.pk).status == Delivery.Status.DONE


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_worker_runs_async_and_sync_handlers_with_their_own_bookkeeping(timeline, concurrency):
    timeline.crm_down = True
    if concurrency > 1:
        timeline.meet = {"welcome", "crm"}
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(OpenAccount(name="ann"))
        messagebus.bus.handle(OpenAccount(name="bob"))
        messagebus.bus.handle(Deposit(name="bob", amount=3))  # sync handlers, and one more event

        processed = Worker(once=True, concurrency=concurrency).run()

    # 2 x (welcome, crm), write_entry, audit, then write_audit_entry; and crm's two more
    # calls of each run, due again at once
    assert processed == 11
    found = Delivery.objects.values_list("handler", "status", "runs", "attempts")
    by_handler = defaultdict(list)
    for handler, status, runs, attempts in found:
        by_handler[handler.rsplit(".", 1)[-1]].append((status, runs, attempts))
    assert by_handler["notify_crm"] == [(Delivery.Status.PENDING, 1, 3)] * 2
    assert by_handler["send_welcome"] == [(Delivery.Status.DONE, 1, 1)] * 2
    assert by_handler["write_audit_entry"] == [(Delivery.Status.DONE, 1, 1)]
    if concurrency > 1:  # both accounts' handlers at once
        spans = sorted(timeline.spans["welcome"] + timeline.spans["crm"])
        assert spans[1][0] < spans[0][1]


def start_worker(*options: str, env: dict[str, str]) -> Watched:
    return Watched(
        [sys.executable, str(ROOT / "manage.py"), "messagebus", "worker", *options],
        env={**os.environ, "DATABASE_URL": database_url(), "LOG_LEVEL": "INFO", **env},
        ready="started on database",
        what="the worker",
    )


def wait_for(check, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lines(log: Path, word: str) -> list[str]:
    return (
        [line for line in log.read_text().splitlines() if line.startswith(word)]
        if log.exists()
        else []
    )


def stopped_while_napping(
    tmp_path: Path, naps: int, seconds: float, *options: str
) -> tuple[int, str, float, Path]:
    """Store ``naps`` Napped events, start a worker with ``options``, SIGTERM it once every
    nap has started; its exit status, output, seconds taken to stop, and the nap log."""
    log = tmp_path / "naps.log"
    with executors.use(WorkerExecutor()):
        for n in range(naps):
            messagebus.bus.handle(Napped(n=n, seconds=seconds))
    worker = start_worker(*options, env={"BUSAPP_NAP_LOG": str(log)})
    try:
        wait_for(lambda: len(lines(log, "start")) == naps)
        stopped = time.monotonic()
        code, output = worker.stop()
        return code, output, time.monotonic() - stopped, log
    finally:
        worker.kill()


def test_sigterm_lets_running_deliveries_finish_within_the_grace_period(tmp_path):
    code, output, _, log = stopped_while_napping(
        tmp_path, 3, 1.0, "--concurrency", "3", "--grace", "20"
    )

    assert code == 0, output
    assert len(lines(log, "end")) == 3
    assert "Processed 3 deliveries." in output
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.DONE}


def test_past_the_grace_period_async_deliveries_are_cancelled_and_handed_back(tmp_path):
    code, output, took, log = stopped_while_napping(
        tmp_path, 4, 60, "--concurrency", "4", "--grace", "0.5"
    )

    assert code == 0, output
    assert took < 20  # not the 60 s the handlers asked for
    assert "Grace period of 0.5s over: cancelling 4 running deliveries" in output
    assert lines(log, "end") == []
    assert "Processed 0 deliveries." in output
    rows = Delivery.objects.values_list("status", "lease_until", "runs", "attempts")
    assert list(rows) == [(Delivery.Status.PENDING, None, 0, 0)] * 4  # due again, no run counted


@server_database  # on SQLite its transaction holds the one write lock: the worker waits on it
def test_a_sync_delivery_still_running_past_the_grace_period_rolls_back_with_the_process(
    tmp_path,
):
    log = tmp_path / "pings.log"
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(Pinged(n=1))
    worker = start_worker(
        "--concurrency", "2", "--grace", "0.5",
        env={"BUSAPP_PING_LOG": str(log), "BUSAPP_PING_SLEEP": "60"},
    )  # fmt: skip
    try:
        wait_for(lambda: log.exists() and log.read_text())
        code, output = worker.stop()
    finally:
        worker.kill()

    assert code == 0, output
    assert "Left delivery of busapp.Pinged" in output
    assert not Entry.objects.filter(account="ping").exists()  # its write rolled back
    [row] = Delivery.objects.all()
    assert (
        row.status == Delivery.Status.PENDING and row.lease_until is not None
    )  # until it runs out


def test_a_second_sigterm_stops_the_worker_at_once_whatever_still_runs(tmp_path):
    log = tmp_path / "naps.log"
    with executors.use(WorkerExecutor()):
        messagebus.bus.handle(Napped(n=1, seconds=60))
    worker = start_worker("--concurrency", "2", "--grace", "60", env={"BUSAPP_NAP_LOG": str(log)})
    try:
        wait_for(lambda: lines(log, "start"))
        os.killpg(worker.process.pid, signal.SIGTERM)
        wait_for(lambda: "running deliveries have 60s to finish" in worker.output)
        os.killpg(worker.process.pid, signal.SIGTERM)
        code = worker.process.wait(20)
    finally:
        worker.kill()

    assert code == 1
    assert "stopped at once" in worker.output
    [row] = Delivery.objects.all()
    assert row.status == Delivery.Status.PENDING  # its lease runs out, then it runs again


def test_sigterm_after_the_limit_is_reached_still_gets_only_the_grace_period(tmp_path):
    code, output, took, _ = stopped_while_napping(
        tmp_path, 2, 60, "--limit", "2", "--concurrency", "2", "--grace", "0.5"
    )

    assert code == 0, output
    assert took < 20
    assert "Grace period of 0.5s over: cancelling 2 running deliveries" in output
