"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

from ..outbox import sql
from ..outbox.reference import Reference


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries.

    On PostgreSQL the statement that stores them also wakes the workers
    (``wakes_workers``: ``pg_notify`` in it): PostgreSQL sends the notification
    as the transaction commits, once per transaction however many events it
    stored, and not at all if it rolls back, so a waiting worker wakes at once,
    for no round trip of its own. Elsewhere workers poll.
    """

    wakes_workers = True

    def submit(self, refs: list[Reference]) -> None:
        """Nothing to do: the storing statement woke the workers."""

    def retried(self, refs: list[Reference]) -> None:
        if refs:
            sql.notify(refs[0].using)
