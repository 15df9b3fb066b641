"""The delivery state machine, driven by hypothesis: two workers race over three deliveries.

Workers A and B claim deliveries and run them, in a batch or alone, beside an
inline runner (no lease: the default executor's). Calls fail and the policy
judges each (called again soon, the run ended, postponed, dead), workers stop
and hand back what they did not start, leases run out and the reaper ends the
runs of the workers that vanished, delays pass, and an operator requeues or
discards. Every step goes through the transitions of
``messagebus.outbox.states`` the way the engine (``delivery.run``) uses them,
and checks what the transition did; after every step the rows must still make
sense.

Steps a runner takes back to back are separate rules here, so that others'
steps come between them: a runner may go on under a lease it lost, and then
it must change nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import Counter

import pytest
from django.conf import settings
from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, Phase, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import messagebus
from messagebus.core.policy import Dead, Policy, Postpone, Retry
from messagebus.exceptions import RetryLater
from messagebus.models import Delivery, StoredEvent
from messagebus.outbox import states
from messagebus.outbox.reference import Reference
from tests.busapp.events import Pinged
from tests.busapp.handlers import record_ping
from tests.busapp.models import Entry

pytestmark = pytest.mark.django_db(transaction=True)

USING = "default"
LIMIT = 3  # MAX_DELIVERIES
CALLS = 2  # RETRY_ATTEMPTS
TIMEOUT = 300.0  # CLAIM_TIMEOUT
PENDING, DONE, DEAD = Delivery.Status.PENDING, Delivery.Status.DONE, Delivery.Status.DEAD
DISCARDED = Delivery.Status.DISCARDED
WORKERS, INLINE = ("A", "B"), "inline"
FOREVER = dt.timedelta(days=3650).total_seconds()
WHICH = st.integers(0, 8)  # picks among what there is to pick
# How a run's last call failed, by name so that a failing example reads well.
ERRORS = {
    "connection refused": lambda: ConnectionError("connection refused"),
    "poison": lambda: IntegrityError("duplicate key value"),
    "retry now": lambda: RetryLater(0),
    "retry in a minute": lambda: RetryLater(60),
}


def bus_settings(**changes: object) -> override_settings:
    return override_settings(
        MESSAGEBUS={
            **settings.MESSAGEBUS,
            "EXECUTOR": "worker",  # stored events wait for a worker
            "MAX_DELIVERIES": LIMIT,
            "CLAIM_TIMEOUT": TIMEOUT,
            **changes,
        }
    )


@pytest.fixture(autouse=True)
def worker_settings():
    with bus_settings():
        yield


def policy_of(handler: str) -> Policy:
    return Policy(max_deliveries=LIMIT)


def state(row: Delivery) -> tuple[object, ...]:
    return (
        row.status, row.runs, row.calls, row.lease_until, row.next_attempt_at, row.finished_at
    )  # fmt: skip


def held(row: Delivery, lease: dt.datetime | None) -> bool:
    """Whether a transition under ``lease`` (None: unleased) acts on ``row``."""
    return row.status == PENDING and row.lease_until == lease


@dataclasses.dataclass
class Runner:
    """What a runner holds: claims not started yet, and the lease of each run going on."""

    claims: dict[int, states.Claim] = dataclasses.field(default_factory=dict)
    leases: dict[int, dt.datetime] = dataclasses.field(default_factory=dict)

    def ended(self, pk: int) -> None:
        self.claims.pop(pk, None)
        self.leases.pop(pk, None)

    def relabel(self, pk: int, old: dt.datetime, new: dt.datetime) -> None:
        if self.leases.get(pk) == old:
            self.leases[pk] = new
        if (claim := self.claims.get(pk)) and claim.lease == old:
            self.claims[pk] = dataclasses.replace(claim, lease=new)


@hypothesis_settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    database=None,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow],
)
class DeliveryStates(RuleBasedStateMachine):
    def __init__(self) -> None:
        """A clean slate: three pings, each with one delivery, to ``record_ping``."""
        super().__init__()
        Entry.objects.all().delete()
        StoredEvent.objects.all().delete()  # and their deliveries
        self.numbers: dict[int, int] = {}  # delivery id: its Pinged's n
        self.refs: dict[int, Reference] = {}
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
            [row] = Delivery.objects.exclude(pk__in=self.numbers)
            assert row.handler == "tests.busapp.handlers.record_ping"
            self.numbers[row.pk] = n
            self.refs[row.pk] = Reference(USING, row.event_id, row.handler)
        self.ids = sorted(self.numbers)
        self.runners = {name: Runner() for name in (*WORKERS, INLINE)}
        self.completions: Counter[int] = Counter()  # transitions that marked it done
        self.poisoned: set[int] = set()  # dead of a poison failure, not requeued since
        self.final: dict[int, str] = {}  # done or discarded: so it stays

    @initialize(runs=st.lists(st.integers(0, LIMIT - 1), min_size=3, max_size=3))
    def earlier_runs(self, runs: list[int]) -> None:
        """Each delivery may have failed runs behind it."""
        for pk, count in zip(self.ids, runs, strict=True):
            Delivery.objects.filter(pk=pk).update(runs=count)

    # What the runners see and do.

    def rows(self) -> dict[int, Delivery]:
        return Delivery.objects.in_bulk(self.ids)

    def row(self, pk: int) -> Delivery:
        return Delivery.objects.get(pk=pk)

    def claiming(self) -> list[str]:
        """The workers holding claims they have not started."""
        return [name for name in WORKERS if self.runners[name].claims]

    def pick(self, which: int) -> tuple[Runner, int, dt.datetime | None]:
        """A runner, a delivery it runs and its lease: a worker's run of a claim, or an inline run.

        A worker's run of a claim is started by then (no longer one to hand back).
        """
        going = [(name, pk) for name in WORKERS for pk in sorted(self.runners[name].leases)]
        name, pk = [*going, (INLINE, self.ids[which % 3])][which % (len(going) + 1)]
        runner = self.runners[name]
        runner.claims.pop(pk, None)
        note(f"{name} runs delivery {pk} under lease {runner.leases.get(pk)}")
        return runner, pk, runner.leases.get(pk)

    def handle(self, pk: int) -> None:
        """The handler's work, which must commit once at most, with the done-mark."""
        record_ping(Pinged(n=self.numbers[pk]))

    def stop(self, name: str) -> None:
        """``name`` stops: it hands back the claims it did not start, and forgets them."""
        note(f"{name} stops")
        runner = self.runners[name]
        claims = list(runner.claims.values())
        before = self.rows()
        back = {c.id for c in claims if held(before[c.id], c.lease)}
        assert states.released(USING, claims) == len(back)
        after = self.rows()
        for pk in self.ids:
            if pk in back:  # due again at once, as it was, no run counted
                assert (after[pk].status, after[pk].lease_until) == (PENDING, None)
                assert after[pk].runs == before[pk].runs
                assert after[pk].next_attempt_at == before[pk].next_attempt_at <= timezone.now()
            else:
                assert state(after[pk]) == state(before[pk])
        for c in claims:
            runner.ended(c.id)

    def reaper(self) -> None:
        """``lease_expired`` ends the runs whose lease ran out: due again, or dead."""
        now = timezone.now()
        before = self.rows()
        lost = {
            pk
            for pk, row in before.items()
            if row.status == PENDING and row.lease_until is not None and row.lease_until <= now
        }
        dying = {pk for pk in lost if before[pk].runs + 1 >= LIMIT}
        died = states.lease_expired(USING, policy_of)
        assert {row.pk for row, _ in died} == dying
        after = self.rows()
        for pk in self.ids:
            if pk in lost:
                assert after[pk].status == (DEAD if pk in dying else PENDING)
                assert (after[pk].runs, after[pk].lease_until) == (before[pk].runs + 1, None)
            else:
                assert state(after[pk]) == state(before[pk])

    # Rules: a step of one runner, of time, or of an operator.

    @rule(limit=st.integers(1, 3))
    def worker_a_claims(self, limit: int) -> None:
        self.claim("A", limit)

    @rule(limit=st.integers(1, 3))
    def worker_b_claims(self, limit: int) -> None:
        self.claim("B", limit)

    def claim(self, name: str, limit: int) -> None:
        """What ``runner.claim`` leases: the due deliveries, the longest due first."""
        now = timezone.now()
        before = self.rows()
        due = sorted(
            (row.next_attempt_at, pk)
            for pk, row in before.items()
            if held(row, None) and row.next_attempt_at <= now
        )
        claims = states.claim(USING, limit)
        assert [c.id for c in claims] == [pk for _, pk in due[:limit]]
        after = self.rows()
        for c in claims:
            assert c.runs == before[c.id].runs == after[c.id].runs
            assert after[c.id].lease_until == c.lease > now
            self.runners[name].claims[c.id] = c
            self.runners[name].leases[c.id] = c.lease

    @precondition(lambda self: self.claiming())
    @rule(which=WHICH, fails=st.booleans(), stopping=st.booleans())
    def run_in_a_batch(self, which: int, fails: bool, stopping: bool) -> None:
        """A claim run as ``runner.run_batch`` runs one; stopping, it hands back the rest."""
        choices = [
            (name, c) for name in self.claiming() for c in self.runners[name].claims.values()
        ]
        name, claim = choices[which % len(choices)]
        note(f"{name} runs delivery {claim.id} in a batch under lease {claim.lease}")
        runner = self.runners[name]
        before = self.row(claim.id)
        ours: set[int] = set()
        try:
            with transaction.atomic():  # no savepoint: a failure rolls the batch back
                ours = states.start(USING, [claim])
                assert ours == ({claim.id} if held(before, claim.lease) else set())
                if ours:
                    self.handle(claim.id)
                    if fails:
                        raise ConnectionError("connection refused")
                states.batch_done(USING, sorted(ours))
        except ConnectionError as exc:  # recorded after the rollback
            assert self.row(claim.id).runs == before.runs
            self.failed(runner, claim.id, claim.lease, exc, before)
        runner.claims.pop(claim.id, None)
        after = self.row(claim.id)
        if ours and not fails:
            self.completions[claim.id] += 1
            assert (after.status, after.runs, after.lease_until) == (DONE, before.runs + 1, None)
        elif not ours:
            assert state(after) == state(before)
        runner.ended(claim.id)
        if stopping:
            self.stop(name)

    @precondition(lambda self: self.claiming())
    @rule(which=WHICH)
    def a_worker_stops(self, which: int) -> None:
        self.stop(self.claiming()[which % len(self.claiming())])

    @rule(which=WHICH, error=st.sampled_from(sorted(ERRORS)), fails=st.booleans())
    def a_call(self, which: int, error: str, fails: bool) -> None:
        """A call as ``run.call`` makes it: handled, then marked done in its transaction.

        It succeeds: done. It fails: its work rolls back, and the failure is
        recorded as the policy judges it. Not its own (another runner holds or
        finished it): the mark finds out, its work rolls back, nothing changes.
        """
        runner, pk, lease = self.pick(which)
        before = self.row(pk)
        marked = False
        try:
            with transaction.atomic():
                self.handle(pk)
                if fails:
                    raise ERRORS[error]()
                if not (marked := states.done(self.refs[pk], lease)):
                    transaction.set_rollback(True)
        except (ConnectionError, IntegrityError, RetryLater) as exc:
            assert state(self.row(pk)) == state(before)  # its work rolled back
            self.failed(runner, pk, lease, exc, before)
            return
        assert marked == held(before, lease)
        after = self.row(pk)
        runner.ended(pk)
        if marked:
            self.completions[pk] += 1
            assert (after.status, after.runs, after.lease_until) == (DONE, before.runs + 1, None)
            assert after.calls == 0
        else:
            assert state(after) == state(before)

    def failed(
        self,
        runner: Runner,
        pk: int,
        lease: dt.datetime | None,
        exc: Exception,
        before: Delivery,
    ) -> None:
        """``run.failed``: the policy's verdict on the call, recorded if still held."""
        policy = Policy(
            retry_attempts=CALLS, max_deliveries=LIMIT, redelivery_delay=60.0,
            dead_at_once=(IntegrityError,),
        )  # fmt: skip
        now = timezone.now()
        verdict = policy.after_failed_call(before.calls + 1, before.runs, exc)
        changed = states.failed(self.refs[pk], lease, exc, verdict)
        runner.ended(pk)
        assert changed == held(before, lease)
        after = self.row(pk)
        if not changed:
            assert state(after) == state(before)
            return
        assert after.attempts == before.attempts + 1 and after.lease_until is None
        if isinstance(verdict, Dead):
            assert (after.status, after.runs, after.calls) == (DEAD, before.runs + 1, 0)
            assert after.finished_at >= now
            if policy.is_poison(exc):
                self.poisoned.add(pk)
            return
        assert after.status == PENDING
        assert after.next_attempt_at >= now + dt.timedelta(seconds=verdict.delay)
        if isinstance(verdict, Postpone):
            assert (after.runs, after.calls) == (before.runs, before.calls)
        elif isinstance(verdict, Retry) and verdict.ends_run:
            assert (after.runs, after.calls) == (before.runs + 1, 0)
        else:
            assert (after.runs, after.calls) == (before.runs, before.calls + 1)

    @rule(which=WHICH, a_lease_runs_out=st.booleans())
    def time_passes(self, which: int, a_lease_runs_out: bool) -> None:
        """The rescheduled and the postponed fall due; a lease may run out.

        The holder of a lease that ran out still holds it (what it remembers
        is the lease's new value, in the past), so until the reaper comes it
        may still end its run.
        """
        now = timezone.now()
        Delivery.objects.pending().filter(next_attempt_at__gt=now).update(next_attempt_at=now)
        if a_lease_runs_out:
            self.lease_runs_out(which)

    @rule(which=WHICH)
    def a_runner_hangs(self, which: int) -> None:
        """A lease runs out, and the reaper comes."""
        self.lease_runs_out(which)
        self.reaper()

    def lease_runs_out(self, which: int) -> None:
        running = Delivery.objects.leased().filter(lease_until__gt=timezone.now()).order_by("pk")
        if leases := list(running.values_list("pk", "lease_until")):
            pk, old = leases[which % len(leases)]
            new = old - dt.timedelta(seconds=TIMEOUT + 3600)
            assert Delivery.objects.filter(pk=pk, lease_until=old).update(lease_until=new) == 1
            for runner in self.runners.values():
                runner.relabel(pk, old, new)

    @rule(which=st.integers(0, 2), requeue=st.booleans())
    def an_operator(self, which: int, requeue: bool) -> None:
        """Someone requeues a delivery, or discards it: only if dead or pending."""
        pk = self.ids[which]
        before = self.row(pk)
        change = states.requeued if requeue else states.discarded
        count = change(Delivery.objects.filter(pk=pk))
        after = self.row(pk)
        assert count == (before.status in (PENDING, DEAD))
        if not count:
            assert state(after) == state(before)
        elif requeue:
            assert (after.status, after.runs, after.lease_until) == (PENDING, 0, None)
            assert after.next_attempt_at <= timezone.now()
            self.poisoned.discard(pk)
        else:
            assert (after.status, after.runs, after.lease_until) == (DISCARDED, before.runs, None)

    # Invariants: what the rows say after every step.

    @invariant()
    def rows_make_sense(self) -> None:
        rows = self.rows()  # read once for all the checks
        self.done_once_with_its_work(rows)
        self.runs_within_the_limit(rows)
        self.dead_only_past_the_limit_or_of_poison(rows)
        self.finished_rows_are_let_go(rows)
        self.held_by_one_runner_at_most(rows)
        self.nothing_is_stuck(rows)

    def done_once_with_its_work(self, rows: dict[int, Delivery]) -> None:
        """Done (its work committed with it) at most once; done and discarded are final."""
        work = Counter(Entry.objects.filter(account="ping").values_list("amount", flat=True))
        for pk, row in rows.items():
            assert self.completions[pk] == work[self.numbers[pk]] == (row.status == DONE)
            assert self.final.get(pk, row.status) == row.status
            if row.status in (DONE, DISCARDED):
                self.final[pk] = row.status

    def runs_within_the_limit(self, rows: dict[int, Delivery]) -> None:
        """Runs never below 0 nor past the limit; a pending delivery has a run left, and
        its run under way a call left."""
        for row in rows.values():
            assert 0 <= row.runs <= LIMIT and 0 <= row.calls < CALLS
            assert row.runs < LIMIT or row.status != PENDING

    def dead_only_past_the_limit_or_of_poison(self, rows: dict[int, Delivery]) -> None:
        for pk, row in rows.items():
            if row.status == DEAD:
                assert row.runs >= LIMIT or pk in self.poisoned, row.last_error

    def finished_rows_are_let_go(self, rows: dict[int, Delivery]) -> None:
        for row in rows.values():
            if row.status != PENDING:
                assert row.finished_at is not None and row.lease_until is None

    def held_by_one_runner_at_most(self, rows: dict[int, Delivery]) -> None:
        for pk, row in rows.items():
            holders = [
                name
                for name, runner in self.runners.items()
                if row.lease_until is not None and runner.leases.get(pk) == row.lease_until
            ]
            assert len(holders) <= 1, holders

    def nothing_is_stuck(self, rows: dict[int, Delivery]) -> None:
        """Once every lease ran out and every delay passed, every pending delivery is claimed.

        Tried in a transaction that is rolled back.
        """
        pending = [row for row in rows.values() if row.status == PENDING]
        assert all(row.lease_until or row.next_attempt_at for row in pending)
        if not pending:
            return
        with transaction.atomic():
            if any(row.lease_until for row in pending):
                lapsed = timezone.now() - dt.timedelta(seconds=1)
                Delivery.objects.leased().update(lease_until=lapsed)
                states.lease_expired(USING, policy_of)
            waiting = set(Delivery.objects.pending().values_list("pk", flat=True))
            claimed = {c.id for c in states.claim(USING, 10, overdue=-FOREVER)}
            transaction.set_rollback(True)
        assert claimed == waiting


