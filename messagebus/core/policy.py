"""What to do when a handler fails: pure decisions, no database.

A delivery runs one call at a time: nothing ever sleeps between calls while
other deliveries wait. A failed call is due again after a short wait (tenacity
computes it: ``retry_wait``, doubling), up to ``retry_attempts`` calls: a
*run*. A run that still fails is due again after a growing delay, and after
``max_deliveries`` runs the delivery is dead. A failure of one of the
``dead_at_once`` kinds (poison: this input will never work) kills it at once;
``RetryLater`` postpones it without counting a failure. A delivery whose
handler this process lacks waits for a process that has it, up to
HANDLER_WAIT seconds from its storing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string
from tenacity import RetryCallState, wait_exponential

from .. import conf
from ..exceptions import RetryLater
from ..wording import describe, plural

AFTER_COMMIT, IN_TRANSACTION = "after_commit", "in_transaction"  # when a handler runs
# An ordered handler's key whose first delivery died: the rest wait for it, or go on.
WAIT, PROCEED = "wait", "proceed"


def lifecycle(value: Any) -> str | None:
    if value in (AFTER_COMMIT, IN_TRANSACTION):
        return None
    return f"must be {AFTER_COMMIT!r} or {IN_TRANSACTION!r}, not {value!r}"


def unordered_or_field(value: Any) -> str | None:
    """An ordering key: None (a handler unordered, though its message names one) or a field."""
    return None if value is None else conf.field_name(value)


def dead_head(value: Any) -> str | None:
    if value in (WAIT, PROCEED):
        return None
    return f"must be {WAIT!r} or {PROCEED!r}, not {value!r}"


# What a handler may override, and how to check a value:
# @messagebus.handler(max_deliveries=10, batch=False, run="in_transaction").
OVERRIDABLE: dict[str, conf.Validator] = {
    "run": lifecycle,
    "retry_attempts": conf.whole_number,
    "max_deliveries": conf.whole_number,
    "redelivery_delay": conf.seconds,
    "batch": lambda value: None if isinstance(value, bool) else "must be True or False",
    "timeout": conf.seconds_or_none,
    "breaker": conf.breaker,
    "max_concurrency": conf.whole_number,
    "concurrency_key": conf.field_name,
    "ordering_key": unordered_or_field,
    "dead_head": dead_head,
}


@dataclass(frozen=True)
class Breaker:
    """A circuit breaker: open (the handler paused) once, within ``window`` seconds, at
    least ``calls`` calls were made and ``rate`` of them failed (not of poison, not
    postponed); ``cool_down`` seconds later one delivery probes: done, it closes; failed,
    it stays open another cool-down."""

    rate: float = 0.5
    window: float = 30.0
    calls: int = 10
    cool_down: float = 30.0

    @classmethod
    def of(cls, value: Any) -> Breaker | None:
        """The breaker a setting or a handler's option describes: None, True, or its
        fields (a dict, or a handler's option: its items)."""
        if not value:
            return None
        return cls() if value is True else cls(**dict(value))


@dataclass(frozen=True)
class Dead:
    reason: str


@dataclass(frozen=True)
class Retry:
    """Due again in ``delay`` seconds; ``ends_run``: the call was its run's last."""

    delay: float
    ends_run: bool = False


@dataclass(frozen=True)
class Postpone:
    """Due again in ``delay`` seconds, no run counted: its handler asked, or is missing."""

    delay: float
    reason: str


Verdict = Dead | Retry | Postpone

# A delivery whose handler is missing here is looked at again after this long, its
# last error saying so (health and status count the deliveries that wait so).
HANDLER_RECHECK = 60.0
WAITING_FOR_HANDLER = "waiting: no handler"


def missing_handler(handler: str, waited: float, limit: float) -> Dead | Postpone:
    """The verdict on a delivery whose handler this process lacks, ``waited`` seconds
    after its storing: it waits for a process that has the handler, up to ``limit``."""
    reason = f"{handler} is registered in this process"
    if waited >= limit:
        return Dead(f"no handler {reason}, nor in any that took it on within {limit:.0f}s")
    return Postpone(min(HANDLER_RECHECK, limit - waited), f"{WAITING_FOR_HANDLER} {reason}")


@dataclass(frozen=True)
class Policy:
    """A handler's delivery policy; unset, each field is its MESSAGEBUS setting's default
    (built for a handler, ``of`` reads the settings themselves)."""

    retry_attempts: int = conf.Settings.RETRY_ATTEMPTS.default
    retry_wait: float = conf.Settings.RETRY_WAIT.default
    retry_wait_max: float = conf.Settings.RETRY_WAIT_MAX.default
    max_deliveries: int = conf.Settings.MAX_DELIVERIES.default
    redelivery_delay: float = conf.Settings.REDELIVERY_DELAY.default
    redelivery_delay_max: float = conf.Settings.REDELIVERY_DELAY_MAX.default
    dead_at_once: tuple[type[BaseException], ...] = ()
    # False: this handler's deliveries each get a transaction of their own.
    batch: bool = True
    # Seconds an async handler's call may take before it is cancelled (None: no limit).
    timeout: float | None = conf.Settings.HANDLER_TIMEOUT.default
    # AFTER_COMMIT: delivered from the outbox; IN_TRANSACTION: called inside the
    # transaction that records the event, as it ends (its failure fails that).
    run: str = AFTER_COMMIT
    # Pauses the handler while its calls keep failing (None: never).
    breaker: Breaker | None = None
    # At most this many of its deliveries run at once, across every process (None: no
    # limit); per value of the message's field ``concurrency_key``, if it names one.
    max_concurrency: int | None = None
    concurrency_key: str | None = None
    # Its deliveries of one value of the message's field ``ordering_key`` run one at a
    # time, in the order their events committed; behind a dead one they WAIT, or PROCEED.
    ordering_key: str | None = None
    dead_head: str = WAIT

    @classmethod
    def of(cls, options: tuple[tuple[str, Any], ...] = ()) -> Policy:
        """The policy for a handler's ``options``: MESSAGEBUS's, overridden (cached)."""
        try:
            return _built[options]
        except KeyError:
            policy = _built[options] = cls.from_settings(**dict(options))
            return policy

    @classmethod
    def from_settings(cls, **overrides: Any) -> Policy:
        """The policy MESSAGEBUS sets, with a handler's ``overrides``."""
        settings = conf.settings
        return cls(
            retry_attempts=settings.RETRY_ATTEMPTS,
            retry_wait=settings.RETRY_WAIT,
            retry_wait_max=settings.RETRY_WAIT_MAX,
            max_deliveries=settings.MAX_DELIVERIES,
            redelivery_delay=settings.REDELIVERY_DELAY,
            redelivery_delay_max=settings.REDELIVERY_DELAY_MAX,
            dead_at_once=tuple(import_string(path) for path in settings.DEAD_AT_ONCE),
            timeout=settings.HANDLER_TIMEOUT,
            breaker=Breaker.of(overrides.pop("breaker", settings.BREAKER)),
        ).replace(**overrides)

    @property
    def batched(self) -> bool:
        """Whether its deliveries may share a worker's batch transaction: ``batch``, and no
        max_concurrency (each delivery takes a slot before its call, frees it with its
        end, and so runs in a transaction of its own)."""
        return self.batch and self.max_concurrency is None

    @property
    def ordered(self) -> bool:
        """Whether its deliveries of one key run one at a time, in commit order."""
        return self.ordering_key is not None

    def replace(self, **changes: Any) -> Policy:
        return dataclasses.replace(self, **changes) if changes else self

    def is_poison(self, error: BaseException) -> bool:
        return isinstance(error, self.dead_at_once)

    def call_wait(self, calls: int) -> float:
        """Seconds before the next call of a run that has made ``calls`` calls (tenacity's
        exponential wait, as for its ``attempt_number``)."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = calls
        wait = wait_exponential(multiplier=self.retry_wait, max=self.retry_wait_max)
        return float(wait(state))

    def redelivery(self, runs: int) -> float:
        """Seconds to wait after the ``runs``-th failed run before the next."""
        return float(min(self.redelivery_delay * 2 ** (runs - 1), self.redelivery_delay_max))

    def after_failed_call(self, calls: int, runs: int, error: BaseException) -> Verdict:
        """The verdict on a failed call: the ``calls``-th of its run, after ``runs`` runs."""
        if isinstance(error, RetryLater):
            return Postpone(max(0.0, error.seconds), describe(error))
        if self.is_poison(error):
            return Dead(f"{describe(error)} (fails at once: {type(error).__name__})")
        if calls < self.retry_attempts:
            return Retry(self.call_wait(calls))
        ended = runs + 1
        if ended >= self.max_deliveries:
            return Dead(f"{describe(error)} (failed {plural(ended, 'run')})")
        return Retry(self.redelivery(ended), ends_run=True)

    def after_lost_run(self, runs: int) -> Verdict:
        """The verdict on a run whose runner vanished (its lease ran out)."""
        if runs >= self.max_deliveries:
            return Dead(f"{runs} runs started and none finished: did its process die?")
        return Retry(0.0, ends_run=True)


_built: dict[tuple[tuple[str, Any], ...], Policy] = {}


def reset() -> None:
    """Forget built policies (the settings changed)."""
    _built.clear()
