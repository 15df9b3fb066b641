"""The delivery state machine, driven by hypothesis: two workers race over three deliveries.

Workers A and B claim deliveries and run them, alone or in a batch, while an
inline runner (no lease: the default executor's) runs them too; calls fail,
runs end as the policy says, workers stop and hand back what they hold, leases
run out and the reaper ends the runs of the workers that vanished, delays
pass, and an operator requeues or discards. Every step goes through the
transitions of ``messagebus.delivery.states``, the way ``runner`` uses them,
and checks what the transition did; after every step the rows must still make
sense. A runner keeps what it got (claims, leases) even after it lost them:
what it then does must change nothing.
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
from hypothesis import HealthCheck, event, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import messagebus
from messagebus.delivery import states
from messagebus.delivery.policy import Dead, Policy, describe
from messagebus.delivery.reference import Reference
from messagebus.exceptions import RetryLater
from messagebus.models import Delivery, StoredEvent
from tests.busapp.events import Pinged
from tests.busapp.handlers import record_ping
from tests.busapp.models import Entry

pytestmark = pytest.mark.django_db(transaction=True)
WHICH = st.integers(0, 8)  # picks among what there is to pick

USING = "default"
LIMIT = 3  # MAX_DELIVERIES
TIMEOUT = 300.0  # CLAIM_TIMEOUT
PENDING, DONE, DEAD = Delivery.Status.PENDING, Delivery.Status.DONE, Delivery.Status.DEAD
DISCARDED = Delivery.Status.DISCARDED
WORKERS, INLINE = ("A", "B"), "inline"
FOREVER = dt.timedelta(days=3650).total_seconds()
# The error a handler's last call raised, by name so a failing example reads well.
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


def policy_of(handler: str) -> Policy:
    return Policy(max_deliveries=LIMIT)


def state(row: Delivery) -> tuple[object, ...]:
    return (row.status, row.runs, row.lease_until, row.next_attempt_at, row.finished_at)


def held(row: Delivery, lease: dt.datetime | None) -> bool:
    """Whether a transition under ``lease`` (None: unleased) acts on ``row``."""
    return row.status == PENDING and row.lease_until == lease


@dataclasses.dataclass
class Runner:
    """What one runner holds: its claims, and the lease each delivery runs under."""

    claims: dict[int, states.Claim] = dataclasses.field(default_factory=dict)
    leases: dict[int, dt.datetime] = dataclasses.field(default_factory=dict)

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
    suppress_health_check=[HealthCheck.too_slow],
)
class DeliveryStates(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.overridden = bus_settings()
        self.overridden.enable()
        Entry.objects.all().delete()
        StoredEvent.objects.all().delete()  # and their deliveries
        self.numbers: dict[int, int] = {}  # delivery id: its Pinged's n
        for n in range(3):
            messagebus.bus.handle(Pinged(n=n))
            [pk] = Delivery.objects.exclude(pk__in=self.numbers).values_list("pk", flat=True)
            self.numbers[pk] = n
        self.ids = sorted(self.numbers)
        self.refs = {
            row.pk: Reference(USING, row.event_id, row.handler)
            for row in Delivery.objects.filter(handler="tests.busapp.handlers.record_ping")
        }
        assert sorted(self.refs) == self.ids
        self.runners = {name: Runner() for name in (*WORKERS, INLINE)}
        self.completions: Counter[int] = Counter()  # transitions that marked it done
        self.poisoned: set[int] = set()  # dead of a poison failure, not requeued since
        self.final: dict[int, str] = {}  # done or discarded: so it stays

    @initialize(runs=st.lists(st.integers(0, LIMIT - 1), min_size=3, max_size=3))
    def earlier_runs(self, runs: list[int]) -> None:
        """Each delivery starts with a few failed runs behind it, maybe."""
        for pk, count in zip(self.ids, runs, strict=True):
            Delivery.objects.filter(pk=pk).update(runs=count)

    def teardown(self) -> None:
        self.overridden.disable()

    # What the runners see and do.

    def rows(self) -> dict[int, Delivery]:
        return Delivery.objects.in_bulk(self.ids)

    def row(self, pk: int) -> Delivery:
        return Delivery.objects.get(pk=pk)

    def pick(self, which: int) -> tuple[str, int, dt.datetime | None]:
        """A runner, a delivery it runs and its lease: a worker runs only what it claimed."""
        choices = [(name, pk) for name in WORKERS for pk in sorted(self.runners[name].leases)]
        runner, pk = (choices + [(INLINE, pk) for pk in self.ids])[which % (len(choices) + 3)]
        lease = self.runners[runner].leases.get(pk)
        note(f"{runner} runs delivery {pk} under lease {lease}")
        return runner, pk, lease

    def handle(self, pk: int) -> None:
        """The handler's work, which must commit once at most, with the done-mark."""
        record_ping(Pinged(n=self.numbers[pk]))

    # Rules: one runner's step each.

    @rule(runner=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, runner: str, limit: int) -> None:
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
            self.runners[runner].claims[c.id] = c
            self.runners[runner].leases[c.id] = c.lease

    @rule(which=WHICH, fails=st.booleans())
    def run_in_a_batch(self, which: int, fails: bool) -> None:
        """One claim run as ``runner._one_transaction`` runs a batch."""
        choices = [(name, c) for name in WORKERS for c in self.runners[name].claims.values()]
        if not choices:
            return
        runner, claim = choices[which % len(choices)]
        note(f"{runner} runs delivery {claim.id} in a batch under lease {claim.lease}")
        before = self.row(claim.id)
        completed = []
        with transaction.atomic():
            ours = states.start(USING, [claim])
            assert ours == ({claim.id} if held(before, claim.lease) else set())
            event(f"batch ours={bool(ours)} fails={fails}")
            if ours:
                try:
                    with transaction.atomic():  # the handler's savepoint
                        self.handle(claim.id)
                        if fails:
                            raise ConnectionError("connection refused")
                except ConnectionError as exc:
                    renewed = states.failed_call(claim.ref, claim.lease, exc)
                    self.runners[runner].leases[claim.id] = renewed
                else:
                    completed.append(claim.id)
            states.batch_done(USING, completed)
        after = self.row(claim.id)
        if completed:
            self.completions[claim.id] += 1
            assert (after.status, after.runs, after.lease_until) == (DONE, before.runs + 1, None)
        elif ours:
            assert (after.status, after.runs) == (PENDING, before.runs)
            assert after.lease_until == self.runners[runner].leases[claim.id] > before.lease_until
        else:
            assert state(after) == state(before)

    @rule(which=WHICH)
    def run_alone(self, which: int) -> None:
        """A call that succeeds, as ``runner._call`` makes it: marked done, then handled."""
        _, pk, lease = self.pick(which)
        before = self.row(pk)
        with transaction.atomic():
            marked = states.done(self.refs[pk], lease)
            if marked:
                self.handle(pk)
        assert marked == held(before, lease)
        event(f"run_alone {marked}")
        after = self.row(pk)
        if marked:
            self.completions[pk] += 1
            assert (after.status, after.runs, after.lease_until) == (DONE, before.runs + 1, None)
        else:
            assert state(after) == state(before)

    @rule(which=WHICH)
    def a_call_fails(self, which: int) -> None:
        """A call fails: its work rolls back with the done-mark; the run goes on, re-leased."""
        runner, pk, lease = self.pick(which)
        before = self.row(pk)
        marked = False
        try:
            with transaction.atomic():
                if marked := states.done(self.refs[pk], lease):
                    self.handle(pk)
                    raise ConnectionError("connection refused")
        except ConnectionError:
            pass
        assert marked == held(before, lease)
        assert state(self.row(pk)) == state(before)
        # The runner renews its lease after the rollback; another may have taken it by then.
        renewed = states.failed_call(self.refs[pk], lease, ConnectionError("connection refused"))
        self.runners[runner].leases[pk] = renewed
        after = self.row(pk)
        if held(before, lease):
            assert (after.status, after.runs, after.lease_until) == (PENDING, before.runs, renewed)
        else:
            assert state(after) == state(before)

    @rule(which=WHICH, error=st.sampled_from(sorted(ERRORS)), delay=st.sampled_from([0.0, 60.0]))
    def a_run_fails(self, which: int, error: str, delay: float) -> None:
        """The run's last call failed: ``runner.give_up`` ends it as the policy says."""
        _, pk, lease = self.pick(which)
        ref, exc = self.refs[pk], ERRORS[error]()
        policy = Policy(
            max_deliveries=LIMIT, redelivery_delay=delay, dead_at_once=(IntegrityError,)
        )
        before, now = self.row(pk), timezone.now()
        verdict = policy.after_failed_run(states.runs(ref) + 1, exc)
        if isinstance(verdict, Dead):
            changed = states.dead(ref, lease, verdict.reason)
        elif not verdict.counts_a_run:
            changed = states.postponed(ref, lease, verdict.delay, describe(exc))
        else:
            changed = states.rescheduled(ref, lease, verdict.delay)
        assert changed == held(before, lease)
        event(f"run fails {type(verdict).__name__} {changed}")
        after = self.row(pk)
        if not changed:
            assert state(after) == state(before)
            return
        assert after.lease_until is None
        if isinstance(verdict, Dead):
            assert (after.status, after.runs) == (DEAD, before.runs + 1)
            assert after.finished_at >= now
            if policy.is_poison(exc):
                self.poisoned.add(pk)
        else:
            assert after.status == PENDING
            assert after.runs == before.runs + verdict.counts_a_run
            assert after.next_attempt_at >= now + dt.timedelta(seconds=verdict.delay)

    @rule(runner=st.sampled_from(WORKERS))
    def stops(self, runner: str) -> None:
        """A worker stops: it hands back its claims, and forgets everything."""
        note(f"{runner} stops")
        claims = list(self.runners[runner].claims.values())
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
        self.runners[runner] = Runner()

    @rule(which=WHICH, reaper_comes=st.booleans())
    def a_lease_runs_out(self, which: int, reaper_comes: bool) -> None:
        """Time passes for one leased delivery: its lease is now in the past.

        Its holder, if any, still holds it: the lease's new value is what it
        remembers, so until the reaper comes it may still finish the run.
        """
        running = Delivery.objects.leased().filter(lease_until__gt=timezone.now()).order_by("pk")
        if leases := list(running.values_list("pk", "lease_until")):
            pk, old = leases[which % len(leases)]
            new = old - dt.timedelta(seconds=TIMEOUT + 3600)
            assert Delivery.objects.filter(pk=pk, lease_until=old).update(lease_until=new) == 1
            for runner in self.runners.values():
                runner.relabel(pk, old, new)
        if reaper_comes:
            self.reaper()

    @rule(reaper_comes=st.booleans())
    def delays_pass(self, reaper_comes: bool) -> None:
        """Time passes for the rescheduled and postponed: they are due."""
        now = timezone.now()
        Delivery.objects.pending().filter(next_attempt_at__gt=now).update(next_attempt_at=now)
        if reaper_comes:
            self.reaper()

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
        event(f"reaper lost={len(lost)} dying={len(dying)}")
        assert {row.pk for row, _ in died} == dying
        after = self.rows()
        for pk in self.ids:
            if pk in lost:
                assert after[pk].status == (DEAD if pk in dying else PENDING)
                assert (after[pk].runs, after[pk].lease_until) == (before[pk].runs + 1, None)
            else:
                assert state(after[pk]) == state(before[pk])

    @rule(which=st.integers(0, 2))
    def requeue(self, which: int) -> None:
        pk = self.ids[which]
        before = self.row(pk)
        count = states.requeued(Delivery.objects.filter(pk=pk))
        after = self.row(pk)
        assert count == (before.status in (PENDING, DEAD))
        if count:
            assert (after.status, after.runs, after.lease_until) == (PENDING, 0, None)
            assert after.next_attempt_at <= timezone.now()
            self.poisoned.discard(pk)
        else:
            assert state(after) == state(before)

    @rule(which=st.integers(0, 2))
    def discard(self, which: int) -> None:
        pk = self.ids[which]
        before = self.row(pk)
        count = states.discarded(Delivery.objects.filter(pk=pk))
        after = self.row(pk)
        assert count == (before.status in (PENDING, DEAD))
        if count:
            assert (after.status, after.runs, after.lease_until) == (DISCARDED, before.runs, None)
        else:
            assert state(after) == state(before)

    # Invariants: what the rows say after every step.

    @invariant()
    def rows_make_sense(self) -> None:
        rows = self.rows()  # read once: the checks below are on the same rows
        self.done_once_with_its_work(rows)
        self.runs_within_the_limit(rows)
        self.dead_only_past_the_limit_or_of_poison(rows)
        self.finished_rows_are_let_go(rows)
        self.held_by_one_runner_at_most(rows)

    def done_once_with_its_work(self, rows: dict[int, Delivery]) -> None:
        """Done (and its work committed) at most once; done and discarded are final."""
        work = Counter(Entry.objects.filter(account="ping").values_list("amount", flat=True))
        for pk, row in rows.items():
            assert self.completions[pk] == work[self.numbers[pk]] == (row.status == DONE)
            assert self.final.get(pk, row.status) == row.status
            if row.status in (DONE, DISCARDED):
                self.final[pk] = row.status

    def runs_within_the_limit(self, rows: dict[int, Delivery]) -> None:
        """Runs never below 0 nor past the limit; a pending delivery has a run left."""
        for row in rows.values():
            assert 0 <= row.runs <= LIMIT
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

    @invariant()
    def nothing_is_stuck(self) -> None:
        """Once every lease ran out and every delay passed, every pending delivery is claimed.

        Tried in a transaction that is rolled back.
        """
        with transaction.atomic():
            rows = list(Delivery.objects.pending())
            assert all(row.lease_until or row.next_attempt_at for row in rows)
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
    with bus_settings():
        messagebus.bus.handle(Pinged(n=n))
    row = Delivery.objects.get(event__payload__n=n)
    return Reference(USING, row.event_id, row.handler)