TestDeliveryStates = DeliveryStates.TestCase


# The most important single facts, as examples.


def store(n: int) -> Reference:
    messagebus.bus.handle(Pinged(n=n))
    row = Delivery.objects.get(event__payload__n=n)
    return Reference(USING, row.event_id, row.handler)


def test_a_worker_whose_lease_was_taken_over_changes_nothing():
    ref = store(1)
    with bus_settings(CLAIM_TIMEOUT=0):  # a lease that runs out at once: A hangs
        [a] = states.claim(USING, 5)
    assert states.lease_expired(USING, policy_of) == []  # A's run is lost: due again
    [b] = states.claim(USING, 5)
    assert (b.id, b.runs) == (a.id, 1)

    # A wakes up: whatever it does, it finds the delivery is no longer its own.
    with transaction.atomic():
        assert states.start(USING, [a]) == set()
        assert states.done(ref, a.lease) is False
    refused = ConnectionError("connection refused")
    for verdict in (Retry(0), Retry(0, ends_run=True), Postpone(0, "later"), Dead("gave up")):
        assert states.failed(ref, a.lease, refused, verdict) is False
    assert states.dead(ref, a.lease, "gave up") == 0
    assert states.released(USING, [a]) == 0
    row = Delivery.objects.get()
    assert (row.status, row.runs, row.lease_until) == (PENDING, 1, b.lease)

    with transaction.atomic():  # B runs it, once
        record_ping(Pinged(n=1))
        assert states.done(ref, b.lease) is True
    row.refresh_from_db()
    assert (row.status, row.runs, row.lease_until) == (DONE, 2, None)
    assert Entry.objects.count() == 1


