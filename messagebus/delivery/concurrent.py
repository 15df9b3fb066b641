"""Deliveries on an AnyIO event loop: async handlers awaited, many deliveries at once.

An async handler runs on the loop, outside any transaction (Django's are
sync and bound to a thread), under a lease on its delivery: no other runner
takes it while the lease lasts. When it returns, its delivery is marked done
in a transaction of its own, shared with the other deliveries that finished
meanwhile (``Marks``). So the mark does *not* commit with whatever the
handler wrote: a process that dies between the two leaves the delivery to
run again once its lease runs out. Async handlers are at-least-once, and
should be idempotent; sync handlers keep their exactly-once transaction.

A ``Pool`` runs up to ``concurrency`` deliveries at once: async handlers as
tasks of one task group, sync ones in a bounded pool of threads, each in its
own unit of work. Every delivery keeps its own bookkeeping: a failure, a
timeout or a retry of one never touches the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio import to_thread
from asgiref.sync import async_to_sync, sync_to_async
from django.db import DatabaseError, close_old_connections, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

from .. import conf, executors, logs, metrics, tracing
from ..dependencies import dependencies
from ..exceptions import HandlerTimeout
from ..message_bus import bus
from ..messages import current_message
from ..registry import registry
from ..wording import plural
from . import runner, states
from .reference import Reference

if TYPE_CHECKING:
    from .runner import Task

logger = logs.get_logger(__name__)
T = TypeVar("T")


class Held:
    """A claimed delivery as this runner holds it: its lease, renewed while it runs.

    Read and changed only by the bookkeeping functions, which ``_db()`` runs one
    at a time in one thread, so a renewal never races a mark.
    """

    __slots__ = ("claim", "lease", "lost", "scope")

    def __init__(self, claim: states.Claim) -> None:
        self.claim = claim
        self.lease = claim.lease
        self.lost = False  # another runner has it: stop, record nothing
        self.scope = anyio.CancelScope()  # cancelled if the lease is lost while it runs

    def current(self) -> states.Claim:
        claim = self.claim
        return claim if claim.lease == self.lease else dataclasses.replace(claim, lease=self.lease)


async def call(task: Task) -> None:
    """One call of an async handler, cancelled if it runs past its timeout.

    Deliveries that the commands it awaits store (``bus.ahandle``) run after it,
    outside its time (``executors.here()``).
    """
    token = current_message.set(task.event)
    try:
        started = time.perf_counter()
        kwargs = dependencies.kwargs(task.handler, None, bus) if task.handler.parameters else {}
        async with executors.here():
            scope = anyio.move_on_after(task.policy.timeout or math.inf)
            try:
                with scope:
                    await task.handler.func(task.event, **kwargs)
            except anyio.get_cancelled_exc_class():
                if not scope.cancel_called:
                    raise
                # The timeout's, let through by code of the handler's: still a timeout.
            if scope.cancel_called:
                raise HandlerTimeout(task.handler.name, task.policy.timeout or 0)
        elapsed = time.perf_counter() - started
        metrics.call(task.handler.name, elapsed)
        if logger.isEnabledFor(logging.INFO):
            logger.info("Delivered %s to %s in %.1f ms", task.event, task.handler, elapsed * 1000)
    finally:
        current_message.reset(token)


async def run(task: Task, held: Held, marks: Marks, *, calls: int | None = None) -> bool:
    """Run an async handler's delivery, ``held`` under a lease, to the end of its run.

    True if it completed (its done-mark handed to ``marks``). Cancelled (a
    worker out of grace), it is handed back, due again at once, no run counted.
    Its lease lost (it ran past ``CLAIM_TIMEOUT`` unrenewed), it stops, recording nothing.
    """
    try:
        with held.scope:
            error = await _attempt(task)
            if error is None:
                marks.add(held)
                tracing.ended("done")
                return True
            if not await _db(_failed, task, held, error):
                return False
            final = None
            try:
                attempts = task.policy.retry_attempts if calls is None else calls
                async for attempt in task.policy.aretrying(attempts):
                    with attempt:
                        if attempt.retry_state.attempt_number > 1:
                            error = await _attempt(task)
                            if error is not None and not await _db(_failed, task, held, error):
                                return False
                        if error is not None:
                            raise error
            except Exception as exc:  # noqa: BLE001  (the run's last failure)
                final = exc
            if final is not None:
                await _db(_give_up, task, held, final)
                return False
            marks.add(held)
            tracing.ended("done")
            return True
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _db(_hand_back, held)
        logger.warning("Handed back %s, cancelled before it finished", task)
        raise
    finally:
        if held.lost:
            logger.warning("Stopped %s: its lease ran out and another runner has it", task)
    return False


async def _attempt(task: Task) -> Exception | None:
    """One call; the error it raised, if any (kept out of ``except`` blocks, so that
    the bookkeeping awaited after it is not chained to it)."""
    try:
        await call(task)
    except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
        return exc
    return None


def _failed(task: Task, held: Held, error: Exception) -> bool:
    """Record a failed call; False if the lease is lost."""
    renewed = runner.failed_call(task, held.lease, error)
    if renewed is None:
        held.lost = True
        return False
    held.lease = renewed
    return True


def _give_up(task: Task, held: Held, error: Exception) -> None:
    runner.give_up(task, held.lease, error, held.claim.runs)


def _hand_back(held: Held) -> None:
    states.released(held.claim.ref.using, [held.current()])


def _finish(held: list[Held]) -> set[int]:
    return states.finished([h.current() for h in held if not h.lost])


def _renew(held: list[Held]) -> None:
    for one in held:
        if not one.lost:
            renewed = states.renewed(one.current())
            if renewed is None:
                one.lost = True
            else:
                one.lease = renewed


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
                    ours = await _db(_finish, held)
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

    def start(self, claims: Sequence[states.Claim], *, calls: int | None = None) -> None:
        """Start these claimed deliveries (no more than ``free``)."""
        for held in self.hold(claims):
            self._running.add(held.claim.id)
            self._group.start_soon(self._deliver, held, calls)
        self.started += len(claims)

    async def run_here(self, held: Held, *, calls: int | None = None) -> None:
        """Run one held delivery in the calling task, to the end of its run."""
        self._running.add(held.claim.id)
        self.started += 1
        await self._deliver(held, calls)

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
                    await _db(_renew, held)
                for lost in (h for h in held if h.lost):
                    lost.scope.cancel()

    async def _deliver(self, held: Held, calls: int | None) -> None:
        claim = held.claim
        metrics.claimed(claim, timezone.now())
        try:
            task = None if held.lost else await _task(held)
            if task is None:
                self.ended += 1
            elif task.handler.is_async:
                span = tracing.delivery(task.event, task.handler.name, task.trace, claim.runs + 1)
                with logs.handling(task.event, task.handler.name), span:
                    self.completed += await run(task, held, self.marks, calls=calls)
                self.ended += 1
            else:
                del self._held[claim.id]  # its row lock keeps it
                try:
                    self.completed += await to_thread.run_sync(
                        _run_sync, held.current(), calls, self._used,
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


def awaited(ref: Reference) -> bool:
    """Whether the handler ``ref`` names is async (unknown: no, the runner deals with it)."""
    handler = registry.named(ref.handler)
    return handler is not None and handler.is_async


async def _task(held: Held) -> Task | None:
    """The claim's task: opened here if it carries its event, else read in a thread."""
    ref = held.claim.ref
    if ref.envelope is None:
        return await _db(runner.resolve, ref, held.lease)
    task = runner.opened(ref)
    if isinstance(task, str):
        await _db(runner.dead_on_arrival, ref, held.lease, task)
        return None
    return task


