"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

import uuid

from ..outbox import sql
from ..outbox.reference import Reference
from . import committing


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries.

    On PostgreSQL it NOTIFYs them once the transaction commits (once per
    transaction, however many events it stored), so a waiting worker wakes at once.
    """

    def submit(self, refs: list[Reference]) -> None:
        if refs:
            committing(refs[0].using, self._notify)

    def retried(self, refs: list[Reference]) -> None:
        if refs:
            sql.notify(refs[0].using)

    @staticmethod
    def _notify(using: str, events: set[uuid.UUID]) -> None:
        sql.notify(using)
