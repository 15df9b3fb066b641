"""The loop behind ``manage.py messagebus worker``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress

import anyio
from anyio import from_thread, to_thread
from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, DatabaseError, close_old_connections, connections
from django.utils import timezone

from .. import conf, outbox
from ..delivery import breaker, concurrent
from ..delivery.run import policy_of
from ..external.failures import error_number, sqlstate
from ..observe import logs, metrics
from ..outbox import states
from ..wording import plural
from .process import Process
from .ticker import Ticker
from .wakeup import Wakeup

logger = logs.get_logger(__name__)

# SQLSTATE classes of errors that waiting will not fix: no such database (3D),
# refused credentials (28), no such table: not migrated (42P01); MySQL's and MariaDB's
# error numbers of the same: 1049, 1045, 1146.
LASTING = ("3D", "28", "42P01")
LASTING_NUMBERS = (1049, 1045, 1146)


def lasting(exc: DatabaseError) -> bool:
    """Whether ``exc`` is a misconfiguration rather than an outage."""
    if sqlstate(exc).startswith(LASTING) or error_number(exc) in LASTING_NUMBERS:
        return True
    text = str(exc)
    return ("database" in text and "does not exist" in text) or "no such table" in text


class Worker(Process):
    """Claim due deliveries in batches and run them until stopped.

    ``once``: stop when nothing is due. ``limit``: stop after that many
    deliveries. ``queues``: claim only the deliveries of these (tasks' ``queue_name``;
    every event's deliveries are in "default"). ``concurrency``: run up to that many
    at once (async handlers on an event loop, sync ones in threads, each in a
    transaction of its own), claiming more as they finish; at 1, a batch runs in one
    transaction.

    ``stop()`` (SIGTERM, SIGINT) claims no more. At 1, the running delivery
    finishes, its batch commits and the other claimed ones are handed back.
    Above 1, running deliveries have ``grace`` seconds to finish; then the
    async ones are cancelled and handed back. A sync one cannot be cancelled:
    ``abandoned`` counts them, and ``messagebus worker`` exits without them,
    so their transactions roll back and they run again once their leases run out.
    """

    role = "worker"
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
        concurrency: int = 1,
        grace: float | None = None,
        queues: Sequence[str] = (),
    ) -> None:
        self.batch = batch
        self.queues = tuple(queues)  # none: every queue
        self.concurrency = concurrency
        self.grace = conf.settings.SHUTDOWN_GRACE if grace is None else grace
        self.once = once
        self.limit = limit
        self.poll_interval = poll_interval
        super().__init__(using)
        self.processed = 0
        self._expiry_checked = float("-inf")  # due at the first batch
        self._wakeup = Wakeup(using)
        self._ticker = Ticker(using, self.id)
        self.abandoned = 0  # sync deliveries still running in threads when it stopped
        self._pool: concurrent.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def stop(self, *args: object) -> None:
        """Finish the running deliveries, then stop; asked twice, stop at once."""
        if self.stopping.is_set():
            raise SystemExit(f"{self.name} stopped at once: its running batch rolls back")
        if self._pool is None:
            logger.info("%s stopping after the current delivery", self.name)
        else:
            logger.info("%s stopping: running deliveries have %gs to finish", self.name, self.grace)
        self.stopping.set()
        loop, pool = self._loop, self._pool
        if loop is not None and pool is not None:  # waiting for a slot, or for the last ones
            with suppress(RuntimeError):  # the loop closed meanwhile: nothing waits
                loop.call_soon_threadsafe(pool.wake)

    def run(self) -> int:
        """Run until stopped; the number of deliveries processed."""
        logger.info(
            "%s started on database %r (batch %d, concurrency %d)",
            self.name, self.using, self._batch(), self.concurrency,
        )  # fmt: skip
        try:
            if self.concurrency == 1:
                self._claiming()
            else:
                anyio.run(self._serve)
        finally:
            self._wakeup.close()
            self.stopped()
        logger.info(
            "%s stopped after %s", self.name, plural(self.processed, "delivery", "deliveries")
        )
        return self.processed

    async def _serve(self) -> None:
        """Claim in a thread while the pool runs the deliveries on this loop."""
        self._loop = asyncio.get_running_loop()
        async with concurrent.Pool(self.concurrency) as pool:
            self._pool = pool
            try:
                await to_thread.run_sync(self._claiming_here)
            finally:
                await pool.stop(self.grace, self.stopping.is_set)
                self._pool = self._loop = None
        await sync_to_async(connections.close_all, thread_sensitive=True)()  # the pool's
        self.processed = pool.ended
        self.abandoned = pool.abandoned

    def _claiming_here(self) -> None:
        """``_claiming()`` in a thread of its own, which closes its connections after."""
        try:
            self._claiming()
        finally:
            connections.close_all()

    def _claiming(self) -> None:
        """Claim and run batches until stopped, waiting out outages."""
        unreached = ""
        outages = tuple(self.outages)
        while not self.stopping.is_set() and not self._reached_limit():
            close_old_connections()
            try:
                self._ticker.run()
                claimed = self.run_batch()
            except outages as exc:
                if self.once or (isinstance(exc, DatabaseError) and lasting(exc)):
                    raise
                unreached = next(w for kind, w in self.outages.items() if isinstance(exc, kind))
                self.wait_out(exc, unreached)
                continue
            self.reached(unreached)
            if not claimed:
                if self.once:  # done when nothing is due and nothing runs that could add any
                    if self._pool is None or not from_thread.run(self._pool.wait_running):
                        break
                    continue
                self._wakeup.wait(self._idle_wait(), self.stopping)

    def run_batch(self) -> int:
        """Claim and run one batch; the number of deliveries it claimed."""
        self.beat(self.processed)
        self._end_lost_runs()
        breaker.tick(self.using)
        limit = self._batch()
        if self.limit is not None:
            limit = min(limit, self.limit - self.processed)
        if self._pool is not None:  # as many as there are free slots, once one is
            limit = min(limit, from_thread.run(self._pool.wait_free, self.stopping.is_set))
            if not limit:
                return 0
            from_thread.run(concurrent.refresh)
        # One by one (no pool), an ordered key's claims may follow its first in one batch.
        claims = states.claim(self.using, limit, queues=self.queues, follow=self._pool is None)
        if self._pool is not None:
            from_thread.run_sync(self._pool.start, claims)
            self.processed += len(claims)
            return len(claims)
        self.processed += concurrent.run_claimed(claims, stopping=self.stopping.is_set)
        return len(claims)

    def _end_lost_runs(self) -> None:
        """Every few seconds: deliveries whose runner's lease ran out are due again (or dead)."""
        if time.monotonic() - self._expiry_checked < min(conf.settings.CLAIM_TIMEOUT, 10.0):
            return
        self._expiry_checked = time.monotonic()
        for row, reason in states.lease_expired(self.using, policy_of):
            metrics.ended(row.handler, "dead")
            about = {
                "message_type": row.event.type, "message_id": str(row.event_id),
                "correlation_id": str(row.event.correlation_id), "handler": row.handler,
            }  # fmt: skip
            logger.error(
                "Dead: delivery %s of %s %s (correlation %s) to %s: %s",
                row.pk, row.event.type, row.event_id, row.event.correlation_id, row.handler, reason,
                extra=about,
            )  # fmt: skip

    def _reached_limit(self) -> bool:
        return self.limit is not None and self.processed >= self.limit

    def _batch(self) -> int:
        return self.batch or conf.settings.BATCH_SIZE

    def _idle_wait(self) -> float:
        """How long to wait for a notification when nothing is due: the poll interval, or
        less, until the next delivery or periodic tick falls due."""
        wait = self._interval()
        try:
            due = outbox.next_due(self.using)
        except DatabaseError:  # the next batch meets the outage, and waits it out
            due = None
        now = timezone.now()
        for soonest in (due, self._ticker.next_at()):
            if soonest is not None:
                wait = min(wait, max(0.0, (soonest - now).total_seconds()))
        return wait

    def _interval(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return conf.settings.WORKER_POLL_INTERVAL
