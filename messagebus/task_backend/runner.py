"""The two handlers that run tasks, one call per delivery: the engine's retries, dead
letters and bookkeeping apply to tasks as to every handler.

A sync task runs in its delivery's transaction, so what it returns is kept
with the mark that it is done (and its own database work). An async task is
awaited on the engine's event loop, outside any transaction, and its return
value written as it returns, before its done-mark: at least once, as every
async handler.

Django's signals are sent as its own worker sends them: ``task_started`` as
each attempt begins, ``task_finished`` once the task succeeded (a sync one's
once its transaction commits) or died (failed for good, after its retries).
Each failed attempt's error is kept with the result (``TaskResult.errors``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from ..core.policy import Dead, Verdict
from ..core.registry import registry
from ..delivery import run as engine
from ..exceptions import Reject
from ..handling.unit_of_work import UnitOfWork
from ..models import Delivery
from . import results
from .compat import AnyResult, TaskContext, normalize_json, task_finished, task_started
from .messages import ARUN, HANDLERS, RUN, TaskEnqueued


class UnserializableReturnValue(Reject, TypeError):
    """A task returned what JSON cannot hold: it will never succeed, so it is dead at once."""


def run(event: TaskEnqueued, uow: UnitOfWork) -> None:
    """Run a sync task; keep its return value in this transaction."""
    task = results.task_of(event)
    started = timezone.now()
    row, running = _running(uow.alias, event)
    sender = type(task.get_backend())
    task_started.send(sender, task_result=running)
    args = event.args
    if task.takes_context:
        args = [TaskContext(task_result=running), *args]
    value = _json(task.call(*args, **event.kwargs))
    done = results.record(uow.alias, event.message_id, value, started, row)
    finished = results.to_result(done, uow.alias, event.message_id, event=event)
    transaction.on_commit(partial(task_finished.send, sender, task_result=finished), uow.alias)


async def arun(event: TaskEnqueued) -> None:
    """Await an async task; keep its return value once it returns."""
    task = results.task_of(event)
    started = timezone.now()
    row, running = await sync_to_async(_running)(event.database, event)
    sender = type(task.get_backend())
    await sync_to_async(task_started.send)(sender, task_result=running)
    args = event.args
    if task.takes_context:
        args = [TaskContext(task_result=running), *args]
    value = _json(await task.acall(*args, **event.kwargs))
    record = sync_to_async(results.record)
    done = await record(event.database, event.message_id, value, started, row)
    finished = results.to_result(done, event.database, event.message_id, event=event)
    await sync_to_async(task_finished.send)(sender, task_result=finished)


def _json(value: Any) -> Any:
    try:
        return normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise UnserializableReturnValue(f"Unsupported type: {exc}") from exc


def _running(using: str, event: TaskEnqueued) -> tuple[results.Row, AnyResult]:
    """A running task's row as its attempt began, and the result its context holds:
    RUNNING, its attempt counted. A first attempt's claim knows all of it; a later
    one's row is read, for the errors before."""
    job = engine.current_job.get()
    claim = job.claim if job is not None else None
    if claim is not None and claim.id and not (claim.runs or claim.calls) and claim.stored:
        row = results.first_row(event, claim.stored)
    else:
        found = results.read(using, event.message_id)
        assert found is not None, "a task runs from its delivery"
        row = found
    # A call's done-mark may come before it (alone) or after it (a batch, an async task).
    attempt = row.attempts if row.status == Delivery.Status.DONE else row.attempts + 1
    return row, results.to_result(row, using, event.message_id, event=event, attempt=attempt)


def _attempt_failed(job: engine.Job, error: BaseException, verdict: Verdict) -> None:
    """A task's failed call: its error kept; once it died, ``task_finished``."""
    if job.handler.name not in HANDLERS or not isinstance(job.event, TaskEnqueued):
        return
    using, event = job.ref.using, job.event
    results.failed_attempt(using, event.message_id, error)
    row = results.read(using, event.message_id) if isinstance(verdict, Dead) else None
    if row is not None:
        sender = type(results.task_of(event).get_backend())
        result = results.to_result(row, using, event.message_id, event=event)
        task_finished.send(sender, task_result=result)


def register() -> None:
    """Register the task runners (once; ``MessagebusConfig.ready`` calls it when a
    ``TASKS`` backend is the outbox's)."""
    if registry.named(RUN) is None:
        # One handler runs every task: a breaker would pause them all for one that fails.
        registry.register(TaskEnqueued, run, name=RUN, breaker=False)
        registry.register(TaskEnqueued, arun, name=ARUN, breaker=False)
    if _attempt_failed not in engine.failures:
        engine.failures.append(_attempt_failed)
