"""Django's task framework: ``django.tasks`` from Django 6.0, else the ``django-tasks``
backport (the same names), whichever this Django has."""

from __future__ import annotations

from typing import Any, TypeAlias

import django

# Django 6.0 and later have django.tasks. mypy reads one branch, as told: `make lint`
# (Django 5.2's stubs) says --always-false BUILTIN_TASKS, nox's typecheck --always-true.
BUILTIN_TASKS = django.VERSION >= (6, 0)

if not BUILTIN_TASKS:
    from django_tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    AnyResult: TypeAlias = "TaskResult[Any]"  # the backport's is generic in its return value
else:  # pragma: no cover  (Django 6.0 and later)
    from django.tasks import DEFAULT_TASK_QUEUE_NAME, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json

    AnyResult: TypeAlias = "TaskResult[Any, Any]"  # Django's, in its parameters and return value

__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "AnyResult",
    "BaseTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task_enqueued",
    "task_finished",
    "task_started",
]
