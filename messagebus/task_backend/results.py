"""A task's delivery read back as Django's ``TaskResult``, and its outcome written.

A delivery is READY while pending, RUNNING while a runner holds its lease,
SUCCESSFUL once done and FAILED once dead or discarded. What a task returned
is kept in its delivery's ``result`` column as JSON, with when the call that
returned began and ended and which process made it: ``{"value": ..., "started_at":
..., "finished_at": ..., "worker": "host:pid", "errors": [...]}``. Each failed
call's error is appended to its ``errors`` (``{"exception_class_path": ...,
"traceback": ...}``); the delivery's own ``last_error`` and ``traceback`` are its
last failed call's.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import traceback
import uuid
from typing import Any, NamedTuple

from django.core.exceptions import SuspiciousOperation
from django.db import connections, router, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from ..core.serialization import from_dict
from ..delivery import run as engine
from ..models import Delivery
from .compat import AnyResult, Task, TaskError, TaskResult, TaskResultStatus
from .messages import HANDLERS, TaskEnqueued

Status = Delivery.Status
# A failure recorded without an exception of its own (an event that cannot be read, a
# runner lost too often) is named as the bus's.
BUS_ERROR = "messagebus.exceptions.MessageBusError"
_CLASS_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")


class Row(NamedTuple):
    """What a task result is read from: its delivery and its event's payload."""

    payload: dict[str, Any]
    status: str
    lease_until: dt.datetime | None
    attempts: int
    last_error: str
    traceback: str
    created_at: dt.datetime
    finished_at: dt.datetime | None
    priority: int
    queue: str
    result: dict[str, Any] | None


COLUMNS = ("event__payload", *Row._fields[1:])