def _run_sync(claim: states.Claim, calls: int | None, used: set[BaseDatabaseWrapper]) -> bool:
    close_old_connections()  # this thread's connection may have broken or aged
    try:
        return runner.run(claim.ref, lease=claim.lease, calls=calls, runs=claim.runs)
    finally:
        used.add(connections[claim.ref.using])


async def _db(func: Callable[..., T], *args: object) -> T:
    """``func(*args)`` where Django runs sync code for async code: in the thread that
    waits in ``async_to_sync`` (the inline executor's), else in asgiref's one thread.
    Shielded: bookkeeping, once begun, is not cancelled half-way."""
    with anyio.CancelScope(shield=True):
        result = await sync_to_async(func, thread_sensitive=True)(*args)
    return result


async def refresh() -> None:
    """Drop ``_db()``'s connections that broke or aged (a long-lived worker, between batches)."""
    await sync_to_async(close_old_connections, thread_sensitive=True)()


def _close(used: set[BaseDatabaseWrapper]) -> None:
    """Close the connections the pool's idle threads opened (they outlive it)."""
    for connection in used:
        connection.inc_thread_sharing()
        try:
            connection.close()
        finally:
            connection.dec_thread_sharing()


async def deliver(
    claims: Sequence[states.Claim],
    *,
    concurrency: int | None = None,
    calls: int | None = None,
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
                await pool.run_here(held.pop(0), calls=calls)
        while waiting and not stopping():
            free = await pool.wait_free()
            pool.start(waiting[:free], calls=calls)
            del waiting[:free]
    waiting += [h.current() for h in held if not h.lost]
    if waiting:
        await _db(states.released, waiting[0].ref.using, waiting)
    return pool


def run_any(
    ref: Reference,
    *,
    lease: dt.datetime | None = None,
    calls: int | None = None,
    runs: int | None = None,
) -> bool:
    """``runner.run()`` for a delivery to any handler: an async one is awaited on an
    event loop, under a lease taken here if it has none."""
    if not awaited(ref):
        return runner.run(ref, lease=lease, calls=calls, runs=runs)
    claims = states.taken([ref]) if lease is None else states.held(ref, lease)
    return bool(claims) and run_now(claims, calls=calls).completed == 1


def run_now(
    claims: Sequence[states.Claim],
    *,
    concurrency: int | None = None,
    calls: int | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Pool:
    """``deliver()`` from sync code, on the caller's event loop if it has one (asgiref's
    ``async_to_sync``), else on a loop of its own."""
    pool: Pool = async_to_sync(deliver)(
        claims, concurrency=concurrency, calls=calls, stopping=stopping
    )
    return pool