def test_a_stopping_worker_hands_back_only_the_claims_it_still_holds():
    first, second = store(1), store(2)
    Delivery.objects.filter(event_id=second.event_id).update(runs=1)  # a failed run behind it
    claims = states.claim(USING, 5)
    assert [c.ref for c in claims] == [first, second]
    states.requeued(Delivery.objects.filter(event_id=first.event_id))  # by hand
    [b] = states.claim(USING, 5)  # and B claims it

    assert states.released(USING, claims) == 1  # A stops: the second is still A's
    rows = {row.event_id: row for row in Delivery.objects.all()}
    assert rows[first.event_id].lease_until == b.lease
    handed_back = rows[second.event_id]
    assert (handed_back.runs, handed_back.lease_until) == (1, None)  # no run counted
    assert [c.ref for c in states.claim(USING, 5)] == [second]  # due again at once


def test_a_lost_run_past_the_limit_is_dead_and_a_requeue_gives_a_fresh_budget():
    ref = store(1)
    for runs in range(LIMIT):
        with bus_settings(CLAIM_TIMEOUT=0):
            [claim] = states.claim(USING, 5)
        assert claim.runs == runs
        died = states.lease_expired(USING, policy_of)
    [(row, reason)] = died
    assert reason == f"{LIMIT} runs started and none finished: did its process die?"
    row.refresh_from_db()
    assert (row.status, row.runs, row.lease_until) == (DEAD, LIMIT, None)
    assert states.claim(USING, 5) == []

    assert states.requeued(Delivery.objects.all()) == 1
    [again] = states.claim(USING, 5)
    assert (again.ref, again.runs) == (ref, 0)
