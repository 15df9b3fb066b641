"""The engine: every delivery runs here, whatever the executor, one call at a time.

``deliver(claims)`` runs a worker's claimed deliveries, ``call(job)`` one
delivery (just stored, swept, or a Celery task's): each handler is called
once, and a failure becomes the policy's verdict (due again soon, due again
after a delay, postponed, dead), recorded by ``states.failed``. Nothing sleeps
between calls: a delivery due again is taken on again when it is due, by
whichever process takes due deliveries, so a failing handler never holds up
the others.

Sync handlers run in a transaction that locks their delivery's row first and
marks it done: their work and the mark commit together, so a handler whose
effects are in the database runs exactly once, and a second runner of the same
delivery waits on the lock, then finds it done. ``finished_at`` is when the
call (or the batch) that completed it began. Deliveries in a batch share one
transaction (its rows locked in one statement, marked done in one), with no
savepoint: if a handler fails, the batch rolls back, its failure is recorded,
the rest run again, and that handler's deliveries run alone (each in its own
transaction) for a while. Async handlers are awaited on an event loop
(``awaiting``), outside any transaction, and marked done once they return.

A handler with a ``max_concurrency`` takes a slot (``outbox.slots``) before each
call, in a statement of its own, and frees it with the done-mark or the failure:
its deliveries never share a batch, and one that finds every slot taken is
handed back, not run, no run counted (``capped``).

An ordered handler's deliveries (``outbox.ordering``) are claimed only when their turn
has come, at most one per key at a time; one run without a claim (just stored, a
Celery task's) is looked at as its transaction begins, and handed back, not run, no
run counted, while an earlier delivery of its key is unfinished (``wait_turn``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from .. import conf
from ..core.dependencies import dependencies
from ..core.envelope import Envelope
from ..core.messages import Message
from ..core.policy import HANDLER_RECHECK, Dead, Policy, Postpone, Verdict, missing_handler
from ..core.registry import Handler, registry
from ..exceptions import MessageDecodeError, RetryLater
from ..handling.message_bus import bus
from ..handling.unit_of_work import UnitOfWork
from ..observe import logs, metrics, tracing
from ..outbox import ordering, slots, sql, states
from ..outbox.reference import Reference
from . import breaker

logger = logs.get_logger(__name__)

# The delivery whose handler is called in this context (the tasks backend reads its counts).
current_job: ContextVar[Job | None] = ContextVar("messagebus_current_job", default=None)
# What the calls of the batch under way returned, to keep with their done-marks (``keep``).
_kept: ContextVar[dict[int, Any] | None] = ContextVar("messagebus_kept", default=None)
# Told of each failed call once its failure is recorded, with the policy's verdict (the
# tasks backend keeps each attempt's error, and signals a task that died).
failures: list[Callable[[Job, BaseException, Verdict], None]] = []

SUSPECT_FOR = 60.0  # seconds a handler that failed in a batch runs outside batches
_suspect: dict[Handler, float] = {}  # handler -> until when (time.monotonic())
_missing_logged: dict[str, float] = {}  # handler name -> when its absence was last logged


@dataclass(frozen=True)
class Job:
    """A claimed delivery resolved to what it runs: its event, handler and policy."""

    claim: states.Claim
    event: Message  # an event, or a command scheduled for later
    handler: Handler
    policy: Policy

    @property
    def ref(self) -> Reference:
        return self.claim.ref

    @property
    def trace(self) -> dict[str, str] | None:
        """The trace its event was stored in."""
        return self.ref.envelope.trace if self.ref.envelope else None

    def __str__(self) -> str:
        return f"delivery of {self.event} to {self.handler}"

    def span(self) -> tracing.Span:
        """The span of this call: a child of the one its event was stored in."""
        return tracing.delivery(self.event, self.handler.name, self.trace, number(self.claim))


def policy_of(handler: Handler | str) -> Policy:
    """The delivery policy of ``handler`` (or of the handler of that name)."""
    if isinstance(handler, str):
        found = registry.named(handler)
        return Policy.of(found.options if found else ())
    return Policy.of(handler.options)


def awaited(ref: Reference) -> bool:
    """Whether the handler ``ref`` names is async (unknown: no, ``resolve`` deals with it)."""
    handler = registry.named(ref.handler)
    return handler is not None and handler.is_async


def examine(claim: states.Claim) -> Job | str | None:
    """The job of a claim that holds its event; or why there can be none: a reason to
    bury it (str), or None when its handler is missing here. Reads nothing."""
    ref = claim.ref
    assert ref.envelope is not None
    try:
        event = ref.envelope.open()  # an event, or a command scheduled for later
    except MessageDecodeError as exc:
        return f"cannot decode the event: {exc}"
    handler = registry.delivered_by(type(event), ref.handler)
    if handler is None:
        return None
    return Job(claim, event, handler, policy_of(handler))


def resolve(claim: states.Claim) -> Job | None:
    """The job of a claim; None once dealt with: dead (its event is unreadable),
    waiting (its handler is missing here), or gone (pruned)."""
    ref = claim.ref
    if ref.envelope is None:
        envelope = _load(ref)
        if envelope is None:
            logger.warning("No event %s for %s: pruned?", ref.event_id, ref)
            return None
        claim = dataclasses.replace(claim, ref=ref.with_envelope(envelope))
    job = examine(claim)
    if isinstance(job, str):
        _dead_on_arrival(claim, job)
        return None
    if job is None:
        _handler_missing(claim)
    return job


def deliver(
    claims: Sequence[states.Claim],
    *,
    seconds: float | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Run these deliveries to sync handlers, each one call; how many ran (or were
    dealt with). Claimed ones are batched in transactions of at most ``seconds``
    (BATCH_SECONDS); just stored ones, and those of handlers with a max_concurrency,
    run each in its own. Once one of those finds every slot of its handler (and key)
    taken, the others of that handler and key are handed back untried, and once
    ``stopping()`` is true, the claimed ones not started. (Async handlers' deliveries:
    ``concurrent.run_now``; those sent together: ``bulk``.)
    """
    if not claims:
        return 0
    now = timezone.now()
    batched: list[Job] = []
    alone: list[Job] = []
    ran = 0
    for claim in claims:
        job = resolve(claim)
        if job is None:
            ran += 1
        elif job.claim.lease and job.policy.batched and not _is_suspect(job.handler):
            batched.append(job)
        else:
            alone.append(job)
    limit = conf.settings.BATCH_SECONDS if seconds is None else seconds
    while batched and not stopping():
        count, failed = _batch(batched, limit, stopping, now)
        ran, batched = ran + count, batched[count:]
        if failed is not None:  # rolled back: the rest run again, without its handler
            batched.remove(failed)
            ran += 1
            alone += [job for job in batched if job.handler == failed.handler]
            batched = [job for job in batched if job.handler != failed.handler]
    # (handler, key) whose slots were all taken just now, or whose turn has not come
    full: set[tuple[str, str]] = set()
    handed: list[Job] = []  # claimed deliveries of those, handed back untried
    while alone and not stopping():
        job = alone.pop(0)
        ran += 1
        if job.claim.key is not None and (job.handler.name, job.claim.key) in full:
            handed.append(job)
        elif _call(job) is None and job.claim.key is not None:
            full.add((job.handler.name, job.claim.key))
    unleased = [job.claim for job in batched + alone + handed if job.claim.lease is not None]
    if unleased:
        states.released(unleased[0].ref.using, unleased)
    return ran


