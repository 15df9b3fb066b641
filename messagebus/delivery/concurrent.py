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

logger = logging.getLogger(__name__)
T = TypeVar("T")


async def call(task: Task) -> None:
    """One call of an async handler, cancelled if it runs past its timeout."""
    token = current_message.set(task.event)
    try:
        started = time.perf_counter()
        kwargs = dependencies.kwargs(task.handler, None, bus) if task.handler.parameters else {}
        with anyio.move_on_after(task.policy.timeout or math.inf) as scope:
            await task.handler.func(task.event, **kwargs)
        if scope.cancelled_caught:
            raise HandlerTimeout(task.handler.name, task.policy.timeout or 0)
        if logger.isEnabledFor(logging.INFO):
            elapsed = (time.perf_counter() - started) * 1000
            logger.info("Delivered %s to %s in %.1f ms", task.event, task.handler, elapsed)
    finally:
        current_message.reset(token)


async def run(task: Task, claim: states.Claim, marks: Marks, *, calls: int | None = None) -> bool:
    """Run an async handler's delivery, leased by ``claim``, to the end of its run.

    True if it completed (its done-mark handed to ``marks``). Cancelled (a
    worker out of grace), it is handed back, due again at once, no run counted.
    """
    lease = claim.lease
    try:
        try:
            await call(task)
        except Exception as exc:  # noqa: BLE001  (a handler may raise anything)
            lease = await _db(runner.failed_call, task, lease, exc)
            attempts = task.policy.retry_attempts if calls is None else calls
            try:
                async for attempt in task.policy.aretrying(attempts):
                    with attempt:
                        if attempt.retry_state.attempt_number == 1:
                            raise exc from None
                        try:
                            await call(task)
                        except Exception as again:
                            lease = await _db(runner.failed_call, task, lease, again)
                            raise
            except Exception as error:  # noqa: BLE001
                await _db(runner.give_up, task, lease, error, claim.runs)
                return False
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True):
            await _db(states.released, claim.ref.using, [_holding(claim, lease)])
        logger.warning("Handed back %s, cancelled before it finished", task)
        raise
    marks.add(_holding(claim, lease))
    return True


def _holding(claim: states.Claim, lease: dt.datetime) -> states.Claim:
    return claim if claim.lease == lease else dataclasses.replace(claim, lease=lease)


class Marks:
    """Done-marks of finished async deliveries, written by one task: each write takes
    every mark that came in while the last was being written (a group commit)."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[states.Claim](math.inf)

    def add(self, claim: states.Claim) -> None:
        self._send.send_nowait(claim)

    def close(self) -> None:
        """No more marks: ``write()`` returns once it has written the ones it has."""
        self._send.close()

    async def write(self) -> None:
        async with self._receive:
            async for claim in self._receive:
                claims = [claim]
                while True:
                    try:
                        claims.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    with anyio.CancelScope(shield=True):  # a mark is never dropped half-way
                        ours = await _db(states.finished, claims)
                except DatabaseError:
                    logger.exception(
                        "Could not mark %s done: they run again when their lease runs out",
                        plural(len(claims), "finished delivery", "finished deliveries"),
                    )
                    continue
                for lost in (c for c in claims if c.id not in ours):
                    logger.warning(
                        "%s finished after its lease ran out; another runner has it", lost.ref
                    )


class Pool:
    """Up to ``concurrency`` deliveries at once on this event loop.

    ``async with Pool(n) as pool: pool.start(claims)``; leaving the block waits
    for them all. ``stop(grace)`` waits up to ``grace`` seconds, then cancels
    the async ones still running (handed back); a sync one cannot be cancelled:
    it is left to finish in its thread, or to roll back with the process.
    """

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        # Started; whose run ended (completed or not, not cancelled); completed.
        self.started = self.ended = self.completed = 0
        self.marks = Marks()
        self._running: set[int] = set()
        self._threads = anyio.CapacityLimiter(concurrency)
        self._used: set[BaseDatabaseWrapper] = set()  # by sync deliveries' threads
        self.abandoned = 0  # sync deliveries left running in their threads
        self._changed = anyio.Event()
        self._group = anyio.create_task_group()
        self._writer = anyio.create_task_group()

    async def __aenter__(self) -> Pool:
        await self._writer.__aenter__()
        self._writer.start_soon(self.marks.write)
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
            self.marks.close()
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

    def start(self, claims: Sequence[states.Claim], *, calls: int | None = None) -> None:
        """Start these claimed deliveries (no more than ``free``)."""
        for claim in claims:
            self._running.add(claim.id)
            self._group.start_soon(self._deliver, claim, calls)
        self.started += len(claims)

    async def run_here(self, claim: states.Claim, *, calls: int | None = None) -> None:
        """Run one claimed delivery in the calling task, to the end of its run."""
        self._running.add(claim.id)
        self.started += 1
        await self._deliver(claim, calls)

    async def stop(self, grace: float) -> None:
        """Let running deliveries finish for up to ``grace`` seconds, then cancel the rest."""
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

    async def _deliver(self, claim: states.Claim, calls: int | None) -> None:
        try:
            task = await _task(claim)
            if task is None:
                self.ended += 1
                return
            if task.handler.is_async:
                completed = await run(task, claim, self.marks, calls=calls)
            else:
                try:
                    completed = await to_thread.run_sync(
                        _run_sync, claim, calls, self._used,
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
            self.completed += completed
        except DatabaseError:
            logger.exception("Could not run %s; it runs again when its lease runs out", claim.ref)
        finally:
            self._running.discard(claim.id)
            self.wake()


def awaited(ref: Reference) -> bool:
    """Whether the handler ``ref`` names is async (unknown: no, the runner deals with it)."""
    handler = registry.named(ref.handler)
    return handler is not None and handler.is_async


async def _task(claim: states.Claim) -> Task | None:
    """The claim's task: opened here if it carries its event, else read in a thread."""
    if claim.ref.envelope is None:
        return await _db(runner.resolve, claim.ref, claim.lease)
    task = runner.opened(claim.ref)
    if isinstance(task, str):
        await _db(runner.dead_on_arrival, claim.ref, claim.lease, task)
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
    waits in ``async_to_sync`` (the inline executor's), else in asgiref's one thread."""
    return await sync_to_async(func, thread_sensitive=True)(*args)


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
    async with Pool(concurrency or len(waiting) or 1) as pool:
        if pool.concurrency == 1:  # one after another, in this task: none of a task's cost
            while waiting and not stopping():
                await pool.run_here(waiting.pop(0), calls=calls)
        while waiting and not stopping():
            free = await pool.wait_free()
            pool.start(waiting[:free], calls=calls)
            del waiting[:free]
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
