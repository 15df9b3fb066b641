"""The loop behind ``manage.py messagebus worker``."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import suppress

from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections
from django.utils import timezone

from . import conf
from .delivery import runner, states
from .models import WorkerBeat
from .wakeup import Wakeup
from .wording import first_line, plural

logger = logging.getLogger(__name__)
BACKOFF, BACKOFF_MAX = 1.0, 30.0  # seconds between tries to reach a database or broker
BEAT = 5.0  # seconds between a worker's heartbeats

# SQLSTATE classes of errors that waiting will not fix: no such database (3D),
# refused credentials (28), no such table: not migrated (42P01).
LASTING = ("3D", "28", "42P01")


def backoff(failures: int) -> float:
    """Seconds to wait after this many failures in a row: doubling, capped."""
    return min(BACKOFF * 2.0 ** (failures - 1), BACKOFF_MAX)


def lasting(exc: DatabaseError) -> bool:
    """Whether ``exc`` is a misconfiguration rather than an outage."""
    cause = exc.__cause__
    sqlstate = str(getattr(cause, "sqlstate", None) or "")
    if sqlstate.startswith(LASTING):
        return True
    text = str(exc)
    return ("database" in text and "does not exist" in text) or "no such table" in text


class Worker:
    """Claim due deliveries in batches and run them until stopped.

    ``once``: stop when nothing is due. ``limit``: stop after that many
    deliveries. ``stop()`` (SIGTERM, SIGINT) lets the running delivery finish,
    commits its batch and hands the other claimed ones back.
    """

    role = "Worker"
    # What it waits out, backing off: each with what could not be reached.
    outages: dict[type[Exception], str] = {DatabaseError: "the outbox"}

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
        if self.role != Worker.role:
            self.id = f"{self.role.lower()}:{self.id}"
        self._stopping = threading.Event()
        self._expiry_checked = self._beaten = float("-inf")  # both due at the first batch
        self._wakeup = Wakeup(using)

    def stop(self, *args: object) -> None:
        """Finish the running delivery, then stop; asked twice, stop at once."""
        if self._stopping.is_set():
            raise SystemExit(f"{self.role} {self.id} stopped at once: its running batch rolls back")
        logger.info("%s %s stopping after the current delivery", self.role, self.id)
        self._stopping.set()

    def run(self) -> int:
        """Run until stopped; the number of deliveries processed."""
        logger.info(
            "%s %s started on database %r (batch %d)",
            self.role, self.id, self.using, self._batch(),
        )  # fmt: skip
        failures, unreached = 0, ""
        outages = tuple(self.outages)
        while not self._stopping.is_set() and not self._reached_limit():
            close_old_connections()
            try:
                claimed = self.run_batch()
            except outages as exc:
                if self.once or (isinstance(exc, DatabaseError) and lasting(exc)):
                    raise
                failures += 1
                delay = backoff(failures)
                unreached = next(w for kind, w in self.outages.items() if isinstance(exc, kind))
                logger.error(
                    "%s %s cannot reach %s (failure %d, next try in %.0fs): %s",
                    self.role, self.id, unreached, failures, delay, first_line(exc),
                    exc_info=failures == 1,  # the traceback once, not on every try
                )  # fmt: skip
                self._stopping.wait(delay)
                continue
            if failures:
                logger.info("%s %s reached %s again", self.role, self.id, unreached)
                failures = 0
            if not claimed:
                if self.once:
                    break
                self._wakeup.wait(self._interval(), self._stopping)
        self._wakeup.close()
        with suppress(DatabaseError):  # stopped: no longer one of the workers seen
            WorkerBeat.objects.using(self.using).filter(id=self.id).delete()
        logger.info(
            "%s %s stopped after %s",
            self.role, self.id, plural(self.processed, "delivery", "deliveries"),
        )  # fmt: skip
        return self.processed

    def run_batch(self) -> int:
        """Claim and run one batch; the number of deliveries it claimed."""
        self._beat()
        self._end_lost_runs()
        limit = self._batch()
        if self.limit is not None:
            limit = min(limit, self.limit - self.processed)
        claims = states.claim(self.using, limit)
        self.processed += runner.run_batch(
            claims, seconds=conf.settings.BATCH_SECONDS, stopping=self._stopping.is_set
        )
        return len(claims)

    def _beat(self) -> None:
        """Every few seconds: say this worker is alive, for `messagebus status`."""
        now = time.monotonic()
        if now - self._beaten < BEAT:
            return
        self._beaten = now
        alive = {"database": self.using, "seen_at": timezone.now(), "processed": self.processed}
        WorkerBeat.objects.using(self.using).update_or_create(id=self.id, defaults=alive)

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
