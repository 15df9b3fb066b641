"""One delivery to an async handler, awaited on an AnyIO event loop.

An async handler runs on the loop, outside any transaction (Django's are
sync and bound to a thread), under a lease on its delivery, renewed while it
runs: no other runner takes it meanwhile. When it returns, its delivery is
marked done in a transaction of its own, shared with the other deliveries
that finished meanwhile (``Marks``). So the mark does *not* commit with
whatever the handler wrote: a process that dies between the two leaves the
delivery to run again once its lease runs out. Async handlers are
at-least-once, and should be idempotent; sync handlers keep their
exactly-once transaction.

Its bookkeeping runs in a thread (``db``), one call at a time, in Django's
thread for sync code.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TypeVar

import anyio
from asgiref.sync import sync_to_async
from django.db import DatabaseError, transaction

from ..core.dependencies import dependencies
from ..core.messages import current_message
from ..exceptions import HandlerTimeout
from ..handling import executor
from ..handling.message_bus import bus
from ..observe import logs, metrics, tracing
from ..outbox import slots, states
from ..wording import plural
from . import run as engine
from .run import Job

logger = logs.get_logger(__name__)
T = TypeVar("T")


class Held:
    """A claimed delivery as this runner holds it: its lease, renewed while it runs.

    Read and changed only by the bookkeeping functions, which ``db()`` runs one
    at a time in one thread, so a renewal never races a mark.
    """

    __slots__ = ("claim", "lease", "lost", "scope", "slot")

    def __init__(self, claim: states.Claim) -> None:
        self.claim = claim
        self.lease = claim.lease
        self.lost = False  # another runner has it: stop, record nothing
        self.scope = anyio.CancelScope()  # cancelled if the lease is lost while it runs
        self.slot: slots.Taken | None = None  # held while it runs, if its handler is capped

    def current(self) -> states.Claim:
        claim = self.claim
        return claim if claim.lease == self.lease else dataclasses.replace(claim, lease=self.lease)


async def call(job: Job) -> None:
    """One call of an async handler, cancelled if it runs past its timeout.

    Deliveries that the commands it awaits store (``bus.ahandle``) run after it,
    outside its time (``executor.here()``).
    """
    token, job_token = current_message.set(job.event), engine.current_job.set(job)
    try:
        started = time.perf_counter()
        kwargs = dependencies.kwargs(job.handler, None, bus) if job.handler.parameters else {}
        async with executor.here():
            timeout = job.policy.timeout
            if timeout is None:  # no scope to enter and leave
                await job.handler.func(job.event, **kwargs)
            else:
                scope = anyio.move_on_after(timeout)
                try:
                    with scope:
                        await job.handler.func(job.event, **kwargs)
                except anyio.get_cancelled_exc_class():
                    if not scope.cancel_called:
                        raise
                    # The timeout's, let through by code of the handler's: still a timeout.
                if scope.cancel_called:
                    raise HandlerTimeout(job.handler.name, timeout)
        engine.returned(job, time.perf_counter() - started)
    finally:
        engine.current_job.reset(job_token)
        current_message.reset(token)


async def run(job: Job, held: Held, marks: Marks) -> bool:
    """One call of an async handler's delivery, ``held`` under a lease.

    True if it completed (its done-mark handed to ``marks``); a failure is recorded
    as the policy judges it. Cancelled (a worker out of grace), it is handed back,
    due again at once, no run counted. Its lease lost (it ran past ``CLAIM_TIMEOUT``
    unrenewed), it stops, recording nothing. Its handler capped (``max_concurrency``),
    it takes a slot first, freed with its done-mark or failure; none free, it is handed
    back, not run.
    """
    try:
        with held.scope:
            if job.policy.max_concurrency is not None and not await db(_take, job, held):
                return False
            error = await _attempt(job)
            if error is None:
                marks.add(held)
                tracing.ended("done")
                return True
            await db(_failed, job, held, error)
            return False
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await db(_hand_back, held)
        logger.warning("Handed back %s, cancelled before it finished", job)
        raise
    finally:
        if held.lost:
            logger.warning("Stopped %s: its lease ran out and another runner has it", job)
    return False


async def _attempt(job: Job) -> Exception | None:
    """One call; the error it raised, if any (kept out of ``except`` blocks, so that
    the bookkeeping awaited after it is not chained to it)."""
    try:
        await call(job)
    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
        return exc
    return None


def _take(job: Job, held: Held) -> bool:
    """Take a concurrency slot for it, under the lease held now; none free, it is handed
    back (``engine.capped``)."""
    now = dataclasses.replace(job, claim=held.current())
    held.slot = engine.take_slot(now)
    if held.slot is None:
        engine.capped(now)
    return held.slot is not None


def _failed(job: Job, held: Held, error: Exception) -> None:
    """Record a failed call, under the lease held now, freeing its slot."""
    engine.failed(dataclasses.replace(job, claim=held.current()), error, slot=held.slot)


def _hand_back(held: Held) -> None:
    ref = held.claim.ref
    with transaction.atomic(using=ref.using):
        states.released(ref.using, [held.current()])
        if held.slot is not None:
            slots.free(held.slot)


def _finish(held: list[Held]) -> set[int]:
    ours = [h for h in held if not h.lost]
    freeing = [h.slot for h in ours if h.slot is not None]
    return states.finished([h.current() for h in ours], freeing)


def renew(held: list[Held]) -> None:
    for one in held:
        if not one.lost:
            renewed = states.renewed(one.current())
            if renewed is None:
                one.lost = True
            else:
                one.lease = renewed
                if one.slot is not None:
                    slots.renew(one.slot, renewed)


class Marks:
    """Done-marks of finished async deliveries, written by one task: each write takes
    every mark that came in while the last was being written (a group commit)."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[Held](math.inf)

    def add(self, held: Held) -> None:
        self._send.send_nowait(held)

    def close(self) -> None:
        """No more marks: ``write()`` returns once it has written the ones it has."""
        self._send.close()

    async def write(self) -> None:
        async with self._receive:
            async for first in self._receive:
                held = [first]
                while True:
                    try:
                        held.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    ours = await db(_finish, held)
                except DatabaseError:
                    logger.exception(
                        "Could not mark %s done: they run again when their lease runs out",
                        plural(len(held), "finished delivery", "finished deliveries"),
                    )
                    continue
                for done in (h for h in held if h.claim.id in ours):
                    metrics.ended(done.claim.ref.handler, "done")
                for lost in (h for h in held if h.claim.id not in ours):
                    logger.warning(
                        "%s finished after its lease ran out; another runner has it",
                        lost.claim.ref,
                    )


async def db(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` where Django runs sync code for async code: in the thread that
    waits in ``async_to_sync`` (the inline executor's), else in asgiref's one thread.
    Shielded: bookkeeping, once begun, is not cancelled half-way."""
    with anyio.CancelScope(shield=True):
        result = await sync_to_async(func, thread_sensitive=True)(*args)
    return result
