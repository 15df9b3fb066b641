"""The Celery tasks of the ``celery`` executor, found by ``app.autodiscover_tasks()``.

``messagebus.run_delivery`` runs one delivery from its reference, under the
lease the sender took; ``messagebus.relay`` is one pass of the relay, for
projects that run it from Celery beat rather than as a process of its own.
"""

from __future__ import annotations

from celery import shared_task

from .executors.celery import run_delivery
from .processes.relay import Relay

__all__ = ["relay", "run_delivery"]


@shared_task(name="messagebus.relay", ignore_result=True)
def relay(database: str = "default") -> int:
    """One pass of ``messagebus relay``: send every due delivery that no task carries."""
    return Relay(once=True, using=database).run()