def test_a_worker_whose_lease_was_taken_over_changes_nothing():
    ref = store(1)
    with bus_settings(CLAIM_TIMEOUT=0):  # a lease that runs out at once: A hangs
        [a] = states.claim(USING, 5)
    assert states.lease_expired(USING, policy_of) == []  # A's run is lost: due again
    with bus_settings():
        [b] = states.claim(USING, 5)
    assert (b.id, b.runs) == (a.id, 1)

    # A wakes up: whatever it does, it finds the delivery is no longer its own.
    with transaction.atomic():
        assert states.start(USING, [a]) == set()
        assert states.done(ref, a.lease) is False
    assert states.rescheduled(ref, a.lease, 0) == 0
    assert states.dead(ref, a.lease, "gave up") == 0
    assert states.postponed(ref, a.lease, 0, "later") == 0
    assert states.released(USING, [a]) == 0
    with bus_settings():
        states.failed_call(ref, a.lease, ConnectionError("connection refused"))
    row = Delivery.objects.get()
    assert (row.status, row.runs, row.lease_until) == (PENDING, 1, b.lease)

    with transaction.atomic():  # B runs it, once
        assert states.done(ref, b.lease) is True
        record_ping(Pinged(n=1))
    row.refresh_from_db()
    assert (row.status, row.runs, row.lease_until) == (DONE, 2, None)
    assert Entry.objects.count() == 1


