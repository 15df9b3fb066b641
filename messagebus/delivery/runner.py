"""Run deliveries to the end of a run: ``run(ref)`` one, ``run_batch(claims)`` many.

A run is up to the policy's ``retry_attempts`` calls of the handler. Each
call is a unit of work that first marks the delivery done: the mark commits
with the handler's work or rolls back with it, so a handler whose effects are
in the database runs exactly once, and a second runner of the same delivery
waits on the row lock, then finds it done.

A batch of claimed deliveries runs in one transaction, each handler in a
savepoint of its own: a failure rolls back that handler's work alone, and the
others commit with their done-marks. A failed one then finishes its run on
its own, between tenacity's waits, outside the batch.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from django.utils import timezone

from .. import logs, metrics, sql, tracing
from ..dependencies import dependencies
from ..envelope import Envelope
from ..exceptions import MessageDecodeError, RetryLater
from ..message_bus import bus
from ..messages import Event
from ..registry import Handler, registry
from ..unit_of_work import UnitOfWork, savepoint
from ..wording import describe
from . import states
from .policy import Dead, Policy
from .reference import Reference

logger = logs.get_logger(__name__)


@dataclass(frozen=True)
class Task:
    """A reference resolved to what it runs: the event and the handler."""

    ref: Reference
    event: Event
    handler: Handler
    policy: Policy

    def __str__(self) -> str:
        return f"delivery of {self.event} to {self.handler}"

    @property
    def trace(self) -> dict[str, str] | None:
        """The trace its event was stored in."""
        return self.ref.envelope.trace if self.ref.envelope else None


class Failed(NamedTuple):
    """A delivery whose first call failed in a batch: its run goes on after the batch,
    in the span it began in."""

    claim: states.Claim
    task: Task
    error: Exception
    lease: dt.datetime
    span: tracing.Span


def policy_of(handler: Handler | str) -> Policy:
    """The delivery policy of ``handler`` (or of the handler of that name)."""
    if isinstance(handler, str):
        found = registry.named(handler)
        return Policy.of(found.options if found else ())
    return Policy.of(handler.options)


def run(
    ref: Reference,
    *,
    lease: dt.datetime | None = None,
    calls: int | None = None,
    runs: int | None = None,
    stored: dt.datetime | None = None,
) -> bool:
    """Run a delivery to the end of its run; True if this run completed it.

    ``lease``: the claim it runs under (None: unleased, just stored).
    ``calls``: at most this many calls (default: the policy's attempts).
    ``runs``: runs ended before this one, if known.
    ``stored``: when its event was stored, to time the wait for this, its first run.
    """
    task = resolve(ref, lease)
    if task is None:
        return False
    if task.handler.is_async:
        raise TypeError(f"{task.handler} is async: run it with delivery.concurrent.run_any()")
    with logs.handling(task.event, task.handler.name), tracing.delivery(task, _number(runs)):
        return _run(task, lease, calls, runs, None, stored)


def _went_on(failed: list[Failed]) -> None:
    """Finish the runs whose first call failed in a batch, each in the span it began in."""
    for index, (claim, task, error, lease, span) in enumerate(failed):
        try:
            with logs.handling(task.event, task.handler.name), span:
                _run(task, lease, None, claim.runs, error)
        except BaseException:
            for rest in failed[index + 1 :]:
                rest.span.close()
            raise


def _run(
    task: Task,
    lease: dt.datetime | None,
    calls: int | None,
    runs: int | None,
    first_error: Exception | None,
    stored: dt.datetime | None = None,
) -> bool:
    if first_error is None:  # the first call, as cheap as can be
        try:
            return _call(task, lease, stored)
        except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
            first_error = exc
            lease = failed_call(task, lease, exc)
            if lease is None:  # not ours any more: its holder records it
                return False
    attempts = task.policy.retry_attempts if calls is None else calls
    try:
        for attempt in task.policy.retrying(attempts):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_error
                try:
                    return _call(task, lease)
                except Exception as exc:
                    lease = failed_call(task, lease, exc)
                    if lease is None:
                        return False
                    raise
    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
        give_up(task, lease, exc, runs)
    return False


def resolve(ref: Reference, lease: dt.datetime | None) -> Task | None:
    """The event and handler ``ref`` names; None, after marking it dead, if they're gone."""
    if ref.envelope is None:
        envelope = _load(ref)
        if envelope is None:
            logger.warning("No event %s for %s: pruned?", ref.event_id, ref)
            return None
        ref = ref.with_envelope(envelope)
    task = opened(ref)
    if isinstance(task, str):
        dead_on_arrival(ref, lease, task)
        return None
    return task


def opened(ref: Reference) -> Task | str:
    """The task of a reference that holds its envelope, or why there can be none."""
    assert ref.envelope is not None
    try:
        event = ref.envelope.open(Event)
    except MessageDecodeError as exc:
        return f"cannot decode the event: {exc}"
    assert isinstance(event, Event)
    handler = registry.event_handler(type(event), ref.handler)
    if handler is None:
        return f"no handler {ref.handler} is registered for {ref.envelope.type}"
    return Task(ref, event, handler, policy_of(handler))


def _call(task: Task, lease: dt.datetime | None, stored: dt.datetime | None = None) -> bool:
    """One call of the handler in its own unit of work, marked done first.

    False: not ours to run (another runner completed it, or holds it).
    ``stored``: when its event was stored, to time the wait for this call, once it is ours.
    """
    with UnitOfWork(task.ref.using) as uow:
        if not states.done(task.ref, lease):
            return False
        if stored is not None:
            metrics.waited(task.handler.name, stored, timezone.now())
        _handle(task, uow)
    run_ended(task.handler.name, "done")
    return True


def _handle(task: Task, uow: UnitOfWork) -> None:
    started = time.perf_counter()
    dependencies.call(task.handler, task.event, uow, bus)
    returned(task, time.perf_counter() - started)


def returned(task: Task, seconds: float) -> None:
    """Record a call of the handler that returned after ``seconds``: metric and log line."""
    metrics.call(task.handler.name, seconds)
    if logger.isEnabledFor(logging.INFO):
        logger.info("Delivered %s to %s in %.1f ms", task.event, task.handler, seconds * 1000)


def run_ended(handler: str, outcome: str) -> None:
    """Count a run's end, and record it on its span."""
    metrics.ended(handler, outcome)
    tracing.ended(outcome)


def _number(runs: int | None) -> int | None:
    return None if runs is None else runs + 1


def failed_call(task: Task, lease: dt.datetime | None, exc: BaseException) -> dt.datetime | None:
    """Record a failed call, one line in the log (a failed run logs the traceback).

    The rest of the run holds the renewed lease this returns; None: the run's
    lease is lost (another runner holds the delivery), so the run ends.
    """
    if not isinstance(exc, RetryLater):
        metrics.failed(task.handler.name)
        tracing.failed(exc)
        logger.warning("Handler %s failed on %s: %r", task.handler, task.event, exc)
    return states.failed_call(task.ref, lease, exc)


def give_up(task: Task, lease: dt.datetime | None, exc: BaseException, runs: int | None) -> None:
    """End a failed run as the policy decides: rescheduled, postponed, or dead."""
    ended = (states.runs(task.ref) if runs is None else runs) + 1
    verdict = task.policy.after_failed_run(ended, exc)
    if isinstance(verdict, Dead):
        states.dead(task.ref, lease, verdict.reason)
        run_ended(task.handler.name, "dead")
        logger.error(
            "Dead: %s: %s; retry it in the admin or with `messagebus retry`",
            task,
            verdict.reason,
            exc_info=exc,
        )
    elif not verdict.counts_a_run:
        states.postponed(task.ref, lease, verdict.delay, describe(exc))
        run_ended(task.handler.name, "postponed")
        logger.info("Postponed %s by %.0fs, as its handler asked: %s", task, verdict.delay, exc)
    else:
        states.rescheduled(task.ref, lease, verdict.delay)
        run_ended(task.handler.name, "rescheduled")
        logger.error(
            "Failed run %d of %s; next run in %.0fs: %r",
            ended,
            task,
            verdict.delay,
            exc,
            exc_info=exc,
        )


def run_batch(
    claims: Sequence[states.Claim],
    *,
    seconds: float,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Run claimed deliveries, batched in transactions of at most ``seconds``.

    Sync handlers only. Returns how many ran (completed or not). Once
    ``stopping()`` is true, the ones not started are handed back.
    """
    if not claims:
        return 0
    using = claims[0].ref.using
    now = timezone.now()
    for claim in claims:
        metrics.claimed(claim, now)
    batched: list[tuple[states.Claim, Task]] = []
    alone: list[tuple[states.Claim, Task]] = []
    for claim in claims:
        task = resolve(claim.ref, claim.lease)
        if task is not None:
            (batched if task.policy.batch else alone).append((claim, task))
    ran = len(claims) - len(batched) - len(alone)  # dead on arrival
    while batched and not stopping():
        count, failed = _one_transaction(using, batched, seconds, stopping)
        ran, batched = ran + count, batched[count:]
        _went_on(failed)
    while alone and not stopping():
        claim, _ = alone.pop(0)
        run(claim.ref, lease=claim.lease, runs=claim.runs)
        ran += 1
    if batched or alone:
        states.released(using, [claim for claim, _ in batched + alone])
    return ran


def _one_transaction(
    using: str,
    tasks: list[tuple[states.Claim, Task]],
    seconds: float,
    stopping: Callable[[], bool],
) -> tuple[int, list[Failed]]:
    """Run tasks from the front in one transaction until done, out of time, or stopping."""
    deadline = time.monotonic() + seconds
    completed: list[int] = []
    handlers: list[str] = []
    failed: list[Failed] = []
    count = 0
    try:
        with UnitOfWork(using) as uow:
            ours = states.start(using, [claim for claim, _ in tasks])
            for claim, task in tasks:
                if count and (time.monotonic() > deadline or stopping()):
                    break
                count += 1
                if claim.id not in ours:
                    continue
                span = tracing.delivery(task, claim.runs + 1)
                with logs.handling(task.event, task.handler.name), span:
                    try:
                        with savepoint(using):
                            _handle(task, uow)
                    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
                        lease = failed_call(task, claim.lease, exc)
                        if lease is not None:  # the run goes on after the batch, in this span
                            span.hold()
                            failed.append(Failed(claim, task, exc, lease, span))
                    else:
                        tracing.ended("done")  # with the batch's commit
                        completed.append(claim.id)
                        handlers.append(task.handler.name)
            states.batch_done(using, completed)
    except BaseException:  # the batch is lost: so are the runs that were to go on
        for held in failed:
            held.span.close()
        raise
    for handler in handlers:  # committed
        metrics.ended(handler, "done")
    return count, failed


def _load(ref: Reference) -> Envelope | None:
    row = sql.load_event(ref.using, ref.event_id)
    if row is None:
        return None
    kind, payload, correlation, causation, trace = row
    return Envelope(kind, ref.event_id, correlation, causation, payload, trace=trace)


def dead_on_arrival(ref: Reference, lease: dt.datetime | None, reason: str) -> None:
    states.dead(ref, lease, reason)
    run_ended(ref.handler, "dead")
    logger.error("Dead: %s: %s", ref, reason)
