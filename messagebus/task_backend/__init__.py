"""Django's task framework on the outbox: ``TASKS = {"default": {"BACKEND":
"messagebus.task_backend.OutboxBackend"}}`` (``django.tasks`` from Django 6.0; on
Django 5.2, the ``django-tasks`` backport)."""

from .backend import OutboxBackend

__all__ = ["OutboxBackend"]