def call(job: Job) -> bool:
    """One call of a sync handler in a transaction of its own; True if it completed.

    A handler with a max_concurrency: a slot taken first (committed), freed with the
    done-mark or the failure; none free, the delivery is handed back, not run. An
    ordered handler: handed back, not run, while an earlier delivery of its key is
    unfinished (looked at in the transaction that marks it done)."""
    return _call(job) is True


def _call(job: Job) -> bool | None:
    """``call``: None if it was handed back: every slot of its handler (and key) taken, or
    not its key's turn."""
    with logs.handling(job.event, job.handler.name), job.span():
        # When it began, to time a first call's wait from its storing (if it was read).
        begun = timezone.now() if job.claim.stored is not None else None
        slot = None
        if job.policy.max_concurrency is not None:
            slot = take_slot(job)
            if slot is None:
                capped(job)
                return None
        started = time.perf_counter()
        try:
            with UnitOfWork(job.ref.using) as uow:
                if job.policy.ordered and ordering.behind(job.ref):
                    wait_turn(job)
                    return None
                # Its row locked for the transaction: a second runner waits, then finds it done.
                if not states.done(job.ref, job.claim.lease):
                    logger.info("Not run: %s is done, paused, or another runner's", job)
                    if job.claim.lease is not None:  # paused: due again once resumed
                        states.let_go(job.ref, job.claim.lease)
                    if slot is not None:
                        slots.free(slot)
                    return False
                invoke(job, uow)
                if slot is not None:  # free as the done-mark commits, not before
                    slots.free(slot)
        except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
            failed(job, exc, begun, slot)
            return False
        if begun is not None:
            metrics.claimed(job.claim, begun)
        returned(job, time.perf_counter() - started)
        tracing.ended("done")
    metrics.ended(job.handler.name, "done")
    return True


