"""``OutboxBackend``: Django's tasks stored in the outbox, run by the bus's executors.

``task.enqueue(...)`` writes the task (an event, ``TaskEnqueued``, with one
delivery) in the transaction open on its database, so it runs only if that
commits; outside a transaction it commits at once. Then it is a delivery like
any other: the inline executor runs it after the commit, workers claim it
(highest priority first, from ``run_after`` on, of their ``--queue``s), a
Celery task carries it; failures are retried on the bus's policy and end dead,
in the admin, where they can be run again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

from asgiref.sync import iscoroutinefunction
from django.db import connections, router, transaction
from django.utils import timezone

from .. import executors, outbox
from ..core.registry import registry
from ..models import Delivery
from ..outbox import sql
from .compat import (
    AnyResult,
    BaseTaskBackend,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)
from .messages import ARUN, RUN, TaskEnqueued
from .results import parse, read, result_id, to_result


class OutboxBackend(BaseTaskBackend):
    """``TASKS = {"default": {"BACKEND": "messagebus.task_backend.OutboxBackend"}}``.

    ``OPTIONS``: ``{"DATABASE": alias}`` stores every task on that database;
    without it, a task goes to the database whose transaction is open (the
    router's for ``Delivery`` first), else the router's.
    """

    supports_defer = True
    """``run_after``: its delivery is due from then on."""

    supports_async_task = True
    """An ``async def`` task is awaited on the worker's event loop."""

    supports_get_result = True
    """Results are read from the outbox, from any process."""

    supports_priority = True
    """Workers claim higher priorities first."""

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str | None = self.options.get("DATABASE")

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> AnyResult:
        self.validate_task(task)
        arguments = cast(dict[str, Any], normalize_json({"args": args, "kwargs": kwargs}))
        using = self._database_for_write()
        event = TaskEnqueued(
            task=task.module_path, arguments=arguments, backend=self.alias, database=using,
            queue_name=task.queue_name, priority=task.priority, run_after=task.run_after,
        )  # fmt: skip
        runner = registry.named(ARUN if iscoroutinefunction(task.func) else RUN)
        assert runner is not None, "MessagebusConfig.ready() registers the task runners"
        now = timezone.now()
        running = executors.get()
        with _transaction(using):
            refs = outbox.store(
                event, using, handlers=[runner], now=now, due=task.run_after,
                priority=task.priority, queue=task.queue_name, wake=executors.wakes(running),
            )  # fmt: skip
            result: AnyResult = TaskResult(
                task=task, id=result_id(using, event.message_id),
                status=TaskResultStatus.READY, enqueued_at=now,
                started_at=None, finished_at=None, last_attempted_at=None,
                args=arguments["args"], kwargs=arguments["kwargs"], backend=self.alias,
                errors=[], worker_ids=[],
            )  # fmt: skip
            task_enqueued.send(type(self), task_result=result)
            if task.run_after is None or task.run_after <= now:  # else due later: claimed then
                running.submit(refs)  # inline, outside a transaction: runs it now
        return result

    def get_result(self, result_id: str) -> AnyResult:
        found = parse(str(result_id))
        if found is None:
            raise TaskResultDoesNotExist(result_id)
        using, event_id = found
        row = read(using, event_id)
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return to_result(row, using, event_id)

    def _database_for_write(self) -> str:
        """The configured database; else the one in a transaction (the router's first);
        else the router's."""
        if self.database:
            return self.database
        routed = router.db_for_write(Delivery)
        if connections[routed].in_atomic_block:
            return routed
        open_ = [c.alias for c in connections.all(initialized_only=True) if c.in_atomic_block]
        return open_[0] if len(open_) == 1 else routed


def _transaction(using: str) -> AbstractContextManager[Any]:
    """The transaction a task is stored in: the one open, else one of its own; none on
    PostgreSQL, where the event and its delivery are one statement, atomic as it is,
    and the executor is handed them committed (a transaction costs two round trips)."""
    if connections[using].in_atomic_block or not sql.stores_in_one_statement(using):
        return transaction.atomic(using=using, savepoint=False)
    return nullcontext()
