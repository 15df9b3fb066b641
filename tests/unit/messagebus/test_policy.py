"""The delivery policy decides alone: no database, no settings once built."""

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.test import override_settings

import messagebus
from messagebus.core.policy import Dead, Policy, Postpone, Retry, missing_handler

POISON = (IntegrityError, ValidationError, messagebus.Reject)
DOWN = ConnectionError("down")


def test_a_failed_call_is_due_again_after_tenacitys_doubling_wait_until_the_run_ends():
    policy = Policy(retry_attempts=4, retry_wait=0.5, retry_wait_max=1.5, redelivery_delay=30)
    verdicts = [policy.after_failed_call(calls, 0, DOWN) for calls in (1, 2, 3, 4)]
    assert verdicts == [Retry(0.5), Retry(1.0), Retry(1.5), Retry(30, ends_run=True)]


def test_a_failed_run_is_rescheduled_with_a_doubling_delay_up_to_the_cap():
    policy = Policy(
        retry_attempts=1, max_deliveries=10, redelivery_delay=30, redelivery_delay_max=100
    )
    delays = [policy.after_failed_call(1, runs, DOWN) for runs in (0, 1, 2, 3)]
    assert delays == [Retry(d, ends_run=True) for d in (30, 60, 100, 100)]


def test_the_run_that_reaches_the_limit_is_the_last():
    policy = Policy(retry_attempts=2, max_deliveries=3)
    assert policy.after_failed_call(2, 1, DOWN) == Retry(60, ends_run=True)
    assert policy.after_failed_call(1, 2, DOWN) == Retry(0.5)  # the last run's first call
    verdict = policy.after_failed_call(2, 2, DOWN)
    assert verdict == Dead("builtins.ConnectionError: down (failed 3 runs)")


@pytest.mark.parametrize(
    "error", [IntegrityError("dup"), ValidationError("bad"), messagebus.Reject("never")]
)
def test_a_poison_failure_is_dead_after_one_call(error):
    policy = Policy(max_deliveries=5, dead_at_once=POISON)
    verdict = policy.after_failed_call(1, 0, error)
    assert isinstance(verdict, Dead)
    assert f"fails at once: {type(error).__name__}" in verdict.reason


def test_a_transient_failure_is_called_again_within_the_run():
    policy = Policy(dead_at_once=POISON)
    assert policy.after_failed_call(1, 0, DOWN) == Retry(0.5)
    not_poison = IntegrityError.__mro__[1]("a DatabaseError is not poison")
    assert isinstance(policy.after_failed_call(1, 0, not_poison), Retry)


def test_retry_later_postpones_without_counting_a_run():
    policy = Policy(max_deliveries=1)
    verdict = policy.after_failed_call(3, 0, messagebus.RetryLater(42, "closed"))
    assert verdict == Postpone(42, "messagebus.exceptions.RetryLater: closed")


def test_a_lost_run_is_due_again_at_once_until_the_limit():
    policy = Policy(max_deliveries=2)
    assert policy.after_lost_run(1) == Retry(0.0, ends_run=True)
    assert policy.after_lost_run(2) == Dead(
        "2 runs started and none finished: did its process die?"
    )


def test_a_missing_handler_waits_for_a_process_that_has_it_then_dies():
    assert missing_handler("app.h", 0, 86400) == Postpone(
        60, "waiting: no handler app.h is registered in this process"
    )
    assert missing_handler("app.h", 86380, 86400).delay == 20  # not past the limit
    verdict = missing_handler("app.h", 86400, 86400)
    assert (
        isinstance(verdict, Dead) and "nor in any that took it on within 86400s" in verdict.reason
    )


@override_settings(
    MESSAGEBUS={"MAX_DELIVERIES": 7, "RETRY_ATTEMPTS": 2, "DEAD_AT_ONCE": ["messagebus.Reject"]}
)
def test_built_from_the_settings_with_a_handlers_overrides():
    policy = Policy.from_settings(max_deliveries=9, batch=False)
    assert (policy.max_deliveries, policy.retry_attempts, policy.batch) == (9, 2, False)
    assert policy.dead_at_once == (messagebus.Reject,)
    assert Policy.of((("retry_attempts", 1),)).retry_attempts == 1
