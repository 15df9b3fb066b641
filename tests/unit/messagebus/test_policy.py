"""The delivery policy decides alone: no database, no settings once built."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.test import override_settings

import messagebus
from messagebus.delivery.policy import Dead, Policy, Reschedule

POISON = (IntegrityError, ValidationError, messagebus.Reject)


def test_a_failed_run_is_rescheduled_with_a_doubling_delay_up_to_the_cap():
    policy = Policy(max_deliveries=10, redelivery_delay=30, redelivery_delay_max=100)
    delays = [policy.after_failed_run(runs, ConnectionError("down")) for runs in (1, 2, 3, 4)]
    assert delays == [Reschedule(30), Reschedule(60), Reschedule(100), Reschedule(100)]


def test_the_run_that_reaches_the_limit_is_the_last():
    policy = Policy(max_deliveries=3)
    assert isinstance(policy.after_failed_run(2, ConnectionError("down")), Reschedule)
    verdict = policy.after_failed_run(3, ConnectionError("down"))
    assert verdict == Dead("builtins.ConnectionError: down (failed 3 runs)")


@pytest.mark.parametrize(
    "error", [IntegrityError("dup"), ValidationError("bad"), messagebus.Reject("never")]
)
def test_a_poison_failure_is_dead_after_one_run_and_not_retried_within_it(error):
    policy = Policy(max_deliveries=5, dead_at_once=POISON)
    verdict = policy.after_failed_run(1, error)
    assert isinstance(verdict, Dead)
    assert f"fails at once: {type(error).__name__}" in verdict.reason
    assert not policy.retries(error)


def test_a_transient_failure_is_retried_within_the_run():
    policy = Policy(dead_at_once=POISON)
    assert policy.retries(ConnectionError("down"))
    assert policy.retries(IntegrityError.__mro__[1]("a DatabaseError is not poison"))


def test_retry_later_reschedules_without_counting_a_run_or_retrying_now():
    policy = Policy(max_deliveries=1)
    verdict = policy.after_failed_run(1, messagebus.RetryLater(42))
    assert verdict == Reschedule(42, counts_a_run=False)
    assert not policy.retries(messagebus.RetryLater(42))


def test_a_lost_run_is_due_again_at_once_until_the_limit():
    policy = Policy(max_deliveries=2)
    assert policy.after_lost_run(1) == Reschedule(0.0)
    assert policy.after_lost_run(2) == Dead(
        "2 runs started and none finished: did its process die?"
    )


def test_retrying_calls_stops_after_the_attempts_and_at_once_for_poison():
    policy = Policy(retry_attempts=3, retry_wait=0, dead_at_once=POISON)
    calls = []

    def call(error):
        for attempt in policy.retrying():
            with attempt:
                calls.append(1)
                raise error

    with pytest.raises(ConnectionError):
        call(ConnectionError("down"))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(IntegrityError):
        call(IntegrityError("dup"))
    assert len(calls) == 1


@override_settings(
    MESSAGEBUS={"MAX_DELIVERIES": 7, "RETRY_ATTEMPTS": 2, "DEAD_AT_ONCE": ["messagebus.Reject"]}
)
def test_built_from_the_settings_with_a_handlers_overrides():
    policy = Policy.from_settings(max_deliveries=9, batch=False)
    assert (policy.max_deliveries, policy.retry_attempts, policy.batch) == (9, 2, False)
    assert policy.dead_at_once == (messagebus.Reject,)
    assert Policy.of((("retry_attempts", 1),)).retry_attempts == 1
