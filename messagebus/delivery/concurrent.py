"""Many deliveries at once on an AnyIO event loop, and the way in from sync code.

A ``Pool`` runs up to ``concurrency`` deliveries at once: async handlers as
tasks of one task group (``awaiting``), sync ones in a bounded pool of
threads, each in its own unit of work. Every delivery keeps its own
bookkeeping: a failure, a timeout or a retry of one never touches the others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from types import TracebackType

import anyio
from anyio import to_thread
from asgiref.sync import async_to_sync, sync_to_async
from django.db import DatabaseError, close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from .. import conf
from ..observe import logs, metrics
from ..outbox import states
from ..wording import plural
from . import breaker, bulk
from . import run as engine
from .awaiting import Held, Marks, db, renew, run
from .run import Job

logger = logs.get_logger(__name__)


class Pool:
    """Up to ``concurrency`` deliveries at once on this event loop.

    ``async with Pool(n) as pool: pool.start(claims)``; leaving the block waits
    for them all. While they wait or run, the leases of the async ones are
    renewed every third of ``CLAIM_TIMEOUT`` (a sync one holds its row locked).
    ``stop(grace, stopping)`` waits until ``stopping()``, then up to ``grace``
    seconds, then cancels the async ones still running (handed back); a sync
    one cannot be cancelled: it is left to finish in its thread, or to roll
    back with the process (``abandoned`` counts them).
    """

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        # Started; whose run ended (completed or not, not cancelled); completed.
        self.started = self.ended = self.completed = 0
        self.abandoned = 0
        self.marks = Marks()
        self._held: dict[int, Held] = {}  # async deliveries waiting or running
        self._running: set[int] = set()
        self._threads = anyio.CapacityLimiter(concurrency)
        self._used: set[BaseDatabaseWrapper] = set()  # by sync deliveries' threads
        self._changed = anyio.Event()
        self._group = anyio.create_task_group()
        self._writer = anyio.create_task_group()
        self._keeper = anyio.CancelScope()

    async def __aenter__(self) -> Pool:
        await self._writer.__aenter__()
        self._writer.start_soon(self.marks.write)
        self._writer.start_soon(self._keep_leases)
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._group.__aexit__(kind, error, traceback)
        finally:
            self.marks.close()  # the writer ends once it has written them
            self._keeper.cancel()
            await self._writer.__aexit__(None, None, None)
            if self._used and not self.abandoned:  # else in use: they close with the process
                await to_thread.run_sync(_close, self._used)

    @property
    def free(self) -> int:
        return self.concurrency - len(self._running)

    async def wait_free(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Wait until a slot is free, or ``stopping()`` and ``wake()``; how many are."""
        while not self.free and not stopping():
            await self._changed.wait()
        return self.free

    async def wait_running(self) -> bool:
        """Wait for a running delivery to end (or ``wake()``); False if none was running."""
        if not self._running:
            return False
        await self._changed.wait()
        return True

    def wake(self) -> None:
        """Wake those waiting for a change (a delivery ended, or the worker stops)."""
        self._changed.set()
        self._changed = anyio.Event()

    def hold(self, claims: Sequence[states.Claim]) -> list[Held]:
        """Keep the leases of claims waiting their turn."""
        held = [Held(claim) for claim in claims]
        self._held.update((h.claim.id, h) for h in held)
        return held

    def start(self, claims: Sequence[states.Claim]) -> None:
        """Start these claimed deliveries (no more than ``free``)."""
        for held in self.hold(claims):
            self._running.add(held.claim.id)
            self._group.start_soon(self._deliver, held)
        self.started += len(claims)

    async def run_here(self, held: Held) -> None:
        """Run one held delivery in the calling task."""
        self._running.add(held.claim.id)
        self.started += 1
        await self._deliver(held)

    async def stop(self, grace: float, stopping: Callable[[], bool] = lambda: True) -> None:
        """Wait for the running deliveries; once ``stopping()``, for ``grace`` seconds more
        at most, then cancel the rest. ``wake()`` when ``stopping()`` turns true."""
        while self._running and not stopping():
            await self._changed.wait()
        with anyio.move_on_after(grace):
            while self._running:
                await self._changed.wait()
        if self._running:
            logger.warning(
                "Grace period of %gs over: cancelling %s",
                grace,
                plural(len(self._running), "running delivery", "running deliveries"),
            )
            self._group.cancel_scope.cancel()

    async def _keep_leases(self) -> None:
        every = conf.settings.CLAIM_TIMEOUT / 3
        with self._keeper:
            while True:
                await anyio.sleep(every)
                held = list(self._held.values())
                if held:
                    await db(renew, held)
                for lost in (h for h in held if h.lost):
                    lost.scope.cancel()

    async def _deliver(self, held: Held) -> None:
        claim = held.claim
        try:
            task = None if held.lost else await _job(held)
            if task is None:
                self.ended += 1
            elif task.handler.is_async:
                metrics.claimed(claim, timezone.now())  # held: its to run
                span = task.span()
                with logs.handling(task.event, task.handler.name), span:
                    self.completed += await run(task, held, self.marks)
                self.ended += 1
            else:
                del self._held[claim.id]  # its row lock keeps it
                try:
                    self.completed += await to_thread.run_sync(
                        _run_sync, task, self._used,
                        limiter=self._threads, abandon_on_cancel=True,
                    )  # fmt: skip
                except anyio.get_cancelled_exc_class():
                    self.abandoned += 1
                    logger.warning(
                        "Left %s running in its thread: it commits if it finishes, "
                        "else it rolls back with this process and runs again later",
                        task,
                    )
                    raise
                self.ended += 1
        except DatabaseError:
            logger.exception("Could not run %s; it runs again when its lease runs out", claim.ref)
        finally:
            self._held.pop(claim.id, None)
            self._running.discard(claim.id)
            self.wake()


