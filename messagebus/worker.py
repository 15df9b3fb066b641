"""The loop behind ``manage.py messagebus worker``."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections

from . import conf
from .delivery import runner, states
from .delivery.policy import plural

logger = logging.getLogger(__name__)


class Worker:
    """Claim due deliveries in batches and run them until stopped.

    ``once``: stop when nothing is due. ``limit``: stop after that many
    deliveries. ``stop()`` (SIGTERM, SIGINT) lets the running delivery finish,
    commits its batch and hands the other claimed ones back.
    """

    def __init__(
        self,
        *,
        batch: int | None = None,
        once: bool = False,
        limit: int | None = None,
        poll_interval: float | None = None,
        using: str = DEFAULT_DB_ALIAS,
    ) -> None:
        self.batch = batch
        self.once = once
        self.limit = limit
        self.poll_interval = poll_interval
        self.using = using
        self.processed = 0
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self._stopping = threading.Event()
        self._expiry_checked = 0.0

    def stop(self, *args: object) -> None:
        """Finish the running delivery, then stop; asked twice, stop at once."""
        if self._stopping.is_set():
            raise SystemExit(f"Worker {self.id} stopped at once: its running batch rolls back")
        logger.info("Worker %s stopping after the current delivery", self.id)
        self._stopping.set()

    def run(self) -> int:
        """Run until stopped; the number of deliveries processed."""
        logger.info(
            "Worker %s started on database %r (batch %d)", self.id, self.using, self._batch()
        )
        while not self._stopping.is_set() and not self._reached_limit():
            close_old_connections()
            try:
                claimed = self.run_batch()
            except DatabaseError as exc:
                if self.once:
                    raise
                logger.error(
                    "Worker %s cannot reach the outbox; trying again shortly: %s", self.id, exc
                )
                claimed = 0
            if not claimed:
                if self.once:
                    break
                self._stopping.wait(self._interval())
        logger.info(
            "Worker %s stopped after %s", self.id, plural(self.processed, "delivery", "deliveries")
        )
        return self.processed

    def run_batch(self) -> int:
        """Claim and run one batch; the number of deliveries it claimed."""
        self._end_lost_runs()
        limit = self._batch()
        if self.limit is not None:
            limit = min(limit, self.limit - self.processed)
        claims = states.claim(self.using, limit)
        self.processed += runner.run_batch(
            claims, seconds=conf.settings.BATCH_SECONDS, stopping=self._stopping.is_set
        )
        return len(claims)

    def _end_lost_runs(self) -> None:
        """Every few seconds: deliveries whose runner's lease ran out are due again (or dead)."""
        if time.monotonic() - self._expiry_checked < min(conf.settings.CLAIM_TIMEOUT, 10.0):
            return
        self._expiry_checked = time.monotonic()
        for row, reason in states.lease_expired(self.using, runner.policy_of):
            logger.error(
                "Dead: delivery %s of %s %s (correlation %s) to %s: %s",
                row.pk, row.event.type, row.event_id, row.event.correlation_id, row.handler, reason,
            )  # fmt: skip

    def _reached_limit(self) -> bool:
        return self.limit is not None and self.processed >= self.limit

    def _batch(self) -> int:
        return self.batch or conf.settings.BATCH_SIZE

    def _interval(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return conf.settings.WORKER_POLL_INTERVAL
