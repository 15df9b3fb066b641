"""Run deliveries in this thread after commit, as the book's message bus does."""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial

from asgiref.sync import sync_to_async
from django.db import DatabaseError, transaction

from .. import conf
from ..delivery import concurrent
from ..delivery.run import awaited, policy_of
from ..observe import logs
from ..outbox import states
from ..outbox.reference import Reference
from ..wording import plural
from . import later

logger = logs.get_logger(__name__)
SWEEP_SIZE = 10  # deliveries a sweep takes on at most

# A delivery to run: just stored (no claim), or swept (claimed).
Entry = tuple[Reference, states.Claim | None]


class InlineExecutor:
    """Run deliveries right after the commit that stored them, in the same thread.

    A command's events are delivered one event at a time, in the order
    recorded, the async handlers of an event all at once on an event loop;
    the events their handlers record queue behind the deliveries being run,
    so a chain of events runs without recursion. Inside ``bus.ahandle()``
    they are awaited on the caller's loop instead (``arun``). Every
    SWEEP_INTERVAL seconds at most, it also ends lost runs and takes on a few
    deliveries that are that long overdue (calls due again after a failure,
    leftovers of a process that died). Each delivery is one call: a failure is
    due again later, never retried while the request waits.
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
        deferred = later()
        if deferred is not None:  # bus.ahandle() awaits them
            deferred.extend(refs)
            return
        queue: deque[Entry] | None = getattr(self._local, "queue", None)
        if queue is not None:
            queue.extend((ref, None) for ref in refs)
            return
        self._local.queue = queue = deque((ref, None) for ref in refs)
        try:
            while queue:
                entries = _next(queue)
                try:
                    _run(entries)
                except DatabaseError:
                    logger.exception("Could not run %s; it stays pending", entries[0][0])
                if not queue:
                    queue.extend(self._overdue(entries[0][0].using))
        finally:
            self._local.queue = None

    async def arun(self, refs: list[Reference]) -> None:
        """Run these deliveries on this event loop (and those their handlers cause, which
        come back into ``refs``): sync handlers in Django's thread for sync code."""
        queue: deque[Entry] = deque()
        while refs or queue:
            queue.extend((ref, None) for ref in refs)
            refs.clear()
            entries = _next(queue)
            try:
                if awaited(entries[0][0]):
                    claims = await sync_to_async(_claims)(entries)
                    await concurrent.adeliver(claims)
                else:
                    await sync_to_async(_run)(entries)
            except DatabaseError:
                logger.exception("Could not run %s; it stays pending", entries[0][0])
            if not queue and not refs:
                queue.extend(await sync_to_async(self._overdue)(entries[0][0].using))

    def _overdue(self, using: str) -> list[Entry]:
        interval = conf.settings.SWEEP_INTERVAL
        if not interval or time.monotonic() - self._last_sweep < interval:
            return []
        self._last_sweep = time.monotonic()
        states.lease_expired(using, policy_of)
        claims = states.claim(using, SWEEP_SIZE, overdue=interval)
        if claims:
            logger.info(
                "Sweeping %s", plural(len(claims), "overdue delivery", "overdue deliveries")
            )
        return [(claim.ref, claim) for claim in claims]


def _next(queue: deque[Entry]) -> list[Entry]:
    """The next delivery, or the next deliveries of one event to async handlers."""
    entries = [queue.popleft()]
    ref, claim = entries[0]
    if awaited(ref):
        while queue and queue[0][0].event_id == ref.event_id and awaited(queue[0][0]):
            if (queue[0][1] is None) != (claim is None):
                break
            entries.append(queue.popleft())
    return entries


def _claims(entries: list[Entry]) -> list[states.Claim]:
    claimed = [claim for _, claim in entries if claim is not None]
    return claimed or states.taken([ref for ref, _ in entries])


def _run(entries: list[Entry]) -> None:
    ref, claim = entries[0]
    if len(entries) > 1:
        concurrent.run_now(_claims(entries))
    else:
        concurrent.run_one(claim or states.Claim.fresh(ref))
