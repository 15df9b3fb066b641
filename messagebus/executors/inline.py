"""Run deliveries in this thread after commit, as the book's message bus does."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from functools import partial

from django.db import DatabaseError, transaction

from .. import conf
from ..delivery import runner, states
from ..delivery.reference import Reference
from ..wording import plural

logger = logging.getLogger(__name__)
SWEEP_SIZE = 10  # deliveries a sweep takes on at most


class InlineExecutor:
    """Run deliveries right after the commit that stored them, in the same thread.

    A command's events are delivered one event at a time, in the order
    recorded; the events their handlers record queue behind the deliveries
    being run, so a chain of events runs without recursion. Every
    SWEEP_INTERVAL seconds at most, it also ends lost runs and takes on a few
    deliveries that are that long overdue (runs rescheduled after a failure,
    leftovers of a process that died), with one call each.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._last_sweep = time.monotonic()

    def submit(self, refs: list[Reference]) -> None:
        if refs:
            transaction.on_commit(partial(self.run, refs), using=refs[0].using, robust=True)

    def retried(self, refs: list[Reference]) -> None:
        self.run(refs)

    def run(self, refs: list[Reference]) -> None:
        queue: deque[tuple[Reference, states.Claim | None]] | None = getattr(
            self._local, "queue", None
        )
        if queue is not None:
            queue.extend((ref, None) for ref in refs)
            return
        self._local.queue = queue = deque((ref, None) for ref in refs)
        try:
            while queue:
                ref, claim = queue.popleft()
                try:
                    if claim is None:
                        runner.run(ref)
                    else:  # swept: one call, in someone's request
                        runner.run(ref, lease=claim.lease, calls=1, runs=claim.runs)
                except DatabaseError:
                    logger.exception("Could not run %s; it stays pending", ref)
                if not queue:
                    queue.extend((claim.ref, claim) for claim in self._overdue(ref.using))
        finally:
            self._local.queue = None

    def _overdue(self, using: str) -> list[states.Claim]:
        interval = conf.settings.SWEEP_INTERVAL
        if not interval or time.monotonic() - self._last_sweep < interval:
            return []
        self._last_sweep = time.monotonic()
        states.lease_expired(using, runner.policy_of)
        claims = states.claim(using, SWEEP_SIZE, overdue=interval)
        if claims:
            logger.info(
                "Sweeping %s", plural(len(claims), "overdue delivery", "overdue deliveries")
            )
        return claims
