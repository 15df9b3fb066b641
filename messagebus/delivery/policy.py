"""What to do when a handler fails: pure decisions, no database.

A run is up to ``retry_attempts`` calls of the handler (tenacity waits
between them); a run that still fails is rescheduled after a growing delay,
and after ``max_deliveries`` runs the delivery is dead. A failure of one of
the ``dead_at_once`` kinds (poison: this input will never work) kills it at
once; ``RetryLater`` reschedules it without counting a failure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import anyio
from django.utils.module_loading import import_string
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .. import conf
from ..exceptions import RetryLater
from ..wording import describe, plural

# What a handler may override, and how to check a value:
# @messagebus.handler(max_deliveries=10, batch=False).
OVERRIDABLE: dict[str, conf.Validator] = {
    "retry_attempts": conf.whole_number,
    "max_deliveries": conf.whole_number,
    "redelivery_delay": conf.seconds,
    "batch": lambda value: None if isinstance(value, bool) else "must be True or False",
    "timeout": conf.seconds_or_none,
}


@dataclass(frozen=True)
class Dead:
    reason: str


@dataclass(frozen=True)
class Reschedule:
    delay: float
    counts_a_run: bool = True  # False: RetryLater, not a failure


Verdict = Dead | Reschedule


@dataclass(frozen=True)
class Policy:
    retry_attempts: int = 3
    retry_wait: float = 0.5
    retry_wait_max: float = 10.0
    max_deliveries: int = 5
    redelivery_delay: float = 30.0
    redelivery_delay_max: float = 3600.0
    dead_at_once: tuple[type[BaseException], ...] = ()
    # False: this handler's deliveries each get a transaction of their own.
    batch: bool = True
    # Seconds an async handler's call may take before it is cancelled (None: no limit).
    timeout: float | None = None

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
        ).replace(**overrides)

    def replace(self, **changes: Any) -> Policy:
        return dataclasses.replace(self, **changes) if changes else self

    def is_poison(self, error: BaseException) -> bool:
        return isinstance(error, self.dead_at_once)

    def retries(self, error: BaseException) -> bool:
        """Whether another call in this run may help."""
        return not (self.is_poison(error) or isinstance(error, RetryLater))

    def retrying(self, attempts: int | None = None) -> Retrying:
        """Tenacity's loop for the calls of one run (``attempts`` left, default all)."""
        return Retrying(**self._calls(attempts))

    def aretrying(self, attempts: int | None = None) -> AsyncRetrying:
        """``retrying()`` for async handlers: the waits are AnyIO sleeps."""
        return AsyncRetrying(sleep=anyio.sleep, **self._calls(attempts))

    def _calls(self, attempts: int | None) -> dict[str, Any]:
        return {
            "stop": stop_after_attempt(self.retry_attempts if attempts is None else attempts),
            "wait": wait_exponential(multiplier=self.retry_wait, max=self.retry_wait_max),
            "retry": retry_if_exception(self.retries),
            "reraise": True,
        }

    def redelivery(self, runs: int) -> float:
        """Seconds to wait after the ``runs``-th failed run before the next."""
        return float(min(self.redelivery_delay * 2 ** (runs - 1), self.redelivery_delay_max))

    def after_failed_run(self, runs: int, error: BaseException) -> Verdict:
        """The verdict on a run that ended in ``error``; ``runs`` counts the run itself."""
        if isinstance(error, RetryLater):
            return Reschedule(max(0.0, error.seconds), counts_a_run=False)
        if self.is_poison(error):
            return Dead(f"{describe(error)} (fails at once: {type(error).__name__})")
        if runs >= self.max_deliveries:
            return Dead(f"{describe(error)} (failed {plural(runs, 'run')})")
        return Reschedule(self.redelivery(runs))

    def after_lost_run(self, runs: int) -> Verdict:
        """The verdict on a run whose runner vanished (its lease ran out)."""
        if runs >= self.max_deliveries:
            return Dead(f"{runs} runs started and none finished: did its process die?")
        return Reschedule(0.0)


_built: dict[tuple[tuple[str, Any], ...], Policy] = {}


def reset() -> None:
    """Forget built policies (the settings changed)."""
    _built.clear()
