"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

from .. import sql
from ..delivery.reference import Reference


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries.

    On PostgreSQL it NOTIFYs them, so a waiting worker wakes as the transaction commits.
    """

    def submit(self, refs: list[Reference]) -> None:
        if refs:
            sql.notify(refs[0].using)

    def retried(self, refs: list[Reference]) -> None:
        self.submit(refs)