def test_a_stopping_worker_hands_back_only_what_it_still_holds():
    first, second = store(1), store(2)
    with bus_settings():
        claims = states.claim(USING, 5)
        # The first is requeued by hand, and B claims it; A renews its lease on the second.
        states.requeued(Delivery.objects.filter(event_id=first.event_id))
        [b] = states.claim(USING, 5)
        renewed = states.failed_call(second, claims[1].lease, ConnectionError("refused"))
    assert b.ref == first

    assert states.released(USING, claims) == 0  # neither is A's to hand back as claimed
    rows = {row.event_id: row for row in Delivery.objects.all()}
    assert rows[first.event_id].lease_until == b.lease
    assert rows[second.event_id].lease_until == renewed

    assert states.released(USING, [b]) == 1  # B's: due again at once, no run counted
    row = Delivery.objects.get(event_id=first.event_id)
    assert (row.runs, row.lease_until) == (0, None)
    assert row.next_attempt_at <= timezone.now()


def test_a_lost_run_past_the_limit_is_dead_and_a_requeue_gives_a_fresh_budget():
    ref = store(1)
    for runs in range(LIMIT):
        with bus_settings(CLAIM_TIMEOUT=0):
            [claim] = states.claim(USING, 5)
        assert claim.runs == runs
        died = states.lease_expired(USING, policy_of)
    [(row, reason)] = died
    assert (row.pk, reason) == (
        claim.id,
        f"{LIMIT} runs started and none finished: did its process die?",
    )
    row.refresh_from_db()
    assert (row.status, row.runs, row.lease_until) == (DEAD, LIMIT, None)
    assert states.claim(USING, 5) == []

    assert states.requeued(Delivery.objects.all()) == 1
    with bus_settings():
        [again] = states.claim(USING, 5)
    assert (again.ref, again.runs) == (ref, 0)
