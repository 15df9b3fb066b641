"""The test settings plus django-tasks-db and the ImmediateBackend, for bench/bench_tasks.py."""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks_db"]  # noqa: F405
TASKS = {
    "default": {"BACKEND": "messagebus.task_backend.OutboxBackend"},
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "immediate": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"},
}
MESSAGEBUS = {**MESSAGEBUS, "EXECUTOR": "worker"}  # noqa: F405  (enqueue only; workers run)
