"""Django tasks (django.tasks' ``@task``) that the outbox's task backend runs in tests."""

import os
import time
from typing import Any

from messagebus.task_backend.compat import TaskContext
from tests.busapp.models import Entry

try:  # Django 6.0 and later
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task()
def noop(*args: Any, **kwargs: Any) -> None:
    return None


@task()
async def noop_async(*args: Any, **kwargs: Any) -> None:
    return None


@task()
def meaning_of_life() -> int:
    return 42


@task()
async def ameaning_of_life() -> int:
    return 42


@task()
def failing() -> None:
    raise ValueError("This task failed due to ValueError")


@task()
def complex_return_value() -> Any:
    return lambda: True  # neither JSON nor anything else a result can hold


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def fails_until(context: TaskContext, attempt: int) -> int:
    """Fails on every attempt before ``attempt``; returns the attempt it succeeded on."""
    if context.attempt < attempt:
        raise ConnectionError(f"attempt {context.attempt}")
    return context.attempt


@task()
def record(label: str, amount: int = 0) -> int:
    """Write an entry (its id: the order tasks ran in), pausing BUSAPP_TASK_SLEEP seconds."""
    entry = Entry.objects.create(account=label, amount=amount, note=f"pid {os.getpid()}")
    time.sleep(float(os.environ.get("BUSAPP_TASK_SLEEP", "0")))
    return entry.pk
