"""Where and when deliveries run.

``deliver(job)`` runs one delivery in its own unit of work: one UPDATE marks
the pending delivery done (locking its row), then the handler runs, in the
same transaction. If the handler fails, the rollback makes it pending again.
A second runner of the same delivery waits on the row lock and then finds it
done, so a handler whose effects are in the database runs exactly once. A
failing call is retried by tenacity; a run that still fails is rescheduled
with a growing delay, and dead after MAX_DELIVERIES runs.

Executors decide when ``deliver`` is called, chosen by MESSAGEBUS["EXECUTOR"]:
``inline`` runs deliveries right after the commit that stored them, in the
same thread; ``worker`` leaves them to ``manage.py messagebus worker``.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from datetime import timedelta
from typing import Any, Protocol, cast

from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string
from tenacity import Retrying, stop_after_attempt, wait_exponential

from . import conf, outbox, sql, unit_of_work
from .dependencies import dependencies
from .messages import current_message
from .models import Delivery
from .outbox import Job

logger = logging.getLogger(__name__)
Status = Delivery.Status
SWEEP_SIZE = 10  # deliveries an inline sweep takes on at most


class Executor(Protocol):
    # False: nothing to do after commit; the deliveries wait for a worker.
    runs_after_commit: bool

    def submit(self, jobs: list[Job]) -> None: ...


class InlineExecutor:
    """Run deliveries in this thread after commit, as the book's message bus does.

    A command's events are delivered one event at a time, in the order
    recorded; the events their handlers record queue behind the deliveries
    being run, so a chain of events runs without recursion. Every
    SWEEP_INTERVAL seconds at most, it also takes on a few deliveries that are
    that long overdue (runs rescheduled after a failure, leftovers of a
    process that died), with one call each.
    """

    runs_after_commit = True

    def __init__(self) -> None:
        self._local = threading.local()
        self._last_sweep = time.monotonic()

    def submit(self, jobs: list[Job]) -> None:
        queue: deque[Job] | None = getattr(self._local, "queue", None)
        if queue is not None:
            queue.extend(jobs)
            return
        self._local.queue = queue = deque(jobs)
        try:
            while queue:
                job = queue.popleft()
                try:
                    deliver(job)
                except Exception:  # the outbox itself failed (database down)
                    logger.exception("Could not run %s; it stays pending", job)
                if not queue:
                    queue.extend(self._overdue(job.using))
        finally:
            self._local.queue = None

    def _overdue(self, using: str) -> list[Job]:
        """A few overdue deliveries, each given one call: this is someone's request."""
        interval = conf.settings.SWEEP_INTERVAL
        if not interval or time.monotonic() - self._last_sweep < interval:
            return []
        self._last_sweep = time.monotonic()
        lease = conf.settings.CLAIM_TIMEOUT
        rows = outbox.claim(using, limit=SWEEP_SIZE, lease=lease, overdue=interval)
        if rows:
            logger.info("Sweeping %d overdue deliveries", len(rows))
        return outbox.jobs(rows, counted=True, retries=False)


class WorkerExecutor:
    """Leave deliveries to ``manage.py messagebus worker`` processes."""

    runs_after_commit = False

    def submit(self, jobs: list[Job]) -> None:
        """Nothing to do: the deliveries are due, and a worker will claim them."""


_executors: dict[str, Executor] = {}
ALIASES = {"inline": InlineExecutor, "worker": WorkerExecutor}


def get() -> Executor:
    """The executor named by MESSAGEBUS["EXECUTOR"] (built once per name)."""
    name = conf.settings.EXECUTOR
    try:
        return _executors[name]
    except KeyError:
        cls = ALIASES.get(name) or import_string(name)
        executor = cast(Executor, cls())
        _executors[name] = executor
        return executor


def deliver(job: Job) -> bool:
    """Run a delivery to the end of its run.

    True: this run completed it. False: it failed (and is rescheduled or
    dead), or another runner had already completed it.
    """
    try:
        return _attempt(job)
    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
        first_error = exc
    attempts = conf.settings.RETRY_ATTEMPTS if job.retries else 1
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(
            multiplier=conf.settings.RETRY_WAIT, max=conf.settings.RETRY_WAIT_MAX
        ),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_error
                return _attempt(job)
    except Exception as exc:  # noqa: BLE001  (tenacity re-raises the handler's last error)
        _give_up(job, exc)
    return False


def _attempt(job: Job) -> bool:
    """One call of the handler in its own unit of work; False if not ours to run."""
    token = current_message.set(job.event)
    try:
        with unit_of_work.UnitOfWork(job.using) as uow:
            handler = job.handler
            now = timezone.now()
            if not sql.complete(
                job.using, job.event.message_id, handler.name, now, count_run=not job.counted
            ):
                return False
            started = time.perf_counter()
            dependencies.call(handler, job.event, uow, _bus())
            elapsed = time.perf_counter() - started
    except Exception as exc:
        _failed_attempt(job, exc)
        raise
    finally:
        current_message.reset(token)
    if logger.isEnabledFor(logging.INFO):
        logger.info("Delivered %s to %s in %.1f ms", job.event, job.handler, elapsed * 1000)
    return True


def _failed_attempt(job: Job, exc: Exception) -> None:
    logger.warning("Handler %s failed on %s: %r", job.handler, job.event, exc, exc_info=True)
    job.rows().update(
        attempts=F("attempts") + 1,
        last_error=f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}",
        traceback=traceback.format_exc(),
        # Ours while tenacity waits; due again for others if this process dies.
        next_attempt_at=timezone.now() + timedelta(seconds=conf.settings.CLAIM_TIMEOUT),
    )


def _give_up(job: Job, exc: Exception) -> None:
    runs = job.runs + 1
    counted = F("runs") + (0 if job.counted else 1)
    now = timezone.now()
    if runs >= conf.settings.MAX_DELIVERIES:
        job.rows().update(status=Status.DEAD, runs=counted, finished_at=now)
        logger.error(
            "Dead: %s failed %d run(s); retry it in the admin or with `messagebus retry`: %r",
            job,
            runs,
            exc,
        )
        return
    delay = min(
        conf.settings.REDELIVERY_DELAY * 2 ** (runs - 1), conf.settings.REDELIVERY_DELAY_MAX
    )
    job.rows().update(runs=counted, next_attempt_at=now + timedelta(seconds=delay))
    logger.error("%s failed run %d; next run in %.0fs: %r", job, runs, delay, exc)


def _bus() -> Any:
    from .message_bus import bus

    return bus


def reset() -> None:
    """Forget built executors (the settings changed)."""
    _executors.clear()


def retry(using: str, pks: list[int]) -> None:
    """Make these deliveries due now with a fresh run budget, and hand them over.

    The inline executor runs them at once; workers pick them up otherwise.
    """
    deliveries = Delivery.objects.using(using).filter(pk__in=pks)
    deliveries.requeue()
    executor = get()
    if executor.runs_after_commit:
        executor.submit(outbox.jobs(deliveries.select_related("event")))
