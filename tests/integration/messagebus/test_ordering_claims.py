"""The claim's ordering, as a property: whatever the interleaving of stores, claims by
several runners, calls that fail (due again now or later), deaths and leases that run
out, no two runners hold one key, and each key's deliveries end in sequence."""

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import messagebus
from messagebus import executors
from messagebus.core.policy import Retry
from messagebus.delivery.run import policy_of
from messagebus.executors.worker import WorkerExecutor
from messagebus.models import Delivery, KeySequence, StoredEvent
from messagebus.outbox import ordering, states
from tests.busapp.events import Sequenced
from tests.busapp.handlers import register_ordered

pytestmark = pytest.mark.django_db

WAITS, PROCEEDS = "tests.busapp.handlers.see_in_turn", "tests.busapp.handlers.see_past_the_dead"
KEYS = "abc"
RUNNERS = 3

steps = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.sampled_from(KEYS)),
        st.tuples(st.just("claim"), st.integers(0, RUNNERS - 1), st.integers(1, 12), st.booleans()),
        st.tuples(st.just("done"), st.integers(0, RUNNERS - 1)),
        st.tuples(st.just("fail"), st.integers(0, RUNNERS - 1), st.booleans()),
        st.tuples(st.just("die"), st.integers(0, RUNNERS - 1)),
        st.tuples(st.just("lose"), st.integers(0, RUNNERS - 1)),
        st.just(("later",)),
        st.just(("retry",)),
    ),
    max_size=40,
)


class Model:
    """The runners' claims, and what ended, checked against the database as it goes."""

    def __init__(self) -> None:
        self.held: list[list[states.Claim]] = [[] for _ in range(RUNNERS)]
        self.counts = dict.fromkeys(KEYS, 0)
        self.ended: dict[tuple[str, str], list[int]] = {}  # done, in that order
        self.died: set[tuple[str, str, int]] = set()

    def row(self, claim: states.Claim) -> Delivery:
        return Delivery.objects.get(pk=claim.id)

    def store(self, key: str) -> None:
        with executors.use(WorkerExecutor()):
            messagebus.bus.handle(Sequenced(key=key, n=self.counts[key]))
        self.counts[key] += 1

    def claim(self, runner: int, limit: int, follow: bool = False) -> int:
        """Each claimed delivery's unfinished elders are claimed with it, before it."""
        claims = states.claim("default", limit, follow=follow)
        for n, claim in enumerate(claims):
            row = self.row(claim)
            earlier = Delivery.objects.filter(
                handler=row.handler, concurrency_key=row.concurrency_key,
                sequence__lt=row.sequence,
            ).exclude(status__in=["done", "discarded"])  # fmt: skip
            if row.handler == PROCEEDS:
                earlier = earlier.exclude(status="dead")
            before = {c.id for c in claims[:n]}
            assert set(earlier.values_list("pk", flat=True)) <= before, f"{row} claimed early"
            self.held[runner].append(claim)
        return len(claims)

    def take(self, runner: int) -> states.Claim | None:
        return self.held[runner].pop(0) if self.held[runner] else None

    def end(self, claim: states.Claim, ended: bool) -> None:
        row = self.row(claim)
        if ended and row.status == "done":
            self.ended.setdefault((row.handler, row.concurrency_key), []).append(row.sequence)
        elif ended:
            self.died.add((row.handler, row.concurrency_key, row.sequence))

    def done(self, runner: int) -> None:
        """The call returns: marked done, unless (as the engine looks, running a claim on
        its own) an earlier one of its key is unfinished: then handed back."""
        if claim := self.take(runner):
            self.done_or_handed_back(claim)

    def done_or_handed_back(self, claim: states.Claim) -> None:
        if ordering.behind(claim.ref):
            states.let_go(claim.ref, claim.lease)
        else:
            self.end(claim, bool(states.finished([claim])))

    def fail(self, runner: int, later: bool) -> None:
        if claim := self.take(runner):
            verdict = Retry(60 if later else 0)
            states.failed(claim.ref, claim.lease, ConnectionError("down"), verdict)
            self.hand_back(runner, claim)

    def die(self, runner: int) -> None:
        if claim := self.take(runner):
            self.end(claim, bool(states.dead(claim.ref, claim.lease, "rejected")))
            self.hand_back(runner, claim)

    def hand_back(self, runner: int, failed: states.Claim) -> None:
        """As the engine does once a call failed: the runner's other claims of its key run
        each on its own, so those behind it are handed back."""
        key = (failed.ref.handler, failed.key)
        for claim in [c for c in self.held[runner] if (c.ref.handler, c.key) == key]:
            self.held[runner].remove(claim)
            self.done_or_handed_back(claim)

    def lose(self, runner: int) -> None:
        """The runner's leases run out (it stalled, or died): its runs end, due again."""
        leases = {claim.lease for claim in self.held[runner]}
        past = timezone.now() - dt.timedelta(seconds=1)
        Delivery.objects.filter(lease_until__in=leases).update(lease_until=past)
        states.lease_expired("default", policy_of)

    def retry(self) -> None:
        """The dead are retried (the admin's Retry)."""
        states.requeued(Delivery.objects.filter(status="dead"))

    def later(self) -> None:
        """Time passes: the calls due again later are due now."""
        Delivery.objects.filter(status="pending").update(next_attempt_at=timezone.now())

    def check(self) -> None:
        leased = Delivery.objects.filter(status="pending", lease_until__gt=timezone.now())
        holders: dict[tuple[str, str], set[dt.datetime]] = {}
        for handler, key, lease in leased.values_list("handler", "concurrency_key", "lease_until"):
            holders.setdefault((handler, key), set()).add(lease)
        assert all(len(leases) == 1 for leases in holders.values()), f"two hold a key: {holders}"
        for (handler, key), ended in self.ended.items():
            if handler == PROCEEDS:  # one retried after it died runs late, by design
                ended = [n for n in ended if (handler, key, n) not in self.died]
            assert ended == sorted(set(ended)), f"{handler} ended out of order: {ended}"
            if handler == WAITS:  # the first ones, none skipped
                assert ended == list(range(1, len(ended) + 1)), ended


@pytest.fixture
def ordered(messagebus_registry):
    register_ordered(messagebus_registry)


@given(steps=steps)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_no_interleaving_runs_a_key_twice_at_once_or_out_of_order(ordered, steps):
    with transaction.atomic():
        Delivery.objects.all().delete()
        StoredEvent.objects.all().delete()
        KeySequence.objects.all().delete()
    model = Model()
    for step in steps:
        getattr(model, step[0])(*step[1:])
        model.check()
    # Then the runners give up what they hold, and one runs all that is due, to the end.
    for runner in range(RUNNERS):
        model.lose(runner)
        model.held[runner] = []
    model.later()
    while model.claim(0, 10, True) or model.held[0]:
        while model.held[0]:
            model.done(0)
        model.check()
    for key in KEYS:
        rows = Delivery.objects.filter(concurrency_key=key)
        dead = rows.filter(handler=WAITS, status="dead").values_list("sequence", flat=True)
        done = sorted(rows.filter(handler=WAITS, status="done").values_list("sequence", flat=True))
        assert done == list(range(1, len(done) + 1))  # the first ones, none skipped
        pending = rows.filter(handler=WAITS, status="pending").values_list("sequence", flat=True)
        assert not pending or min(dead) < min(pending)  # pending only behind a dead one
        assert not rows.filter(handler=PROCEEDS, status="pending").exists()
