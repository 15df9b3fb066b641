"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from django.db import connections, transaction

from .. import sql
from ..delivery.reference import Reference


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries.

    On PostgreSQL it NOTIFYs them once the transaction commits (once per
    transaction, however many events it stored), so a waiting worker wakes at once.
    """

    def __init__(self) -> None:
        self._wakers: dict[str, Callable[[], None]] = {}

    def submit(self, refs: list[Reference]) -> None:
        if not refs:
            return
        using = refs[0].using
        waker = self._wakers.setdefault(using, partial(sql.notify, using))
        # A savepoint rolled back drops the callback with it: the next event registers again.
        if all(entry[1] is not waker for entry in connections[using].run_on_commit):
            transaction.on_commit(waker, using=using, robust=True)

    def retried(self, refs: list[Reference]) -> None:
        self.submit(refs)