def worker_id() -> str:
    """This process, as the bus's processes name themselves (``host:pid``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def result_id(using: str, event_id: uuid.UUID) -> str:
    """A task result's id: its event's, prefixed ``alias:`` when stored on a database other
    than the one the router writes the outbox to."""
    return str(event_id) if using == router.db_for_write(Delivery) else f"{using}:{event_id}"


def parse(result_id: str) -> tuple[str, uuid.UUID] | None:
    """The database and event of a result id; None if it names none."""
    using, _, key = result_id.rpartition(":")
    if using and using not in connections:
        return None
    try:
        return using or router.db_for_write(Delivery), uuid.UUID(key)
    except ValueError:
        return None


def read(using: str, result_id: uuid.UUID) -> Row | None:
    """The delivery of the task result ``result_id`` on database ``using``, if any."""
    rows = Delivery.objects.using(using).filter(event_id=result_id, handler__in=HANDLERS)
    # Unordered: one row at most, found by its (event, handler) key, never by a walk of ids.
    found = rows.order_by().values_list(*COLUMNS)[:1]
    return Row(*found[0]) if found else None


def record(using: str, result_id: uuid.UUID, value: Any, started: dt.datetime, row: Row) -> Row:
    """Keep what a task returned (in the transaction of its done-mark, if sync: in its
    batch's done-mark itself, where it runs in one), with the errors of its attempts
    before (``row``: as it was as this one began); the row as it is once the task is
    done."""
    outcome = {
        "value": value,
        "started_at": started.isoformat(),
        "finished_at": timezone.now().isoformat(),
        "worker": worker_id(),
        "errors": (row.result or {}).get("errors", []),
    }
    if not engine.keep(outcome):
        rows = Delivery.objects.using(using).filter(event_id=result_id, handler__in=HANDLERS)
        rows.update(result=outcome)
    attempts = row.attempts if row.status == Status.DONE else row.attempts + 1
    return row._replace(status=Status.DONE, attempts=attempts, result=outcome)


def first_row(event: TaskEnqueued, enqueued: dt.datetime) -> Row:
    """A task's row before its first attempt, as its claim knows it: nothing to read."""
    return Row({}, Status.PENDING, None, 0, "", "", enqueued, None, event.priority,
               event.queue_name, None)  # fmt: skip


def failed_attempt(using: str, result_id: uuid.UUID, error: BaseException) -> None:
    """Add a failed call's error to the task result's ``errors``."""
    kept = {
        "exception_class_path": f"{type(error).__module__}.{type(error).__qualname__}",
        "traceback": "".join(traceback.format_exception(error)),
    }
    rows = Delivery.objects.using(using).filter(event_id=result_id, handler__in=HANDLERS)
    with transaction.atomic(using):
        found = list(rows.order_by().select_for_update().values_list("result", flat=True))
        if not found:
            return
        result = dict(found[0] or {})
        result["errors"] = [*result.get("errors", []), kept]
        rows.update(result=result)


def status_of(row: Row, now: dt.datetime | None = None) -> TaskResultStatus:
    if row.status == Status.DONE:
        return TaskResultStatus.SUCCESSFUL
    if row.status in (Status.DEAD, Status.DISCARDED):
        return TaskResultStatus.FAILED
    if row.lease_until is not None and row.lease_until > (now or timezone.now()):
        return TaskResultStatus.RUNNING
    return TaskResultStatus.READY


def task_of(event: TaskEnqueued) -> Task[Any, Any]:
    """The task an event names, as it was enqueued (priority, queue, run_after, backend)."""
    task = import_string(event.task)
    if not isinstance(task, Task):
        raise SuspiciousOperation(f"{event.task} is not a task (result {event.message_id})")
    return task.using(
        priority=event.priority,
        queue_name=event.queue_name,
        run_after=event.run_after,
        backend=event.backend,
    )


def event_of(row: Row, result_id: uuid.UUID) -> TaskEnqueued:
    event: TaskEnqueued = from_dict(TaskEnqueued, row.payload, message_id=result_id)
    return event


def to_result(
    row: Row,
    using: str,
    event_id: uuid.UUID,
    *,
    event: TaskEnqueued | None = None,
    attempt: int | None = None,
) -> AnyResult:
    """The ``TaskResult`` of ``row`` (of ``event``, if given: else read from the row);
    ``attempt``: the number of the call under way, for the result a running task's
    context holds (RUNNING, started now)."""
    event = event or event_of(row, event_id)
    status = status_of(row)
    outcome = row.result or {}
    started = finished = last = None
    attempts = row.attempts
    if attempt is not None:
        status, started = TaskResultStatus.RUNNING, timezone.now()
        attempts, last = attempt, started
    elif status == TaskResultStatus.SUCCESSFUL and "started_at" in outcome:
        started = dt.datetime.fromisoformat(outcome["started_at"])
        finished = dt.datetime.fromisoformat(outcome["finished_at"])
        last = started
    elif status == TaskResultStatus.FAILED:
        started = finished = last = row.finished_at  # when its last call failed
    workers = [""] * max(attempts - 1, 0) + ([outcome.get("worker", "")] if attempts else [])
    if attempt is not None:
        workers[-1] = worker_id()
    result: AnyResult = TaskResult(
        task=task_of(event),
        id=result_id(using, event_id),
        status=status,
        enqueued_at=row.created_at,
        started_at=started,
        finished_at=finished,
        last_attempted_at=last,
        args=event.args,
        kwargs=event.kwargs,
        backend=event.backend,
        errors=errors_of(row, status),
        worker_ids=workers,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", outcome.get("value"))
    return result


def errors_of(row: Row, status: TaskResultStatus) -> list[TaskError]:
    """The error of each failed call, oldest first; for a row with none kept, the
    delivery's own: its last failed call's, or why it died unrun."""
    kept = (row.result or {}).get("errors")
    if kept:
        return [TaskError(**e) for e in kept]
    if row.traceback:
        return [TaskError(exception_class_path=class_path(row.last_error), traceback=row.traceback)]
    if status == TaskResultStatus.FAILED and row.last_error:
        return [TaskError(exception_class_path=BUS_ERROR, traceback=row.last_error)]
    return []


def class_path(error: str) -> str:
    """The exception class a delivery's ``last_error`` names (``module.Class: ...``)."""
    name = error.split(":", 1)[0]
    return name if _CLASS_PATH.fullmatch(name) else BUS_ERROR
