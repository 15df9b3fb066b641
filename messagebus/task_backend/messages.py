"""The event a task's enqueueing stores: readable JSON in the outbox, one delivery."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, ClassVar

from ..core.messages import Event
from ..models import DEFAULT_QUEUE


@dataclass(frozen=True, kw_only=True)
class TaskEnqueued(Event):
    """``task`` (its dotted path) was enqueued with ``arguments`` (``{"args": [...],
    "kwargs": {...}}``) on ``backend``, in the outbox of ``database``: its one delivery
    runs it. Its ``message_id`` is the task result's id."""

    type_name: ClassVar[str | None] = "messagebus.TaskEnqueued"

    task: str
    arguments: dict[str, Any]
    backend: str
    database: str
    queue_name: str = DEFAULT_QUEUE
    priority: int = 0
    run_after: dt.datetime | None = None

    @property
    def args(self) -> list[Any]:
        args: list[Any] = self.arguments["args"]
        return args

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self.arguments["kwargs"]
        return kwargs


# The handlers that run tasks (``runner``): a sync task's delivery goes to the first, an
# async one's to the second.
RUN, ARUN = "messagebus.task_backend.run", "messagebus.task_backend.arun"
HANDLERS = (RUN, ARUN)
