"""The two handlers that run tasks, one call per delivery: the engine's retries, dead
letters and bookkeeping apply to tasks as to every handler.

A sync task runs in its delivery's transaction, so what it returns is kept
with the mark that it is done (and its own database work). An async task is
awaited on the engine's event loop, outside any transaction, and its return
value written as it returns, before its done-mark: at least once, as every
async handler.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from ..core.registry import registry
from ..exceptions import Reject
from ..handling.unit_of_work import UnitOfWork
from ..models import Delivery
from . import results
from .compat import TaskContext, normalize_json
from .messages import ARUN, RUN, TaskEnqueued


class UnserializableReturnValue(Reject, TypeError):
    """A task returned what JSON cannot hold: it will never succeed, so it is dead at once."""


def run(event: TaskEnqueued, uow: UnitOfWork) -> None:
    """Run a sync task; keep its return value in this transaction."""
    task = results.task_of(event)
    started = timezone.now()
    args = event.args
    if task.takes_context:
        args = [TaskContext(task_result=_running(uow.alias, event)), *args]
    value = _json(task.call(*args, **event.kwargs))
    results.record(uow.alias, event.message_id, value, started)


async def arun(event: TaskEnqueued) -> None:
    """Await an async task; keep its return value once it returns."""
    task = results.task_of(event)
    started = timezone.now()
    args = event.args
    if task.takes_context:
        running = await sync_to_async(_running)(event.database, event)
        args = [TaskContext(task_result=running), *args]
    value = _json(await task.acall(*args, **event.kwargs))
    await sync_to_async(results.record)(event.database, event.message_id, value, started)


def _json(value: Any) -> Any:
    try:
        return normalize_json(value)
    except (TypeError, ValueError) as exc:
        raise UnserializableReturnValue(f"Unsupported type: {exc}") from exc


def _running(using: str, event: TaskEnqueued) -> Any:
    """The result a running task's context holds: RUNNING, its attempt counted."""
    row = results.read(using, event.message_id)
    assert row is not None, "a task runs from its delivery"
    # A call's done-mark may come before it (alone) or after it (a batch, an async task).
    attempt = row.attempts if row.status == Delivery.Status.DONE else row.attempts + 1
    return results.to_result(row, using, event.message_id, attempt=attempt)


def register() -> None:
    """Register the task runners (once; ``MessagebusConfig.ready`` calls it when a
    ``TASKS`` backend is the outbox's)."""
    if registry.named(RUN) is None:
        # One handler runs every task: a breaker would pause them all for one that fails.
        registry.register(TaskEnqueued, run, name=RUN, breaker=False)
        registry.register(TaskEnqueued, arun, name=ARUN, breaker=False)
