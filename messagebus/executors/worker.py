"""Leave deliveries to ``manage.py messagebus worker`` processes."""

from __future__ import annotations

from ..delivery.reference import Reference


class WorkerExecutor:
    """Nothing runs in the process that stores events: workers claim the due deliveries."""

    def submit(self, refs: list[Reference]) -> None:
        """Nothing to do: the deliveries are due, and a worker will claim them."""

    def retried(self, refs: list[Reference]) -> None:
        """Nothing to do: a worker will claim them."""
