"""The loop behind ``manage.py messagebus worker``."""

from __future__ import annotations

import logging
import threading
from contextlib import suppress

from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections

from . import conf, executors, outbox

logger = logging.getLogger(__name__)


class Worker:
    """Claim due deliveries and run them until stopped.

    ``once``: stop when nothing is due. ``max_deliveries``: stop after that
    many. ``stop()`` (SIGTERM, SIGINT) lets the running delivery finish and
    hands the other claimed ones back.
    """

    def __init__(
        self,
        *,
        batch: int = 10,
        once: bool = False,
        max_deliveries: int | None = None,
        poll_interval: float | None = None,
        using: str = DEFAULT_DB_ALIAS,
    ) -> None:
        self.batch = batch
        self.once = once
        self.max_deliveries = max_deliveries
        self.poll_interval = poll_interval
        self.using = using
        self.processed = 0
        self._stopping = threading.Event()

    def stop(self, *args: object) -> None:
        """Finish the running delivery, then stop; asked twice, stop at once."""
        if self._stopping.is_set():
            raise SystemExit("Worker stopped at once: its running delivery rolls back")
        logger.info("Worker stopping after the current delivery")
        self._stopping.set()

    def run(self) -> int:
        """Run until stopped; the number of deliveries processed."""
        logger.info("Worker started on database %r (batch %d)", self.using, self.batch)
        while not self._stopping.is_set() and not self._reached_max():
            close_old_connections()
            try:
                claimed = self.run_batch()
            except DatabaseError:
                if self.once:
                    raise
                logger.exception("Worker cannot reach the outbox; trying again shortly")
                claimed = 0
            if not claimed:
                if self.once:
                    break
                self._stopping.wait(self._interval())
        logger.info("Worker stopped after %d deliveries", self.processed)
        return self.processed

    def run_batch(self) -> int:
        """Claim and run one batch; the number of deliveries it claimed."""
        limit = self.batch
        if self.max_deliveries is not None:
            limit = min(limit, self.max_deliveries - self.processed)
        rows = outbox.claim(self.using, limit, conf.settings.CLAIM_TIMEOUT)
        for index, row in enumerate(rows):
            if self._stopping.is_set():
                outbox.release(self.using, rows[index:])
                break
            try:
                job = outbox.job_for(row, counted=True)
                if job is not None:
                    executors.deliver(job)
            except DatabaseError:
                with suppress(DatabaseError):
                    outbox.release(self.using, rows[index + 1 :])
                raise
            self.processed += 1
        return len(rows)

    def _reached_max(self) -> bool:
        return self.max_deliveries is not None and self.processed >= self.max_deliveries

    def _interval(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return conf.settings.WORKER_POLL_INTERVAL