def invoke(job: Job, uow: UnitOfWork) -> Any:
    """Call a sync handler with its delivery's message and dependencies, its job current."""
    token = current_job.set(job)
    try:
        return dependencies.call(job.handler, job.event, uow, bus)
    finally:
        current_job.reset(token)


def keep(value: Any) -> bool:
    """Keep ``value`` (JSON) as what the current delivery's call returned, written with its
    done-mark in the same statement: True if its batch will write it; False where the call
    runs on its own (its done-mark came first, or comes later): the caller writes it."""
    kept, job = _kept.get(), current_job.get()
    if kept is None or job is None or not job.claim.id:
        return False
    kept[job.claim.id] = value
    return True


class _Failed(Exception):  # carries a handler's failure out of a batch's transaction
    def __init__(self, job: Job, error: Exception, span: tracing.Span) -> None:
        super().__init__(error)
        self.job, self.error, self.span = job, error, span


def _batch(
    jobs: list[Job], seconds: float, stopping: Callable[[], bool], begun: dt.datetime
) -> tuple[int, Job | None]:
    """Run claimed jobs from the front in one transaction, no savepoints, until done, out
    of time, or stopping: how many ran and committed, or (0, the one that failed) when
    the batch rolled back.

    Each call's span stays open until the batch commits or rolls back, and says which.
    """
    using = jobs[0].ref.using
    deadline = time.monotonic() + seconds
    completed: list[tuple[Job, float, tracing.Span]] = []
    count = 0
    kept: dict[int, Any] = {}
    token = _kept.set(kept)
    try:
        with UnitOfWork(using) as uow:
            ours = states.start(using, [job.claim for job in jobs])
            for job in jobs:
                if count and (time.monotonic() > deadline or stopping()):
                    break
                count += 1
                if job.claim.id not in ours:
                    continue
                span = job.span()
                error: Exception | None = None
                with logs.handling(job.event, job.handler.name), span:
                    span.hold()
                    started = time.perf_counter()
                    try:
                        invoke(job, uow)
                        uow.flush()  # the in-transaction handlers of what it recorded
                    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
                        error = exc
                    else:
                        completed.append((job, time.perf_counter() - started, span))
                if error is not None:
                    raise _Failed(job, error, span)
            states.batch_done(using, [job.claim.id for job, _, _ in completed], begun, kept)
    except _Failed as failure:
        _rolled_back(completed)
        job = failure.job
        _suspect[job.handler] = time.monotonic() + SUSPECT_FOR
        with logs.handling(job.event, job.handler.name), failure.span:
            failed(job, failure.error, begun)
        return 0, job
    except BaseException:
        _rolled_back(completed)
        raise
    finally:
        _kept.reset(token)
    for job, taken, span in completed:  # committed
        metrics.claimed(job.claim, begun)
        tracing.finish(span, "done")
        returned(job, taken)
        metrics.ended(job.handler.name, "done")
    return count, None


def _rolled_back(completed: list[tuple[Job, float, tracing.Span]]) -> None:
    for _, _, span in completed:
        tracing.finish(span, "rolled back")


def number(claim: states.Claim) -> int | None:
    """The number of the run a claim's call belongs to, when known (a Celery task's
    delivery is read only if it fails)."""
    return claim.runs + 1 if claim.id or claim.lease is None else None


def returned(job: Job, seconds: float) -> None:
    """Record a call of the handler that returned after ``seconds``: metric and log line."""
    metrics.call(job.handler.name, seconds)
    if job.policy.breaker is not None:
        breaker.record(job.ref, job.handler.name, job.policy.breaker, failed=False)
    if logger.isEnabledFor(logging.INFO):
        logger.info("Delivered %s to %s in %.1f ms", job.event, job.handler, seconds * 1000)


def take_slot(job: Job) -> slots.Taken | None:
    """A concurrency slot for a job whose handler has a max_concurrency; None: all are
    taken. Freeing it wakes the workers if its delivery was not read by a claim of this
    process (the inline executor's, a Celery task's: their runner claims nothing after)."""
    most = job.policy.max_concurrency or 1
    return slots.take(job.ref, job.claim.lease, most, wakes=job.claim.key is None)


def wait_turn(job: Job) -> None:
    """An earlier delivery of the job's key is unfinished: the delivery is handed back, due
    as before, no run counted, and runs once it is its key's turn."""
    if job.claim.lease is not None:
        states.let_go(job.ref, job.claim.lease)
    logger.info("Not run yet: %s; an earlier delivery of its key is unfinished", job)