async def _job(held: Held) -> Job | None:
    """The claim's job: examined here if it carries its event, else read in a thread."""
    claim = held.current()
    if claim.ref.envelope is not None:
        job = engine.examine(claim)
        if isinstance(job, engine.Job):
            return job
    return await db(engine.resolve, claim)


def _run_sync(job: Job, used: set[BaseDatabaseWrapper]) -> bool:
    close_old_connections()  # this thread's connection may have broken or aged
    try:
        return engine.call(job)
    finally:
        used.add(connections[job.ref.using])


async def refresh() -> None:
    """Drop ``db()``'s connections that broke or aged (a long-lived worker, between batches)."""
    await sync_to_async(close_old_connections, thread_sensitive=True)()


def _close(used: set[BaseDatabaseWrapper]) -> None:
    """Close the connections the pool's idle threads opened (they outlive it)."""
    for connection in used:
        connection.inc_thread_sharing()
        try:
            connection.close()
        finally:
            connection.dec_thread_sharing()


async def adeliver(
    claims: Sequence[states.Claim],
    *,
    concurrency: int | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Pool:
    """Run claimed deliveries, ``concurrency`` at a time (default: all at once).

    Once ``stopping()`` is true, those not started are handed back.
    """
    waiting = list(claims)
    held: list[Held] = []
    async with Pool(concurrency or len(waiting) or 1) as pool:
        if pool.concurrency == 1:  # one after another, in this task: none of a task's cost
            held, waiting = pool.hold(waiting), []
            while held and not stopping():
                await pool.run_here(held.pop(0))
        while waiting and not stopping():
            free = await pool.wait_free()
            pool.start(waiting[:free])
            del waiting[:free]
    waiting += [h.current() for h in held if not h.lost]
    if waiting:
        await db(states.released, waiting[0].ref.using, waiting)
    return pool


def run_one(claim: states.Claim) -> bool:
    """Run one delivery to any handler, one call: a sync one here, an async one awaited
    on an event loop, under a lease taken here if it has none. True if it completed."""
    ref = claim.ref
    if not engine.awaited(ref):
        job = engine.resolve(claim)
        completed = job is not None and engine.call(job)
    else:
        claims = states.taken([ref]) if claim.lease is None else states.held(ref, claim.lease)
        claims = [replace(found, stored=claim.stored) for found in claims]  # timed as it starts
        completed = bool(claims) and run_now(claims).completed == 1
    breaker.tick(ref.using)
    return completed


def run_claimed(
    claims: Sequence[states.Claim], *, stopping: Callable[[], bool] = lambda: False
) -> int:
    """Run claimed deliveries: those of handlers that take theirs together sent (``bulk``),
    the other sync ones batched (``run.deliver``), then the async ones awaited on an
    event loop, one at a time. How many ran; once ``stopping()``, the rest are handed
    back."""
    together: list[states.Claim] = []
    sync: list[states.Claim] = []
    later: list[states.Claim] = []
    for claim in claims:
        if engine.awaited(claim.ref):
            later.append(claim)
        else:
            (together if bulk.takes(claim) else sync).append(claim)
    ran = bulk.deliver(together, stopping=stopping)
    ran += engine.deliver(sync, stopping=stopping)
    if later:
        ran += run_now(later, concurrency=1, stopping=stopping).started
    return ran


def drain(using: str, *, batch: int = 100) -> int:
    """Run every delivery due now, and those due again at once after a failed call,
    until none is due, in this thread; how many calls ran."""
    ran = 0
    breaker.tick(using)
    while claims := states.claim(using, batch, follow=True):
        ran += run_claimed(claims)
        breaker.tick(using)
    return ran


def run_now(
    claims: Sequence[states.Claim],
    *,
    concurrency: int | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Pool:
    """``adeliver()`` from sync code, on the caller's event loop if it has one (asgiref's
    ``async_to_sync``), else on a loop of its own."""
    pool: Pool = async_to_sync(adeliver)(claims, concurrency=concurrency, stopping=stopping)
    return pool
