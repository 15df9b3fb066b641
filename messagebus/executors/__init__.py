"""Executors decide where and when deliveries run, chosen by MESSAGEBUS["EXECUTOR"].

The unit of work hands each executor the references of the deliveries it
stored, inside their transaction (``submit``); the executor decides what to
do about them: ``inline`` runs them in this thread after commit, ``worker``
leaves them to ``manage.py messagebus worker``. Name another by the dotted
path of a class with the same two methods (and ``arun``, to run deliveries
on an event loop, if it runs any in the caller's thread).
"""

from __future__ import annotations

from ..handling.executor import Executor, committing, get, here, later, reset, use, wakes
from ..models import Delivery
from ..outbox import states
from ..outbox.reference import Reference

__all__ = ["Executor", "committing", "get", "here", "later", "reset", "retry", "use", "wakes"]


def retry(using: str, pks: list[int]) -> int:
    """Make these dead or waiting deliveries due now, with a fresh run budget, and hand
    them to the executor (the inline one runs them at once). Returns how many."""
    deliveries = Delivery.objects.using(using).filter(pk__in=pks)
    count = states.requeued(deliveries)
    refs = [
        Reference(using, event, handler)
        for event, handler in deliveries.pending().values_list("event_id", "handler")
    ]
    get().retried(refs)
    return count