def capped(job: Job) -> None:
    """Every slot of the job's handler (for its key) is taken: the delivery is handed back,
    due as before, no run counted, and runs once a slot frees."""
    if job.claim.lease is not None:
        states.let_go(job.ref, job.claim.lease)
    logger.info(
        "Not run yet: %s; its handler runs at most %d at once%s, and that many run",
        job, job.policy.max_concurrency,
        f" per {job.policy.concurrency_key}" if job.policy.concurrency_key else "",
    )  # fmt: skip


def failed(
    job: Job,
    exc: BaseException,
    begun: dt.datetime | None = None,
    slot: slots.Taken | None = None,
) -> Verdict:
    """Record a failed call as the policy judges it: one line in the log, a traceback
    when a run ends. ``begun``: when the call began, to time a first call's wait;
    ``slot``: the concurrency slot it held, freed with the record."""
    claim = job.claim
    verdict, runs = judged(job, exc)
    transient = not isinstance(verdict, Postpone) and not job.policy.is_poison(exc)
    if job.policy.breaker is not None and transient:
        breaker.record(job.ref, job.handler.name, job.policy.breaker, failed=True)
    if not isinstance(exc, RetryLater):
        metrics.failed(job.handler.name)
        tracing.failed(exc)
        logger.warning("Handler %s failed on %s: %r", job.handler, job.event, exc)
    if not states.failed(job.ref, claim.lease, exc, verdict, slot):
        logger.warning("%s failed after another runner took it over", job)
        return verdict
    if begun is not None:
        metrics.claimed(job.claim, begun)
    _ended(job, verdict, exc, runs)
    for observer in failures:
        observer(job, exc, verdict)
    return verdict


def judged(job: Job, exc: BaseException) -> tuple[Verdict, int]:
    """The policy's verdict on ``exc``, a failed call of ``job``, and the runs it ended."""
    claim = job.claim
    # A claim read with its counts, or a Celery task's (id 0), read only now it failed.
    runs, calls = (claim.runs, claim.calls) if claim.id else states.counts(job.ref)[:2]
    return job.policy.after_failed_call(calls + 1, runs, exc), runs


def _ended(job: Job, verdict: Verdict, exc: BaseException, runs: int) -> None:
    name = job.handler.name
    if isinstance(verdict, Dead):
        _run_ended(name, "dead")
        logger.error(
            "Dead: %s: %s; retry it in the admin or with `messagebus retry`",
            job, verdict.reason, exc_info=exc,
        )  # fmt: skip
    elif isinstance(verdict, Postpone):
        _run_ended(name, "postponed")
        logger.info("Postponed %s by %.0fs, as its handler asked: %s", job, verdict.delay, exc)
    elif verdict.ends_run:
        _run_ended(name, "rescheduled")
        logger.error(
            "Failed run %d of %s; next run in %.0fs: %r",
            runs + 1, job, verdict.delay, exc, exc_info=exc,
        )  # fmt: skip
    else:
        tracing.ended("retry")
        logger.info("Calling %s again in %.1fs", job.handler, verdict.delay)


def _run_ended(handler: str, outcome: str) -> None:
    """Count a run's end, and record it on its span."""
    metrics.ended(handler, outcome)
    tracing.ended(outcome)


def _is_suspect(handler: Handler) -> bool:
    until = _suspect.get(handler)
    if until is None:
        return False
    if time.monotonic() < until:
        return True
    del _suspect[handler]
    return False


def _handler_missing(claim: states.Claim) -> None:
    """A delivery to a handler this process lacks waits for one that has it (a rolling
    deploy, a handler registered elsewhere), and dies only after HANDLER_WAIT."""
    ref = claim.ref
    stored = claim.stored or states.counts(ref).stored or timezone.now()
    waited = (timezone.now() - stored).total_seconds()
    verdict = missing_handler(ref.handler, waited, conf.settings.HANDLER_WAIT)
    if isinstance(verdict, Dead):
        _dead_on_arrival(claim, verdict.reason)
        return
    states.waiting(ref, claim.lease, verdict)
    now = time.monotonic()
    if now - _missing_logged.get(ref.handler, float("-inf")) >= HANDLER_RECHECK:
        _missing_logged[ref.handler] = now
        logger.warning(
            "No handler %s in this process: its deliveries wait for a process that has it "
            "(dead after %.0fs)",
            ref.handler, conf.settings.HANDLER_WAIT,
        )  # fmt: skip


def _dead_on_arrival(claim: states.Claim, reason: str) -> None:
    states.dead(claim.ref, claim.lease, reason)
    _run_ended(claim.ref.handler, "dead")
    logger.error("Dead: %s: %s", claim.ref, reason)


def _load(ref: Reference) -> Envelope | None:
    row = sql.load_event(ref.using, ref.event_id)
    if row is None:
        return None
    kind, payload, correlation, causation, trace = row
    return Envelope(kind, ref.event_id, correlation, causation, payload, trace=trace)
