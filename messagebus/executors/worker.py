"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

import uuid

from ..outbox import sql
from ..outbox.reference import Reference
from . import committing


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries.

    On PostgreSQL the statement that stores them also NOTIFYs the workers
    (``wakes_workers``): PostgreSQL sends it as the transaction commits, once
    per transaction however many events it stored, and not at all if it rolls
    back, so a waiting worker wakes at once, for no round trip of its own.
    """

    wakes_workers = True

    def submit(self, refs: list[Reference]) -> None:
        """Nothing to do where the storing statement woke the workers; else (server-side
        binding) one NOTIFY as the transaction commits, however many events it stored."""
        if refs and not sql.wakes_in_store(refs[0].using):
            committing(refs[0].using, self._notify)

    def retried(self, refs: list[Reference]) -> None:
        if refs:
            sql.notify(refs[0].using)

    @staticmethod
    def _notify(using: str, events: set[uuid.UUID]) -> None:
        sql.notify(using)
